"""`surgeon cast` as a plan: quantized weights to bf16/f16/f32, and float weights to FP8.

Dequantizing (``--dtype bf16|f16|f32``): every selected FP8 or MXFP4 weight becomes one
tensor of the target dtype under its logical name (cast_values.py computes it), its scale
leaves the output, and everything else is copied as raw bytes. When every quantized weight
is cast, ``quantization_config`` leaves config.json; after a partial cast the dequantized
modules join its ``modules_to_not_convert``, so transformers loads them as plain layers.

Quantizing (``--dtype fp8``): the selected 2-D float weights of linear layers become F8_E4M3
with one scale per block, in the scheme of the model itself when it is FP8 already, of
``--like QUANTIZED``, or else DeepSeek-V3's (quant.DEFAULT_FP8_CONFIG). Modules the scheme's
``modules_to_not_convert`` names are left as they are, and the output's quantization_config
names every linear layer that stays unquantized where the scheme would quantize it.

Either way the output keeps the input's sharding: tensor by tensor, shard by shard.
"""
from __future__ import annotations

import copy
import re

from weightsurgeon.checkpoint import Checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import GROUPS, ConfigView, classify, layout_of, parse_experts, select_names
from weightsurgeon.quant import DEFAULT_FP8_CONFIG, DEFAULT_SCALE, FP8_DTYPES, QuantTensor, dequantized_shape, quant_config
from weightsurgeon.surgery import Plan, PlannedTensor, Source, _problems, _refuse_partial

TARGETS = {"bf16": "BF16", "f16": "F16", "f32": "F32", "fp8": "F8_E4M3"}
FLOAT_SOURCES = ("BF16", "F16", "F32")
# Modules whose 2-D weights are not linear layers a FP8 loader replaces (embeddings, heads, routers).
NOT_LINEAR = GROUPS["emb"] | GROUPS["head"] | GROUPS["router"] | GROUPS["norm"]


def plan_cast(model: Checkpoint, dtype: str, modules: str | None = None, layers: str | None = None,
              experts: str | None = None, like: Checkpoint | None = None, allow_overflow: bool = False,
              arguments: dict | None = None) -> Plan:
    """The cast of MODEL to `dtype` (bf16, f16, f32: dequantize; fp8: quantize), limited to a selection."""
    _refuse_partial(model, "MODEL")
    if dtype not in TARGETS:
        raise SurgeonError(f"--dtype must be one of {', '.join(TARGETS)}, not {dtype!r}")
    if TARGETS[dtype] == "F8_E4M3":
        return _plan_quantize(model, modules, layers, experts, like, arguments or {})
    if like is not None:
        raise SurgeonError("--like copies a quantization scheme: it goes with --dtype fp8")
    return _plan_dequantize(model, TARGETS[dtype], modules, layers, experts, allow_overflow, arguments or {})


def _disk_order(model: Checkpoint):
    """(shard number, stored tensor) in the order their bytes lie (file, offset): reads go front to back.
    Each shard's table is in on-disk order already (format.TensorTable); records are made one at a time."""
    for k, shard in enumerate(model.shards):
        for info in shard.tensors:
            yield k, info


def _selected(model: Checkpoint, modules: str | None, layers: str | None, experts: str | None) -> list[str] | None:
    if modules is None and layers is None and experts is None:
        return None
    lay = layout_of(model.tensors, model.config)
    return select_names(list(model.tensors), modules or "re:.*", layers, lay.num_layers, flag="--module",
                        layout=lay, experts=parse_experts(experts))


# ---------------------------------------------------------------------------------------
# FP8 / MXFP4 -> bf16, f16, f32
# ---------------------------------------------------------------------------------------

