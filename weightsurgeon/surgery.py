"""The Merge and Destruction stethoscopes as plans.

Every operation (splice, zero, reinit, remove, extract) first builds a complete `Plan`:
for every output tensor its name, dtype, shape and `Source` (base or donor bytes, zeros,
a seeded Gaussian, an interpolation, a cast), plus the config.json keys it must change.
The plan is validated here, before a byte is written (every mismatch listed at once), can
be printed with ``--dry-run``, and is carried out by one executor, `writer.write_plan`.

Reinit's Gaussian is defined here too (`gaussian_values`), because it *is* the plan's
meaning: values depend only on (seed, tensor name, element index), never on chunk size
or thread count (the generator itself is `kernels.gaussian`).
"""
from __future__ import annotations

import math

import copy
import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightsurgeon.checkpoint import Checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.kernels.dtypes import dtype_info, itemsize
from weightsurgeon.layout import (LAYER_INDEX_LISTS, NO_DERIVED_LISTS, PER_LAYER_LISTS, WINDOW_RULES, ConfigView,
                                  Location, ModelLayout, classify, layout_of, parse_experts, parse_layers, parse_modules, select_names,
                                  split_layer)

MAX_LISTED_PROBLEMS = 8


# ---------------------------------------------------------------------------------------
# Plan records
# ---------------------------------------------------------------------------------------

# Plans of 92k tensors (DeepSeek-V3) hold one Source and one PlannedTensor per tensor: slots, not
# instance dicts (with the cached sizes, 761 B a tensor before, about 250 after).
@dataclass(frozen=True, slots=True)
class Source:
    """Where an output tensor's bytes come from.

    kind: ``copy`` (raw bytes of ``role``'s tensor ``name``), ``cast`` (``role``'s tensor
    rounded to the output dtype), ``interpolate`` ((1-alpha)*base[name] + alpha*donor[donor_name],
    float32, rounded to the output dtype), ``zeros``, ``gaussian`` (seed, key = tensor name, mean, std),
    and the format changes of `surgeon cast` (cast_values.py): ``dequantize`` (``role``'s quantized
    logical tensor ``name``; ``overflow``: "inf" writes F16 overflow as inf instead of refusing),
    ``quantize`` (``role``'s float tensor ``name`` as FP8 codes, one scale per ``block``, the
    scale rounded to ``scale_dtype``) and ``quantize_scale`` (those scales).
    """

    kind: str
    role: str | None = None
    name: str | None = None
    donor_name: str | None = None
    alpha: float | None = None
    seed: int | None = None
    mean: float | None = None
    std: float | None = None
    block: tuple[int, int] | None = None
    scale_dtype: str | None = None
    overflow: str | None = None

    def describe(self) -> str:
        if self.kind == "copy":
            return self.role or "?"
        if self.kind == "cast":
            return f"{self.role} (cast)"
        if self.kind == "interpolate":
            return f"interpolate alpha={self.alpha:g}"
        if self.kind == "dequantize":
            return f"{self.role} (dequantized)"
        if self.kind == "quantize":
            return f"{self.role} (quantized, {self.block[0]}x{self.block[1]} blocks)"
        if self.kind == "quantize_scale":
            return f"{self.role} (block scales, {self.scale_dtype})"
        if self.kind == "gaussian":
            return f"gaussian(mean={self.mean:g}, std={self.std:g}, seed={self.seed})"
        return self.kind

    def to_dict(self) -> dict:
        values = ((f, getattr(self, f)) for f in self.__slots__)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values if v is not None}


@dataclass(frozen=True, slots=True)
class PlannedTensor:
    """One output tensor: what it is and where its bytes come from. ``changed``: differs from BASE's."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Source
    changed: bool
    # kept, not recomputed: plans of 90k tensors (DeepSeek-V3) sum them many times
    numel: int = field(init=False, repr=False, compare=False)
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numel = math.prod(self.shape)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "nbytes", numel * itemsize(self.dtype))


@dataclass
class Plan:
    """Everything an operation will write, known before the first byte."""

    operation: str
    arguments: dict
    inputs: dict[str, Checkpoint]  # role ("base", "donor") -> open checkpoint
    tensors: list[PlannedTensor]
    config: dict | None  # the output config.json (already edited); None: write none
    config_edits: dict[str, tuple[object, object]] = field(default_factory=dict)  # "key" -> (old, new)
    files_from: str | None = "base"  # whose tokenizer / generation files are copied
    partial: bool = False
    provenance: dict = field(default_factory=dict)  # extra keys for surgeon.json
    warnings: list[str] = field(default_factory=list)
    shard_of: dict[str, int] | None = None  # output tensor -> shard number (cast: the input's); None: by size
    # Tensor name -> Location, classified already by the planner (its input's layout, read only): the check of
    # the written model reuses them for the names the output keeps (layout_of's `known`)
    locations: dict[str, Location] = field(default_factory=dict, repr=False, compare=False)
    _summary: tuple | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def total_bytes(self) -> int:
        """Once per plan (a plan is complete when built and never changed): the writer, its progress
        bars and the summary all ask, and a DeepSeek-sized plan is 92k tensors to sum."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def changed(self) -> list[PlannedTensor]:
        return [t for t in self.tensors if t.changed]

    def summary(self) -> dict:
        """Counts and bytes per source, changed tensors grouped by module: for --dry-run and surgeon.json.

        Computed once (surgeon.json and the closing line both ask): the plan is complete before it is written."""
        key = (len(self.tensors), id(self.tensors[-1]) if self.tensors else None, len(self.config_edits))
        if self._summary is None or self._summary[0] != key:
            self._summary = (key, self._compute_summary())
        return self._summary[1]

    def _compute_summary(self) -> dict:
        by_source: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            key = t.source.describe()
            entry = by_source.setdefault(key, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += t.nbytes
        base = self.inputs.get("base")
        dropped = 0
        if base is not None and self.operation == "remove":
            dropped = len(base.tensors) - len(self.tensors)
        return {
            "operation": self.operation,
            "tensors": len(self.tensors),
            "bytes": self.total_bytes,
            "changed_tensors": len(self.changed),
            "changed_bytes": sum(t.nbytes for t in self.changed),
            "dropped_tensors": dropped,
            "by_source": by_source,
            "changes": change_groups(self),
            "config_edits": {k: {"old": o, "new": n} for k, (o, n) in self.config_edits.items()},
            "partial": self.partial,
        }

    def to_dict(self) -> dict:
        """The full plan (every tensor), for ``--dry-run --json``."""
        return {
            "summary": self.summary(),
            "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes,
                         "changed": t.changed, "source": t.source.to_dict()} for t in self.tensors],
            "warnings": list(self.warnings),
        }


