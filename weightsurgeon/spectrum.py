"""`surgeon diff --spectrum MODULES`: is a fine-tune's change to a module low-rank?

For each selected 2-D tensor pair, the delta B - A is read whole in float32 (one matrix at
a time, in one reused buffer) and its top 256 singular values are found by
lowrank.singular_values (randomized range finder, or LAPACK for small matrices). The rows
(report/spectrum.py) give the share of ||B - A||_F^2 the top 1, 8, 64 and 256 hold.

Memory: one delta in float32 (4 * out * in bytes: 256 MiB for an 8192 x 8192 o_proj) plus
the sketch, (out + in) * 266 floats; a matrix under about 1064 on its short side goes to
LAPACK instead (about three times the delta). A second read of the selected tensors.
"""
from __future__ import annotations

import math
from typing import Any

from weightsurgeon.layout import classify, parse_modules, select_names
from weightsurgeon.report.spectrum import KS, SpectrumRow

MAX_K = max(KS)


def spectrum_pairs(plan: Any, spec: str) -> list[Any]:
    """The plan's pairs that --spectrum selects: 2-D weights present under the same name on both sides."""
    from weightsurgeon.layout import layout_of

    num_layers = layout_of(plan.base.tensors, plan.base.config).num_layers
    names = list(dict.fromkeys(p.name for p in plan.pairs))
    chosen = set(select_names(names, parse_modules(spec), None, num_layers, flag="--spectrum"))
    return [p for p in plan.pairs if p.name in chosen and len(p.base.shape) == 2 and p.base.name == p.other.name
            and not p.added_rows and not p.decoded and min(p.base.shape) > 1]


def measure_spectra(plan: Any, spec: str, progress: Any = None) -> list[SpectrumRow]:
    """One SpectrumRow per selected pair, in plan order (see the module docstring for the memory bound)."""
    import numpy as np

    from weightsurgeon.extract import delta_of
    from weightsurgeon.lowrank import OVERSAMPLE, singular_values

    rows = []
    buffer = None
    for p in spectrum_pairs(plan, spec):
        numel = p.base.numel
        if buffer is None or len(buffer) < numel:
            buffer = None  # let the old one go first
            buffer = np.empty(numel, dtype=np.float32)
        delta = delta_of(plan.base, plan.others[p.tuned], p.name, buffer)
        flat = delta.reshape(-1)
        energy = 0.0
        for i in range(0, numel, 1 << 20):  # float64 sum without a float64 copy of the matrix
            piece = flat[i:i + (1 << 20)].astype(np.float64)
            energy += float(piece @ piece)
        if energy == 0.0 or not math.isfinite(energy):
            sigma, method = [], "zero" if energy == 0.0 else "nonfinite"
        else:
            sigma = singular_values(delta, MAX_K).tolist()
            method = "exact" if 4 * min(min(delta.shape), MAX_K + OVERSAMPLE) > min(delta.shape) else "randomized"
        loc = classify(p.name)
        rows.append(SpectrumRow(plan.labels[p.tuned], p.name, loc.layer, loc.module, tuple(p.base.shape), energy,
                                sigma, method))
        if progress is not None:
            progress.advance(numel * (p.base.itemsize + p.other.itemsize))
    return rows
