"""Compiled float-to-text: `repr(x)` of many float64 values at once, character for character.

report.csv holds ~20 floats a row; a 100k-tensor diff wrote 2.5M of them with `repr`, which
costs ~0.5 us each here (Python's dtoa plus an object per call): a third of the diff's
per-tensor time. The text must read back to the same bits, and repr's is the shortest
that does. This computes the same shortest digits in compiled code, by the Schubfach
method (R. Giulietti, "The Schubfach way to render doubles", 2020): scale the value and
the two ends of its rounding interval by a 126-bit approximation of a power of ten, with
round-to-odd, so that comparisons against candidate digit strings are exact. The digits
are then laid out as repr lays them out (fixed notation for decimal exponents -4 < e <= 16,
else d.ddde+XX). tests/test_floattext.py compares it with repr on every exponent, the
interval's edge cases and millions of random values.

The power-of-ten table and the floor(log) tables are computed here, once, with Python's
exact integers.
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np

_Q_MIN, _Q_MAX = -1074, 971  # binary exponents of a double's integer significand


def _floor_log10(num: int, den: int) -> int:
    """The largest k with 10^k <= num/den (num, den > 0), exactly."""
    k = int((num.bit_length() - den.bit_length()) * 0.30102999566398120)  # within one of the answer
    while (num * 10 ** -k if k < 0 else num) < (den * 10 ** k if k >= 0 else den):
        k -= 1
    while (num * 10 ** -(k + 1) if k + 1 < 0 else num) >= (den * 10 ** (k + 1) if k + 1 >= 0 else den):
        k += 1
    return k


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """k(q) = floor(log10 2^q), k34(q) = floor(log10 (3/4 * 2^q)), and for e = -k: r(e) = floor(log2 10^e)
    and g(e) = floor(10^e * 2^(125 - r(e))) + 1 (in [2^125, 2^126]) split into two 63-bit halves."""
    qs = range(_Q_MIN, _Q_MAX + 1)
    k = np.array([_floor_log10(2 ** q, 1) if q >= 0 else _floor_log10(1, 2 ** -q) for q in qs], dtype=np.int64)
    k34 = np.array([_floor_log10(3 * 2 ** q, 4) if q >= 0 else _floor_log10(3, 4 * 2 ** -q) for q in qs],
                   dtype=np.int64)
    e_min, e_max = -int(max(k.max(), k34.max())), -int(min(k.min(), k34.min()))
    r = np.empty(e_max - e_min + 1, dtype=np.int64)
    g1 = np.empty(e_max - e_min + 1, dtype=np.uint64)
    g0 = np.empty(e_max - e_min + 1, dtype=np.uint64)
    for i, e in enumerate(range(e_min, e_max + 1)):
        r_e = (10 ** e).bit_length() - 1 if e >= 0 else -(10 ** -e).bit_length()
        shift = 125 - r_e
        if e >= 0:
            g = (10 ** e << shift if shift >= 0 else 10 ** e >> -shift) + 1
        else:
            g = (1 << shift) // 10 ** -e + 1
        assert 1 << 125 <= g <= 1 << 126
        r[i], g1[i], g0[i] = r_e, g >> 63, g & ((1 << 63) - 1)
    return k, k34, r, g1, g0, e_min


_K, _K34, _R, _G1, _G0, _E_MIN = _tables()
_M32 = np.uint64(0xFFFFFFFF)
_M63 = np.uint64((1 << 63) - 1)
_U32, _U63, _U1, _U0 = np.uint64(32), np.uint64(63), np.uint64(1), np.uint64(0)
_U10, _U100 = np.uint64(10), np.uint64(100)
MAX_CHARS = 24  # "-1.2345678901234567e-308"


@numba.njit(cache=True, inline="always")
def _mul_high(a, b):
    """The upper 64 bits of the 128-bit product of two uint64."""
    a_lo, a_hi = a & _M32, a >> _U32
    b_lo, b_hi = b & _M32, b >> _U32
    p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (p0 >> _U32) + (p1 & _M32) + (p2 & _M32)
    return p3 + (p1 >> _U32) + (p2 >> _U32) + (mid >> _U32)


@numba.njit(cache=True, inline="always")
def _round_to_odd(g1, g0, cp):
    """floor(g * cp / 2^127), its lowest bit set when the bits below (but the last 64) are not all zero."""
    x1 = _mul_high(g0, cp)
    y0 = g1 * cp
    y1 = _mul_high(g1, cp)
    z = (y0 >> _U1) + x1
    high = y1 + (z >> _U63)
    return high | (((z & _M63) + _M63) >> _U63)


@numba.njit(cache=True)
def _shortest(bits):
    """(digits, exponent) of a positive finite double's shortest round-trip decimal, nearest the
    value among the shortest (ties to even digits): value ~ digits * 10^exponent."""
    biased = np.int64((bits >> np.uint64(52)) & np.uint64(0x7FF))
    fraction = bits & np.uint64((1 << 52) - 1)
    if biased:
        c = fraction | np.uint64(1 << 52)
        q = biased - 1075
    else:
        c = fraction
        q = np.int64(_Q_MIN)
    odd = np.int64(c & _U1)
    closer = fraction == _U0 and biased > 1
    cb = c << np.uint64(2)
    cbr = cb + np.uint64(2)
    cbl = cb - np.uint64(1) if closer else cb - np.uint64(2)
    k = _K34[q - _Q_MIN] if closer else _K[q - _Q_MIN]
    e = -k - _E_MIN
    h = np.uint64(q + _R[e] + 2)
    g1, g0 = _G1[e], _G0[e]
    vb = np.int64(_round_to_odd(g1, g0, cb << h))
    vbl = np.int64(_round_to_odd(g1, g0, cbl << h))
    vbr = np.int64(_round_to_odd(g1, g0, cbr << h))
    lower, upper = vbl + odd, vbr - odd
    s = vb >> 2
    if s >= 10:
        sp = s // 10
        up_in = lower <= 40 * sp
        wp_in = 40 * sp + 40 <= upper
        if up_in != wp_in:
            return sp + wp_in, k + 1
    u_in = lower <= 4 * s
    w_in = 4 * s + 4 <= upper
    if u_in != w_in:
        return s + w_in, k
    mid = 4 * s + 2
    return s + (vb > mid or (vb == mid and (s & 1) != 0)), k


@numba.njit(cache=True)
def _write(bits, out, at, text):
    """repr of the double with these bits into out[at:]; returns the end. NaN and infinities write
    nothing (an empty cell). `text`: 20 bytes of scratch."""
    if (bits >> np.uint64(52)) & np.uint64(0x7FF) == np.uint64(0x7FF):
        return at
    if bits >> _U63:
        out[at] = 45  # '-'
        at += 1
        bits &= _M63
    if bits == _U0:
        out[at], out[at + 1], out[at + 2] = 48, 46, 48  # "0.0"
        return at + 3
    digits, exponent = _shortest(bits)
    d = np.uint64(digits)  # unsigned: division by a constant without Python's floor fix-ups
    while d % _U10 == _U0:
        d //= _U10
        exponent += 1
    n = 0  # the digits into text, last first, two at a time (a 17-digit significand: 9 divisions, not 17)
    while d >= _U100:
        q = d // _U100
        r = np.int64(d - q * _U100)
        text[n], text[n + 1] = 48 + r % 10, 48 + r // 10
        n += 2
        d = q
    if d >= _U10:
        text[n], text[n + 1] = 48 + np.int64(d % _U10), 48 + np.int64(d // _U10)
        n += 2
    else:
        text[n] = 48 + np.int64(d)
        n += 1
    point = n + exponent  # value = 0.DIGITS * 10^point
    if -4 < point <= 16:
        if point <= 0:
            out[at], out[at + 1] = 48, 46
            at += 2
            for _ in range(-point):
                out[at] = 48
                at += 1
            for i in range(n):
                out[at] = text[n - 1 - i]
                at += 1
        else:
            for i in range(max(n, point)):
                if i == point:
                    out[at] = 46
                    at += 1
                out[at] = text[n - 1 - i] if i < n else 48
                at += 1
            if point >= n:
                out[at], out[at + 1] = 46, 48  # ".0"
                at += 2
        return at
    out[at] = text[n - 1]
    at += 1
    if n > 1:
        out[at] = 46
        at += 1
        for i in range(1, n):
            out[at] = text[n - 1 - i]
            at += 1
    power = point - 1
    out[at] = 101  # 'e'
    out[at + 1] = 45 if power < 0 else 43
    at += 2
    power = abs(power)
    if power >= 100:
        out[at] = 48 + power // 100
        at += 1
    out[at], out[at + 1] = 48 + power // 10 % 10, 48 + power % 10
    return at + 2


@numba.njit(cache=True)
def write_lines(bits, out):
    """The repr of each double (given as its bits) followed by a newline (an empty line for NaN/inf)
    into out; returns the length used."""
    at = 0
    text = np.empty(20, dtype=np.uint8)
    for i in range(bits.size):
        at = _write(bits[i], out, at, text)
        out[at] = 10
        at += 1
    return at


def float_cells(values: np.ndarray) -> list[str]:
    """repr of each float64 value (the shortest text that reads back exactly); empty for NaN/inf."""
    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if not values.size:
        return []
    out = np.empty(values.size * (MAX_CHARS + 1), dtype=np.uint8)
    end = write_lines(values.view(np.uint64), out)
    return out[:end - 1].tobytes().decode("ascii").split("\n")


TEXT, INTEGER, FLOAT, CODED, LIST = 0, 1, 2, 3, 4  # kinds of a `csv_text` column (`csv_lines` sees CODED as TEXT)
NULL = np.iinfo(np.int64).min  # an INTEGER cell written empty (None)


@numba.njit(cache=True)
def _write_int(value, out, at, text):
    """str(value) into out[at:]; returns the end."""
    if value < 0:
        out[at] = 45
        at += 1
        value = -value
    n = 0
    while True:
        text[n] = 48 + value % 10
        value //= 10
        n += 1
        if value == 0:
            break
    for i in range(n):
        out[at + i] = text[n - 1 - i]
    return at + n


@numba.njit(cache=True)
def csv_lines(rows, kinds, index, blob, starts, ends, items, ints, floats, out):
    """CSV lines (comma-separated, each ended by CR LF, as csv.writer writes them) of rows whose
    column c is TEXT (bytes blob[starts[i, j]:ends[i, j]] with j = index[c], written as they are:
    the caller checked that none needs quoting), LIST (the texts blob[items[q, 0]:items[q, 1]] for
    q in starts[i, j]..ends[i, j], joined by ';'), INTEGER (ints[i, j], empty if NULL) or FLOAT
    (the double with bits floats[i, j], its repr; empty if NaN/inf). Returns the length written
    into out."""
    at = 0
    text = np.empty(24, dtype=np.uint8)
    for i in range(rows):
        for c in range(kinds.size):
            if c:
                out[at] = 44
                at += 1
            j = index[c]
            if kinds[c] == TEXT:
                for k in range(starts[i, j], ends[i, j]):  # a loop: a slice copy cost more for names this short
                    out[at] = blob[k]
                    at += 1
            elif kinds[c] == LIST:
                for q in range(starts[i, j], ends[i, j]):
                    if q > starts[i, j]:
                        out[at] = 59
                        at += 1
                    for k in range(items[q, 0], items[q, 1]):
                        out[at] = blob[k]
                        at += 1
            elif kinds[c] == INTEGER:
                if ints[i, j] != NULL:
                    at = _write_int(ints[i, j], out, at, text)
            else:
                at = _write(floats[i, j], out, at, text)
        out[at], out[at + 1] = 13, 10
        at += 2
    return at


def column_cells(kind: int, values: Any) -> list[str]:
    """A `csv_text` column as the str cells csv.writer is given (the path for text that needs quoting)."""
    if kind == FLOAT:
        return float_cells(values)
    if kind == INTEGER:
        values = values.tolist() if isinstance(values, np.ndarray) else values
        return ["" if v is None or v == NULL else str(v) for v in values]
    if kind == CODED:
        names, codes = values
        return [names[c] for c in np.asarray(codes).tolist()]
    if kind == LIST:
        names, offsets, codes = values
        cells, bounds = [names[c] for c in np.asarray(codes).tolist()], np.asarray(offsets).tolist()
        return [";".join(cells[a:b]) for a, b in zip(bounds, bounds[1:])]
    return list(values)


def _plain(text: str) -> bool:
    """Whether csv.writer writes this text as it is (ASCII, nothing to quote)."""
    return text.isascii() and not any(ch in text for ch in ',"\r\n')


def csv_text(columns: list[tuple[int, Any]]) -> str | None:
    """The CSV lines of rows given as columns, as csv.writer writes them: each column is (TEXT, list
    of str), (CODED, (names, codes): row i's cell is names[codes[i]]), (LIST, (names, offsets, codes):
    row i's cell is names[c] for c in codes[offsets[i]:offsets[i + 1]], joined by ';'), (INTEGER,
    int64 values or a list of int/None) or (FLOAT, float64 values). None where a text cell is not
    plain ASCII or needs quoting (a comma, a quote, a line end): write those with csv.writer.

    CODED and LIST columns (a block's few labels, modules, dtypes, shapes, mode positions) cost no
    Python per row: their cells point into one copy of each name."""
    kinds = np.array([TEXT if kind == CODED else kind for kind, _ in columns], dtype=np.int64)
    index = np.zeros(kinds.size, dtype=np.int64)
    texts, ints, floats = [], [], []
    for c, (kind, values) in enumerate(columns):
        group = ints if kind == INTEGER else floats if kind == FLOAT else texts
        index[c] = len(group)
        group.append((kind, values))
    rows = 0 if not columns else len(columns[0][1][1]) if columns[0][0] == CODED else len(columns[0][1])
    shape = (rows, max(1, len(texts)))
    starts, ends = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    blob_parts, items, text_bytes, start = [], [np.zeros((0, 2), dtype=np.int64)], 0, 0
    for j, (kind, values) in enumerate(texts):
        cells, offsets, codes = (values, None, None) if kind == TEXT else (values[0], None, values[1]) \
            if kind == CODED else values
        joined = "".join(cells)
        if not _plain(joined):
            return None
        bounds = np.zeros(len(cells) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, cells), dtype=np.int64, count=len(cells)), out=bounds[1:])
        bounds += start
        if kind == TEXT:
            starts[:, j], ends[:, j] = bounds[:-1], bounds[1:]
        elif kind == CODED:
            codes = np.asarray(codes, dtype=np.int64)
            starts[:, j], ends[:, j] = bounds[:-1][codes], bounds[1:][codes]
        else:  # LIST: the row's range of items; each item's text
            codes, first = np.asarray(codes, dtype=np.int64), sum(len(q) for q in items)
            starts[:, j], ends[:, j] = first + np.asarray(offsets[:-1]), first + np.asarray(offsets[1:])
            items.append(np.stack([bounds[:-1][codes], bounds[1:][codes]], axis=1))
        text_bytes += int((ends[:, j] - starts[:, j]).sum()) if kind != LIST else \
            int((items[-1][:, 1] - items[-1][:, 0]).sum()) + len(codes)
        start += len(joined)
        blob_parts.append(joined)
    blob = np.frombuffer("".join(blob_parts).encode("ascii"), dtype=np.uint8) if start else np.zeros(1, np.uint8)
    int_block = np.empty((rows, max(1, len(ints))), dtype=np.int64)
    for j, (_, values) in enumerate(ints):
        int_block[:, j] = values if isinstance(values, np.ndarray) else [NULL if v is None else v for v in values]
    float_block = np.empty((rows, len(floats)), dtype=np.float64)
    for j, (_, values) in enumerate(floats):
        float_block[:, j] = values
    size = text_bytes + rows * (len(floats) * (MAX_CHARS + 1) + len(ints) * 21 + kinds.size + 2)
    out = np.empty(max(size, 1), dtype=np.uint8)
    end = csv_lines(rows, kinds, index, blob, starts, ends, np.concatenate(items), int_block,
                    float_block.view(np.uint64), out)
    return out[:end].tobytes().decode("ascii")
