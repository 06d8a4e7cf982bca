"""Surgery reads from the disk only the input bytes it copies.

The kernel's read-ahead on a copied run runs past the run's end; when the bytes after it are
not copied (a zeroed tensor, a spliced-out o_proj) they would be read for nothing. The
writer steers the read-ahead to stop at each run's end (exactreads.py), so after a cold run
the page cache holds none of the skipped tensor's pages. Checked with cachestat(2) on a real
disk; skipped on a file system that keeps every page in memory (tmpfs).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from weightsurgeon import exactreads
from weightsurgeon.checkpoint import open_checkpoint
from conftest import cachestat, drop_cached

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _cached_pages(path: Path, begin: int, end: int) -> int:
    """Pages wholly inside [begin, end) of `path` that sit in the page cache (edge pages are shared with neighbours)."""
    lo, hi = -(-begin // PAGE) * PAGE, end // PAGE * PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        seen = cachestat(fd, lo, hi - lo)
    finally:
        os.close(fd)
    assert seen is not None
    return seen[0]


def _cold_disk_or_skip(tmp_path: Path) -> None:
    if not hasattr(os, "posix_fadvise") or os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("needs posix_fadvise and cachestat's syscall number (x86-64, arm64)")
    probe = tmp_path / "probe"
    probe.write_bytes(b"p" * (1 << 20))
    drop_cached([probe])
    fd = os.open(probe, os.O_RDONLY)
    try:
        seen = cachestat(fd, 0, 1 << 20)
    finally:
        os.close(fd)
    probe.unlink()
    if seen is None:
        pytest.skip("no cachestat(2) here")
    if seen[0]:
        pytest.skip("this file system keeps clean pages in memory (tmpfs): nothing is read from a disk")


def _model(tiny_model, name: str, seed: int) -> Path:
    # o_proj of 1536 x 1536 bf16 = 4.5 MiB between an 11 MiB run (MLP, k_proj) and the q/v projections
    return tiny_model(name, dtype="bf16", num_layers=2, hidden_size=1536, intermediate_size=2048, num_heads=12,
                      num_kv_heads=4, vocab_size=512, seed=seed)


def _readahead_reaches(path: Path, begin: int, end: int) -> bool:
    """Whether this disk's read-ahead, reading [0, begin) cold front to back, reaches into [begin, end):
    where it does not (a small read_ahead_kb), there is nothing to keep out and the test says nothing."""
    drop_cached([path])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        pos = 0
        while pos < begin:
            pos += len(os.pread(fd, min(1 << 20, begin - pos), pos))
    finally:
        os.close(fd)
    reached = _cached_pages(path, begin, end) > 0
    drop_cached([path])
    return reached


@pytest.mark.parametrize("command", ["zero", "splice"])
def test_a_cold_run_reads_none_of_the_input_bytes_it_does_not_copy(tmp_path, tiny_model, surgeon, command):
    _cold_disk_or_skip(tmp_path)
    base = _model(tiny_model, "base", 0)
    args = [base, "--module", "o_proj", "--layers", "0"] if command == "zero" else \
        [base, _model(tiny_model, "donor", 1), "--take", "o_proj", "--layers", "0"]
    with open_checkpoint(base) as ckpt:
        skipped = ckpt["model.layers.0.self_attn.o_proj.weight"]
        path, begin, end = skipped.file, skipped.begin, skipped.end
    if not _readahead_reaches(path, begin, end):
        pytest.skip("this disk's read-ahead does not reach past a copied run")
    drop_cached([f for m in args if isinstance(m, Path) for f in m.glob("*.safetensors")])
    res = surgeon(command, *args, "-q", "-o", tmp_path / "out")
    assert res.code == 0, res.stderr
    assert _cached_pages(path, begin, end) == 0, "the skipped o_proj was read from the disk"


def test_with_the_kernel_s_own_read_ahead_the_same_run_reads_the_skipped_tensor(tmp_path, tiny_model, surgeon, monkeypatch):
    """The check above can fail: with the input read through its own descriptor (FADV_SEQUENTIAL), the pages come in."""
    _cold_disk_or_skip(tmp_path)
    base = _model(tiny_model, "base", 0)
    with open_checkpoint(base) as ckpt:
        skipped = ckpt["model.layers.0.self_attn.o_proj.weight"]
        path, begin, end = skipped.file, skipped.begin, skipped.end
    if not _readahead_reaches(path, begin, end):
        pytest.skip("this disk's read-ahead does not reach past a copied run")
    monkeypatch.setattr(exactreads, "ENABLED", False)
    drop_cached(list(base.glob("*.safetensors")))
    res = surgeon("zero", base, "--module", "o_proj", "--layers", "0", "-q", "-o", tmp_path / "out")
    assert res.code == 0, res.stderr
    assert _cached_pages(path, begin, end) > 0