def _plan_dequantize(model: Checkpoint, target: str, modules: str | None, layers: str | None, experts: str | None,
                     allow_overflow: bool, arguments: dict) -> Plan:
    quant = model.quant
    if not quant.tensors:
        raise SurgeonError(f"{model.source}: holds no FP8 or MXFP4-quantized weight, so there is nothing to "
                           f"dequantize (--dtype fp8 quantizes)")
    picked = _selected(model, modules, layers, experts)
    chosen = set(quant.tensors) if picked is None else {quant.logical(n) for n in picked} & set(quant.tensors)
    if not chosen:
        raise SurgeonError(f"the selection ({modules or 'all'}, layers {layers or 'all'}) holds no quantized weight: "
                           f"nothing to dequantize")
    overflow = "inf" if allow_overflow else None
    tensors: list[PlannedTensor] = []
    shard_of: dict[str, int] = {}
    transposed: list[str] = []
    kinds: dict[tuple, QuantTensor] = {}  # one tensor of each encoding, for the labels (92k tensors, a handful of kinds)
    parts, quantized = quant.parts, quant.tensors
    for k, shard in enumerate(model.shards):  # in the order the bytes lie: reads go front to back
        table = shard.tensors  # by name: a record only for what is copied (92k names, 46k of them scales)
        for i, name in enumerate(table.names):
            logical = parts.get(name)
            if logical in chosen:
                q = quantized[logical]
                if name != q.data.name:
                    continue  # the scale: folded into the values
                shape = dequantized_shape(q)
                if shape != q.shape:
                    transposed.append(logical)
                kinds.setdefault((q.scheme, q.block, q.data.dtype, q.scale.dtype, q.scale.name.rsplit(".", 1)[-1]), q)
                t = PlannedTensor(logical, target, shape, Source("dequantize", role="base", name=logical, overflow=overflow),
                                  True)
            else:
                info = table.info(i)
                t = PlannedTensor(name, info.dtype, info.shape, Source("copy", role="base", name=name), False)
            tensors.append(t)
            shard_of[t.name] = k
    config, edits = _dequantized_config(model.config, quant.tensors, chosen)
    transposed.sort()
    warnings = []
    if transposed:
        warnings.append(f"{len(transposed)} MXFP4 expert stack(s) written as transformers' bf16 layout [experts, in, out] "
                        f"(stored [experts, out, in]), e.g. {transposed[0]}")
    schemes = sorted({q.label for q in kinds.values()})
    return Plan(operation="cast", arguments=arguments, inputs={"base": model}, tensors=tensors, config=config,
                config_edits=edits, warnings=warnings, shard_of=shard_of,
                provenance={"cast": {"to": target, "dequantized": len(chosen), "from": schemes,
                                     "scales_dropped": len(chosen), "transposed": len(transposed)}})


def _module_of(name: str) -> str:
    """The module path a parameter belongs to: 'model.layers.3.self_attn.o_proj.weight' -> '...o_proj'."""
    return name.rsplit(".", 1)[0]


def _dequantized_config(config: dict | None, quantized: dict[str, QuantTensor],
                        chosen: set[str]) -> tuple[dict | None, dict[str, tuple[object, object]]]:
    if config is None:
        return None, {}
    out = copy.deepcopy(config)
    owner, path = ConfigView(out).owner("quantization_config")
    if not isinstance(owner.get("quantization_config"), dict):
        owner, path = out, "quantization_config"
    qc = owner.get("quantization_config")
    if not isinstance(qc, dict):
        return out, {}
    if chosen == set(quantized):
        del owner["quantization_config"]
        return out, {path: (qc, None)}
    skip = list(qc.get("modules_to_not_convert") or [])
    added = sorted({_module_of(n) for n in chosen} - set(skip))
    new = {**qc, "modules_to_not_convert": skip + added}
    owner["quantization_config"] = new
    return out, {f"{path}.modules_to_not_convert": (qc.get("modules_to_not_convert"), new["modules_to_not_convert"])}


# ---------------------------------------------------------------------------------------
# bf16, f16, f32 -> FP8 with block scales
# ---------------------------------------------------------------------------------------

def not_converted(module: str, patterns: list[str]) -> bool:
    """Whether a quantization_config's modules_to_not_convert names `module`, read as transformers reads it:
    a pattern matching from the start up to a module boundary (a regex: 'model.layers.*.self_attn'), or a suffix."""
    for key in patterns:
        if not isinstance(key, str):
            continue
        try:
            if re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", module):
                return True
        except re.error:
            pass
        if module.endswith(key):
            return True
    return False


def _scheme(model: Checkpoint, like: Checkpoint | None) -> tuple[tuple[int, int], str, str, str, dict, set[str] | None, str]:
    """(block, FP8 dtype, scale suffix, scale dtype, quantization_config, names the scheme quantizes, whose)."""
    for ckpt, whose in ((like, "--like"), (model, "MODEL")):
        if ckpt is None:
            continue
        blocks = [q for q in ckpt.quant.tensors.values() if q.scheme == "fp8-block"]
        if not blocks:
            if ckpt is like:
                kinds = sorted({q.scheme for q in like.quant.tensors.values()}) or ["none"]
                raise SurgeonError(f"--like {like.source}: holds no FP8 block-scaled weight (its schemes: "
                                   f"{', '.join(kinds)}); cast copies FP8 block schemes")
            if ckpt.quant.tensors:
                raise SurgeonError(f"{model.source}: is quantized in another scheme ({next(iter(ckpt.quant.tensors.values())).label});"
                                   f" dequantize it first, or pass --like an FP8 block-scaled checkpoint")
            continue
        q = blocks[0]
        qc = copy.deepcopy(quant_config(ckpt.config) or {**DEFAULT_FP8_CONFIG, "weight_block_size": list(q.block)})
        return (q.block, q.data.dtype, q.scale.name[len(q.data.name):], q.scale.dtype, qc,
                {n for n, t in ckpt.quant.tensors.items() if t.scheme == "fp8-block"}, whose)
    return (tuple(DEFAULT_FP8_CONFIG["weight_block_size"]), "F8_E4M3", DEFAULT_SCALE[0], DEFAULT_SCALE[1],
            copy.deepcopy(DEFAULT_FP8_CONFIG), None, "default")


