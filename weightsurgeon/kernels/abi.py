"""What Python and the compiled kernels agree on, without numba: codes, columns, sizes.

The diff may run the kernels as native code loaded without numba (native.py), so the
numbers both sides use live here, importable on their own.
"""
from __future__ import annotations

from weightsurgeon.kernels.histogram import PART  # noqa: F401  (elements per parallel task)

# How the kernel decodes a source array (it always receives unsigned-integer bit patterns).
CODE_BF16 = 0
CODE_F16 = 1
CODE_F32 = 2
CODE_F64 = 3

BLOCK = 8192  # elements per block: its scratch arrays (about 230 KiB) stay in L2; fewer calls
SKEW = 16  # elements between scratch arrays (see _compiled._delta_part)

# Columns of the per-part float results and integer counts.
SUM_SQ_DELTA, SUM_SQ_A, SUM_SQ_B, DOT_AB, SUM_DELTA, MAX_ABS_DELTA = range(6)
N_SUMS = 6
N_FINITE, N_BASE_ZERO = range(2)
N_COUNTS = 2
# Entries of the constants array (work dtype) that accumulate_delta passes in: the
# histogram range, bins / (hi - lo), the largest finite value, 0, 1/2, 1, and how close
# (in bins) an arithmetic bin position may come to an edge before numpy's edge decides,
# and numpy's bin of 0.0.
C_LO, C_HI, C_SCALE, C_BIG, C_ZERO, C_HALF, C_ONE, C_NEAR, C_ZERO_BIN = range(9)
N_CONSTS = 9

# Scratch one part needs (see _compiled._delta_part), allocated by the callers and reused:
SCRATCH_SIZE = 6 * (BLOCK + SKEW)  # work-dtype elements: six block arrays, skewed
CODES_SIZE = BLOCK + 8 * SKEW  # int32 bin codes, skewed
ACC_SIZE = 10  # float64 accumulators: two chains of the five sums


def sub_size(nbins: int) -> int:
    """int32 counters of the interleaved sub-histograms (slot nbins: excluded elements)."""
    return 4 * (nbins + 1)
