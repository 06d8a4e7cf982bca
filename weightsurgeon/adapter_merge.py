"""`surgeon splice BASE adapter/`: merge a PEFT LoRA adapter into its base, streaming.

The plan copies every base tensor as raw bytes except the adapted modules, whose source is
``lora``: W + alpha * scaling * B @ A, computed by the writer chunk by chunk (the rows of
B @ A that a chunk covers, in float32, then rounded once to W's dtype). A and B of one
module stay in memory while it is written: r * (out + in) floats, a few MiB.
``--alpha`` scales the adapter's delta, as it scales the donor's in a plain splice.
"""
from __future__ import annotations

from pathlib import Path

from weightsurgeon.adapter import Adapter, open_adapter
from weightsurgeon.checkpoint import Checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.kernels.dtypes import dtype_info
from weightsurgeon.layout import layout_of, select_names
from weightsurgeon.surgery import Plan, PlannedTensor, Source, _problems, _refuse_partial


def plan_splice_adapter(base: Checkpoint, adapter_weights: Checkpoint, adapter_dir: str | Path,
                        take: str | None = None, layers: str | None = None, alpha: float = 1.0,
                        arguments: dict | None = None) -> Plan:
    """BASE with every adapted module (of the --take / --layers selection, if given) merged."""
    import copy

    _refuse_partial(base, "BASE")
    if not (0.0 <= alpha <= 1.0):
        raise SurgeonError(f"--alpha must be between 0 and 1, got {alpha}")
    adapter: Adapter = open_adapter(adapter_dir)
    lay = layout_of(base.tensors, base.config)
    problems: list[str] = []
    sources: dict[str, Source] = {}
    for module, rec in adapter.modules.items():
        weight = f"{module}.weight"
        if weight not in base.tensors:
            problems.append(f"{module}: no {weight} in BASE")
            continue
        info = base[weight]
        a, b = adapter_weights[rec.a_name], adapter_weights[rec.b_name]
        if len(info.shape) != 2 or (b.shape[0], a.shape[1]) != tuple(info.shape):
            problems.append(f"{module}: BASE {list(info.shape)} vs adapter B@A [{b.shape[0]}, {a.shape[1]}]")
            continue
        if not dtype_info(info.dtype).computes:
            problems.append(f"{weight}: {info.dtype} is not a dtype to add a float delta to")
            continue
        sources[weight] = Source("lora", role="base", name=weight, donor_name=rec.a_name, alpha=alpha * rec.scaling)
        if rec.bias_name:
            bias = f"{module}.bias"
            if bias not in base.tensors or tuple(base[bias].shape) != tuple(adapter_weights[rec.bias_name].shape):
                problems.append(f"{module}: the adapter has lora_B.bias but BASE has no {bias} of that shape")
                continue
            sources[bias] = Source("lora", role="base", name=bias, donor_name=rec.bias_name, alpha=alpha * rec.scaling)
    if problems:
        raise _problems(f"adapter module(s) that do not fit BASE {base.source}", problems)
    warnings: list[str] = []
    if take is not None or layers is not None:
        chosen = set(select_names(list(base.tensors), take or "re:.*", layers, lay.num_layers, flag="--take"))
        left = sorted(n for n in sources if n not in chosen)
        if left:
            warnings.append(f"{len(left)} adapted tensor(s) outside --take/--layers keep BASE's values, e.g. {left[0]}")
        sources = {n: s for n, s in sources.items() if n in chosen}
        if not sources:
            kinds = sorted({m.rsplit(".", 1)[-1] for m in adapter.modules})
            raise SurgeonError(f"--take/--layers select none of the adapter's modules (it adapts {', '.join(kinds)})")
    tensors = [PlannedTensor(t.name, t.dtype, t.shape, sources.get(t.name, Source("copy", role="base", name=t.name)),
                             t.name in sources and alpha > 0) for t in base]
    return Plan(operation="splice", arguments=arguments or {}, inputs={"base": base, "adapter": adapter_weights},
                tensors=tensors, config=copy.deepcopy(base.config), files_from="base", warnings=warnings,
                provenance={"adapter": {"path": str(adapter.root.resolve()), "config": adapter.config}})


def lora_values(reader, t: PlannedTensor, start: int, count: int):
    """Stored bytes of elements [start, start+count) of W + scale * B @ A (or bias + scale * lora_B.bias)."""
    import numpy as np

    from weightsurgeon.kernels.decode import decode_to_float32, encode_from_float32

    src = t.source
    base_info = reader.inputs["base"][src.name]
    values = decode_to_float32(reader._read("a", "base", src.name, start, count), base_info.dtype).copy()
    adapter = reader.inputs["adapter"]
    if src.donor_name.endswith(".lora_B.bias"):
        info = adapter[src.donor_name]
        values += np.float32(src.alpha) * decode_to_float32(reader._read("b", "adapter", src.donor_name, start, count), info.dtype)
        return encode_from_float32(values, t.dtype)
    key = ("lora", src.donor_name)
    factors = reader.cache.get(key)
    if factors is None:
        b_name = src.donor_name[: -len(".lora_A.weight")] + ".lora_B.weight"
        a_info, b_info = adapter[src.donor_name], adapter[b_name]
        a = decode_to_float32(adapter.read_tensor(src.donor_name).ravel(), a_info.dtype).reshape(a_info.shape)
        b = decode_to_float32(adapter.read_tensor(b_name).ravel(), b_info.dtype).reshape(b_info.shape)
        reader.cache.clear()  # one module's factors at a time
        factors = reader.cache[key] = (a, b)
    a, b = factors
    n = t.shape[1]
    r0, r1 = start // n, -(-(start + count) // n)
    block = (b[r0:r1] @ a).ravel()[start - r0 * n: start - r0 * n + count]
    if src.alpha != 1.0:
        block *= np.float32(src.alpha)
    values += block
    return encode_from_float32(values, t.dtype)
