"""Shape of the relative change as numbers: moments, Sarle's bimodality coefficient, modes.

The kernel accumulates, per part of the data, float64 power sums of the clipped relative
change c = clip((B - A) / A, -clip, clip) shifted by the part's first counted value K:
S_k = sum (c - K)^k, k = 1..4. Shifting by a value of the data keeps the sums free of
the cancellation raw sums suffer when the mean is large against the spread (a tensor
scaled by 1.01 has every c near 0.01). `central_sums` turns a part's shifted sums into
its mean and central sums M_k = sum (c - mean)^k, and `combine` merges any number of
such (n, mean, M2, M3, M4) groups exactly (the parallel-axis formulas), so a tensor's
and a module's moments are merges of their parts', like every other statistic.

The moments are the population ones (scipy.stats.skew / kurtosis with bias=True):
std = sqrt(M2/n), skewness = (M3/n) / (M2/n)^1.5, excess kurtosis = (M4/n) / (M2/n)^2 - 3.
Sarle's bimodality coefficient uses the sample (bias-corrected) ones, as SAS defines it:
b = (G1^2 + 1) / (G2 + 3 (n-1)^2 / ((n-2)(n-3))); 5/9 (a uniform distribution) is the
usual threshold, a normal gives 1/3, two well-separated equal modes approach 1.

Modes are counted on the histogram the report already holds, after a stated smoothing:
the two end bins are left out (clip() piles every value beyond the range there, a
feature of the clipping, not of the distribution); the inner counts are smoothed with a
Gaussian kernel (zero outside, truncated at 4 sigma) of sigma = max(1 bin, Silverman's
0.9 * std * n^(-1/5)), each smoothed value adding its mirror pairs of counts nearest first
(so counts symmetric about a point smooth to exactly symmetric values, and a tie is a tie
whatever the machine); a mode is a local maximum whose prominence (its height above the
higher of the two lowest points that separate it from a higher peak or the ends, as
scipy.signal.find_peaks defines it) is at least MODE_PROMINENCE of the tallest value.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

MODE_PROMINENCE = 0.05  # a mode must stand out by 5% of the tallest smoothed count: below that, counting noise
BIMODALITY_THRESHOLD = 5.0 / 9.0  # Sarle's coefficient of a uniform distribution


def central_sums(n: np.ndarray, shift: np.ndarray, s1: np.ndarray, s2: np.ndarray, s3: np.ndarray,
                 s4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, M2, M3, M4) of groups given their counts and power sums of (c - shift); zeros where n == 0."""
    n = np.asarray(n, dtype=np.float64)
    safe = np.where(n > 0, n, 1.0)
    mu = np.where(n > 0, np.asarray(s1) / safe, 0.0)  # mean of c - shift
    m2 = np.asarray(s2) - mu * s1
    m3 = np.asarray(s3) - 3.0 * mu * s2 + 2.0 * n * mu ** 3
    m4 = np.asarray(s4) - 4.0 * mu * s3 + 6.0 * mu ** 2 * s2 - 3.0 * n * mu ** 4
    mean = np.where(n > 0, np.asarray(shift) + mu, 0.0)
    return mean, np.maximum(m2, 0.0), m3, np.maximum(m4, 0.0)


def combine(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, m3: np.ndarray,
            m4: np.ndarray) -> tuple[int, float, float, float, float]:
    """Merge groups (n_i, mean_i, M2_i, M3_i, M4_i) into one: the central sums about the pooled mean."""
    total, pooled, c2, c3, c4 = combine_rows(n, mean, m2, m3, m4)
    return int(total), float(pooled), float(c2), float(c3), float(c4)


