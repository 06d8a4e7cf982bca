"""DeltaStats: the statistics of B - A over a set of elements, additive across chunks.

Every field is a sum, a count, a maximum or a histogram, or the mean and central sums of
the clipped relative change (merged exactly by kernels/shape.combine), so a tensor's
statistics are the merge of its chunks' and a module's the merge of its tensors'. Derived
numbers (norms, relative change, cosine, std, skewness, kurtosis, bimodality, modes) are
properties computed from those, never stored.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_BINS = 200
DEFAULT_CLIP = 1.0
MAX_BINS = 100_000  # beyond this float32 bin edges get too close for an exact one-step edge check
PART = 1 << 16  # elements per parallel task of the kernels: fixed, so float sums do not depend on threads


def check_histogram(bins: int, clip: float) -> tuple[int, float]:
    """Validate histogram parameters (ValueError with a user-facing message)."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an integer in 1..{MAX_BINS}, got {bins!r}")
    clip = float(clip)
    if not (math.isfinite(clip) and 1e-30 <= clip <= 1e30):
        raise ValueError(f"clip must be a finite number in [1e-30, 1e30], got {clip!r}")
    return int(bins), clip


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _from_json_float(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(eq=False)
class DeltaStats:
    """Statistics of d = B - A (definitions: weightsurgeon.kernels docstring). eq=False: hist is an array."""

    bins: int = DEFAULT_BINS
    clip: float = DEFAULT_CLIP
    n: int = 0  # elements counted: A and B both finite
    n_nonfinite: int = 0  # elements where A or B is NaN/inf: left out of everything
    n_base_zero: int = 0  # finite elements with A == 0: left out of the histogram only
    sum_sq_delta: float = 0.0
    sum_sq_a: float = 0.0
    sum_sq_b: float = 0.0
    dot_ab: float = 0.0
    sum_delta: float = 0.0
    max_abs_delta: float = 0.0
    hist: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    # The clipped relative change c over the histogram's elements (r_n of them): its mean
    # and central sums M_k = sum (c - r_mean)^k; NaN when unknown (a report of schema 1).
    r_mean: float = 0.0
    r_m2: float = 0.0
    r_m3: float = 0.0
    r_m4: float = 0.0

    def __post_init__(self) -> None:
        self.bins, self.clip = check_histogram(self.bins, self.clip)
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.int64)
        else:
            self.hist = np.asarray(self.hist, dtype=np.int64).copy()
            if self.hist.shape != (self.bins,):
                raise ValueError(f"hist must have {self.bins} counts, got shape {self.hist.shape}")

    @classmethod
    def empty(cls, bins: int = DEFAULT_BINS, clip: float = DEFAULT_CLIP) -> "DeltaStats":
        return cls(bins=bins, clip=clip)

    def merge(self, other: "DeltaStats") -> None:
        """Add `other` into self (max for max_abs_delta); both must share bins and clip."""
        if (other.bins, other.clip) != (self.bins, self.clip):
            raise ValueError(
                f"cannot merge statistics with different histograms: "
                f"bins={self.bins}, clip={self.clip} vs bins={other.bins}, clip={other.clip}"
            )
        self.add_moments(other.r_n, other.r_mean, other.r_m2, other.r_m3, other.r_m4)
        self.add_sums(other)

    def add_sums(self, other: "DeltaStats") -> None:
        """Add `other`'s counts, sums, max and histogram, not its moments: a caller merging
        many (a module's tensors) combines their moments once, at the end."""
        self.n += other.n
        self.n_nonfinite += other.n_nonfinite
        self.n_base_zero += other.n_base_zero
        self.sum_sq_delta += other.sum_sq_delta
        self.sum_sq_a += other.sum_sq_a
        self.sum_sq_b += other.sum_sq_b
        self.dot_ab += other.dot_ab
        self.sum_delta += other.sum_delta
        self.max_abs_delta = max(self.max_abs_delta, other.max_abs_delta)
        self.hist += other.hist

    def add_moments(self, n: Any, mean: Any, m2: Any, m3: Any, m4: Any) -> None:
        """Merge groups of clipped ratios (counts, means, central sums; scalars or arrays) into
        r_mean/r_m*. Call before adding their counts to the histogram: r_n is read from it."""
        from weightsurgeon.kernels.shape import combine

        _, self.r_mean, self.r_m2, self.r_m3, self.r_m4 = combine(
            np.append(self.r_n, n), np.append(self.r_mean, mean), np.append(self.r_m2, m2),
            np.append(self.r_m3, m3), np.append(self.r_m4, m4))

    @property
    def r_n(self) -> int:
        """Elements of the relative change: the histogram's count (finite, A != 0)."""
        return int(self.hist.sum())

    @property
    def r_std(self) -> float:
        from weightsurgeon.kernels.shape import moments

        return moments(self.r_n, self.r_m2, self.r_m3, self.r_m4)[0]

    @property
    def r_skewness(self) -> float:
        from weightsurgeon.kernels.shape import moments

        return moments(self.r_n, self.r_m2, self.r_m3, self.r_m4)[1]

    @property
    def r_excess_kurtosis(self) -> float:
        from weightsurgeon.kernels.shape import moments

        return moments(self.r_n, self.r_m2, self.r_m3, self.r_m4)[2]

    @property
    def bimodality(self) -> float:
        """Sarle's bimodality coefficient of the clipped relative change (> 5/9 hints at two modes)."""
        from weightsurgeon.kernels.shape import bimodality

        return bimodality(self.r_n, self.r_skewness, self.r_excess_kurtosis)

    @property
    def modes(self) -> list[float]:
        """Positions of the modes of the smoothed histogram (kernels/shape.py states the smoothing)."""
        from weightsurgeon.kernels.shape import histogram_modes

        return histogram_modes(self.hist, self.clip, self.r_std)

    def shape_numbers(self) -> tuple[float, float, float, float, list[float]]:
        """(r_std, r_skewness, r_excess_kurtosis, bimodality, modes), each computed once: the
        report writes all five for each of up to ~100k tensors."""
        from weightsurgeon.kernels.shape import bimodality, histogram_modes, moments

        n = self.r_n
        std, skewness, kurtosis = moments(n, self.r_m2, self.r_m3, self.r_m4)
        return std, skewness, kurtosis, bimodality(n, skewness, kurtosis), histogram_modes(self.hist, self.clip, std)

    @property
    def numel(self) -> int:
        """All elements seen, finite or not."""
        return self.n + self.n_nonfinite

    @property
    def l2_delta(self) -> float:
        return math.sqrt(self.sum_sq_delta)

    @property
    def l2_a(self) -> float:
        return math.sqrt(self.sum_sq_a)

    @property
    def l2_b(self) -> float:
        return math.sqrt(self.sum_sq_b)

    @property
    def rel_l2(self) -> float:
        """||B - A|| / ||A||; NaN when A is all zeros."""
        l2_a = self.l2_a
        return self.l2_delta / l2_a if l2_a > 0 else math.nan

    @property
    def cosine(self) -> float:
        """cos(A, B); NaN when either side is all zeros."""
        denom = self.l2_a * self.l2_b
        return self.dot_ab / denom if denom > 0 else math.nan

    @property
    def mean_delta(self) -> float:
        return self.sum_delta / self.n if self.n else math.nan

    @property
    def bin_edges(self) -> np.ndarray:
        """The histogram's edges as np.histogram reports them (float64)."""
        return np.histogram_bin_edges(np.empty(0), bins=self.bins, range=(-self.clip, self.clip))

    def to_dict(self) -> dict:
        """JSON-ready: raw sums and counts (to merge again later), derived numbers, hist as a list.

        Non-finite floats (an overflowed sum, an undefined ratio) become None.
        """
        raw = {
            "bins": self.bins,
            "clip": self.clip,
            "n": int(self.n),
            "n_nonfinite": int(self.n_nonfinite),
            "n_base_zero": int(self.n_base_zero),
            "sum_sq_delta": self.sum_sq_delta,
            "sum_sq_a": self.sum_sq_a,
            "sum_sq_b": self.sum_sq_b,
            "dot_ab": self.dot_ab,
            "sum_delta": self.sum_delta,
            "max_abs_delta": self.max_abs_delta,
            "l2_delta": self.l2_delta,
            "l2_a": self.l2_a,
            "l2_b": self.l2_b,
            "rel_l2": self.rel_l2,
            "cosine": self.cosine,
            "mean_delta": self.mean_delta,
            "r_mean": self.r_mean,
            "r_m2": self.r_m2,
            "r_m3": self.r_m3,
            "r_m4": self.r_m4,
        }
        out = {k: (_json_float(v) if isinstance(v, float) else v) for k, v in raw.items()}
        out["hist"] = [int(c) for c in self.hist]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DeltaStats":
        """Inverse of to_dict (derived keys are ignored; None sums come back as NaN)."""
        return cls(
            bins=d["bins"],
            clip=d["clip"],
            n=int(d["n"]),
            n_nonfinite=int(d["n_nonfinite"]),
            n_base_zero=int(d["n_base_zero"]),
            sum_sq_delta=_from_json_float(d["sum_sq_delta"]),
            sum_sq_a=_from_json_float(d["sum_sq_a"]),
            sum_sq_b=_from_json_float(d["sum_sq_b"]),
            dot_ab=_from_json_float(d["dot_ab"]),
            sum_delta=_from_json_float(d["sum_delta"]),
            max_abs_delta=_from_json_float(d["max_abs_delta"]),
            hist=np.asarray(d["hist"], dtype=np.int64),
            **{k: _from_json_float(d.get(k)) for k in ("r_mean", "r_m2", "r_m3", "r_m4")},
        )


