"""`surgeon diff BASE ADAPTER/`: a PEFT LoRA adapter measured as the fine-tune it stands for, unmerged.

The tuned weight of an adapted module is W + scaling * B @ A (scaling from the adapter's
config: lora_alpha / r, rsLoRA's lora_alpha / sqrt(r), per-module rank_pattern /
alpha_pattern; the adapter-format rules live in `adapter.py`). It is never built whole:
a block of rows at a time, the block's base values and its rows of B @ A are formed in
float64 and handed to the delta kernel as a float64 pair, so every statistic of the report
is that of the exact tuned weight (no rounding to a stored dtype). `modules_to_save`
tensors are whole replacements, read from the adapter file like any tuned tensor; every
other base tensor is its own tuned value (a zero delta, read once).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightsurgeon.adapter import Adapter
from weightsurgeon.checkpoint import Checkpoint, TensorInfo
from weightsurgeon.layout import ModelLayout

if TYPE_CHECKING:
    import numpy as np

    from weightsurgeon.diff import PairPlan

LORA_BLOCK_ELEMS = 1 << 20  # base elements per block: three float64 arrays of 8 MiB each


@dataclass(frozen=True)
class LoraFactors:
    """How one base tensor's tuned value is formed: W + scaling * B @ A (or + scaling * B for a lora_B.bias)."""

    b: TensorInfo
    a: TensorInfo | None  # None: b is a lora_B.bias vector, added as it is
    scaling: float
    rank: int


def plan_adapter_pairs(base: Checkpoint, weights: Checkpoint, adapter: Adapter, t: int, label: str,
                       base_layout: ModelLayout) -> PairPlan:
    """Every base tensor paired with its tuned value under the adapter, from the headers alone."""
    from weightsurgeon.diff import Pair, PairPlan
    from weightsurgeon.errors import SurgeonError

    if base.quant.tensors:
        raise SurgeonError(f"{label}: the base holds quantized tensors (FP8/MXFP4 with scales); diffing a LoRA adapter "
                           f"against a quantized base is not supported: cast the base first (surgeon cast BASE --dtype bf16)")
    pairs: list[Pair] = []
    missing: list[dict] = []
    factors: dict[str, LoraFactors] = {}
    for module, rec in adapter.modules.items():
        name = f"{module}.weight"
        a, b = weights[rec.a_name], weights[rec.b_name]
        info = base.tensors.get(name)
        if info is None:
            missing.append({"tuned": label, "name": name, "where": "tuned_only",
                            "detail": f"the adapter adapts {module}, which the base lacks"})
            continue
        if len(info.shape) != 2 or (b.shape[0], a.shape[1]) != tuple(info.shape):
            missing.append({"tuned": label, "name": name, "where": "shape",
                            "detail": f"base {list(info.shape)} vs adapter B@A [{b.shape[0]}, {a.shape[1]}]"})
            continue
        factors[name] = LoraFactors(b, a, rec.scaling, rec.rank)
        if rec.bias_name:
            bias, vec = f"{module}.bias", weights[rec.bias_name]
            if bias in base.tensors and tuple(base.tensors[bias].shape) == tuple(vec.shape):
                factors[bias] = LoraFactors(vec, None, rec.scaling, rec.rank)
            else:
                missing.append({"tuned": label, "name": bias, "where": "tuned_only",
                                "detail": f"the adapter has {rec.bias_name} but the base no bias of shape {list(vec.shape)}"})
    for name, stored in adapter.whole.items():
        info, other = base.tensors.get(name), weights[stored]
        if info is None:
            missing.append({"tuned": label, "name": name, "where": "tuned_only", "detail": "not in the base model"})
        elif tuple(info.shape) != tuple(other.shape):
            missing.append({"tuned": label, "name": name, "where": "shape",
                            "detail": f"base {list(info.shape)} vs tuned {list(other.shape)}"})
    for info in base:
        if info.name in factors:
            pairs.append(Pair(t, info.name, info, info, info.numel, kind="lora", lora=factors[info.name]))
        elif info.name in adapter.whole and tuple(weights[adapter.whole[info.name]].shape) == tuple(info.shape):
            pairs.append(Pair(t, info.name, info, weights[adapter.whole[info.name]], info.numel))
        else:
            pairs.append(Pair(t, info.name, info, info, info.numel, kind="same"))
    return PairPlan(pairs, missing, [adapter_note(adapter, label)])


