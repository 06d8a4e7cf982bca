"""Shape of the relative change: every number against an independent numpy/scipy computation,
and the planted bimodal o_proj of synth.py found bimodal while the other modules are not."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from weightsurgeon.kernels import shape
from weightsurgeon.kernels.delta import accumulate_delta
from weightsurgeon.kernels.stats import DeltaStats


def bimodal(rng, n: int, spread: float = 0.3) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, -1.0, 1.0) * math.sqrt(1 - spread ** 2) + spread * rng.standard_normal(n)


SHAPES = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "bimodal": bimodal,
    "skewed": lambda rng, n: rng.exponential(1.0, n) - 1.0,
    "uniform": lambda rng, n: rng.uniform(-1.7, 1.7, n),
}


def clipped_ratio(a: np.ndarray, b: np.ndarray, clip: float) -> np.ndarray:
    """What the kernel bins, written out: r = (B - A) / A in float32 where A != 0, clipped."""
    keep = a != 0
    return np.clip((b[keep] - a[keep]) / a[keep], -clip, clip)


def pair(kind: str, n: int, scale: float, seed: int = 0, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 0.02).astype(np.float32)
    z = SHAPES[kind](rng, n)
    b = (a * (1.0 + offset + scale * z)).astype(np.float32)
    return a, b


def kernel_stats(a, b, bins=200, clip=1.0) -> DeltaStats:
    stats = DeltaStats.empty(bins, clip)
    accumulate_delta(stats, a.view(np.uint32), b.view(np.uint32), "F32", "F32")
    return stats


def scipy_modes(hist: np.ndarray, clip: float, std: float) -> list[float]:
    """The documented mode rule written with scipy: smooth the inner bins, pad with zeros, find_peaks."""
    inner = hist[1:-1].astype(np.float64)
    n = inner.sum()
    width = 2 * clip / len(hist)
    sigma = max(1.0, 0.9 * std * n ** -0.2 / width)
    y = gaussian_filter1d(inner, sigma, mode="constant", cval=0.0, truncate=4.0)
    peaks, _ = find_peaks(np.concatenate(([0.0], y, [0.0])), prominence=shape.MODE_PROMINENCE * y.max())
    return [-clip + (p - 1 + 1.5) * width for p in peaks]


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_moments_from_the_kernel_equal_scipy(kind) -> None:
    a, b = pair(kind, 300_000, 0.1, seed=3)
    got = kernel_stats(a, b)
    c = clipped_ratio(a, b, 1.0).astype(np.float64)
    assert got.r_n == c.size
    assert got.r_mean == pytest.approx(c.mean(), rel=1e-10, abs=1e-13)
    assert got.r_std == pytest.approx(c.std(), rel=1e-10)
    assert got.r_skewness == pytest.approx(scipy.stats.skew(c), rel=1e-8, abs=1e-10)
    assert got.r_excess_kurtosis == pytest.approx(scipy.stats.kurtosis(c), rel=1e-8, abs=1e-10)
    g1, g2 = scipy.stats.skew(c, bias=False), scipy.stats.kurtosis(c, bias=False)
    n = c.size
    sarle = (g1 ** 2 + 1) / (g2 + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    assert got.bimodality == pytest.approx(sarle, rel=1e-9)
    assert got.modes == pytest.approx(scipy_modes(got.hist, 1.0, c.std()))


def test_known_shapes_give_known_answers() -> None:
    expected = {"normal": (1, 1 / 3), "bimodal": (2, 0.75), "uniform": (1, 5 / 9)}
    for kind, (modes, sarle) in expected.items():
        got = kernel_stats(*pair(kind, 400_000, 0.1, seed=7))
        assert len(got.modes) == modes, (kind, got.modes)
        assert got.bimodality == pytest.approx(sarle, abs=0.02), kind
    two = kernel_stats(*pair("bimodal", 400_000, 0.1, seed=7)).modes
    assert two == pytest.approx([-0.0954, 0.0954], abs=0.011)  # at +-sqrt(1 - 0.3^2) * scale, within a bin


def test_large_mean_does_not_cancel() -> None:
    """Every weight scaled by about 1.01: raw power sums would lose the spread to cancellation."""
    a, b = pair("normal", 200_000, 1e-4, seed=1, offset=0.01)
    got = kernel_stats(a, b)
    c = clipped_ratio(a, b, 1.0).astype(np.float64)
    assert got.r_std == pytest.approx(c.std(), rel=1e-9)
    assert got.r_skewness == pytest.approx(scipy.stats.skew(c), rel=1e-6, abs=1e-8)
    assert got.r_excess_kurtosis == pytest.approx(scipy.stats.kurtosis(c), rel=1e-6, abs=1e-8)


def test_merging_chunks_equals_one_pass() -> None:
    a, b = pair("skewed", 250_001, 0.2, seed=5)
    whole = kernel_stats(a, b)
    merged = DeltaStats.empty()
    for start in range(0, a.size, 70_001):
        merged.merge(kernel_stats(a[start:start + 70_001], b[start:start + 70_001]))
    for name in ("r_mean", "r_m2", "r_m3", "r_m4"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-11, abs=1e-15)
    back = DeltaStats.from_dict(whole.to_dict())
    assert (back.r_mean, back.r_m2, back.r_m3, back.r_m4) == (whole.r_mean, whole.r_m2, whole.r_m3, whole.r_m4)


def test_combine_equals_numpy_on_groups() -> None:
    rng = np.random.default_rng(2)
    groups = [rng.normal(loc, s, n) for loc, s, n in ((0.3, 0.1, 500), (-2.0, 1.0, 70), (5.0, 0.01, 3), (0, 1, 0))]
    parts = [shape.central_sums(g.size, g[0] if g.size else 0.0, *(np.sum((g - (g[0] if g.size else 0)) ** k)
                                                                    for k in (1, 2, 3, 4))) for g in groups]
    n, mean, m2, m3, m4 = shape.combine([g.size for g in groups], *zip(*parts))
    x = np.concatenate(groups)
    assert n == x.size and mean == pytest.approx(x.mean(), rel=1e-12)
    for k, m in ((2, m2), (3, m3), (4, m4)):
        assert m == pytest.approx(np.sum((x - x.mean()) ** k), rel=1e-10)


def test_undefined_shapes_are_nan() -> None:
    empty = DeltaStats.empty()
    assert math.isnan(empty.r_std) and math.isnan(empty.bimodality) and empty.modes == []
    a = np.ones(1000, dtype=np.float32)
    constant = kernel_stats(a, a * np.float32(1.5))  # every r = 0.5: no spread
    assert constant.r_mean == 0.5 and constant.r_std == 0.0 and math.isnan(constant.r_skewness)
    assert constant.modes == [pytest.approx(0.505)]


def test_planted_bimodal_o_proj_is_recovered(tiny_model, tmp_path) -> None:
    from weightsurgeon.diff import diff_checkpoints
    from weightsurgeon.synth import make_tuned

    base = tiny_model(num_layers=3, hidden_size=128, intermediate_size=256, vocab_size=300, dtype="f32")
    tuned = make_tuned(base, tmp_path / "tuned")
    report = diff_checkpoints(base, tuned)
    linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    seen = set()
    for row in report.modules:
        if row.module not in linear:
            continue
        seen.add(row.module)
        bimodal_row = len(row.stats.modes) == 2 and row.stats.bimodality > shape.BIMODALITY_THRESHOLD
        unimodal_row = len(row.stats.modes) == 1 and row.stats.bimodality < shape.BIMODALITY_THRESHOLD
        assert bimodal_row if row.module == "o_proj" else unimodal_row, (row.layer, row.module, row.stats.modes,
                                                                         row.stats.bimodality)
    assert seen == set(linear)
