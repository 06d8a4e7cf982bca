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
0.9 * std * n^(-1/5)); a mode is a local maximum whose prominence (its height above the
higher of the two lowest points that separate it from a higher peak or the ends, as
scipy.signal.find_peaks defines it) is at least MODE_PROMINENCE of the tallest value.
"""
from __future__ import annotations

import math

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


def smoothing_sigma(n: int, std: float, clip: float, bins: int) -> float:
    """The smoothing's sigma in bins: Silverman's bandwidth 0.9 * std * n^(-1/5), at least one bin."""
    width = 2.0 * clip / bins
    if n <= 0 or not math.isfinite(std) or std <= 0:
        return 1.0
    return max(1.0, 0.9 * std * n ** -0.2 / width)


def smooth(counts: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of counts, zero outside, kernel truncated at 4 sigma and normalised."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.asarray(counts, dtype=np.float64), kernel, mode="full")[radius:radius + len(counts)]


def _prominences(y: np.ndarray, peaks: list[int]) -> list[float]:
    """Each peak's height above the higher of the lowest points on its two sides, each side
    running to the first value higher than the peak (or the end, beyond which y is 0)."""
    out = []
    last = len(y) - 1
    for i in peaks:
        h = y[i]
        higher = np.flatnonzero(y[:i] > h)
        j = int(higher[-1]) + 1 if higher.size else 0
        left = float(y[j:i + 1].min())
        if j == 0:
            left = min(left, 0.0)
        higher = np.flatnonzero(y[i + 1:] > h)
        k = i + int(higher[0]) if higher.size else last
        right = float(y[i:k + 1].min())
        if k == last:
            right = min(right, 0.0)
        out.append(float(h) - max(left, right))
    return out


def histogram_modes(hist: np.ndarray, clip: float, std: float) -> list[float]:
    """Positions (bin centres, in units of the relative change) of the modes of a clipped histogram."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = len(hist)
    if bins < 3:
        return []
    inner = hist[1:-1]
    n = int(inner.sum())
    if n == 0:
        return []
    y = smooth(inner, smoothing_sigma(n, std, clip, bins))
    padded = np.concatenate(([0.0], y, [0.0]))
    floor = MODE_PROMINENCE * float(y.max())
    # a plateau's left end counts once; a plateau that rises again is not a peak (prominence 0).
    # A prominence is at most the peak's height (y >= 0), so peaks lower than the floor are
    # left out before the walk: the same modes, without walking every ripple of the tails.
    centre = padded[1:-1]
    peaks = np.flatnonzero((centre > padded[:-2]) & (centre >= padded[2:]) & (centre >= floor)).tolist()
    kept = [i for i, p in zip(peaks, _prominences(y, peaks)) if p >= floor and p > 0]
    width = 2.0 * clip / bins
    return [float(-clip + (i + 1.5) * width) for i in kept]