# DeltaStats' additive fields, in the order StatsColumns holds them.
INT_FIELDS = ("n", "n_nonfinite", "n_base_zero")
FLOAT_FIELDS = ("sum_sq_delta", "sum_sq_a", "sum_sq_b", "dot_ab", "sum_delta", "max_abs_delta", "r_mean", "r_m2",
                "r_m3", "r_m4")


@dataclass(eq=False)
class StatsColumns:
    """The DeltaStats of many tensors as columns: row i of every array is one tensor's field.

    A batch of ~4,000 small tensors leaves the kernel as arrays; kept as arrays, its rows are
    derived (kernels/_rowstats.py), written (report/rows.py) and summed into module totals
    without a Python object per tensor.
    """

    n: np.ndarray
    n_nonfinite: np.ndarray
    n_base_zero: np.ndarray
    sum_sq_delta: np.ndarray
    sum_sq_a: np.ndarray
    sum_sq_b: np.ndarray
    dot_ab: np.ndarray
    sum_delta: np.ndarray
    max_abs_delta: np.ndarray
    r_mean: np.ndarray
    r_m2: np.ndarray
    r_m3: np.ndarray
    r_m4: np.ndarray
    hist: np.ndarray  # [rows, bins] int64

    def __len__(self) -> int:
        return len(self.n)

    @classmethod
    def empty(cls, rows: int, bins: int) -> "StatsColumns":
        return cls(**{f: np.zeros(rows, dtype=np.int64) for f in INT_FIELDS},
                   **{f: np.zeros(rows, dtype=np.float64) for f in FLOAT_FIELDS},
                   hist=np.zeros((rows, bins), dtype=np.int64))

    @classmethod
    def of(cls, stats: list[DeltaStats], bins: int) -> "StatsColumns":
        """Columns of DeltaStats objects (rows computed one at a time: large or quantized tensors)."""
        if not stats:
            return cls.empty(0, bins)
        return cls(**{f: np.array([getattr(s, f) for s in stats], dtype=np.int64) for f in INT_FIELDS},
                   **{f: np.array([getattr(s, f) for s in stats], dtype=np.float64) for f in FLOAT_FIELDS},
                   hist=np.stack([s.hist for s in stats]))

    @classmethod
    def concat(cls, parts: list["StatsColumns"]) -> "StatsColumns":
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in INT_FIELDS + FLOAT_FIELDS + ("hist",)})

    def take(self, index: Any) -> "StatsColumns":
        return StatsColumns(**{f: getattr(self, f)[index] for f in INT_FIELDS + FLOAT_FIELDS + ("hist",)})

    @property
    def r_n(self) -> np.ndarray:
        """Elements of the relative change per row: its histogram's count."""
        return self.hist.sum(axis=1)

    def into(self, i: int, target: DeltaStats) -> None:
        """Row i's fields into a DeltaStats (a fresh one: the fields are set, not added)."""
        for f in INT_FIELDS:
            setattr(target, f, int(getattr(self, f)[i]))
        for f in FLOAT_FIELDS:
            setattr(target, f, float(getattr(self, f)[i]))
        target.hist = self.hist[i].astype(np.int64, copy=True)

    def row(self, i: int, bins: int, clip: float) -> DeltaStats:
        out = DeltaStats.empty(bins, clip)
        self.into(i, out)
        return out
