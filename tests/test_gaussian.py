"""Reinit's generator: Philox4x32-10 as published, the same values for any chunking and thread count, a normal law."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from weightsurgeon.kernels.gaussian import gaussian_fill, philox4x32, ziggurat_tables
from weightsurgeon.synth import make_checkpoint

# Random123's known-answer vectors for Philox4x32-10: (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_matches_the_published_vectors(counter, key, expected):
    assert tuple(int(v) for v in philox4x32(*counter, *key)) == expected


def test_ziggurat_layers_close_at_the_top():
    """Every layer has area v, and the top one reaches the density's peak: the tables are the right ones."""
    x, f = ziggurat_tables()
    assert x[1] > x[2] > x[255] > x[256] == 0.0
    top = f[255] + 4.92867323399e-3 / x[255]
    assert abs(top - 1.0) < 1e-9


def _fill(key: int, start: int, count: int) -> np.ndarray:
    return gaussian_fill(np.empty(count, np.float32), key, start, 0.0, 1.0)


def test_any_window_and_thread_count_gives_the_same_values():
    whole = _fill(7, 0, 300_001)
    # Windows that start at odd and even indices, inside and across the kernel's parts.
    for start, count in [(0, 1), (1, 1), (12_345, 1000), (16_383, 3), (16_384, 40_000), (99_999, 200_002)]:
        np.testing.assert_array_equal(_fill(7, start, count), whole[start:start + count])
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            np.testing.assert_array_equal(_fill(7, 0, 300_001), whole)
    finally:
        numba.set_num_threads(before)
    assert not np.array_equal(_fill(8, 0, 100), whole[:100])
    # Elements past 2^32 use the counter's high word.
    assert not np.array_equal(_fill(7, 1 << 32, 100), whole[:100])


def test_bf16_is_the_float32_values_rounded_to_nearest_even():
    from weightsurgeon.kernels.decode import encode_from_float32

    values = np.empty(50_000, np.float32)
    bits = gaussian_fill(values, 11, 3, 0.25, 3.0, bf16=np.empty(50_000, np.uint16))
    np.testing.assert_array_equal(bits, encode_from_float32(values, "BF16"))


def test_values_follow_the_normal_law():
    """Mean, std, tail mass and the Kolmogorov-Smirnov distance of 2M draws, against N(0.5, 2^2)."""
    n = 2_000_000
    x = gaussian_fill(np.empty(n, np.float32), 12345, 0, 0.5, 2.0).astype(np.float64)
    z = (x - 0.5) / 2.0
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1.0) < 5 / math.sqrt(2 * n)
    # The tail beyond r = 3.654 and the wedges are their own code paths: their mass must be right too.
    for edge in (1.0, 2.0, 3.0, 3.6541528853610088, 4.0):
        expected = math.erfc(edge / math.sqrt(2))
        got = np.mean(np.abs(z) > edge)
        assert abs(got - expected) < 5 * math.sqrt(expected / n), edge
    z.sort()
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z[::20] / math.sqrt(2)))  # every 20th point: exact enough, fast
    ranks = np.arange(0, n, 20)
    distance = max(np.max(cdf - ranks / n), np.max((ranks + 1) / n - cdf))
    assert distance < 1.95 / math.sqrt(n)  # the KS test's critical value at the 0.1% level


def test_reinit_writes_the_same_bytes_on_one_thread_and_on_all(tmp_path):
    """The real CLI, once with NUMBA_NUM_THREADS=1 and once with every core: identical shards."""
    base = make_checkpoint(tmp_path / "base", arch="llama", num_layers=2, dtype="bf16", hidden_size=256,
                           intermediate_size=1024)
    digests = set()
    for threads in ("1", str(max(2, os.cpu_count() or 2))):
        out = tmp_path / f"out{threads}"
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-m", "weightsurgeon", "reinit", str(base), "--module", "mlp", "--seed", "4",
                        "-q", "--no-fsync", "-o", str(out)], check=True, env=env)
        digests.add(hashlib.sha256((out / "model-00001-of-00001.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
