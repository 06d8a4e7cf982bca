"""safetensors dtype names, their widths, and how the kernels treat each one.

The kernels see every tensor in its *stored* representation: the raw bits, viewed as an
unsigned integer of the element's width. This module is the one place that knows which
names exist and how wide they are.
"""
from __future__ import annotations

import numpy as np

# Element size in bytes of every safetensors dtype the kernels accept.
ITEMSIZE: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

# Decoded in-register by the compiled kernel (no numpy pass over the data).
SUPPORTED_FAST_DTYPES = ("BF16", "F16", "F32")

# Values that float32 cannot hold exactly: comparing them in float64 keeps the
# definitions exact ("decode exactly") instead of silently rounding.
WIDE_DTYPES = ("F64", "I32", "U32", "I64", "U64")

FLOAT_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F16", "BF16", "F32", "F64")

_UINT_OF_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# Plain numpy dtypes for the names numpy has natively.
NUMPY_DTYPE: dict[str, type] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "I32": np.int32,
    "U32": np.uint32,
    "I64": np.int64,
    "U64": np.uint64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
}


def check_dtype(dtype: str) -> str:
    """Return `dtype` if it is a safetensors dtype name the kernels know, else raise ValueError."""
    if dtype not in ITEMSIZE:
        known = ", ".join(sorted(ITEMSIZE))
        raise ValueError(f"unsupported dtype {dtype!r} (known: {known})")
    return dtype


def as_bits(x: np.ndarray, dtype: str) -> np.ndarray:
    """View a chunk as unsigned-integer bit patterns of `dtype`'s width, without copying.

    Accepts any numpy array whose itemsize matches the dtype (uint16 or float16 for F16,
    float32 or uint32 for F32, ...) and raw uint8 byte buffers (a chunk read from disk).
    Non-contiguous, read-only or misaligned arrays are copied.
    """
    width = ITEMSIZE[check_dtype(dtype)]
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
