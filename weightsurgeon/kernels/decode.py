"""Exact conversions between stored dtypes and float32/float64, in plain numpy.

The surgery code (interpolation, --cast, reinit) and the kernels' slow path share these,
so a value means the same thing everywhere: decoding is exact, encoding rounds to
nearest, ties to even, like torch's and numpy's own casts.
"""
from __future__ import annotations

import functools

import numpy as np

from weightsurgeon.kernels.dtypes import FLOAT_DTYPES, NUMPY_DTYPE, as_bits, check_dtype

# 8-bit float formats: (exponent bits, mantissa bits, bias). E4M3 is the "fn" variant
# (no infinities, NaN = S.1111.111, max 448); E5M2 is IEEE-like (the top byte of a float16).
_F8_FORMATS = {"F8_E4M3": (4, 3, 7), "F8_E5M2": (5, 2, 15)}


@functools.lru_cache(maxsize=None)
def _f8_table(dtype: str) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an 8-bit float format."""
    bits = np.arange(256, dtype=np.uint32)
    if dtype == "F8_E8M0":
        # Scale format: 2**(e - 127), no sign, no zero, 0xFF is NaN.
        exps = bits.astype(np.float64) - 127.0
        values = np.ldexp(1.0, exps.astype(np.int64))
        values[255] = np.nan
        table = values.astype(np.float32)
    else:
        ebits, mbits, bias = _F8_FORMATS[dtype]
        sign = np.where(bits >> 7, -1.0, 1.0)
        exp = ((bits >> mbits) & ((1 << ebits) - 1)).astype(np.int64)
        mant = (bits & ((1 << mbits) - 1)).astype(np.float64)
        frac = np.where(exp == 0, mant / (1 << mbits), 1.0 + mant / (1 << mbits))
        values = sign * np.ldexp(frac, np.where(exp == 0, 1 - bias, exp - bias))
        emax = (1 << ebits) - 1
        if dtype == "F8_E4M3":
            values[(exp == emax) & (mant == (1 << mbits) - 1)] = np.nan
        else:
            values[(exp == emax) & (mant == 0)] = sign[(exp == emax) & (mant == 0)] * np.inf
            values[(exp == emax) & (mant != 0)] = np.nan
        table = values.astype(np.float32)
    table.setflags(write=False)
    return table


def decode_to_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values of a stored chunk as float32: exact for every dtype of 16 bits or less and F32.

    F64 and 32/64-bit integers round to the nearest float32 (use decode_to_float64 to keep them).
    """
    check_dtype(dtype)
    bits = as_bits(x, dtype)
    if dtype == "BF16":
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype == "F32":
        return bits.view(np.float32).copy()
    if dtype in ("F8_E4M3", "F8_E5M2", "F8_E8M0"):
        return _f8_table(dtype)[bits]
    return bits.view(NUMPY_DTYPE[dtype]).astype(np.float32)


def decode_to_float64(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values of a stored chunk as float64: exact for every dtype except 64-bit integers beyond 2**53."""
    check_dtype(dtype)
    if dtype == "F64":
        return as_bits(x, dtype).view(np.float64).copy()
    if dtype in ("I32", "U32", "I64", "U64"):
        return as_bits(x, dtype).view(NUMPY_DTYPE[dtype]).astype(np.float64)
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
    """float32 -> F8_E4M3 / F8_E5M2 bits, round to nearest even on the format's grid.

    Overflow gives inf for E5M2 and saturates to +-448 for E4M3 (it has no inf), as
    torch's casts do.
    """
    ebits, mbits, bias = _F8_FORMATS[dtype]
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
    code[overflow] = 0x7E if dtype == "F8_E4M3" else 0x7C
    code[nan] = 0x7F
    return code | np.where(np.signbit(values), np.uint8(0x80), np.uint8(0))


def encode_from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> stored representation of `dtype` (BF16 and F8 as unsigned bits, F16 as float16).

    Rounds to nearest, ties to even; overflow gives inf (F8_E4M3, which has none,
    saturates at +-448, as torch does).
    Integer dtypes and the F8_E8M0 scale format are refused (ValueError).
    """
    check_dtype(dtype)
    if dtype not in FLOAT_DTYPES or dtype == "F8_E8M0":
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
