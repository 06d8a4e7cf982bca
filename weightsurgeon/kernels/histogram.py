"""The histogram's parameters and the kernels' fixed part size, without numpy: a diff is
validated and planned before numpy is imported (the read-ahead starts earlier)."""
from __future__ import annotations

import math
import numbers

DEFAULT_BINS = 200
DEFAULT_CLIP = 1.0
PART = 1 << 16  # elements per parallel task of the kernels: fixed, so float sums do not depend on threads
MAX_BINS = 100_000  # beyond this float32 bin edges get too close for an exact one-step edge check


def check_histogram(bins: int, clip: float) -> tuple[int, float]:
    """Validate histogram parameters (ValueError with a user-facing message)."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an integer in 1..{MAX_BINS}, got {bins!r}")
    clip = float(clip)
    if not (math.isfinite(clip) and 1e-30 <= clip <= 1e30):
        raise ValueError(f"clip must be a finite number in [1e-30, 1e30], got {clip!r}")
    return int(bins), clip
