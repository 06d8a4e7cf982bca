"""Write-behind: each finished window of an output file is sent to the disk, the one before it is
waited for and dropped from the page cache, the last ones are left to the fsync; a file system
that refuses sync_file_range falls back to fadvise, and a real write error is never swallowed.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import cachestat

from weightsurgeon import writeback
from weightsurgeon.atomic import TEMP_PREFIX
from weightsurgeon.writeback import SYNC_WAIT_ALL, SYNC_WRITE, WriteBehind

MiB = 1024 * 1024
linux_only = pytest.mark.skipif(writeback._libc_sync_file_range() is None, reason="sync_file_range is Linux's")


class Counted:
    def __init__(self) -> None:
        self.bytes = 0

    def advance(self, n: int) -> None:
        self.bytes += n

    def describe(self, text: str) -> None:
        pass


def write_windows(path: Path, sizes: list[int], window: int = MiB, header: int = 4096) -> tuple[WriteBehind, bytes]:
    """A file written as the writer does: a header, then pwrite + advance per piece."""
    data = os.urandom(header + sum(sizes))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.pwrite(fd, data[:header], 0)
        behind = WriteBehind(fd, header, Counted(), window=window)
        pos = header
        for n in sizes:
            os.pwrite(fd, data[pos:pos + n], pos)
            pos += n
            behind.advance(n)
    finally:
        os.close(fd)
    return behind, data


def record(monkeypatch: pytest.MonkeyPatch, fail: dict[int, int] | None = None) -> list[tuple]:
    """Record sync_file_range and fadvise calls (sync_file_range's flags -> errno in ``fail`` raise)."""
    calls: list[tuple] = []
    real_fadvise = os.posix_fadvise

    def sfr(fd: int, offset: int, nbytes: int, flags: int) -> None:
        calls.append(("sfr", offset, nbytes, flags))
        if fail and flags in fail:
            raise OSError(fail[flags], os.strerror(fail[flags]))

    def fadvise(fd: int, offset: int, nbytes: int, advice: int) -> None:
        calls.append(("fadvise", offset, nbytes, advice))
        real_fadvise(fd, offset, nbytes, advice)

    monkeypatch.setattr(writeback, "sync_file_range", sfr)
    monkeypatch.setattr(writeback, "_libc_sync_file_range", lambda: sfr)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return calls


def test_each_window_is_started_then_waited_for_and_dropped_one_window_later(tmp_path, monkeypatch):
    calls = record(monkeypatch)
    # 4 KiB header, then pieces that cross the 1 MiB window at odd places; 3.5 MiB in all.
    behind, data = write_windows(tmp_path / "f", [700 * 1024, 700 * 1024, 1500 * 1024, 600 * 1024], window=MiB)
    assert behind.mode == "sync_file_range"
    assert (tmp_path / "f").read_bytes() == data
    # windows end where a piece crosses the window size: [0, 1404 KiB), [1404 KiB, 2904 KiB), the rest unflushed
    w1, w2 = (0, 4096 + 1400 * 1024), (4096 + 1400 * 1024, 1500 * 1024)
    assert calls == [("sfr", *w1, SYNC_WRITE),
                     ("sfr", *w2, SYNC_WRITE), ("sfr", *w1, SYNC_WAIT_ALL), ("fadvise", *w1, os.POSIX_FADV_DONTNEED)]
    assert behind.previous == w2  # still in flight: the fsync before the rename waits for it and the tail
    assert behind.progress.bytes == len(data) - 4096


def test_a_file_system_that_refuses_sync_file_range_falls_back_to_fadvise(tmp_path, monkeypatch):
    calls = record(monkeypatch, fail={SYNC_WRITE: errno.EINVAL})
    behind, data = write_windows(tmp_path / "f", [MiB, MiB, MiB])
    assert behind.mode == "fadvise"
    assert (tmp_path / "f").read_bytes() == data
    assert [c[0] for c in calls] == ["sfr", "fadvise", "fadvise", "fadvise"]
    assert [c[1:3] for c in calls if c[0] == "fadvise"] == [(0, 4096 + MiB), (4096 + MiB, MiB), (4096 + 2 * MiB, MiB)]


def test_without_fsync_nothing_is_flushed(tmp_path, monkeypatch):
    calls = record(monkeypatch)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        behind = WriteBehind(fd, 0, Counted(), enabled=False, window=MiB)
        os.pwrite(fd, b"x" * 3 * MiB, 0)
        behind.advance(3 * MiB)
    finally:
        os.close(fd)
    assert behind.mode is None and calls == []


def test_a_write_error_while_waiting_is_one_error_line_and_no_output(tiny_model, tmp_path, monkeypatch, surgeon):
    """EIO from the wait (a failing disk) must surface: not be taken for 'unsupported' and ignored."""
    base = tiny_model("base", dtype="f32", num_layers=4, hidden_size=256, intermediate_size=512, vocab_size=2048)
    monkeypatch.setattr(writeback, "WINDOW", 64 * 1024)
    record(monkeypatch, fail={SYNC_WAIT_ALL: errno.EIO})
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    out = tmp_path / "out"
    res = surgeon("zero", base, "--module", "o_proj", "--layers", "1", "-q", "-o", out)
    assert res.code == 1, res.stderr
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error: ") and "Input/output error" in res.err_lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before


@linux_only
def test_on_a_real_disk_the_waited_windows_are_clean_and_out_of_the_cache(tmp_path):
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("cachestat's syscall number is known here for x86-64 and arm64 only")
    probe = tmp_path / "probe"
    probe.write_bytes(b"p" * MiB)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        seen = cachestat(fd, 0, MiB)
    finally:
        os.close(fd)
    if seen is None:
        pytest.skip("no cachestat(2) here")
    if seen[0]:
        pytest.skip("this file system keeps clean pages in memory (tmpfs): nothing to drop")
    path = tmp_path / "f"
    behind, data = write_windows(path, [MiB] * 6, window=MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        waited = cachestat(fd, 0, 4096 + 4 * MiB)  # windows 1-4: each waited for when the next one finished
    finally:
        os.close(fd)
    assert behind.mode == "sync_file_range"
    assert waited == (0, 0), f"windows already waited for still hold (cached, dirty) pages {waited}"
    assert path.read_bytes() == data
