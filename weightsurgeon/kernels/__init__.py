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
from __future__ import annotations

import importlib
from typing import Any

# Public names and the submodule each lives in, imported on first use: importing
# weightsurgeon.kernels.histogram (the diff's planning) must not import numpy.
_HOME = {
    "ITEMSIZE": "dtypes",
    "SUPPORTED_FAST_DTYPES": "dtypes",
    "DeltaStats": "stats",
    "accumulate_delta": "delta",
    "accumulate_delta_from_files": "delta",
    "count_nonfinite": "delta",
    "decode_to_float32": "decode",
    "decode_to_float64": "decode",
    "encode_from_float32": "decode",
    "reads_files": "delta",
    "reference_delta_stats": "reference",
    "warmup": "delta",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


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


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
