"""The compiled loops of kernels/quant.py (numba; imported on first use, cached on disk).

One pass over the stored bytes, writing float32 values into the caller's buffer: the
numpy formulation (a table gather, a broadcast multiply per block row) made three passes
and a temporary as large as the output, and ran at a tenth of the delta kernel's speed.
Each product is one float32 multiplication, rounded as numpy and torch round it.
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, error_model="numpy")
def fp8_rows(codes, table, scales, br, bc, row0, cols, out):  # pragma: no cover - compiled
    """out[i*cols + j] = table[codes[i*cols + j]] * scales[(row0 + i) // br - row0 // br, j // bc]."""
    rows = codes.size // cols
    srow0 = row0 // br
    nblocks = (cols + bc - 1) // bc
    for i in range(rows):
        srow = (row0 + i) // br - srow0
        base = i * cols
        for b in range(nblocks):
            s = scales[srow, b]
            stop = min(cols, (b + 1) * bc)
            for j in range(b * bc, stop):
                out[base + j] = table[codes[base + j]] * s


@njit(cache=True, error_model="numpy")
def mxfp4_groups(raw, scales, e2m1, out):  # pragma: no cover - compiled
    """32 values per group: the low nibble of byte k is element 2k, the high nibble element 2k + 1."""
    for g in range(scales.size):
        s = scales[g]
        for k in range(16):
            byte = raw[g * 16 + k]
            out[g * 32 + 2 * k] = e2m1[byte & 15] * s
            out[g * 32 + 2 * k + 1] = e2m1[byte >> 4] * s
