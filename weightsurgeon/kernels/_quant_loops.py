"""The compiled loops of kernels/quant.py (numba; imported on first use, cached on disk).

One pass over the stored bytes, writing float32 values into the caller's buffer: the
numpy formulation (a table gather, a broadcast multiply per block row) made three passes
and a temporary as large as the output, and ran at a tenth of the delta kernel's speed.
Each product is one float32 multiplication, rounded as numpy and torch round it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from weightsurgeon.kernels._compiled import as_f32, f16_to_f32, f32_bits


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


# ---------------------------------------------------------------------------------------
# surgeon cast: FP8 rows dequantized straight into the output's stored bytes
# ---------------------------------------------------------------------------------------

# Columns of the `entries` table fp8_cast reads (one row per tensor slice): kernels/quant.py.
from weightsurgeon.kernels._compiled import _read_full, c_errno, c_pwrite  # noqa: E402
from weightsurgeon.kernels.quant import (E_BC, E_BR, E_CODES, E_COLS, E_OUT, E_OUT_KIND, E_RAW, E_ROW0,  # noqa: E402
                                         E_ROWS, E_SCALE_KIND, E_SCALES, E_TABLE, P_A, P_A_LEN, P_B, P_B_LEN,
                                         P_E0, P_E1, P_FD, P_OUT, P_OUT_LEN)


@njit(inline="always")
def _scale_at(window, pos, kind):  # pragma: no cover - compiled
    """The float32 value of a stored scale (little-endian F32, BF16 or F16 bytes at `pos`)."""
    if kind == 0:
        return as_f32(np.uint32(window[pos]) | (np.uint32(window[pos + 1]) << np.uint32(8))
                      | (np.uint32(window[pos + 2]) << np.uint32(16)) | (np.uint32(window[pos + 3]) << np.uint32(24)))
    h = np.uint32(window[pos]) | (np.uint32(window[pos + 1]) << np.uint32(8))
    if kind == 1:
        return as_f32(h << np.uint32(16))
    return f16_to_f32(h)


@njit(inline="always")
def _f16_bits(v):  # pragma: no cover - compiled
    """float32 -> IEEE half bits, round to nearest even; beyond 65504 (from 65520 up) inf; NaN stays NaN."""
    bits = f32_bits(v)
    sign = np.uint32((bits >> np.uint32(16)) & np.uint32(0x8000))
    mag = bits & np.uint32(0x7FFFFFFF)
    if mag > np.uint32(0x7F800000):
        h = np.uint32(0x7E00) | ((mag >> np.uint32(13)) & np.uint32(0x3FF))
    elif mag >= np.uint32(0x477FF000):
        h = np.uint32(0x7C00)
    elif mag >= np.uint32(0x38800000):  # a normal half: rebias the exponent, round the 13 dropped bits
        h = (mag - np.uint32(0x38000000) + np.uint32(0xFFF) + ((mag >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    else:  # a subnormal half: |v| * 2**24 is exact, rint rounds half to even
        h = np.uint32(np.rint(np.abs(v) * np.float32(16777216.0)))
    return sign | h


@njit(inline="always")
def _put(out, p, h, width):  # pragma: no cover - compiled
    """Store the low `width` bytes of h at out[p:], little-endian."""
    for q in range(width):
        out[p + q] = np.uint8((h >> np.uint32(8 * q)) & np.uint32(0xFF))


@njit(inline="always")
def _out_bits(v, okind):  # pragma: no cover - compiled
    """The stored bits of float32 v in the output dtype: BF16 (nearest even, NaN kept quiet), F16, F32."""
    if okind == 0:
        x = f32_bits(v)
        if (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
            return (x >> np.uint32(16)) | np.uint32(0x40)
        return (x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    if okind == 1:
        return _f16_bits(v)
    return f32_bits(v)


LUT_MIN_ELEMS = 1024  # elements a decoded table must serve to be worth its 256 products


@njit(nogil=True, error_model="numpy", boundscheck=False)
def _cast_rows(window, entries, e, r_lo, r_hi, tables, out):  # pragma: no cover - compiled
    """Rows [r_lo, r_hi) of entry e (see fp8_cast); returns the entry's element index of the first
    finite value that overflows F16 in those rows, or -1.

    A block has one scale and an FP8 code 256 values, so each block's 256 output words are
    computed once (the same float32 product and rounding as per element) and the elements
    are looked up: one gather per element instead of a multiply, a rounding and its checks.
    Where a table would serve fewer than LUT_MIN_ELEMS elements (tiny tensors, one-row parts)
    every element is computed instead; both give the same bits."""
    codes = entries[e, E_CODES]
    sbase = entries[e, E_SCALES]
    skind = entries[e, E_SCALE_KIND]
    cols = entries[e, E_COLS]
    br = entries[e, E_BR]
    bc = entries[e, E_BC]
    tab = entries[e, E_TABLE]
    dst = entries[e, E_OUT]
    okind = entries[e, E_OUT_KIND]
    row0 = entries[e, E_ROW0]
    swidth = 4 if skind == 0 else 2
    width = 4 if okind == 2 else 2
    nblocks = (cols + bc - 1) // bc
    srow0 = row0 // br
    first_bad = -1
    use_lut = min(r_hi - r_lo, br) * min(bc, cols) >= LUT_MIN_ELEMS
    lut = np.empty((nblocks if use_lut else 0, 256), dtype=np.uint32)
    over = np.zeros(nblocks if use_lut else 0, dtype=np.int64)  # per block: a code that overflows F16, + 1, or 0
    current = -1
    for i in range(r_lo, r_hi):
        srow = (row0 + i) // br - srow0
        if use_lut and srow != current:
            current = srow
            for b in range(nblocks):
                s = _scale_at(window, sbase + (srow * nblocks + b) * swidth, skind)
                over[b] = 0
                for c in range(256):
                    v = tables[tab, c] * s
                    h = _out_bits(v, okind)
                    lut[b, c] = h
                    if okind == 1 and over[b] == 0 and (h & np.uint32(0x7FFF)) == np.uint32(0x7C00) and np.isfinite(v):
                        over[b] = 1
        for b in range(nblocks):
            lo = i * cols + b * bc
            hi = i * cols + min(cols, (b + 1) * bc)
            if use_lut:
                if width == 2:
                    for k in range(lo, hi):
                        _put(out, dst + 2 * k, lut[b, window[codes + k]], 2)
                else:
                    for k in range(lo, hi):
                        _put(out, dst + 4 * k, lut[b, window[codes + k]], 4)
                if over[b] and first_bad < 0:  # rare: find the element, as the direct path would
                    s = _scale_at(window, sbase + (srow * nblocks + b) * swidth, skind)
                    for k in range(lo, hi):
                        v = tables[tab, window[codes + k]] * s
                        h = lut[b, window[codes + k]]
                        if (h & np.uint32(0x7FFF)) == np.uint32(0x7C00) and np.isfinite(v):
                            first_bad = k
                            break
                continue
            s = _scale_at(window, sbase + (srow * nblocks + b) * swidth, skind)
            for k in range(lo, hi):
                v = tables[tab, window[codes + k]] * s
                h = _out_bits(v, okind)
                if okind == 1 and first_bad < 0 and (h & np.uint32(0x7FFF)) == np.uint32(0x7C00) and np.isfinite(v):
                    first_bad = k
                _put(out, dst + width * k, h, width)
    return first_bad


@njit(cache=True, nogil=True, parallel=True, error_model="numpy", boundscheck=False)
def fp8_cast(window, entries, parts, tables, out, bad):  # pragma: no cover - compiled
    """Dequantize row slices of FP8 tensors into stored output bytes, one table row per slice.

    Each entry says where a slice's codes and its first scale row lie in `window`, its rows
    (starting at row0 of the tensor) and columns, the block (br, bc) one scale covers, which
    8-bit table decodes it, and where its output goes in `out` in which dtype (BF16, F16,
    F32; little-endian, nearest even, NaN kept). value = table[code] * scale, one float32
    product. `parts` rows (entry, first row, end row), in entry and row order, are the units
    the threads share: many small tensors of a batched run, or row ranges of one large one;
    each output byte is written by one part alone, so the result does not depend on threads.
    `bad` receives (entry, element) of the first finite value that overflows F16.
    """
    found = np.full(parts.shape[0], -1, dtype=np.int64)
    for p in prange(parts.shape[0]):
        found[p] = _cast_rows(window, entries, parts[p, 0], parts[p, 1], parts[p, 2], tables, out)
    for p in range(parts.shape[0]):
        if found[p] >= 0:
            bad[0] = parts[p, 0]
            bad[1] = found[p]
            break


@njit(nogil=True, error_model="numpy", boundscheck=False)
def _write_full(fd, data, pos):  # pragma: no cover - compiled
    """pwrite all of `data` at `pos`; 0, or the errno of the failed call (no progress: EIO)."""
    done = 0
    while done < data.size:
        got = c_pwrite(fd, data[done:], data.size - done, pos + done)
        if got <= 0:
            return c_errno() if got < 0 else 5
        done += got
    return 0


@njit(cache=True, nogil=True, parallel=True, error_model="numpy", boundscheck=False)
def fp8_cast_file(fd_out, entries, parts, tables, lanes, in_size, out_size, bad, status):  # pragma: no cover - compiled
    """fp8_cast from file to file: each part reads its input with pread, computes its output in the
    lane's own buffers and writes it with one pwrite, so no byte passes through Python.

    Lane k (one per thread) takes parts k, k + lanes, ...: together the lanes move through the
    input and the output front to back, and a part's bytes (at most in_size in, out_size out)
    stay in its core's L2 cache between the read, the loop and the write. An entry is an FP8
    row slice as in fp8_cast (E_CODES, E_SCALES: offsets in the part's window; E_OUT: in the
    part's output) or, with E_RAW > 0, a raw copy of that many bytes (a norm, a router between
    FP8 weights). `bad` receives (entry, element) of the first finite value that overflows F16,
    in entry order; status[p] is 0, -1 for a read that failed or came short, or the errno of
    the part's failed write.
    """
    nparts = parts.shape[0]
    found = np.full(nparts, -1, dtype=np.int64)
    found_entry = np.full(nparts, -1, dtype=np.int64)
    for lane in prange(lanes):
        window = np.empty(in_size, dtype=np.uint8)
        out = np.empty(out_size, dtype=np.uint8)
        for p in range(lane, nparts, lanes):
            a_len = parts[p, P_A_LEN]
            b_len = parts[p, P_B_LEN]
            fd = parts[p, P_FD]
            if not _read_full(fd, window[:a_len], parts[p, P_A]) or \
                    (b_len > 0 and not _read_full(fd, window[a_len:a_len + b_len], parts[p, P_B])):
                status[p] = -1
                continue
            for e in range(parts[p, P_E0], parts[p, P_E1]):
                raw = entries[e, E_RAW]
                if raw > 0:
                    src = entries[e, E_CODES]
                    dst = entries[e, E_OUT]
                    out[dst:dst + raw] = window[src:src + raw]
                    continue
                k = _cast_rows(window, entries, e, 0, entries[e, E_ROWS], tables, out)
                if k >= 0 and found_entry[p] < 0:
                    found_entry[p] = e
                    found[p] = k
            status[p] = _write_full(fd_out, out[:parts[p, P_OUT_LEN]], parts[p, P_OUT])
    for p in range(nparts):
        if found_entry[p] >= 0:
            bad[0] = found_entry[p]
            bad[1] = found[p]
            break
