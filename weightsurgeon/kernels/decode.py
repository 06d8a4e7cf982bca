"""Exact conversions between stored dtypes and float32/float64, in plain numpy.

The surgery code (interpolation, --cast, reinit) and the kernels' slow path share these,
so a value means the same thing everywhere: decoding is exact, encoding rounds to
nearest, ties to even, like torch's and numpy's own casts.
"""
from __future__ import annotations

import functools

import numpy as np

from weightsurgeon.kernels.dtypes import dtype_info

_UINT_OF_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def as_bits(x: np.ndarray, dtype: str) -> np.ndarray:
    """View a chunk as unsigned-integer bit patterns of `dtype`'s width, without copying.

    Accepts any numpy array whose itemsize matches the dtype (uint16 or float16 for F16,
    float32 or uint32 for F32, ...) and raw uint8 byte buffers (a chunk read from disk).
    Non-contiguous, read-only or misaligned arrays are copied.
    """
    width = dtype_info(dtype).width
    arr = np.asarray(x)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.itemsize != width:
        if arr.dtype != np.uint8:
            raise ValueError(f"a {dtype} chunk needs {width}-byte elements, got numpy dtype {arr.dtype}")
        if arr.size % width:
            raise ValueError(f"a {dtype} chunk of raw bytes must hold a multiple of {width} bytes, got {arr.size}")
    if not (arr.flags.c_contiguous and arr.flags.writeable and arr.flags.aligned):
        # numba compiles (and caches) a separate kernel for read-only or unaligned arrays:
        # a copy of this chunk is far cheaper than that. Readers should pass their reused,
        # writable read buffers.
        arr = np.array(arr, order="C", copy=True)
    return arr.view(_UINT_OF_WIDTH[width])


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a stored chunk is read as (bit patterns where numpy has no such type)."""
    return np.dtype(dtype_info(dtype).storage)


def work_dtype(dtype_a: str, dtype_b: str) -> type:
    """The precision A and B are compared in: float64 when either side needs it (the table's
    work "f8": F64, 32/64-bit integers), else float32. ValueError for values that are not
    real numbers (complex)."""
    works = {dtype_info(dtype_a).work, dtype_info(dtype_b).work}
    if None in works:
        raise ValueError(f"cannot compare {dtype_a} with {dtype_b}: complex values have no real difference")
    return np.float64 if "f8" in works else np.float32


@functools.lru_cache(maxsize=None)
def _f8_table(dtype: str) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an 8-bit float format (see dtypes.TABLE)."""
    ebits, mbits, bias, style = dtype_info(dtype).f8
    bits = np.arange(256, dtype=np.uint32)
    if style == "e8m0":  # scale format: 2**(e - 127), no sign, no zero
        values = np.ldexp(1.0, bits.astype(np.int64) - bias)
    else:
        sign = np.where(bits >> 7, -1.0, 1.0)
        exp = ((bits >> mbits) & ((1 << ebits) - 1)).astype(np.int64)
        mant = (bits & ((1 << mbits) - 1)).astype(np.float64)
        frac = np.where(exp == 0, mant / (1 << mbits), 1.0 + mant / (1 << mbits))
        values = sign * np.ldexp(frac, np.where(exp == 0, 1 - bias, exp - bias))
    mask, value = dtype_info(dtype).nan
    special = (bits & mask) == value
    values[special] = np.nan
    if style == "ieee":  # the top exponent with a zero mantissa is Inf, not NaN
        inf = special & ((bits & ((1 << mbits) - 1)) == 0)
        values[inf] = np.where(bits[inf] >> 7, -np.inf, np.inf)
    table = values.astype(np.float32)
    table.setflags(write=False)
    return table


def decode_to_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values of a stored chunk as float32: exact for every dtype of 16 bits or less and F32.

    F64 and 32/64-bit integers round to the nearest float32 (use decode_to_float64 to keep them).
    """
    info = dtype_info(dtype)
    if info.work is None:
        raise ValueError(f"{dtype} values are not real numbers")
    bits = as_bits(x, dtype)
    if dtype == "BF16":
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype == "F32":
        return bits.view(np.float32).copy()
    if info.f8 is not None:
        return _f8_table(dtype)[bits]
    return bits.view(storage_dtype(dtype)).astype(np.float32)


def decode_to_float64(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values of a stored chunk as float64: exact for every dtype except 64-bit integers beyond 2**53."""
    info = dtype_info(dtype)
    if dtype == "F64":
        return as_bits(x, dtype).view(np.float64).copy()
    if info.work == "f8":  # integers float32 cannot hold
        return as_bits(x, dtype).view(storage_dtype(dtype)).astype(np.float64)
    return decode_to_float32(x, dtype).astype(np.float64)


def _encode_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN with its sign."""
    bits = x.view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = ((bits + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def _encode_f8(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> 8-bit float bits, round to nearest even on the format's grid.

    Overflow does what torch's casts do: inf for E5M2, saturation at +-448 for E4M3 (no
    inf), NaN for the FNUZ formats (no inf; their NaN 0x80 has no sign and -0 becomes 0).
    """
    ebits, mbits, bias, style = dtype_info(dtype).f8
    table = _f8_table(dtype).astype(np.float64)
    finite = table[:128][np.isfinite(table[:128])]  # positive finite values, ascending with the code
    values = x.astype(np.float64)
    mag = np.abs(values)
    nan = np.isnan(values)
    with np.errstate(invalid="ignore", over="ignore"):
        _, exp2 = np.frexp(mag)  # mag = m * 2**exp2, m in [0.5, 1)
        quantum = np.maximum(exp2 - 1, 1 - bias) - mbits  # spacing of the grid around mag
        rounded = np.ldexp(np.rint(np.ldexp(mag, -quantum)), quantum)
    overflow = ~nan & ~(rounded <= finite[-1])
    code = np.searchsorted(finite, np.where(nan | overflow, 0.0, rounded)).astype(np.uint8)
    if style == "fnuz":
        code |= np.where(np.signbit(values) & (code != 0), np.uint8(0x80), np.uint8(0))
        code[nan | overflow] = 0x80
        return code
    code[overflow] = 0x7E if style == "fn" else 0x7C
    code[nan] = 0x7F
    return code | np.where(np.signbit(values), np.uint8(0x80), np.uint8(0))


def encode_from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> stored representation of `dtype` (BF16 and F8 as unsigned bits, F16 as float16).

    Rounds to nearest, ties to even; overflow gives inf where the format has one, as
    torch's casts do (see _encode_f8 for the 8-bit formats). Dtypes the table does not
    call encodable (integers, complex, the F8_E8M0 scale format) are refused (ValueError).
    """
    if not dtype_info(dtype).encodable:
        raise ValueError(f"cannot encode float values to {dtype}")
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if dtype == "BF16":
        return _encode_bf16(arr.reshape(-1)).reshape(arr.shape)
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return arr.astype(np.float16)
    if dtype == "F32":
        return arr.copy()
    if dtype == "F64":
        return arr.astype(np.float64)
    return _encode_f8(arr.reshape(-1), dtype).reshape(arr.shape)
