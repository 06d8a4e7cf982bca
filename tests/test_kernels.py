"""The numba kernels against their numpy twin, and the exact conversions.

The twin (reference_delta_stats) is the definition written out in numpy; the kernel must
give identical counts and histograms and sums equal to 1e-12 relative, for every dtype
pair, on data full of zeros, denormals, infinities, NaNs and values exactly on bin edges.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from weightsurgeon.kernels.decode import decode_to_float32, decode_to_float64, encode_from_float32
from weightsurgeon.kernels.delta import accumulate_delta, count_nonfinite, warmup
from weightsurgeon.kernels.reference import reference_delta_stats
from weightsurgeon.kernels.stats import DeltaStats

REL = 1e-12
# The test data overflows and divides by zero on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
FLOAT_NAMES = ("BF16", "F16", "F32", "F64")
SPECIALS = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-42, 1e-45, 3.4e38, -3.4e38, 1.0, -1.0, 0.5, 2.0],
    dtype=np.float32,
)


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile (or load from the cache) once, so no single test pays for it in its own time."""
    warmup()


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """float values -> the stored representation a checkpoint reader hands the kernels."""
    if dtype == "F64":
        return np.asarray(values, dtype=np.float64)
    if dtype in ("I8", "U8", "I16", "I32"):
        info = np.iinfo({"I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32}[dtype])
        clean = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=info.max, neginf=info.min)
        return np.clip(np.rint(clean * 50), info.min, info.max).astype(info.dtype)
    return encode_from_float32(np.asarray(values, dtype=np.float32), dtype)


def kernel_stats(a, b, dtype_a, dtype_b, bins=200, clip=1.0) -> DeltaStats:
    stats = DeltaStats.empty(bins, clip)
    accumulate_delta(stats, a, b, dtype_a, dtype_b)
    return stats


def assert_close(x: float, y: float, scale: float = 0.0) -> None:
    """Equal to REL relative (of max(|y|, scale) where sums may cancel), NaN and inf included."""
    if math.isnan(y) or math.isinf(y):
        assert x == y or (math.isnan(x) and math.isnan(y)), (x, y)
        return
    assert abs(x - y) <= REL * max(abs(y), scale) + 1e-300, (x, y)


def assert_same(got: DeltaStats, want: DeltaStats) -> None:
    assert (got.bins, got.clip) == (want.bins, want.clip)
    assert got.n == want.n
    assert got.n_nonfinite == want.n_nonfinite
    assert got.n_base_zero == want.n_base_zero
    np.testing.assert_array_equal(got.hist, want.hist)
    assert got.max_abs_delta == want.max_abs_delta
    for name in ("sum_sq_delta", "sum_sq_a", "sum_sq_b"):
        assert_close(getattr(got, name), getattr(want, name))
    # Signed sums may cancel: their error is relative to the sums of magnitudes.
    assert_close(got.dot_ab, want.dot_ab, math.sqrt(want.sum_sq_a * want.sum_sq_b))
    assert_close(got.sum_delta, want.sum_delta, math.sqrt(max(want.n, 1) * want.sum_sq_delta))
    # Shape of the clipped relative change: from the kernel's shifted power sums, against numpy's
    # moments of the clipped values themselves (the histogram's elements).
    assert got.r_n == want.r_n
    spread = want.r_std if want.r_n else 0.0
    assert_close(got.r_mean, want.r_mean, spread)
    assert_close(got.r_m2, want.r_m2)
    # The twin centres on numpy's rounded mean (off by up to ~16 eps of the values' size), which
    # moves its third moment by 3 * m2 * that offset: where m3 is ~0 (symmetric values) this, the
    # twin's own rounding, is far above 1e-12 of m3 (hypothesis found -0.25 and -0.2499999791).
    mean_rounding = 16 * np.finfo(np.float64).eps * (abs(want.r_mean) + spread)
    assert_close(got.r_m3, want.r_m3, max(want.r_m2 ** 1.5 / max(want.r_n, 1) ** 0.5,
                                          3 * want.r_m2 * mean_rounding / REL))
    # The same offset moves the fourth moment by 4 * m3 * it (first order).
    assert_close(got.r_m4, want.r_m4, 4 * abs(want.r_m3) * mean_rounding / REL)


def tricky_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 base/tuned values: weights-like, plus zeros, denormals, inf, NaN, huge values,
    unchanged elements and ratios exactly on the default bin edges."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 0.02).astype(np.float32)
    b = a + (rng.standard_normal(n) * 0.004).astype(np.float32)
    k = n // 10
    picks = rng.integers(0, n, size=(8, k))
    a[picks[0]] = 0.0
    b[picks[1]] = a[picks[1]]  # unchanged
    a[picks[2]] = rng.choice(SPECIALS, k)
    b[picks[3]] = rng.choice(SPECIALS, k)
    edges = np.linspace(-1.0, 1.0, 201)
    b[picks[4]] = a[picks[4]] * (1 + rng.choice(edges, k)).astype(np.float32)  # r on or near an edge
    b[picks[5]] = a[picks[5]] * rng.choice(np.float32([3.0, -5.0, 1e30]), k)  # clipped
    a[picks[6]] = (rng.standard_normal(k) * 1e-39).astype(np.float32)  # denormal base
    b[picks[7]] = np.float32(2.5e38) * np.sign(rng.standard_normal(k)).astype(np.float32)  # d overflows
    return a, b


def test_import_does_not_load_numba():
    """numba loads on the first kernel call; the header parser's dtype table needs no numpy (--help)."""
    code = "import sys, weightsurgeon.kernels.delta; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, weightsurgeon.format; assert 'numpy' not in sys.modules, 'numpy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype_a", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize("dtype_b", ["BF16", "F16", "F32", "F64"])
def test_every_float_pair_matches_twin(dtype_a, dtype_b):
    a, b = tricky_pair(150_000, seed=len(dtype_a) * 7 + len(dtype_b))  # more than one parallel part
    sa, sb = stored(a, dtype_a), stored(b, dtype_b)
    assert_same(kernel_stats(sa, sb, dtype_a, dtype_b), reference_delta_stats(sa, sb, dtype_a, dtype_b))


@pytest.mark.parametrize(
    "dtype_a,dtype_b", [("F8_E4M3", "BF16"), ("F8_E5M2", "F8_E5M2"), ("I8", "F32"), ("U8", "U8"), ("I32", "BF16")]
)
def test_slow_path_dtypes_match_twin(dtype_a, dtype_b):
    a, b = tricky_pair(20_000, seed=3)
    sa, sb = stored(a, dtype_a), stored(b, dtype_b)
    assert_same(kernel_stats(sa, sb, dtype_a, dtype_b), reference_delta_stats(sa, sb, dtype_a, dtype_b))


@pytest.mark.parametrize("bins,clip", [(1, 1.0), (2, 1.0), (7, 0.1), (200, 0.05), (1000, 3.0), (64, 1e-3), (100_000, 1.0)])
def test_bins_and_clip_are_configurable(bins, clip):
    a, b = tricky_pair(60_000, seed=bins)
    # Ratios exactly on this histogram's own edges, where rounding decides.
    edges = np.histogram_bin_edges(np.empty(0, np.float32), bins=bins, range=(-clip, clip))
    idx = np.arange(0, a.size, 7)
    b[idx] = a[idx] + a[idx] * edges[np.arange(idx.size) % edges.size]
    for dtype in ("BF16", "F32", "F64"):
        sa, sb = stored(a, dtype), stored(b, dtype)
        got = kernel_stats(sa, sb, dtype, dtype, bins, clip)
        assert got.hist.sum() == got.n - got.n_base_zero
        assert_same(got, reference_delta_stats(sa, sb, dtype, dtype, bins, clip))


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any32 = st.one_of(finite32, st.sampled_from([float(x) for x in SPECIALS]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pairs=st.lists(st.tuples(any32, any32, st.sampled_from([None, 0.0, 1.0, 0.5, -0.25, 2.0, 1e-3])), max_size=300),
    dtypes=st.sampled_from([("BF16", "BF16"), ("F16", "F16"), ("F32", "F32"), ("F64", "F64"), ("BF16", "F32"), ("F16", "BF16")]),
    hist=st.sampled_from([(200, 1.0), (13, 0.3), (1, 2.0), (50, 1e-2)]),
)
# Found by hypothesis: three ratios of 1.5 whose relative changes differ by float32 rounding only,
# so m3 and m4 are ~1e-22 and ~1e-30 and the twin's rounded mean decides their last digits.
@example(pairs=[(1.0, 0.0, 0.5), (72211016.0, 0.0, 0.5), (9.99994610111476e-41, 0.0, 0.5)], dtypes=("F32", "F32"),
         hist=(200, 1.0))
def test_hypothesis_matches_twin(pairs, dtypes, hist):
    a = np.array([p[0] for p in pairs], dtype=np.float32)
    # The third element, when set, makes b = a * (1 + r): a ratio on a round value.
    b = np.array([p[1] if p[2] is None else p[0] * (1 + p[2]) for p in pairs], dtype=np.float32)
    sa, sb = stored(a, dtypes[0]), stored(b, dtypes[1])
    got = kernel_stats(sa, sb, *dtypes, *hist)
    assert_same(got, reference_delta_stats(sa, sb, *dtypes, *hist))


def test_chunked_equals_one_shot():
    a, b = tricky_pair(300_001, seed=11)
    sa, sb = stored(a, "BF16"), stored(b, "BF16")
    whole = kernel_stats(sa, sb, "BF16", "BF16")
    chunked = DeltaStats.empty()
    for start in range(0, sa.size, 70_001):
        part = DeltaStats.empty()
        accumulate_delta(part, sa[start : start + 70_001], sb[start : start + 70_001], "BF16", "BF16")
        chunked.merge(part)
    assert_same(chunked, whole)


def test_results_do_not_depend_on_thread_count():
    import numba

    a, b = tricky_pair(400_000, seed=5)
    sa, sb = stored(a, "F32"), stored(b, "F32")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = kernel_stats(sa, sb, "F32", "F32")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = kernel_stats(sa, sb, "F32", "F32")
    finally:
        numba.set_num_threads(before)
    assert one.to_dict() == many.to_dict()  # bit for bit, sums included


def test_raw_bytes_and_float16_views_are_accepted():
    a, b = tricky_pair(5_000, seed=2)
    f16a, f16b = a.astype(np.float16), b.astype(np.float16)
    want = kernel_stats(f16a.view(np.uint16), f16b.view(np.uint16), "F16", "F16")
    assert_same(kernel_stats(f16a, f16b, "F16", "F16"), want)
    assert_same(kernel_stats(f16a.view(np.uint8), f16b.view(np.uint8), "F16", "F16"), want)


def test_hand_computed_example():
    """The definitions on four elements, worked by hand (checks the twin as well)."""
    a = np.float32([1.0, 2.0, 0.0, np.nan])
    b = np.float32([1.5, 1.0, 3.0, 1.0])
    for stats in (kernel_stats(a, b, "F32", "F32"), reference_delta_stats(a, b, "F32", "F32")):
        assert (stats.n, stats.n_nonfinite, stats.n_base_zero) == (3, 1, 1)
        assert (stats.sum_sq_delta, stats.sum_sq_a, stats.sum_sq_b) == (10.25, 5.0, 12.25)
        assert (stats.dot_ab, stats.sum_delta, stats.max_abs_delta) == (3.5, 2.5, 3.0)
        assert list(np.nonzero(stats.hist)[0]) == [50, 150]  # r = -0.5 and +0.5


def test_read_only_and_misaligned_chunks_reuse_the_compiled_kernel():
    from weightsurgeon.kernels import _compiled

    before = set(_compiled.delta_chunk.signatures)
    raw = stored(np.linspace(-1, 1, 4001, dtype=np.float32), "BF16").tobytes()
    read_only = np.frombuffer(raw, dtype=np.uint16)[:4000]
    misaligned = np.frombuffer(bytearray(b"x" + raw), dtype=np.uint8)[1:8001]
    stats = kernel_stats(read_only, misaligned, "BF16", "BF16")
    assert stats.n == 4000 and stats.sum_sq_delta == 0.0
    assert set(_compiled.delta_chunk.signatures) == before


def test_bad_inputs_raise_value_error():
    z16 = np.zeros(4, np.uint16)
    with pytest.raises(ValueError, match="differ in length"):
        accumulate_delta(DeltaStats.empty(), z16, np.zeros(5, np.uint16), "BF16", "BF16")
    with pytest.raises(ValueError, match="4-byte"):
        accumulate_delta(DeltaStats.empty(), z16, z16, "F32", "F32")
    with pytest.raises(ValueError, match="unsupported dtype"):
        accumulate_delta(DeltaStats.empty(), z16, z16, "BF8", "BF16")
    with pytest.raises(ValueError, match="bins"):
        DeltaStats.empty(bins=0)
    with pytest.raises(ValueError, match="clip"):
        DeltaStats.empty(clip=float("inf"))
    with pytest.raises(ValueError, match="different histograms"):
        DeltaStats.empty(200, 1.0).merge(DeltaStats.empty(100, 1.0))


def test_empty_and_all_zero_base():
    stats = kernel_stats(np.zeros(0, np.uint16), np.zeros(0, np.uint16), "BF16", "BF16")
    assert stats.n == 0 and stats.hist.sum() == 0 and math.isnan(stats.mean_delta)
    b = stored(np.ones(1000, np.float32), "BF16")
    stats = kernel_stats(np.zeros(1000, np.uint16), b, "BF16", "BF16")
    assert (stats.n, stats.n_base_zero, stats.hist.sum()) == (1000, 1000, 0)
    assert math.isnan(stats.rel_l2) and math.isnan(stats.cosine)
    assert stats.l2_delta == pytest.approx(math.sqrt(1000))


def test_derived_numbers_and_json_round_trip():
    rng = np.random.default_rng(9)
    a = rng.standard_normal(10_000).astype(np.float32)
    b = a + rng.standard_normal(10_000).astype(np.float32) * np.float32(0.1)
    a[:50] = np.nan  # left out of everything
    stats = kernel_stats(stored(a, "F32"), stored(b, "F32"), "F32", "F32")
    a64, b64 = a[50:].astype(np.float64), b[50:].astype(np.float64)
    d64 = (b[50:] - a[50:]).astype(np.float64)
    assert stats.l2_delta == pytest.approx(np.linalg.norm(d64), rel=1e-12)
    assert stats.rel_l2 == pytest.approx(np.linalg.norm(d64) / np.linalg.norm(a64), rel=1e-12)
    assert stats.cosine == pytest.approx(a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64), rel=1e-12)
    assert stats.mean_delta == pytest.approx(d64.mean(), rel=1e-9)
    text = json.dumps(stats.to_dict(), allow_nan=False)  # strict JSON
    back = DeltaStats.from_dict(json.loads(text))
    assert back.to_dict() == stats.to_dict()
    np.testing.assert_array_equal(stats.bin_edges, np.histogram_bin_edges([], bins=200, range=(-1.0, 1.0)))


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2", "I8", "I32"])
def test_count_nonfinite(dtype):
    a, _ = tricky_pair(100_000, seed=4)
    x = stored(a, dtype)
    want = 0 if dtype.startswith("I") else int((~np.isfinite(decode_to_float64(x, dtype))).sum())
    assert count_nonfinite(x, dtype) == want
    assert dtype.startswith("I") or want > 0


def test_float16_and_bf16_decode_exactly_in_the_kernel():
    """Every one of the 65536 bit patterns, through the kernel's own decoder."""
    from numba import njit

    from weightsurgeon.kernels import _compiled

    @njit
    def decode(src, code, out):
        _compiled._decode_block(src, code, out)

    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(bits.size, np.float32)
    decode(bits, _compiled.CODE_F16, out)
    np.testing.assert_array_equal(out.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))
    decode(bits, _compiled.CODE_BF16, out)
    np.testing.assert_array_equal(out.view(np.uint32), bits.astype(np.uint32) << 16)


