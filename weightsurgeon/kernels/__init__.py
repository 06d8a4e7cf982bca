"""Numba kernels of the Delta stethoscope (installed as weightsurgeon.kernels).

Imports nothing of the project, and numpy only: the compiled code (numba) loads on first use.

Definitions, for a chunk pair A, B in their stored dtypes:

- values decode exactly to float32, or float64 when either side is F64 or a 32/64-bit
  integer (the "work precision");
- elements where A or B is NaN/inf are left out of every statistic and counted (n_nonfinite);
- d = B - A and r = d / A are evaluated in the work precision; sums (of d², A², B², A·B, d)
  accumulate in float64; max_abs_delta is max |d|;
- elements with A == 0 are left out of the histogram only, and counted (n_base_zero);
- hist == np.histogram(np.clip(r, -clip, clip), bins, range=(-clip, clip))[0], exactly:
  values beyond the range land in the edge bins.

`reference_delta_stats` is the same in plain numpy and serves as the tests' oracle.
"""
from __future__ import annotations

from weightsurgeon.kernels.decode import decode_to_float32, decode_to_float64, encode_from_float32, storage_dtype, work_dtype
from weightsurgeon.kernels.delta import accumulate_delta, accumulate_delta_from_files, count_nonfinite, reads_files, warmup
from weightsurgeon.kernels.dtypes import TABLE, DType, dtype_info, itemsize
from weightsurgeon.kernels.reference import reference_delta_stats
from weightsurgeon.kernels.stats import DeltaStats

__all__ = [
    "TABLE",
    "DType",
    "DeltaStats",
    "accumulate_delta",
    "accumulate_delta_from_files",
    "count_nonfinite",
    "decode_to_float32",
    "dtype_info",
    "decode_to_float64",
    "encode_from_float32",
    "itemsize",
    "reads_files",
    "reference_delta_stats",
    "storage_dtype",
    "warmup",
    "work_dtype",
]
