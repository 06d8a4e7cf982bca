"""Plain-numpy twin of the delta kernel: the definitions written as directly as possible.

It is the tests' oracle and the documentation of what the kernel computes; it is slow
(several passes and temporaries) and never used on real checkpoints.
"""
from __future__ import annotations

import numpy as np

from weightsurgeon.kernels.decode import decode_to_float32, decode_to_float64, work_dtype
from weightsurgeon.kernels.stats import DEFAULT_BINS, DEFAULT_CLIP, DeltaStats


def reference_delta_stats(
    a: np.ndarray,
    b: np.ndarray,
    dtype_a: str,
    dtype_b: str,
    bins: int = DEFAULT_BINS,
    clip: float = DEFAULT_CLIP,
) -> DeltaStats:
    """Statistics of B - A by the definitions, in numpy."""
    stats = DeltaStats.empty(bins, clip)
    wide = work_dtype(dtype_a, dtype_b) is np.float64
    decode = decode_to_float64 if wide else decode_to_float32
    va, vb = decode(a, dtype_a), decode(b, dtype_b)
    if va.size != vb.size:
        raise ValueError(f"chunks differ in length: {va.size} vs {vb.size}")
    finite = np.isfinite(va) & np.isfinite(vb)
    va, vb = va[finite], vb[finite]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        d = vb - va  # in the work precision: may overflow to inf, as the kernel's does
        nonzero = va != 0
        r = d[nonzero] / va[nonzero]
        d64, a64, b64 = d.astype(np.float64), va.astype(np.float64), vb.astype(np.float64)
        stats.n = int(finite.sum())
        stats.n_nonfinite = int(finite.size - stats.n)
        stats.n_base_zero = int((~nonzero).sum())
        stats.sum_sq_delta = float(np.sum(d64 * d64))
        stats.sum_sq_a = float(np.sum(a64 * a64))
        stats.sum_sq_b = float(np.sum(b64 * b64))
        stats.dot_ab = float(np.sum(a64 * b64))
        stats.sum_delta = float(np.sum(d64))
        stats.max_abs_delta = float(np.max(np.abs(d64))) if d64.size else 0.0
    c = np.clip(r, -stats.clip, stats.clip)
    stats.hist = np.histogram(c, bins=stats.bins, range=(-stats.clip, stats.clip))[0].astype(np.int64)
    c64 = c.astype(np.float64)
    stats.r_mean = float(c64.mean()) if c64.size else 0.0
    centred = c64 - stats.r_mean
    stats.r_m2, stats.r_m3, stats.r_m4 = (float(np.sum(centred ** k)) for k in (2, 3, 4))
    return stats