def combine_rows(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, m3: np.ndarray,
                 m4: np.ndarray) -> tuple[np.ndarray, ...]:
    """`combine` along the last axis: row i of every input merges into element i of every output.

    One formula for one tensor's parts and for a batch of small tensors at once (each row
    the empty statistics and one part): the batch then gets the same numbers, bit for bit,
    as merging each on its own.
    """
    n = np.asarray(n, dtype=np.float64)
    total = n.sum(axis=-1)
    empty = total == 0
    mean = np.asarray(mean, dtype=np.float64)
    pooled = (n * mean).sum(axis=-1) / np.where(empty, 1.0, total)
    d = mean - pooled[..., None]
    m2, m3, m4 = (np.asarray(m, dtype=np.float64) for m in (m2, m3, m4))
    c2 = (m2 + n * d * d).sum(axis=-1)
    c3 = (m3 + 3.0 * m2 * d + n * d ** 3).sum(axis=-1)
    c4 = (m4 + 4.0 * m3 * d + 6.0 * m2 * d * d + n * d ** 4).sum(axis=-1)
    zero = np.zeros_like(total)
    return (np.where(empty, zero, total), np.where(empty, zero, pooled), np.where(empty | (0.0 > c2), zero, c2),
            np.where(empty, zero, c3), np.where(empty | (0.0 > c4), zero, c4))


def moments(n: int, m2: float, m3: float, m4: float) -> tuple[float, float, float]:
    """(std, skewness, excess kurtosis), population definitions; NaN where undefined."""
    if n <= 0 or not all(math.isfinite(x) for x in (m2, m3, m4)):
        return math.nan, math.nan, math.nan
    var = m2 / n
    std = math.sqrt(var)
    if var <= 0:
        return std, math.nan, math.nan
    return std, (m3 / n) / var ** 1.5, (m4 / n) / (var * var) - 3.0


def bimodality(n: int, skewness: float, excess_kurtosis: float) -> float:
    """Sarle's bimodality coefficient from the population moments (bias-corrected inside); NaN for n < 4."""
    if n < 4 or not (math.isfinite(skewness) and math.isfinite(excess_kurtosis)):
        return math.nan
    g1 = skewness * math.sqrt(n * (n - 1)) / (n - 2)
    g2 = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * excess_kurtosis + 6.0)
    denom = g2 + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3))
    return (g1 * g1 + 1.0) / denom if denom > 0 else math.nan


def histogram_modes(hist: np.ndarray, clip: float, std: float) -> list[float]:
    """Positions (bin centres, in units of the relative change) of the modes of a clipped histogram.

    The compiled loop of kernels/_rowstats.py, on one row: a report's rows derived in
    batches and one at a time get the same modes, ties included.
    """
    from weightsurgeon.kernels import _rowstats

    hist = np.asarray(hist, dtype=np.int64).reshape(1, -1)
    _, found = _rowstats.modes(hist, np.array([std], dtype=np.float64), float(clip), MODE_PROMINENCE)
    return mode_positions(found.tolist(), clip, hist.shape[1])


def mode_positions(found: list[int], clip: float, bins: int) -> list[float]:
    """Bin indices of modes -> their bin centres."""
    width = 2.0 * clip / bins
    return [float(-clip + (i + 0.5) * width) for i in found]


def derive_columns(columns: Any, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(derived, offsets, mode bins) of many rows (kernels/stats.StatsColumns): `derived` holds the
    columns _rowstats.L2_DELTA .. BIMODALITY, row i's modes are bins[offsets[i]:offsets[i + 1]]
    (mode_positions turns them into centres). Each number equals DeltaStats' own, bit for bit."""
    from weightsurgeon.kernels import _rowstats

    r_n = columns.r_n
    derived = _rowstats.derive(columns.n, columns.sum_sq_delta, columns.sum_sq_a, columns.sum_sq_b, columns.dot_ab,
                               columns.sum_delta, r_n, columns.r_m2, columns.r_m3, columns.r_m4)
    for i in np.flatnonzero(r_n >= _rowstats.BIMODALITY_EXACT_BELOW).tolist():  # exact integer division, in Python
        derived[i, _rowstats.BIMODALITY] = bimodality(int(r_n[i]), float(derived[i, _rowstats.R_SKEW]),
                                                      float(derived[i, _rowstats.R_KURT]))
    hist = columns.hist if columns.hist.dtype == np.int64 else columns.hist.astype(np.int64)
    offsets, found = _rowstats.modes(hist, np.ascontiguousarray(derived[:, _rowstats.R_STD]), float(clip),
                                     MODE_PROMINENCE)
    return derived, offsets, found
