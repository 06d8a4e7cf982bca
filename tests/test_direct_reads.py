"""O_DIRECT reads of the ranges the page cache lacks (weightsurgeon.directreads,
kernels._compiled.delta_spans_lane): a cold diff reads its inputs directly, a warm one through
the cache, and both give the same numbers bit for bit, for one and for several fine-tunes; a
refused or failing O_DIRECT descriptor falls back to the cache with the same numbers."""
from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon import directreads
from weightsurgeon.diff import diff_checkpoints
from weightsurgeon.kernels import delta
from conftest import drop_cached
from weightsurgeon.synth import make_checkpoint, make_tuned

SHAPE = dict(num_layers=2, hidden_size=256, intermediate_size=1280, num_heads=4, num_kv_heads=2, vocab_size=600)
FIELDS = ("n", "n_nonfinite", "n_base_zero", "sum_sq_delta", "sum_sq_a", "sum_sq_b", "dot_ab", "sum_delta",
          "max_abs_delta", "r_mean", "r_m2", "r_m3", "r_m4")
CHUNK = 320 * 1024  # several kernel calls per large tensor, each of several spans


def _same(want, got) -> None:
    assert len(want.tensors) == len(got.tensors)
    for row in want.tensors:
        a, b = row.stats, got.tensor(row.name, row.tuned).stats
        for f in FIELDS:
            assert getattr(a, f) == getattr(b, f) or (np.isnan(getattr(a, f)) and np.isnan(getattr(b, f))), (row.name, f)
        np.testing.assert_array_equal(a.hist, b.hist)
    assert [u.to_dict() for u in want.units] == [u.to_dict() for u in got.units]


def _files(*models: Path) -> list[Path]:
    return [f for m in models for f in sorted(Path(m).rglob("*.safetensors"))]


def _cached_pages(files: list[Path]) -> int | None:
    reads = directreads.DirectReads()
    total = 0
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            n = reads.cached_pages(fd, 0, f.stat().st_size)
        finally:
            os.close(fd)
        if n is None:
            return None
        total += n
    return total


class Launches:
    """Counts the kernel calls that read some side directly, and where their positions were."""

    def __init__(self, monkeypatch) -> None:
        self.direct = 0
        self.positions: list[int] = []
        launch = delta._launch_spans

        def counted(direct, fd_a, pos_a, like, code_a, fds, positions, *rest):
            result = launch(direct, fd_a, pos_a, like, code_a, fds, positions, *rest)
            if result is not None:
                self.direct += 1
                self.positions += [pos_a, *positions.tolist()]
            return result

        monkeypatch.setattr(delta, "_launch_spans", counted)


@pytest.fixture()
def models(tmp_path: Path) -> tuple[Path, list[Path]]:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **SHAPE)
    return base, [make_tuned(base, tmp_path / f"t{i}" / "ft", seed=i) for i in (1, 2, 3)]


def test_a_cold_diff_reads_directly_and_a_warm_one_through_the_cache_with_the_same_bits(models, monkeypatch) -> None:
    base, tuned = models
    files = _files(base, *tuned)
    launches = Launches(monkeypatch)
    warm = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)  # just written: every page cached
    warm_one = diff_checkpoints(base, tuned[0], chunk_bytes=CHUNK)
    assert launches.direct == 0
    drop_cached(files)
    cached = _cached_pages(files)
    if cached is None or cached * os.sysconf("SC_PAGE_SIZE") * 2 >= sum(f.stat().st_size for f in files):
        pytest.skip("needs cachestat(2) and a file system whose pages can be dropped (not tmpfs)")
    cold = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
    several = launches.direct
    assert several > 0
    drop_cached(files)
    cold_one = diff_checkpoints(base, tuned[0], chunk_bytes=CHUNK)
    assert launches.direct > several
    _same(warm, cold)
    _same(warm_one, cold_one)
    # The tensors start anywhere in their files: the kernel read aligned supersets around them.
    assert any(pos % directreads_align() for pos in launches.positions)
    # Direct reads leave the cache as they found it: the next run reads directly again.
    assert _cached_pages(files) * os.sysconf("SC_PAGE_SIZE") * 2 < sum(f.stat().st_size for f in files)


