"""`surgeon lineage MODEL CANDIDATE...`: which candidate is MODEL's parent, from a few megabytes.

Two steps, as for a diff: first the headers (a candidate whose tensor names or shapes cannot
be MODEL's parent's is dropped with the reason; names that differ only by a wrapper prefix
pair as in `diff.prefix_renames`; embedding and head rows may differ, since fine-tunes add
tokens), then the values of a fixed, stated sample: the leading `elements` of each tensor of
the first and last layers' attention, MLP and norms (`--sample` / `--layers` change it). Each
sampled tensor's relative L2, ||c - m|| / ||m|| in float64, and the distance is their median:
a pooled norm would be ruled by whichever tensor is largest (norm weights all start at 1, so
unrelated models can share them), one tensor a fine-tune moved a lot must not hide the rest.
A fine-tune moves most weights by a few percent of their norm; independently initialised
models of one shape differ by about sqrt(2), so the gap is wide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from weightsurgeon.checkpoint import Checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import classify, layout_of, select_names

DEFAULT_SAMPLE = "attn,mlp,norm"
DEFAULT_ELEMENTS = 65_536  # leading elements read per sampled tensor
PARENT_MAX_REL_L2 = 0.2  # a parent's distance (median relative L2 of the sampled tensors) is below this
PARENT_MARGIN = 10.0  # and this many times below the next candidate's
RULE = (f"parent: median relative L2 of the sampled tensors < {PARENT_MAX_REL_L2:g} and at least "
        f"{PARENT_MARGIN:g}x below the next candidate's")
_GROWS = ("embed_tokens", "lm_head")  # rows a fine-tune may add (new tokens)


@dataclass
class Candidate:
    """One candidate parent: why it was dropped, or its distance on the sample."""

    label: str
    source: str
    dropped: str | None = None
    distance: float | None = None  # median relative L2 of the sampled tensors
    worst: float | None = None  # largest relative L2 of one sampled tensor
    bytes_read: int = 0
    note: str | None = None
    per_tensor: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "source": self.source, "dropped": self.dropped, "distance": self.distance,
                "worst_tensor_rel_l2": self.worst, "bytes_read": self.bytes_read, "note": self.note,
                "per_tensor": self.per_tensor}


@dataclass
class LineageReport:
    model: str
    sample: list[str]
    elements: int
    sample_text: str
    candidates: list[Candidate]  # ranked: nearest first, dropped last
    parent: str | None
    verdict: str
    model_bytes: int = 0  # the model's side of the sample, read once
    rule: str = RULE

    @property
    def bytes_read(self) -> int:
        return self.model_bytes + sum(c.bytes_read for c in self.candidates)

    def to_dict(self) -> dict:
        return {"schema": "weightsurgeon.lineage/1", "model": self.model, "sample": self.sample,
                "elements_per_tensor": self.elements, "sample_text": self.sample_text, "rule": self.rule,
                "parent": self.parent, "verdict": self.verdict, "bytes_read": self.bytes_read,
                "model_bytes_read": self.model_bytes,
                "candidates": [c.to_dict() for c in self.candidates]}


def choose_sample(model: Checkpoint, modules: str = DEFAULT_SAMPLE, layers: str | None = None) -> tuple[list[str], str]:
    """The sampled tensor names of MODEL and a sentence stating the sample."""
    lay = layout_of(model.tensors, model.config)
    if layers is None:
        if lay.num_layers < 1:
            raise SurgeonError(f"{model.source}: no layers found to sample; name tensors with --sample re:PATTERN")
        layers = ",".join(str(i) for i in sorted({0, lay.num_layers - 1}))
    names = select_names([i.name for i in model], modules, layers, lay.num_layers, flag="--sample")
    return names, f"{len(names)} tensor(s): modules {modules} of layer(s) {layers}"


def _shape_problem(model: Checkpoint, cand: Checkpoint, renames: dict[str, str]) -> str | None:
    """Why `cand` cannot be MODEL's parent from the headers alone, or None."""
    mapped = {renames.get(n, n): info for n, info in cand.tensors.items()} if renames else cand.tensors
    only_model = [n for n in model.tensors if n not in mapped]
    only_cand = [n for n in mapped if n not in model.tensors]
    if only_model or only_cand:
        first = (only_model or only_cand)[0]
        return (f"names differ: {len(only_model)} tensor(s) only in the model, {len(only_cand)} only in the candidate "
                f"(e.g. {first})")
    for name, info in model.tensors.items():
        other = mapped[name]
        if tuple(info.shape) == tuple(other.shape):
            continue
        if (classify(name).module in _GROWS and len(info.shape) == 2 and len(other.shape) == 2
                and info.shape[1] == other.shape[1]):
            continue
        return f"shapes differ: {name} is {list(info.shape)} in the model, {list(other.shape)} in the candidate"
    return None


