"""Numba kernels of the Delta stethoscope (installed as weightsurgeon.kernels).

Imports nothing of the project and not numba either: the compiled code loads on first use.

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
from weightsurgeon.kernels.decode import decode_to_float32, decode_to_float64, encode_from_float32
from weightsurgeon.kernels.delta import (accumulate_delta, accumulate_delta_from_files, count_nonfinite, reads_files,
                                        warmup)
from weightsurgeon.kernels.dtypes import ITEMSIZE, SUPPORTED_FAST_DTYPES
from weightsurgeon.kernels.reference import reference_delta_stats
from weightsurgeon.kernels.stats import DeltaStats

__all__ = [
    "ITEMSIZE",
    "SUPPORTED_FAST_DTYPES",
    "DeltaStats",
    "accumulate_delta",
    "accumulate_delta_from_files",
    "count_nonfinite",
    "decode_to_float32",
    "decode_to_float64",
    "encode_from_float32",
    "reads_files",
    "reference_delta_stats",
    "warmup",
]