def linear_weight(name: str, info) -> bool:
    """A 2-D float weight of a linear layer (what an FP8 loader replaces), by name and layout."""
    return (name.endswith(".weight") and len(info.shape) == 2 and info.dtype in FLOAT_SOURCES
            and classify(name).module not in NOT_LINEAR)


def _plan_quantize(model: Checkpoint, modules: str | None, layers: str | None, experts: str | None,
                   like: Checkpoint | None, arguments: dict) -> Plan:
    block, fp8, suffix, scale_dtype, qc, reference, whose = _scheme(model, like)
    own = whose == "MODEL"
    skip_patterns = list(qc.get("modules_to_not_convert") or [])
    picked = _selected(model, modules, layers, experts)
    if picked is None:
        if like is None:
            raise SurgeonError("--dtype fp8 needs --module (which weights to quantize) or --like QUANTIZED "
                               "(quantize what it quantizes)")
        picked = [n for n in reference if n in model.tensors and model[n].shape == like.quant.tensors[n].shape]
    targets: list[str] = []
    skipped: list[str] = []
    for n in picked:
        info = model[n]
        if n in model.quant.parts or not (n.endswith(".weight") and len(info.shape) == 2):
            continue  # already quantized, a scale, a bias or a norm: kept as it is
        if info.dtype not in FLOAT_SOURCES:
            skipped.append(f"{n} ({info.dtype})")
        elif classify(n).module in NOT_LINEAR:
            skipped.append(f"{n} (module {classify(n).module} is not a linear layer FP8 loaders quantize)")
        elif not_converted(_module_of(n), skip_patterns) and not (own and _module_of(n) in skip_patterns):
            skipped.append(f"{n} (quantization_config.modules_to_not_convert names it)")
        else:
            targets.append(n)
    if not targets:
        raise _problems("selected weight(s) cannot be quantized, and nothing else was selected (select linear "
                        "modules such as o_proj or mlp)", skipped) if skipped \
            else SurgeonError("the selection holds no bf16/f16/f32 linear weight to quantize; select linear modules such as "
                               "o_proj or mlp")
    chosen = set(targets)
    clash = [n + suffix for n in targets if n + suffix in model.tensors]
    if clash:
        raise _problems(f"scale tensor name(s) already taken in {model.root or model.source} (a plain weight beside "
                        "an FP8 scale: the model is half quantized); give the unquantized model", clash)
    tensors: list[PlannedTensor] = []
    shard_of: dict[str, int] = {}
    for k, info in _disk_order(model):
        if info.name in chosen:
            rows, cols = info.shape
            src = dict(role="base", name=info.name, block=tuple(block), scale_dtype=scale_dtype)
            grid = (-(-rows // block[0]), -(-cols // block[1]))
            new = [PlannedTensor(info.name, fp8, info.shape, Source("quantize", **src), True),
                   PlannedTensor(info.name + suffix, scale_dtype, grid, Source("quantize_scale", **src), True)]
        else:
            new = [PlannedTensor(info.name, info.dtype, info.shape, Source("copy", role="base", name=info.name), False)]
        for t in new:
            tensors.append(t)
            shard_of[t.name] = k
    config, edits = _quantized_config(model, qc, chosen, reference, own)
    warnings = []
    if skipped:
        shown = "; ".join(skipped[:8]) + (f"; and {len(skipped) - 8} more" if len(skipped) > 8 else "")
        warnings.append(f"left unquantized: {shown}")
    return Plan(operation="cast", arguments=arguments, inputs={"base": model, **({"like": like} if like else {})},
                tensors=tensors, config=config, config_edits=edits, warnings=warnings, shard_of=shard_of,
                provenance={"cast": {"to": fp8, "quantized": len(targets), "block": list(block),
                                     "scale": f"{suffix} {scale_dtype}", "scheme_from": whose}})


def _quantized_config(model: Checkpoint, qc: dict, chosen: set[str], reference: set[str] | None,
                      own: bool) -> tuple[dict | None, dict[str, tuple[object, object]]]:
    """config.json with the scheme's quantization_config; its modules_to_not_convert lists the linear layers left
    unquantized where the scheme would quantize them (all of them for a fresh scheme), and no longer the ones
    quantized now."""
    if model.config is None:
        raise SurgeonError(f"{model.source}: has no config.json to write quantization_config into")
    out = copy.deepcopy(model.config)
    owner, path = ConfigView(out).owner("quantization_config")
    old = owner.get("quantization_config")
    skip = [k for k in (qc.get("modules_to_not_convert") or [])
            if not (own and isinstance(k, str) and k in {_module_of(n) for n in chosen})]
    quantized_now = chosen | {n for n in model.quant.tensors if model.quant.tensors[n].scheme == "fp8-block"}
    left = sorted({_module_of(n) for n, info in model.tensors.items()
                   if n not in quantized_now and linear_weight(n, info) and (reference is None or n in reference)})
    skip += [m for m in left if not not_converted(m, skip)]
    new = {**qc}
    if skip or "modules_to_not_convert" in qc:
        new["modules_to_not_convert"] = skip
    owner["quantization_config"] = new
    return out, ({path: (old, new)} if old != new else {})