class _SampleReader:
    """Reads the leading elements of a tensor as float64 through one reused buffer, counting bytes."""

    def __init__(self, elements: int) -> None:
        self.elements = elements
        self.buffer: Any = None

    def read(self, ckpt: Checkpoint, info: Any) -> tuple[Any, int]:
        import numpy as np

        from weightsurgeon.kernels.decode import decode_to_float64

        count = min(self.elements, info.numel)
        nbytes = count * info.itemsize
        if self.buffer is None or self.buffer.size < nbytes:
            self.buffer = np.empty(nbytes, dtype=np.uint8)
        view = self.buffer[:nbytes]
        ckpt.read_into(info, 0, view)
        return np.array(decode_to_float64(view, info.dtype), dtype=np.float64, copy=True), nbytes


def rank_candidates(model: Checkpoint, candidates: Sequence[Checkpoint], labels: Sequence[str],
                    modules: str = DEFAULT_SAMPLE, layers: str | None = None,
                    elements: int = DEFAULT_ELEMENTS) -> LineageReport:
    """Rank candidate parents of MODEL by the relative L2 of the stated sample; the verdict follows RULE."""
    import numpy as np

    from weightsurgeon.diff import prefix_renames

    if elements < 1:
        raise SurgeonError(f"--elements must be at least 1, got {elements}")
    sample, text = choose_sample(model, modules, layers)
    text += f", the first {elements:,} elements of each"
    reader = _SampleReader(elements)
    model_values: dict[str, Any] = {}
    model_bytes = 0
    results: list[Candidate] = []
    for cand, label in zip(candidates, labels):
        result = Candidate(label=label, source=cand.source)
        results.append(result)
        try:
            renames, result.note = prefix_renames(model.tensors, cand.tensors, label)
        except SurgeonError as e:
            result.dropped = str(e)
            continue
        result.dropped = _shape_problem(model, cand, renames)
        if result.dropped:
            continue
        back = {base: tuned for tuned, base in renames.items()}
        worst = 0.0
        for name in sample:
            if name not in model_values:
                model_values[name], nbytes = reader.read(model, model.tensors[name])
                model_bytes += nbytes
            m = model_values[name]
            c, nbytes = reader.read(cand, cand.tensors[back.get(name, name)])
            result.bytes_read += nbytes
            d = float(np.sum((c - m) ** 2))
            n = float(np.sum(m * m))
            rel = math.sqrt(d / n) if n > 0 else (0.0 if d == 0 else math.inf)
            result.per_tensor[name] = rel
            worst = max(worst, rel)
        result.distance = float(np.median(list(result.per_tensor.values())))
        result.worst = worst
    ranked = sorted((r for r in results if r.dropped is None), key=lambda r: r.distance) + \
        [r for r in results if r.dropped is not None]
    parent, verdict = _verdict(ranked)
    return LineageReport(model=model.source, sample=sample, elements=elements, sample_text=text,
                         candidates=ranked, parent=parent, verdict=verdict, model_bytes=model_bytes)


def _verdict(ranked: list[Candidate]) -> tuple[str | None, str]:
    kept = [r for r in ranked if r.dropped is None]
    if not kept:
        return None, "no parent: every candidate was dropped on names or shapes"
    best = kept[0]
    if best.distance >= PARENT_MAX_REL_L2:
        return None, (f"no parent: the nearest candidate, {best.label}, is at median relative L2 "
                      f"{best.distance:.3g} (>= {PARENT_MAX_REL_L2:g})")
    if len(kept) > 1:
        runner = kept[1]
        if runner.distance < PARENT_MARGIN * best.distance:
            return None, (f"no single parent: {best.label} ({best.distance:.3g}) is not {PARENT_MARGIN:g}x below "
                          f"{runner.label} ({runner.distance:.3g})")
    return best.label, f"parent: {best.label} (median relative L2 {best.distance:.3g})"
