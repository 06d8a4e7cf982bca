"""Compiled derivation of report rows: the derived numbers and histogram modes of many rows at once.

A MoE diff finishes ~100k tensors; deriving each row's numbers in Python (a dozen float
operations and ~15 small numpy calls for the modes) cost ~80 us a tensor, more than
everything else a tiny tensor needs. These loops take a whole batch of rows as arrays.

Every number is the one kernels/stats.py and kernels/shape.py define, with the same
operations in the same order: numba's sqrt, pow and exp are the C library's, as Python's
math module's are, so a row derived here equals the row derived one at a time, bit for bit
(tests/test_rowstats.py). The one-row path (`shape.histogram_modes`) calls the same mode
loop, so a tie between two smoothed counts is settled the same way everywhere.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# Columns of `derive`'s float output, in this order.
L2_DELTA, L2_A, L2_B, REL_L2, COSINE, MEAN_DELTA, R_STD, R_SKEW, R_KURT, BIMODALITY = range(10)
N_DERIVED = 10
BIMODALITY_EXACT_BELOW = 1 << 26  # beyond, Python's exact int division differs from float division: callers redo it

_NAN = math.nan


@numba.njit(cache=True, error_model="numpy")
def _moments(n, m2, m3, m4):
    """shape.moments: (std, skewness, excess kurtosis)."""
    if n <= 0 or not (math.isfinite(m2) and math.isfinite(m3) and math.isfinite(m4)):
        return _NAN, _NAN, _NAN
    var = m2 / n
    std = math.sqrt(var)
    if var <= 0:
        return std, _NAN, _NAN
    return std, (m3 / n) / var ** 1.5, (m4 / n) / (var * var) - 3.0


@numba.njit(cache=True, error_model="numpy")
def _bimodality(n, skewness, kurtosis):
    """shape.bimodality for n < BIMODALITY_EXACT_BELOW (the integer products are exact as floats there)."""
    if n < 4 or not (math.isfinite(skewness) and math.isfinite(kurtosis)):
        return _NAN
    g1 = skewness * math.sqrt(n * (n - 1)) / (n - 2)
    g2 = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * kurtosis + 6.0)
    denom = g2 + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3))
    return (g1 * g1 + 1.0) / denom if denom > 0 else _NAN


@numba.njit(cache=True, error_model="numpy")
def derive(n, sum_sq_delta, sum_sq_a, sum_sq_b, dot_ab, sum_delta, r_n, m2, m3, m4):
    """The derived numbers of each row (columns L2_DELTA .. BIMODALITY), as DeltaStats' properties
    and shape_numbers compute them one row at a time."""
    rows = n.size
    out = np.empty((rows, N_DERIVED), dtype=np.float64)
    for i in range(rows):
        l2_d = math.sqrt(sum_sq_delta[i])
        l2_a = math.sqrt(sum_sq_a[i])
        l2_b = math.sqrt(sum_sq_b[i])
        out[i, L2_DELTA] = l2_d
        out[i, L2_A] = l2_a
        out[i, L2_B] = l2_b
        out[i, REL_L2] = l2_d / l2_a if l2_a > 0 else _NAN
        denom = l2_a * l2_b
        out[i, COSINE] = dot_ab[i] / denom if denom > 0 else _NAN
        out[i, MEAN_DELTA] = sum_delta[i] / n[i] if n[i] != 0 else _NAN
        std, skewness, kurtosis = _moments(r_n[i], m2[i], m3[i], m4[i])
        out[i, R_STD] = std
        out[i, R_SKEW] = skewness
        out[i, R_KURT] = kurtosis
        out[i, BIMODALITY] = _bimodality(r_n[i], skewness, kurtosis) if r_n[i] < BIMODALITY_EXACT_BELOW else _NAN
    return out


@numba.njit(cache=True, error_model="numpy")
def _smooth_into(hist, sigma, padded, y, first, last):
    """shape.py's smoothing of one row's inner counts (hist[1:-1]) into y: a Gaussian of `sigma`
    bins, zero outside, truncated at 4 sigma and normalised. Each output adds its mirror pairs
    of counts nearest first, so counts symmetric about a point smooth to exactly symmetric
    values: a tie stays a tie. `padded` holds at least 3 * y.size values; `first` and `last` are
    the inner counts' first and last nonzero index.

    Returns (lo, hi): y is written in lo..hi - 1 only. Every output farther than the kernel's
    reach from each count adds nothing but zeros, so it is exactly 0.0: it is left out (a small
    tensor's counts sit in a few of the 200 bins), and the caller reads it as 0.0."""
    size = y.size
    radius = int(4.0 * sigma + 0.5)
    weights = np.empty(radius + 1, dtype=np.float64)
    for m in range(radius + 1):
        x = m / sigma
        weights[m] = math.exp(-0.5 * (x * x))
    tails = 0.0
    for m in range(radius, 0, -1):
        tails += weights[m]
    total = weights[0] + 2.0 * tails
    reach = min(radius, size - 1)  # beyond, both members of every pair lie outside: zeros, exact no-ops
    lo, hi = max(0, first - reach), min(size, last + reach + 1)
    pad = padded[:size + 2 * reach]  # pad[reach + i]: inner count i; zeros around
    for k in range(lo, hi + 2 * reach):
        pad[k] = hist[k - reach + 1] if reach <= k < reach + size else 0.0
    k0 = weights[0] / total
    for i in range(lo, hi):
        y[i] = k0 * pad[reach + i]
    for m in range(1, reach + 1):
        km = weights[m] / total
        for i in range(lo, hi):  # independent outputs, each still summed in m order
            y[i] += km * (pad[reach + i - m] + pad[reach + i + m])
    return lo, hi


@numba.njit(cache=True, error_model="numpy")
def _row_modes(hist, std, clip, prominence, padded, y, found):
    """Mode bins (indices into the full histogram) of one row, written to `found`; returns how many."""
    bins = hist.size
    if bins < 3:
        return 0
    inner = bins - 2
    n = 0
    first, last = inner, -1
    for i in range(inner):
        if hist[i + 1] != 0:
            n += hist[i + 1]
            first = min(first, i)
            last = i
    if n == 0:
        return 0
    width = 2.0 * clip / bins
    sigma = 1.0
    if math.isfinite(std) and std > 0:
        sigma = max(1.0, 0.9 * std * n ** -0.2 / width)
    ys = y[:inner]
    lo, hi = _smooth_into(hist, sigma, padded, ys, first, last)  # ys is 0.0 outside lo..hi - 1
    top = ys[lo]
    for i in range(lo + 1, hi):
        if ys[i] > top:
            top = ys[i]
    floor = prominence * top
    kept = 0
    for i in range(lo, hi):
        h = ys[i]
        left_of = ys[i - 1] if i > lo else 0.0
        right_of = ys[i + 1] if i < hi - 1 else 0.0
        if not (h > left_of and h >= right_of and h >= floor):
            continue
        # prominence: the peak above the higher of the lowest points on its two sides, each side
        # running to the first value higher than the peak (or the end, beyond which y is 0)
        j = i - 1
        left = h
        while j >= lo and not ys[j] > h:
            if ys[j] < left:
                left = ys[j]
            j -= 1
        if j < lo and left > 0.0:  # ran into the zeros (or the end)
            left = 0.0
        k = i + 1
        right = h
        while k < hi and not ys[k] > h:
            if ys[k] < right:
                right = ys[k]
            k += 1
        if k >= hi and right > 0.0:
            right = 0.0
        p = h - max(left, right)
        if p >= floor and p > 0:
            found[kept] = i + 1
            kept += 1
    return kept


@numba.njit(cache=True, error_model="numpy")
def modes(hists, std, clip, prominence):
    """Mode bins of every row: (offsets, bins), row i's modes at bins[offsets[i]:offsets[i + 1]],
    each a bin index of the full histogram (its centre is -clip + (index + 0.5) * width)."""
    rows, nbins = hists.shape
    offsets = np.zeros(rows + 1, dtype=np.int64)
    out = np.empty(max(16, rows), dtype=np.int64)
    padded = np.empty(3 * max(nbins, 1), dtype=np.float64)
    y = np.empty(max(nbins, 1), dtype=np.float64)
    found = np.empty(max(nbins, 1), dtype=np.int64)
    total = 0
    for r in range(rows):
        kept = _row_modes(hists[r], std[r], clip, prominence, padded, y, found)
        if total + kept > out.size:
            grown = np.empty(2 * (total + kept), dtype=np.int64)
            grown[:total] = out[:total]
            out = grown
        for q in range(kept):
            out[total + q] = found[q]
        total += kept
        offsets[r + 1] = total
    return offsets, out[:total]


@numba.njit(cache=True)
def add_rows(ids, sums, maxima, counts, hists, total_sums, total_max, total_counts, total_hist):
    """Add row i's sums, counts and histogram into totals[ids[i]], row after row (the order of
    adding them one by one); the maximum as Python's max(total, row) (a NaN row never enters)."""
    for i in range(ids.size):
        k = ids[i]
        for j in range(sums.shape[1]):
            total_sums[k, j] += sums[i, j]
        if maxima[i] > total_max[k]:
            total_max[k] = maxima[i]
        for j in range(counts.shape[1]):
            total_counts[k, j] += counts[i, j]
        for j in range(hists.shape[1]):
            total_hist[k, j] += hists[i, j]