def directreads_align() -> int:
    from weightsurgeon.kernels import _compiled

    return _compiled.DIRECT_ALIGN


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_forced_direct_reads_match_the_cached_path_on_any_file_system(models, tmp_path: Path, monkeypatch,
                                                                    where: str) -> None:
    """Every side read through an O_DIRECT twin whatever the cache holds, here and on tmpfs (which
    accepts O_DIRECT on Linux 6.6+ and serves it from memory); the numbers equal the cached path's."""
    base, tuned = models
    if where == "shm":
        shm = Path("/dev/shm")
        if not shm.is_dir() or not os.access(shm, os.W_OK):
            pytest.skip("no writable /dev/shm")
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(dir=shm))
        base = Path(shutil.copytree(base, root / "base"))
        tuned = [Path(shutil.copytree(t, root / f"t{i}")) for i, t in enumerate(tuned)]
    try:
        monkeypatch.setattr(directreads, "ENABLED", False)
        want = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
        monkeypatch.setattr(directreads, "ENABLED", True)
        monkeypatch.setattr(directreads.DirectReads, "cached_pages", lambda self, fd, pos, nbytes: 0)
        opened = []
        real_open = os.open

        def watched(path, flags, *args, **kw):
            fd = real_open(path, flags, *args, **kw)
            opened.append(flags & os.O_DIRECT)
            return fd

        monkeypatch.setattr(directreads.os, "open", watched)
        launches = Launches(monkeypatch)
        got = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
        if not any(opened):
            pytest.skip("this file system refuses O_DIRECT (the refusal is tested below)")
        assert launches.direct > 0
        _same(want, got)
    finally:
        if where == "shm":
            import shutil

            shutil.rmtree(base.parent, ignore_errors=True)


def test_a_refused_o_direct_reads_through_the_cache_with_the_same_bits(models, monkeypatch) -> None:
    base, tuned = models
    want = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
    monkeypatch.setattr(directreads.DirectReads, "cached_pages", lambda self, fd, pos, nbytes: 0)
    real_open = os.open
    refused = []

    def refusing(path, flags, *args, **kw):
        if flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")  # as tmpfs before Linux 6.6, and some FUSE file systems
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(directreads.os, "open", refusing)
    launches = Launches(monkeypatch)
    got = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
    assert refused and launches.direct == 0
    _same(want, got)


def test_a_failing_direct_read_is_read_again_through_the_cache(models, tmp_path: Path, monkeypatch) -> None:
    """A twin that opens but cannot be read (an error in the middle of the kernel's lanes): the call is
    made again through the cache, that twin is refused from then on, and the numbers are the same."""
    base, tuned = models
    want = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
    monkeypatch.setattr(directreads.DirectReads, "cached_pages", lambda self, fd, pos, nbytes: 0)
    unreadable = tmp_path / "unreadable"
    unreadable.write_bytes(b"")
    twins: list[int] = []

    def broken_twin(self, fd):
        if fd not in self._twins:
            twin = os.open(unreadable, os.O_WRONLY)  # pread on it fails: EBADF
            twins.append(twin)
            self._twins[fd] = ((0, 0), twin)
        return self._twins[fd][1]

    refusals = []
    refuse = directreads.DirectReads.refuse

    def counted_refuse(self, fd):
        refusals.append(fd)
        refuse(self, fd)

    monkeypatch.setattr(directreads.DirectReads, "twin", broken_twin)
    monkeypatch.setattr(directreads.DirectReads, "refuse", counted_refuse)
    got = diff_checkpoints(base, tuned, chunk_bytes=CHUNK)
    assert twins and refusals
    _same(want, got)


def _odd_file(path: Path, values: np.ndarray) -> int:
    """A one-tensor safetensors file whose data starts at an odd byte (the header's length is not
    padded to 8, which the format allows): returns the data's position."""
    header = json.dumps({"w": {"dtype": "BF16", "shape": [values.size], "data_offsets": [0, values.nbytes]}}).encode()
    if (8 + len(header)) % 2 == 0:
        header += b" "
    path.write_bytes(struct.pack("<Q", len(header)) + header + values.tobytes())
    return 8 + len(header)


def test_a_tensor_at_an_odd_byte_is_read_through_the_cache(tmp_path: Path, monkeypatch) -> None:
    """The lanes view their aligned spans as elements, so a bf16 tensor at an odd position cannot be
    read directly: that call goes through the cache, with the numbers of the pure numpy oracle."""
    from weightsurgeon.kernels.reference import reference_delta_stats

    rng = np.random.default_rng(0)
    a = (rng.standard_normal(300_000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    b = a ^ rng.integers(0, 4, a.size, dtype=np.uint16)
    assert _odd_file(tmp_path / "a.safetensors", a) % 2 == 1
    _odd_file(tmp_path / "b.safetensors", b)
    monkeypatch.setattr(directreads.DirectReads, "cached_pages", lambda self, fd, pos, nbytes: 0)
    launches = Launches(monkeypatch)
    report = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert launches.direct == 0
    want = reference_delta_stats(a, b, "BF16", "BF16")
    got = report.tensors[0].stats
    assert got.n == want.n and got.sum_sq_delta == pytest.approx(want.sum_sq_delta, rel=1e-12)
    np.testing.assert_array_equal(got.hist, want.hist)
