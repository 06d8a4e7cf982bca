"""The compiled float-to-text of report.csv writes what repr writes, character for character.

report.csv's floats must read back to the same bits; repr's text is the shortest that does,
and the compiled writer (kernels/_floattext.py) must produce exactly it. Checked on every
binary exponent (the edges of each one's significands, where the rounding interval is
lopsided), subnormals, powers of ten and their neighbours, values from float32, short
decimals, integers, and random bit patterns.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from weightsurgeon.kernels._floattext import float_cells


def _expected(values: np.ndarray) -> list[str]:
    return [repr(v) if math.isfinite(v) else "" for v in values.tolist()]


def _check(values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float64)
    got = float_cells(values)
    want = _expected(values)
    wrong = [(v, g, w) for v, g, w in zip(values.tolist(), got, want) if g != w]
    assert not wrong, f"{len(wrong)} of {values.size} differ from repr, e.g. {wrong[:5]}"
    finite = np.isfinite(values)
    back = np.array([float(c) for c, f in zip(got, finite) if f])
    assert np.array_equal(back.view(np.uint64), values[finite].view(np.uint64))  # bit for bit, -0.0 included


def test_special_values_and_empty_cells():
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 2.0, 10.0, 1e16, 1e15, 9999999999999998.0, 1e-5, 1e-4,
                       0.0001234, 5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
                       1.7976931348623157e308, math.pi, math.e, 1 / 3, 2 / 3, 123.456, 1e22, 1e23, 9007199254740993.0,
                       math.nan, math.inf, -math.inf])
    assert float_cells(values)[-3:] == ["", "", ""]
    _check(values)
    assert float_cells(np.array([], dtype=np.float64)) == []


def test_every_binary_exponent_at_the_edges_of_its_significands():
    rng = np.random.default_rng(0)
    rows = []
    for biased in range(0, 2047):
        fractions = [0, 1, 2, 3, (1 << 52) - 1, (1 << 52) - 2, 1 << 51, *rng.integers(0, 1 << 52, 6).tolist()]
        rows += [(biased << 52) | f for f in fractions]
    bits = np.array(rows, dtype=np.uint64)
    _check(bits.view(np.float64))
    _check(-bits.view(np.float64))


def test_powers_of_ten_and_their_neighbours():
    tens = np.array([float(f"1e{k}") for k in range(-323, 309)])
    _check(tens)
    _check(np.nextafter(tens, math.inf))
    _check(np.nextafter(tens, 0.0))
    _check(tens[:-1] * 3.0)


def test_values_the_diff_writes_most():
    rng = np.random.default_rng(1)
    from_f32 = rng.standard_normal(50_000).astype(np.float32).astype(np.float64)
    short = np.array([round(v, d) for v, d in zip(rng.uniform(-1000, 1000, 50_000).tolist(),
                                                  rng.integers(0, 8, 50_000).tolist())])
    integers = rng.integers(-(1 << 53), 1 << 53, 20_000).astype(np.float64)
    small_ints = np.arange(-2000, 2000, dtype=np.float64)
    spread = rng.standard_normal(100_000) * np.exp(rng.uniform(-700, 700, 100_000))
    for values in (from_f32, short, integers, small_ints, spread):
        _check(values)


@pytest.mark.parametrize("seed", [2, 3])
def test_random_bit_patterns(seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, np.iinfo(np.uint64).max, 300_000, dtype=np.uint64, endpoint=True)
    _check(bits.view(np.float64))  # NaN/inf patterns among them: empty cells


def test_subnormals():
    rng = np.random.default_rng(4)
    bits = rng.integers(1, 1 << 52, 50_000, dtype=np.uint64)
    _check(bits.view(np.float64))
    _check(np.array([5e-324 * k for k in range(1, 3000)]))