def change_groups(plan: Plan) -> list[dict]:
    """Changed tensors grouped by (source, module) with their layers: the dry-run table's rows."""
    groups: dict[tuple[str, str], dict] = {}
    for t in plan.changed:
        loc = classify(t.name)
        key = (t.source.describe(), loc.module)
        g = groups.setdefault(key, {"source": key[0], "module": loc.module, "layers": set(), "tensors": 0, "bytes": 0})
        if loc.layer is not None:
            g["layers"].add(loc.layer)
        g["tensors"] += 1
        g["bytes"] += t.nbytes
    out = []
    for g in groups.values():
        g["layers"] = format_layers(sorted(g["layers"])) if g["layers"] else "-"
        out.append(g)
    return out


def format_layers(layers: list[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8' (the syntax --layers accepts)."""
    parts: list[str] = []
    start = prev = None
    for l in layers:
        if start is None:
            start = prev = l
        elif l == prev + 1:
            prev = l
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = l
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


def _problems(kind: str, items: list[str]) -> SurgeonError:
    shown = "; ".join(items[:MAX_LISTED_PROBLEMS])
    more = f"; and {len(items) - MAX_LISTED_PROBLEMS} more" if len(items) > MAX_LISTED_PROBLEMS else ""
    return SurgeonError(f"{len(items)} {kind}: {shown}{more}")


def _castable(dtype: str) -> bool:
    """Dtypes `--cast` can round between: floats the codecs encode (not F8_E8M0, integers or complex)."""
    return dtype_info(dtype).encodable


def _refuse_partial(ckpt: Checkpoint, role: str) -> None:
    if ckpt.is_partial:
        raise SurgeonError(f"{ckpt.source}: is a partial checkpoint (written by surgeon extract); "
                           f"it cannot be the {role}: use it as the DONOR of splice")


def _copy(ckpt: Checkpoint, role: str, names: list[str], changed: set[str] | None = None) -> list[PlannedTensor]:
    changed = changed or set()
    return [PlannedTensor(n, ckpt[n].dtype, ckpt[n].shape, Source("copy", role=role, name=n), n in changed) for n in names]


def _edit(config: dict, edits: dict[str, tuple[object, object]], key: str, value: object,
          owner: dict | None = None, path: str | None = None) -> None:
    if owner is None:
        owner, path = ConfigView(config).owner(key)
    old = owner.get(key)
    if old != value or key not in owner:
        edits[path or key] = (copy.deepcopy(old), copy.deepcopy(value))
        owner[key] = value


def _tied_head_error(model: str) -> SurgeonError:
    return SurgeonError(f"{model} ties lm_head to embed_tokens (no lm_head.weight): the head IS the embedding "
                        "matrix; select emb to change both")


def _wants_head_only(spec: str, layout: ModelLayout) -> bool:
    sel = parse_modules(spec)
    present = layout.locations.modules()
    if "lm_head" not in sel.modules or "lm_head" in present:
        return False
    return not (sel.modules & (present - {"lm_head"})) and not sel.patterns


# ---------------------------------------------------------------------------------------
# splice
# ---------------------------------------------------------------------------------------

def plan_splice(base: Checkpoint, donor: Checkpoint, take: str | None = None, exclude: str | None = None,
                layers: str | None = None, alpha: float = 1.0, cast: bool = False,
                head_from_embeddings: bool = False, tokenizer_from: str = "base",
                arguments: dict | None = None, experts: str | None = None, drop_donor_only: bool = False) -> Plan:
    """Take the selected modules from DONOR and everything else from BASE (or interpolate them with alpha).

    Five steps, each its own function: what is taken, where in the DONOR each taken tensor
    comes from (all problems listed at once), what the DONOR has there that the output would
    not hold, each output tensor's source, the config edits.
    """
    _refuse_partial(base, "BASE")
    if (take is None) == (exclude is None):
        raise SurgeonError("splice needs exactly one of --take MODULES or --exclude MODULES")
    if not (0.0 <= alpha <= 1.0) or alpha != alpha:
        raise SurgeonError(f"--alpha must be between 0 and 1, got {alpha}")
    lay_b = layout_of(base.tensors, base.config)
    lay_d = layout_of(donor.tensors, donor.config if not donor.is_partial else (donor.config or base.config))
    base_heads = lay_b.locations.names_of("lm_head")
    donor_heads = lay_d.locations.names_of("lm_head")
    # A tied BASE stores no head: taking the DONOR's head writes one (the output is untied).
    untie_names = [n for n in donor_heads if n not in base.tensors] if (lay_b.tied_embeddings and not base_heads) else []
    candidates = list(base.tensors) + untie_names
    taken = _splice_selection(candidates, lay_b, take, exclude, layers, bool(untie_names), experts)
    crossed = _format_casts(base, donor, taken) if cast and alpha == 1.0 else {}
    _refuse_quantized_cast(base, donor, cast and not crossed, alpha)
    taken = [n for n in taken if n not in crossed]
    _refuse_quantization_mismatch(base, donor, taken)
    donor_tied = lay_d.tied_embeddings and not donor_heads
    sources = _donor_sources(base, donor, lay_d, taken, base_heads, donor_tied, head_from_embeddings, cast)
    used = {n for t in crossed.values() for n in _donor_parts(donor, t)}
    left_out = _donor_leftovers(donor, lay_b, lay_d, take, exclude, layers, taken + sorted(used), sources,
                                drop_donor_only, experts)
    base_emb = _embedding_weight(lay_b)
    taken_set = set(taken)
    tensors: list[PlannedTensor] = []
    for n in candidates:
        if n in crossed:
            tensors.append(crossed[n])
        elif n in taken_set:
            tensors.append(_spliced_tensor(base, donor, n, sources[n], base_emb, alpha))
        elif n in base.tensors:  # an untaken DONOR head of a tied BASE is simply not written
            info = base.tensors[n]
            tensors.append(PlannedTensor(n, info.dtype, info.shape, Source("copy", role="base", name=n), False))
    config, edits, warnings = _splice_config(base, lay_b, untied=any(n in taken_set for n in untie_names),
                                             emb_taken=base_emb in taken_set)
    warnings += left_out
    if tokenizer_from not in ("base", "donor"):
        raise SurgeonError(f"--tokenizer-from must be base or donor, not {tokenizer_from!r}")
    if tokenizer_from == "donor" and donor.root is None:
        raise SurgeonError("--tokenizer-from donor: the DONOR is a single file with no folder of tokenizer files")
    return Plan(operation="splice", arguments=arguments or {}, inputs={"base": base, "donor": donor}, tensors=tensors,
                config=config, config_edits=edits, files_from=tokenizer_from, warnings=warnings, locations=lay_b.locations)


def _embedding_weight(layout: ModelLayout) -> str | None:
    return layout.locations.weight_of("embed_tokens")


def _splice_selection(candidates: list[str], lay_b: ModelLayout, take: str | None, exclude: str | None,
                      layers: str | None, untie: bool, experts: str | None = None) -> list[str]:
    """The names splice takes from the DONOR: --take's selection, or everything in --layers but --exclude's."""
    if take is not None:
        if not untie and _wants_head_only(take, lay_b):
            raise SurgeonError("BASE and DONOR both tie lm_head to embed_tokens (neither stores lm_head.weight): "
                               "the head IS the embedding matrix; take emb to transplant both")
        return select_names(candidates, take, layers, lay_b.num_layers, flag="--take", layout=lay_b,
                            experts=parse_experts(experts))
    layer_set = parse_layers(layers, lay_b.num_layers)
    pool = [n for n in candidates if layer_set is None or classify(n).layer in layer_set]
    excluded = set(select_names(pool, exclude, layer_set, lay_b.num_layers, flag="--exclude", layout=lay_b))
    taken = [n for n in pool if n not in excluded]
    if not taken:
        raise SurgeonError(f"--exclude {exclude!r} leaves nothing to take from the DONOR")
    return taken


def _donor_sources(base: Checkpoint, donor: Checkpoint, lay_d: ModelLayout, taken: list[str], base_heads: list[str],
                   donor_tied: bool, head_from_embeddings: bool, cast: bool) -> dict[str, str]:
    """Taken name -> the DONOR tensor it comes from, checked against BASE before anything else; lists every problem."""
    missing: list[str] = []
    mismatched: list[str] = []
    dtype_mismatch: list[str] = []
    sources: dict[str, str] = {}
    for n in taken:
        src = n
        if n not in donor.tensors:
            if n in base_heads and donor_tied and not donor.is_partial:
                if not head_from_embeddings:
                    raise SurgeonError(
                        f"DONOR {donor.source} ties lm_head to embed_tokens (no {n}) while BASE stores its own head: "
                        "pass --head-from-embeddings to write the DONOR's embed_tokens as the output's lm_head "
                        "(the DONOR's effective head; the output stays untied), or take emb instead")
                src = _embedding_weight(lay_d)
                if src is None:
                    missing.append(n)
                    continue
            else:
                missing.append(n)
                continue
        sources[n] = src
        expected = base[n] if n in base.tensors else donor[src]
        got = donor[src]
        if tuple(got.shape) != tuple(expected.shape):
            mismatched.append(f"{n}: BASE {list(expected.shape)} vs DONOR {list(got.shape)}")
        elif got.dtype != expected.dtype and not cast:
            dtype_mismatch.append(f"{n}: BASE {expected.dtype} vs DONOR {got.dtype}")
        elif got.dtype != expected.dtype and not (_castable(got.dtype) and _castable(expected.dtype)):
            dtype_mismatch.append(f"{n}: BASE {expected.dtype} vs DONOR {got.dtype} (--cast rounds floating-point values only)")
    if missing:
        what = "partial DONOR (plugin) lacks" if donor.is_partial else "DONOR lacks"
        raise _problems(f"taken tensor(s) missing: the {what} them", missing)
    if mismatched:
        raise _problems("shape mismatch(es) between BASE and DONOR", mismatched)
    if dtype_mismatch:
        raise _problems("dtype mismatch(es) between BASE and DONOR (pass --cast to round the DONOR's values to BASE's dtype)",
                        dtype_mismatch)
    return sources


def _spliced_tensor(base: Checkpoint, donor: Checkpoint, n: str, src: str, base_emb: str | None,
                    alpha: float) -> PlannedTensor:
    """One taken tensor: BASE's bytes (alpha 0), the DONOR's (alpha 1, cast to BASE's dtype if need be), or a mix."""
    d = donor[src]
    out_dtype = base[n].dtype if n in base.tensors else d.dtype
    base_name = n if n in base.tensors else base_emb  # a tied BASE's head is its embedding
    if alpha == 0.0 and base_name is not None:
        source = Source("copy", role="base", name=base_name)
        changed = n not in base.tensors
    elif alpha == 1.0:
        source = Source("copy", role="donor", name=src) if d.dtype == out_dtype else Source("cast", role="donor", name=src)
        changed = True
    else:
        for dt, who in ((out_dtype, "BASE"), (d.dtype, "DONOR")):
            if not dtype_info(dt).computes:
                raise SurgeonError(f"--alpha {alpha:g}: cannot interpolate {n} ({who} dtype {dt}); use --alpha 1")
        if base_name is None:
            raise SurgeonError(f"--alpha {alpha:g}: BASE has no {n} nor an embedding to interpolate it with")
        source = Source("interpolate", role="base", name=base_name, donor_name=src, alpha=float(alpha))
        changed = True
    return PlannedTensor(n, out_dtype, tuple(base[n].shape if n in base.tensors else d.shape), source, changed)


def _splice_config(base: Checkpoint, lay_b: ModelLayout, untied: bool,
                   emb_taken: bool) -> tuple[dict | None, dict[str, tuple[object, object]], list[str]]:
    """BASE's config, untied when the DONOR's head was written into a tied BASE: (config, edits, warnings)."""
    config = copy.deepcopy(base.config) if base.config is not None else None
    edits: dict[str, tuple[object, object]] = {}
    warnings: list[str] = []
    if untied:
        if config is not None:
            _edit(config, edits, "tie_word_embeddings", False)
            view = ConfigView(config)
            if view.text is not config and "tie_word_embeddings" in config and "tie_word_embeddings" in view.text:
                _edit(config, edits, "tie_word_embeddings", False, owner=config, path="tie_word_embeddings")
        warnings.append("BASE ties lm_head to embed_tokens and the DONOR does not: the output is untied "
                        "(lm_head.weight written, tie_word_embeddings: false)")
    elif lay_b.tied_embeddings and emb_taken:
        warnings.append("BASE ties lm_head to embed_tokens: the output's head is the DONOR's embed_tokens too")
    return config, edits, warnings


def _donor_leftovers(donor: Checkpoint, lay_b: ModelLayout, lay_d: ModelLayout, take: str | None,
                     exclude: str | None, layers: str | None, taken: list[str], sources: dict[str, str],
                     drop: bool, experts: str | None = None) -> list[str]:
    """The DONOR's tensors in the taken modules that the output would not hold; returns the warnings.

    BASE's tensor names decide what is written, so a DONOR tensor BASE has no place for (a
    bias BASE lacks, a layer past BASE's last) would vanish without a word, and the output's
    module would not be the DONOR's. Refused, unless the user asks for it: --drop-donor-only,
    or --layers naming layers both have; then said in a warning.
    """
    count = max(lay_b.num_layers, lay_d.num_layers)
    names = list(donor.tensors)
    try:
        if take is not None:
            picked = select_names(names, take, layers, count, flag="--take", layout=lay_d, experts=parse_experts(experts))
        else:
            layer_set = parse_layers(layers, count)
            pool = [n for n in names if layer_set is None or lay_d.locations[n].layer in layer_set]
            try:
                excluded = set(select_names(pool, exclude, layer_set, count, flag="--exclude", layout=lay_d))
            except SurgeonError:  # --exclude matches nothing in the DONOR: it excludes nothing
                excluded = set()
            picked = [n for n in pool if n not in excluded]
    except SurgeonError:  # the selection matches nothing in the DONOR: nothing is left out
        picked = []
    used = set(taken) | set(sources.values())
    # The DONOR's layout decides what is a decoder layer: DeepSeek-V3's MTP block is stored as
    # layer num_hidden_layers but is not one, and --take o_proj does not take it.
    left = [n for n in picked if n not in used and lay_d.locations[n].module != "mtp"]
    beyond = [n for n in left if (layer := lay_d.locations[n].layer) is not None and layer >= lay_b.num_layers]
    extra = [n for n in left if n not in set(beyond)]
    warnings: list[str] = []
    first, last = lay_b.num_layers, lay_d.num_layers - 1
    span = f"layer {first}" if first == last else f"layers {first}-{last}"
    if beyond:  # with --layers this cannot happen: a layer BASE lacks is refused before
        raise SurgeonError(f"DONOR {donor.source} has {lay_d.num_layers} layers and BASE {lay_b.num_layers}: its {span} "
                           f"would be left out ({len(beyond)} tensor(s), e.g. {beyond[0]}); pass --layers "
                           f"0-{lay_b.num_layers - 1} to take only the layers both have")
    if layers is not None and lay_d.num_layers > lay_b.num_layers and not donor.is_partial:
        warnings.append(f"DONOR has {lay_d.num_layers} layers and BASE {lay_b.num_layers}: the DONOR's {span} not taken")
    if extra and not drop:
        raise _problems("DONOR tensor(s) in the taken modules that BASE lacks: the output would not hold them, so "
                        "those modules would not be the DONOR's (pass --drop-donor-only to leave them out)", extra)
    if extra:
        shown = ", ".join(extra[:MAX_LISTED_PROBLEMS]) + (" ..." if len(extra) > MAX_LISTED_PROBLEMS else "")
        warnings.append(f"left out {len(extra)} DONOR tensor(s) that BASE has no place for (--drop-donor-only): {shown}")
    return warnings


# ---------------------------------------------------------------------------------------
# zero / reinit
# ---------------------------------------------------------------------------------------

def _destruction_targets(model: Checkpoint, modules: str, layers: str | None,
                         experts: str | None = None) -> tuple[list[str], list[str], ModelLayout]:
    _refuse_partial(model, "MODEL")
    lay = layout_of(model.tensors, model.config)
    if lay.tied_embeddings and _wants_head_only(modules, lay):
        raise _tied_head_error(f"MODEL {model.source}")
    names = select_names(list(model.tensors), modules, layers, lay.num_layers, flag="--module", layout=lay,
                         experts=parse_experts(experts))
    warnings: list[str] = []
    if lay.tied_embeddings and any(lay.locations[n].module == "embed_tokens" for n in names):
        warnings.append("the model ties lm_head to embed_tokens: the head changes with the embeddings")
    return names, warnings, lay


def plan_zero(model: Checkpoint, modules: str, layers: str | None = None, arguments: dict | None = None,
              experts: str | None = None) -> Plan:
    """Set every parameter (weights and biases) of the selected modules to 0."""
    names, warnings, lay = _destruction_targets(model, modules, layers, experts)
    chosen = set(names) - model.quant.scales  # zero codes with their scales kept: valid and zero (FP8 0x00, E2M1 0)
    bad = [f"{n} ({model[n].dtype})" for n in chosen if not dtype_info(model[n].dtype).has_zero]
    if bad:
        raise _problems("selected tensor(s) have no zero value (a scale format) and cannot be zeroed", bad)
    tensors = [PlannedTensor(t.name, t.dtype, t.shape, Source("zeros") if t.name in chosen else Source("copy", role="base", name=t.name),
                             t.name in chosen) for t in model]
    return Plan(operation="zero", arguments=arguments or {}, inputs={"base": model}, tensors=tensors,
                config=copy.deepcopy(model.config), warnings=warnings, locations=lay.locations)


def plan_reinit(model: Checkpoint, modules: str, layers: str | None = None, std: float = 0.02, mean: float = 0.0,
                seed: int = 0, arguments: dict | None = None, experts: str | None = None) -> Plan:
    """Re-initialise the selected modules with a seeded Gaussian N(mean, std^2)."""
    if not (std >= 0.0) or not np.isfinite(std) or not np.isfinite(mean):
        raise SurgeonError(f"--std must be a finite number >= 0 and --mean finite (got std={std}, mean={mean})")
    names, warnings, lay = _destruction_targets(model, modules, layers, experts)
    chosen = set(names)
    quantized = [f"{n} ({model.quant.tensors[model.quant.parts[n]].scheme})" for n in names
                 if n in model.quant.parts and model.quant.tensors[model.quant.parts[n]].data.name == n]
    if quantized:
        raise _problems("selected tensor(s) are quantized: re-initialising them would need fresh scales, which reinit "
                        "does not write; re-initialise a bf16 copy of the model, or select unquantized modules", quantized)
    bad = [f"{n} ({model[n].dtype})" for n in names if not dtype_info(model[n].dtype).encodable]
    if bad:
        raise _problems("selected tensor(s) are not floating point and cannot be re-initialised", bad)
    src = Source("gaussian", seed=int(seed), mean=float(mean), std=float(std))
    tensors = [PlannedTensor(t.name, t.dtype, t.shape, src if t.name in chosen else Source("copy", role="base", name=t.name),
                             t.name in chosen) for t in model]
    return Plan(operation="reinit", arguments=arguments or {}, inputs={"base": model}, tensors=tensors,
                config=copy.deepcopy(model.config), warnings=warnings, locations=lay.locations)


def _refuse_quantization_mismatch(base: Checkpoint, donor: Checkpoint, taken: list[str]) -> None:
    """A taken weight quantized on one side only, or in another scheme, is a listed dtype mismatch.

    Bytes of an FP8 weight mean nothing without their scale: copying a bf16 weight into an
    FP8 slot (or an FP8 weight and its scale into a bf16 one) needs a quantizer or a
    dequantizer, which splice runs only when asked (--cast, see _format_casts).
    """
    def kind(ckpt: Checkpoint, name: str) -> str:
        q = ckpt.quant.tensors.get(ckpt.quant.logical(name))
        if q is not None:
            return f"{q.label}"
        return ckpt.tensors[name].dtype if name in ckpt.tensors else "absent"

    problems = []
    for name in dict.fromkeys(base.quant.logical(n) for n in taken if n in base.tensors):
        if name in base.quant.tensors or name in donor.quant.tensors:
            a = kind(base, base.quant.tensors[name].data.name if name in base.quant.tensors else name)
            b = kind(donor, donor.quant.tensors[name].data.name if name in donor.quant.tensors else name)
            if a != b and b != "absent":
                problems.append(f"{name}: BASE {a} vs DONOR {b}")
    if problems:
        raise _problems("dtype mismatch(es) between BASE and DONOR: quantized on one side only or in another scheme "
                        "(--cast quantizes a float DONOR weight into BASE's FP8 block scheme, or dequantizes a quantized "
                        "DONOR weight into a float BASE; other pairs: take the module from a DONOR in BASE's format)", problems)


def _format_casts(base: Checkpoint, donor: Checkpoint, taken: list[str]) -> dict[str, PlannedTensor]:
    """Taken tensors quantized on one side only, planned as `surgeon cast` plans them (splice --cast).

    A bf16/f16/f32 DONOR weight into an FP8 block-scaled BASE is quantized in BASE's scheme (its
    block, FP8 dtype, scale name and scale dtype): weight and scale both planned. An FP8 or
    MXFP4 DONOR weight into a float BASE is dequantized to BASE's dtype. Shapes must agree
    (other problems are left to the usual checks, which list them).
    """
    out: dict[str, PlannedTensor] = {}
    for n in taken:
        logical = base.quant.logical(n)
        q = base.quant.tensors.get(logical)
        if q is not None:
            if q.scheme != "fp8-block" or n != q.data.name or logical not in donor.tensors \
                    or logical in donor.quant.parts or donor[logical].dtype not in ("BF16", "F16", "F32") \
                    or donor[logical].shape != q.shape:
                continue
            src = dict(role="donor", name=logical, block=q.block, scale_dtype=q.scale.dtype)
            out[q.data.name] = PlannedTensor(q.data.name, q.data.dtype, q.shape, Source("quantize", **src), True)
            out[q.scale.name] = PlannedTensor(q.scale.name, q.scale.dtype, q.scale.shape, Source("quantize_scale", **src), True)
        elif n in base.tensors and n in donor.quant.tensors:
            d = donor.quant.tensors[n]
            if base[n].dtype in ("BF16", "F16", "F32") and d.shape == base[n].shape:
                out[n] = PlannedTensor(n, base[n].dtype, base[n].shape, Source("dequantize", role="donor", name=n), True)
    return out


def _donor_parts(donor: Checkpoint, t: PlannedTensor) -> list[str]:
    """The DONOR's stored tensors a cross-format planned tensor reads."""
    if t.source.kind == "dequantize":
        q = donor.quant.tensors[t.source.name]
        return [q.data.name, q.scale.name]
    return [t.source.name]


def _refuse_quantized_cast(base: Checkpoint, donor: Checkpoint, cast: bool, alpha: float) -> None:
    """--cast and --alpha compute values, and a quantized weight's value needs its scale: refused, not guessed."""
    quantized = base.quant.tensors or donor.quant.tensors
    if quantized and (cast or alpha not in (0.0, 1.0)):
        flag = "--cast" if cast else f"--alpha {alpha:g}"
        raise SurgeonError(f"{flag}: {'BASE' if base.quant.tensors else 'DONOR'} holds FP8/MXFP4-quantized weights "
                           f"(weight x scale); splicing them copies weight and scale bytes as they are, and {flag} "
                           "cannot compute with them: use --alpha 1 without --cast, with a DONOR of the same format")


def gaussian_key(seed: int, name: str) -> int:
    """The 64-bit key of tensor `name`'s stream: sha256 of (seed, name), so every tensor draws its own values."""
    return int.from_bytes(hashlib.sha256(f"weightsurgeon-reinit:{seed}:{name}".encode()).digest()[:8], "little")


def gaussian_values(seed: int, name: str, mean: float, std: float, start: int, count: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of elements [start, start+count) of tensor `name`'s re-initialisation.

    Element i is float32(mean + std * z_i), computed in float64, where z_i is the standard
    normal of counter i in the Philox4x32-10 stream keyed gaussian_key(seed, name): a pure
    function of (seed, name, i). The writer then rounds it to the tensor's dtype (nearest even).
    """
    from weightsurgeon.kernels.gaussian import gaussian_fill

    out = np.empty(count, dtype=np.float32) if out is None else out[:count]
    return gaussian_fill(out, gaussian_key(seed, name), start, mean, std)


# ---------------------------------------------------------------------------------------
# remove
# ---------------------------------------------------------------------------------------

_LAYER_IN_NAME = re.compile(r"^(?P<head>(?:.*?\.)?(?:layers|h|blocks)\.)(?P<layer>\d+)(?P<tail>\..+)$")


def _renumber(name: str, old: int, new: int) -> str:
    m = _LAYER_IN_NAME.match(name)
    if not m or int(m.group("layer")) != old:
        # internal: called only for names layout.classify placed in layer `old`, whose number is in the name
        raise SurgeonError(f"internal: cannot find layer {old} in tensor name {name!r}")
    return f"{m.group('head')}{new}{m.group('tail')}"


def layer_types_of(cfg: dict, num_layers: int) -> list[str] | None:
    """Each layer's attention type as transformers derives it, or None when the config needs no list.

    Qwen2/Qwen3 (transformers 5, Qwen2Config.__post_init__): layer i is "sliding_attention" when
    use_sliding_window and sliding_window is not null and i >= max_window_layers; Qwen2-MoE:
    when use_sliding_window and i is even and i < max_window_layers.
    """
    if isinstance(cfg.get("layer_types"), list):
        return list(cfg["layer_types"])
    if "max_window_layers" not in cfg:
        return None
    mwl = cfg.get("max_window_layers")
    use = bool(cfg.get("use_sliding_window", False))
    window = cfg.get("sliding_window", 4096)
    if not use or (window is None and cfg.get("model_type") != "qwen2_moe"):
        return ["full_attention"] * num_layers
    rule = WINDOW_RULES.get(cfg.get("model_type", ""))
    if rule is None or not isinstance(mwl, int):
        raise SurgeonError(f"config has use_sliding_window with max_window_layers for model_type "
                           f"{cfg.get('model_type')!r}, whose per-layer rule is unknown: add an explicit layer_types list first")
    if rule == "above":
        return ["sliding_attention" if i >= mwl else "full_attention" for i in range(num_layers)]
    return ["sliding_attention" if (i + 1) % 2 and i < mwl else "full_attention" for i in range(num_layers)]



def derived_per_layer_lists(config: dict, num_layers: int) -> dict[str, list] | None:
    """Per-layer lists transformers derives from a config that does not spell them out.

    Gemma 2/3, Cohere 2, SmolLM3 and others expand ``layer_types`` / ``no_rope_layers`` from
    the layer index (a pattern every N layers) when the lists are absent: removing layers
    would shift that pattern, so the kept layers' entries must be written explicitly. The
    installed transformers is the authority on each model_type's rule; None when it is not
    installed (or does not know the model type).
    """
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type in NO_DERIVED_LISTS:
        return {}
    try:
        from transformers import AutoConfig
    except ImportError:
        return None
    try:
        cfg = AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"})
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    except Exception:  # unknown model type, or a config this transformers rejects
        return None
    out = {}
    for key in PER_LAYER_LISTS:
        value = getattr(text, key, None)
        if isinstance(value, (list, tuple)) and len(value) == num_layers and len(set(map(str, value))) > 1:
            out[key] = list(value)
    return out


def remove_config(config: dict, kept: list[int], num_layers: int) -> tuple[dict, dict[str, tuple[object, object]], list[str]]:
    """The config after keeping only `kept` layers (old indices, ascending): edited copy, edits, warnings."""
    out = copy.deepcopy(config)
    edits: dict[str, tuple[object, object]] = {}
    warnings: list[str] = []
    view = ConfigView(out)
    owner, prefix = view.text, ("text_config." if view.text is not out else "")

    def put(key: str, value: object) -> None:
        _edit(out, edits, key, value, owner=owner, path=prefix + key)

    types = layer_types_of(owner, num_layers)
    if types is not None and len(types) != num_layers:
        raise SurgeonError(f"config.json: layer_types has {len(types)} entries but num_hidden_layers is {num_layers}")
    put("num_hidden_layers", len(kept))
    for key in PER_LAYER_LISTS:
        value = owner.get(key)
        if key == "layer_types" and types is not None and "max_window_layers" in owner:
            continue  # handled below, with the scalar
        if isinstance(value, list):
            if len(value) != num_layers:
                raise SurgeonError(f"config.json: {key} has {len(value)} entries but num_hidden_layers is {num_layers}")
            put(key, [value[i] for i in kept])
    for key in LAYER_INDEX_LISTS:
        value = owner.get(key)
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            new_index = {old: new for new, old in enumerate(kept)}
            put(key, [new_index[v] for v in value if v in new_index])
    if isinstance(owner.get("first_k_dense_replace"), int):  # DeepSeek: the first k layers are dense, the rest MoE
        put("first_k_dense_replace", sum(1 for i in kept if i < owner["first_k_dense_replace"]))
    if "max_window_layers" in owner and types is not None:
        old = owner["max_window_layers"]
        put("layer_types", [types[i] for i in kept])
        if isinstance(old, int):
            put("max_window_layers", sum(1 for i in kept if i < old))
    if not any(isinstance(owner.get(k), list) for k in PER_LAYER_LISTS) and "max_window_layers" not in owner:
        original = ConfigView(config).text  # before the edits above
        if owner is not out and "model_type" not in original:
            original = {**original, "model_type": config.get("model_type")}
        derived = derived_per_layer_lists(original, num_layers)
        if derived is None:
            warnings.append(f"model_type {out.get('model_type')!r}: could not ask transformers whether it derives per-layer "
                            "lists (layer_types ...) from the layer index; if it does, add them to config.json before removing layers")
        for key, value in (derived or {}).items():
            put(key, [value[i] for i in kept])
    if isinstance(owner.get("decoder_sparse_step"), int) and owner["decoder_sparse_step"] > 1:
        warnings.append("decoder_sparse_step > 1: which layers are MoE depends on the layer index; check the output's layers")
    for key, value in owner.items():
        known = set(PER_LAYER_LISTS) | set(LAYER_INDEX_LISTS) | {"layer_types"}
        if key not in known and isinstance(value, list) and len(value) == num_layers and num_layers > 2:
            warnings.append(f"config.json: {key} has one entry per layer ({num_layers}) but is not a known per-layer list; left unchanged")
    return out, edits, warnings


def plan_remove(model: Checkpoint, layers: str, arguments: dict | None = None) -> Plan:
    """Drop whole decoder layers and renumber the rest contiguously."""
    _refuse_partial(model, "MODEL")
    lay = layout_of(model.tensors, model.config)
    n = lay.num_layers
    if n <= 0:
        raise SurgeonError(f"{model.source}: has no decoder layers to remove")
    removed = parse_layers(layers, n)
    if removed is None or len(removed) >= n:
        raise SurgeonError(f"--layers {layers}: would remove all {n} layers; keep at least one")
    kept = [i for i in range(n) if i not in removed]
    new_index = {old: new for new, old in enumerate(kept)}
    tensors: list[PlannedTensor] = []
    for t in model:
        loc = lay.locations[t.name]
        if loc.module == "mtp":  # DeepSeek's MTP layers follow the decoder layers: they move down with them
            old = split_layer(t.name)[0]  # type: ignore[index]
            new_name = _renumber(t.name, old, len(kept) + old - n)
            tensors.append(PlannedTensor(new_name, t.dtype, t.shape, Source("copy", role="base", name=t.name), False))
            continue
        if loc.layer is None:
            tensors.append(PlannedTensor(t.name, t.dtype, t.shape, Source("copy", role="base", name=t.name), False))
            continue
        if loc.layer >= n:
            raise SurgeonError(f"{model.source}: config.json says num_hidden_layers is {n} but {t.name} is in layer "
                               f"{loc.layer}, which cannot be renumbered: correct num_hidden_layers in config.json")
        if loc.layer in removed:
            continue
        new_name = _renumber(t.name, loc.layer, new_index[loc.layer])
        tensors.append(PlannedTensor(new_name, t.dtype, t.shape, Source("copy", role="base", name=t.name), False))
    warnings: list[str] = []
    if model.config is not None:
        config, edits, warnings = remove_config(model.config, kept, n)
    else:
        config, edits = None, {}
        warnings.append("no config.json: num_hidden_layers not edited")
    return Plan(operation="remove", arguments=arguments or {}, inputs={"base": model}, tensors=tensors, config=config,
                config_edits=edits, warnings=warnings, locations=lay.locations,
                provenance={"removed_layers": sorted(removed), "kept_layers": kept})


# ---------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------

def plan_extract(model: Checkpoint, take: str, layers: str | None = None, arguments: dict | None = None,
                 experts: str | None = None) -> Plan:
    """Only the selected tensors: a partial checkpoint (a transplantable plugin for splice)."""
    lay = layout_of(model.tensors, model.config)
    names = select_names(list(model.tensors), take, layers, lay.num_layers, flag="--take", layout=lay,
                         experts=parse_experts(experts))
    source_model = model.surgeon.get("source_model") if model.is_partial and model.surgeon else None
    return Plan(operation="extract", arguments=arguments or {}, inputs={"base": model}, tensors=_copy(model, "base", names),
                config=copy.deepcopy(model.config), files_from=None, partial=True, locations=lay.locations,
                provenance={"source_model": source_model or str(model.root or model.source), "modules": take,
                            "layers": layers or "all"})


def parse_size(text: str) -> int:
    """'5GB' (10^9), '500MB', '2GiB' (2^30), '1000' (bytes) -> bytes, as Hugging Face's max_shard_size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise SurgeonError(f"bad size {text!r}: use e.g. 5GB, 500MB, 2GiB or a number of bytes")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise SurgeonError(f"bad size {text!r}: must be positive")
    return value


def input_paths(plan: Plan) -> list[Path]:
    """The folders (or files) of a plan's local inputs: the output may not be inside any of them."""
    paths = []
    for ckpt in plan.inputs.values():
        if not ckpt.is_remote:  # a Hub repository read by range holds no local path
            paths.append(ckpt.path)
    return paths
