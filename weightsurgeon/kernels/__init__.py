"""Numba kernels of the Delta stethoscope (installed as weightsurgeon.kernels).

Imports nothing of the project. Modules: dtypes (the one dtype table, plain data), decode
(exact conversions, numpy), stats (DeltaStats), delta (entry points; numba loads on first
call), _compiled (the numba kernel), reference (its numpy twin, the tests' oracle). This
file imports none of them: the header parser reads the dtype table without numpy.

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