def adapter_note(adapter: Adapter, label: str) -> str:
    """One line: what the adapter is, its ranks and scalings, and its whole replacements."""
    kind = "rsLoRA" if adapter.config.get("use_rslora") else "LoRA"
    by_rank: dict[tuple[int, float], int] = {}
    for rec in adapter.modules.values():
        by_rank[(rec.rank, rec.scaling)] = by_rank.get((rec.rank, rec.scaling), 0) + 1
    ranks = ", ".join(f"{n} at rank {r} (scaling {s:g})" for (r, s), n in sorted(by_rank.items()))
    whole = f"; whole replacements (modules_to_save): {', '.join(sorted(adapter.whole))}" if adapter.whole else ""
    return (f"{label}: PEFT {kind} adapter {adapter.root}, not merged: {len(adapter.modules)} module(s) measured as "
            f"W + scaling * B @ A in float64, {ranks or 'none'}{whole}; every other tensor is the base's own")


class LoraBlocks:
    """Folds elements [start, stop) of W + scaling * B @ A against W into DeltaStats, a block of rows at a time.

    Holds one module's A (rank x in, float64) at a time and buffers sized by LORA_BLOCK_ELEMS,
    allocated once: memory stays a few tens of MiB whatever the matrix.
    """

    def __init__(self) -> None:
        self.module_a: tuple[str, Any] | None = None
        self.raw: np.ndarray | None = None

    def _a(self, weights: Checkpoint, info: TensorInfo) -> np.ndarray:
        from weightsurgeon.kernels.decode import decode_to_float64

        if self.module_a is None or self.module_a[0] != info.name:
            self.module_a = None  # one module's A at a time
            values = decode_to_float64(weights.read_tensor(info.name).reshape(-1), info.dtype)
            self.module_a = (info.name, values.reshape(info.shape))
        return self.module_a[1]

    def _read(self, ckpt: Checkpoint, info: TensorInfo, start: int, count: int) -> np.ndarray:
        """Elements [start, start+count) of a tensor as float64 (through one reused byte buffer)."""
        import numpy as np

        from weightsurgeon.kernels.decode import decode_to_float64

        nbytes = count * info.itemsize
        if self.raw is None or self.raw.size < nbytes:
            self.raw = np.empty(max(nbytes, LORA_BLOCK_ELEMS * 8), dtype=np.uint8)
        view = self.raw[:nbytes]
        ckpt.read_into(info, start * info.itemsize, view)
        return np.array(decode_to_float64(view, info.dtype), dtype=np.float64, copy=True)

    def run(self, stats: Any, base: Checkpoint, weights: Checkpoint, info: TensorInfo, lora: LoraFactors,
            start: int, stop: int, accumulate: Any, units: Any = None) -> None:
        import numpy as np

        cols = info.shape[1] if lora.a is not None else 1
        step = max(cols, (LORA_BLOCK_ELEMS // cols) * cols)
        pos = start
        while pos < stop:
            end = min(stop, (pos // cols) * cols + step)
            count = end - pos
            w = self._read(base, info, pos, count)
            if lora.a is None:  # a bias: its delta is scaling * lora_B.bias
                delta = self._read(weights, lora.b, pos, count)
            else:
                r0, r1 = pos // cols, -(-end // cols)
                rows = self._read(weights, lora.b, r0 * lora.rank, (r1 - r0) * lora.rank).reshape(r1 - r0, lora.rank)
                delta = (rows @ self._a(weights, lora.a)).reshape(-1)[pos - r0 * cols: end - r0 * cols]
            tuned = w + lora.scaling * delta
            accumulate(stats, w.view(np.uint64), np.ascontiguousarray(tuned).view(np.uint64), "F64", "F64", units, pos)
            pos = end