def test_decode_and_encode_round_trip_every_16_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    for dtype in ("BF16", "F16"):
        values = decode_to_float32(bits, dtype)
        back = encode_from_float32(values, dtype).view(np.uint16)
        nan = np.isnan(values)
        np.testing.assert_array_equal(back[~nan], bits[~nan])
        assert np.isnan(decode_to_float32(back[nan], dtype)).all()
        np.testing.assert_array_equal(decode_to_float64(bits, dtype)[~nan], values[~nan].astype(np.float64))


def test_encode_matches_torch_rounding():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(50_000).astype(np.float32) * np.float32(10.0) ** rng.integers(-8, 8, 50_000),
            # ties and near-ties: float32 patterns whose low bits sit at and around the halfway point
            (rng.integers(0, 1 << 32, 20_000, dtype=np.uint64).astype(np.uint32) & np.uint32(0xFFFF0000)
             | np.uint32(0x8000)).view(np.float32),
            np.float32([448, 449, 464, 465, 479, 480, 500, 57344, 61439, 61440, 65536, 1e-10, 3.4e38]),
            SPECIALS,
        ]
    )
    x = x[~np.isnan(x)]  # NaN payloads are not compared
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(encode_from_float32(x, "BF16"), t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(encode_from_float32(x, "F16").view(np.uint16), t.to(torch.float16).view(torch.int16).numpy().view(np.uint16))
    for dtype, tdtype in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        got = encode_from_float32(x, dtype)
        want = t.to(tdtype).view(torch.uint8).numpy()
        np.testing.assert_array_equal(decode_to_float32(got, dtype), decode_to_float32(want, dtype))
        all_bits = torch.arange(256, dtype=torch.uint8)
        np.testing.assert_array_equal(
            decode_to_float32(all_bits.numpy(), dtype), all_bits.view(tdtype).to(torch.float32).numpy()
        )


def test_encode_nan_stays_nan_and_refuses_integers():
    out = encode_from_float32(np.float32([np.nan, -np.nan]), "BF16")
    assert np.isnan(decode_to_float32(out, "BF16")).all()
    e4m3 = decode_to_float32(encode_from_float32(np.float32([np.nan, 1e6, -np.inf]), "F8_E4M3"), "F8_E4M3")
    assert np.isnan(e4m3[0]) and list(e4m3[1:]) == [448.0, -448.0]  # saturates, as torch does
    with pytest.raises(ValueError):
        encode_from_float32(np.zeros(2, np.float32), "I8")


# ---------------------------------------------------------------------------------------
# The kernel reading the files itself (the diff's fast path)
# ---------------------------------------------------------------------------------------

def write_pair_file(path, sa: np.ndarray, sb: np.ndarray, lead: int = 13, gap: int = 5) -> tuple[int, int]:
    """A and B at odd byte positions of one file (no alignment is assumed); their positions."""
    with open(path, "wb") as f:
        f.write(b"h" * lead)
        f.write(sa.tobytes())
        f.write(b"g" * gap)
        f.write(sb.tobytes())
    return lead, lead + sa.nbytes + gap


FILE_PAIRS = [("BF16", "BF16"), ("F16", "F16"), ("BF16", "F16"), ("F16", "BF16"), ("F32", "F32"), ("F64", "F64")]


@pytest.mark.parametrize("dtype_a,dtype_b", FILE_PAIRS)
def test_reading_files_equals_reading_arrays(tmp_path, dtype_a, dtype_b):
    from weightsurgeon.kernels.delta import accumulate_delta_from_files

    a, b = tricky_pair(200_003, seed=21)  # several parallel parts and a ragged last one
    sa, sb = stored(a, dtype_a), stored(b, dtype_b)
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    got = DeltaStats.empty()
    with open(tmp_path / "pair.bin", "rb") as f:
        assert accumulate_delta_from_files(got, f.fileno(), pos_a, dtype_a, f.fileno(), pos_b, dtype_b, sa.size)
    assert_same(got, kernel_stats(sa, sb, dtype_a, dtype_b))
    assert_same(got, reference_delta_stats(sa, sb, dtype_a, dtype_b))


def test_reading_files_in_pieces_equals_one_call(tmp_path):
    from weightsurgeon.kernels.delta import accumulate_delta_from_files

    a, b = tricky_pair(150_001, seed=3)
    sa, sb = stored(a, "BF16"), stored(b, "BF16")
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    whole, pieces = DeltaStats.empty(), DeltaStats.empty()
    with open(tmp_path / "pair.bin", "rb") as f:
        fd = f.fileno()
        assert accumulate_delta_from_files(whole, fd, pos_a, "BF16", fd, pos_b, "BF16", sa.size)
        for start in range(0, sa.size, 40_000):
            count = min(40_000, sa.size - start)
            assert accumulate_delta_from_files(pieces, fd, pos_a + 2 * start, "BF16", fd, pos_b + 2 * start, "BF16", count)
    assert_same(pieces, whole)


def test_a_short_read_leaves_the_stats_untouched(tmp_path):
    from weightsurgeon.kernels.delta import accumulate_delta_from_files

    a, b = tricky_pair(100_000, seed=4)
    sa, sb = stored(a, "F32"), stored(b, "F32")
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    with open(tmp_path / "pair.bin", "r+b") as f:
        f.truncate(pos_b + sb.nbytes - 1)  # the last element of B is cut short
        stats = DeltaStats.empty()
        assert not accumulate_delta_from_files(stats, f.fileno(), pos_a, "F32", f.fileno(), pos_b, "F32", sa.size)
    assert stats.to_dict() == DeltaStats.empty().to_dict()
    bad = DeltaStats.empty()
    assert not accumulate_delta_from_files(bad, 987_654, 0, "F32", 987_654, 0, "F32", 10)  # not an open descriptor
    assert bad.n == 0


def test_which_pairs_the_kernel_reads_itself():
    from weightsurgeon.kernels.delta import accumulate_delta_from_files, reads_files

    for dtype_a, dtype_b in FILE_PAIRS:
        assert reads_files(dtype_a, dtype_b)
    for dtype_a, dtype_b in [("BF16", "F32"), ("F32", "F64"), ("F8_E4M3", "F8_E4M3"), ("I32", "I32"), ("F32", "I32")]:
        assert not reads_files(dtype_a, dtype_b)
        with pytest.raises(ValueError, match="no file path"):
            accumulate_delta_from_files(DeltaStats.empty(), 0, 0, dtype_a, 0, 0, dtype_b, 1)
    with pytest.raises(ValueError):
        reads_files("Q4", "Q4")


def test_reading_files_does_not_depend_on_thread_count(tmp_path):
    import numba

    from weightsurgeon.kernels.delta import accumulate_delta_from_files

    a, b = tricky_pair(400_000, seed=8)
    sa, sb = stored(a, "BF16"), stored(b, "BF16")
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)

    before = numba.get_num_threads()
    results = []
    try:
        with open(tmp_path / "pair.bin", "rb") as f:
            for threads in sorted({1, 2, 3, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                stats = DeltaStats.empty()
                assert accumulate_delta_from_files(stats, f.fileno(), pos_a, "BF16", f.fileno(), pos_b, "BF16", sa.size)
                results.append(stats.to_dict())
    finally:
        numba.set_num_threads(before)
    assert all(r == results[0] for r in results)  # bit for bit, sums included


def test_idle_kernel_threads_wait_passively_unless_the_user_says_otherwise():
    """GNU OpenMP's spinning idle threads made a diff 5x slower on a loaded machine."""
    code = "import os, weightsurgeon.kernels._compiled; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.strip() == "PASSIVE"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert res.stdout.strip() == "ACTIVE"


def stats_fields_exact(s: DeltaStats) -> tuple:
    """Every stored field of a DeltaStats, for bit-for-bit comparison (NaN compared by repr)."""
    return (s.n, s.n_nonfinite, s.n_base_zero, *(repr(float(x)) for x in (
        s.sum_sq_delta, s.sum_sq_a, s.sum_sq_b, s.dot_ab, s.sum_delta, s.max_abs_delta, s.r_mean, s.r_m2, s.r_m3,
        s.r_m4)), tuple(s.hist.tolist()))


@pytest.mark.parametrize("dtype_a,dtype_b", FILE_PAIRS)
def test_a_batch_of_small_pairs_equals_one_call_each(tmp_path, dtype_a, dtype_b):
    """One launch for many small pairs (MoE experts) gives each pair, bit for bit, what a call of its own gives."""
    from weightsurgeon.kernels.delta import accumulate_batch_from_files, accumulate_delta_from_files
    from weightsurgeon.kernels.stats import PART

    rng = np.random.default_rng(8)
    sizes = [1, 2, 3, 7, 32, 33, 1000, PART - 1, PART, 5, 64, 17] * 3
    a, b = tricky_pair(sum(sizes), seed=31)
    sa, sb = stored(a, dtype_a), stored(b, dtype_b)
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = rng.permutation(len(sizes))  # any order of positions, as files interleave
    batched = [DeltaStats.empty() for _ in sizes]
    with open(tmp_path / "pair.bin", "rb") as f:
        fd = f.fileno()
        failed = accumulate_batch_from_files([batched[i] for i in order], fd, pos_a + sa.itemsize * starts[order],
                                             dtype_a, fd, pos_b + sb.itemsize * starts[order], dtype_b,
                                             np.array(sizes)[order])
        assert not failed.any()
        for i, (start, size) in enumerate(zip(starts, sizes)):
            one = DeltaStats.empty()
            assert accumulate_delta_from_files(one, fd, pos_a + sa.itemsize * start, dtype_a, fd,
                                               pos_b + sb.itemsize * start, dtype_b, size)
            assert stats_fields_exact(batched[i]) == stats_fields_exact(one), (i, size)
    assert_same(batched[3], reference_delta_stats(sa[starts[3]:starts[3] + 7], sb[starts[3]:starts[3] + 7],
                                                  dtype_a, dtype_b))


def test_a_batch_pair_whose_read_fails_is_left_untouched(tmp_path):
    from weightsurgeon.kernels.delta import accumulate_batch_from_files

    a, b = tricky_pair(300, seed=5)
    sa, sb = stored(a, "F32"), stored(b, "F32")
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    with open(tmp_path / "pair.bin", "r+b") as f:
        f.truncate(pos_b + sb.nbytes - 1)  # the last pair's B is cut short
        targets = [DeltaStats.empty() for _ in range(3)]
        failed = accumulate_batch_from_files(targets, f.fileno(), pos_a + 4 * np.array([0, 100, 200]), "F32",
                                             f.fileno(), pos_b + 4 * np.array([0, 100, 200]), "F32",
                                             np.array([100, 100, 100]))
    assert failed.tolist() == [False, False, True]
    assert targets[0].numel == 100 and targets[2].to_dict() == DeltaStats.empty().to_dict()
    with pytest.raises(ValueError):
        accumulate_batch_from_files([DeltaStats.empty()], 0, np.array([0]), "F32", 0, np.array([0]), "F32",
                                    np.array([0]))


def _lane_power_sums_exactly(clipped: np.ndarray, shift: float, block: int, lanes: int) -> list[float]:
    """The power sums in the order the kernel documents, each operation rounded exactly as
    IEEE float64 rounds it (Python floats; the fused multiply-adds through Fraction, whose
    conversion to float rounds to nearest even): a reference for the bits, not only the value."""
    from fractions import Fraction

    def fma(x: float, y: float, z: float) -> float:
        return float(Fraction(x) * Fraction(y) + Fraction(z))

    total = [0.0] * 4
    for start in range(0, clipped.size, block):
        values = [0.0 if c != c else float(c) - shift for c in clipped[start:start + block].tolist()]
        full = len(values) - len(values) % lanes
        lane = [[0.0] * lanes for _ in range(4)]
        for i in range(full):
            t, j = values[i], i % lanes
            t2 = t * t
            lane[0][j] += t
            lane[1][j] += t2
            lane[2][j] = fma(t2, t, lane[2][j])
            lane[3][j] = fma(t2, t2, lane[3][j])
        sums = []
        for parts in lane:
            while len(parts) > 1:
                parts = [parts[j] + parts[j + 1] for j in range(0, len(parts), 2)]
            sums.append(parts[0])
        for t in values[full:]:
            t2 = t * t
            sums[0] += t
            sums[1] += t2
            sums[2] += t2 * t
            sums[3] += t2 * t2
        total = [acc + s for acc, s in zip(total, sums)]
    return total


def test_power_sums_have_the_same_bits_in_every_compile_context():
    """The moment sums once differed in their last bits between a kernel compiled in the
    process and the same kernel loaded from numba's cache (LLVM chose the order of the
    reassociated loop). They are now summed in a documented order: the full kernel (the
    block code inlined into the parallel part loop) and the block function called on its own
    (compiled separately) both equal an exact emulation of that order, bit for bit."""
    from weightsurgeon.kernels import _compiled
    from weightsurgeon.kernels.delta import _grouping, _histogram_constants

    rng = np.random.default_rng(7)
    n = _compiled.BLOCK + 1003  # two blocks, the second with a tail beyond the last full lane group
    b = (1.0 + rng.uniform(-0.45, 0.45, n)).astype(np.float32)
    a = np.ones(n, dtype=np.float32)
    a[[3, 4000, n - 2]] = 0.0  # r excluded (base zero): NaN in the clipped ratios
    consts, edges = _histogram_constants(200, 1.0, np.float32)
    sums, _, _, _ = _compiled.delta_chunk(a.view(np.uint32), _compiled.CODE_F32, b.view(np.uint32),
                                          _compiled.CODE_F32, consts, edges, _grouping(None, 0))
    # With A = 1, r = B - 1 exactly (Sterbenz), well inside the clip range.
    clipped = np.where(a == 0, np.float32(np.nan), b - np.float32(1.0))
    shift = float(clipped[0])
    assert sums[0, _compiled.R_SHIFT] == shift
    want = _lane_power_sums_exactly(clipped, shift, _compiled.BLOCK, _compiled.MOMENT_LANES)
    got = sums[0, _compiled.R_S1:_compiled.R_S4 + 1]
    assert [v.hex() for v in got.tolist()] == [v.hex() for v in want]
    acc = np.zeros(_compiled.ACC_SIZE)
    for start in range(0, n, _compiled.BLOCK):
        part = np.ascontiguousarray(clipped[start:start + _compiled.BLOCK])
        _compiled._moment_block(part, part.size, shift, acc)
    assert [v.hex() for v in acc[10:14].tolist()] == [v.hex() for v in want]
