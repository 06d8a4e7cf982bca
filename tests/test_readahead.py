"""The diff's read-ahead: what it plans, that it reads only what is not cached, stays
within its window of the consumer and skips what the consumer passed, ends once it gets a
window ahead, stops when told, leaves nothing open, and never changes a result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon import readahead
from weightsurgeon.diff import diff_checkpoints
from weightsurgeon.readahead import Piece, ReadAhead, plan_pieces
from weightsurgeon.synth import make_checkpoint, make_tuned

from conftest import evict

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def turned_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGEON_READAHEAD", "1")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and DONTNEED as on Linux")


def data_file(path: Path, nbytes: int) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8).tobytes())
    return path


def test_pieces_follow_the_consumer_and_merge_small_ranges() -> None:
    a, b = Path("a"), Path("b")
    groups = [
        [(a, 0, 100), (b, 0, 100)],  # a big tensor pair
        [(a, 100, 5), (b, 100, 5)],  # a norm: contiguous with the tensor before it
        [(a, 105, 300), (b, 105, 300)],
    ]
    pieces = plan_pieces(groups, step=128)
    assert pieces[:4] == [Piece(a, 0, 128, 0), Piece(b, 0, 128, 0), Piece(a, 128, 128, 256), Piece(b, 128, 128, 256)]
    # Every byte exactly once, per file, in order.
    for f in (a, b):
        mine = [(p.pos, p.nbytes) for p in pieces if p.path == f]
        assert [pos for pos, _ in mine] == list(range(0, 405, 128))
        assert sum(n for _, n in mine) == 405
    assert [p.due for p in pieces] == sorted(p.due for p in pieces)


def test_a_gap_in_a_file_starts_a_new_piece() -> None:
    a = Path("a")
    pieces = plan_pieces([[(a, 0, 10)], [(a, 20, 10)]], step=128)
    assert pieces == [Piece(a, 0, 10, 0), Piece(a, 20, 10, 10)]


@linux_only
def test_warm_files_start_no_thread(tmp_path: Path) -> None:
    f = data_file(tmp_path / "x.bin", 4 * MiB)
    ahead = ReadAhead.for_groups([[(f, 0, 4 * MiB)]])
    with ahead:
        assert ahead._thread is None
    assert ahead.pieces == []


def wait_until_done(ahead: ReadAhead) -> None:
    assert ahead._thread is not None
    ahead._thread.join(timeout=10)
    assert not ahead._thread.is_alive()


def uncached(f: Path, step: int) -> list[int]:
    """Positions of the pieces of `f` not in the page cache now."""
    probe = ReadAhead.for_groups([[(f, 0, f.stat().st_size)]], step=step)
    probe.close()
    return [p.pos for p in probe.pieces]


@linux_only
def test_cold_pieces_are_read_up_to_a_window_ahead_and_then_the_thread_ends(tmp_path: Path) -> None:
    """A consumer that has not started yet: the thread reads one window's worth and ends
    (the disk outpaced the consumer), leaving the rest to the consumer's own reads."""
    f = data_file(tmp_path / "x.bin", 32 * MiB)
    if not evict(f):
        pytest.skip("this file system keeps files in memory; nothing to read ahead")
    ahead = ReadAhead.for_groups([[(f, 0, 32 * MiB)]], window=12 * MiB, step=4 * MiB)
    assert [p.pos for p in ahead.pieces] == [i * 4 * MiB for i in range(8)]  # every cold piece, in order
    with ahead:
        wait_until_done(ahead)  # it ends by itself, no stop()
    assert ahead.pieces_read == 3
    # What was read is cached now (the OS may have read further ahead on its own).
    assert all(pos >= 12 * MiB for pos in uncached(f, 4 * MiB))


@linux_only
def test_it_skips_what_the_consumer_passed_and_reads_on_as_it_advances(tmp_path: Path) -> None:
    f = data_file(tmp_path / "x.bin", 32 * MiB)
    if not evict(f):
        pytest.skip("this file system keeps files in memory")
    ahead = ReadAhead.for_groups([[(f, 0, 32 * MiB)]], window=8 * MiB, step=4 * MiB)
    ahead.advance(20 * MiB)  # the consumer is at 20 MiB: 0-16 are its own, 20 and 24 lie in the window
    with ahead:
        wait_until_done(ahead)
    assert ahead.pieces_read == 2
    left = uncached(f, 4 * MiB)
    assert {0, 4 * MiB, 8 * MiB, 12 * MiB, 16 * MiB} <= set(left)  # never read: the consumer had passed
    assert 20 * MiB not in left and 24 * MiB not in left


@linux_only
def test_partly_cached_files_read_only_what_is_missing(tmp_path: Path) -> None:
    f = data_file(tmp_path / "x.bin", 16 * MiB)
    if not evict(f):
        pytest.skip("this file system keeps files in memory")
    with open(f, "rb") as fh:
        fh.seek(4 * MiB)
        fh.read(4 * MiB)  # the second piece is cached now
    ahead = ReadAhead.for_groups([[(f, 0, 16 * MiB)]], step=4 * MiB)
    ahead.close()
    assert [p.pos for p in ahead.pieces] == [0, 8 * MiB, 12 * MiB]


@linux_only
def test_stop_and_leaving_end_the_thread_and_close_its_descriptors(tmp_path: Path) -> None:
    f = data_file(tmp_path / "x.bin", 16 * MiB)
    if not evict(f):
        pytest.skip("this file system keeps files in memory")
    before = set(os.listdir("/proc/self/fd"))
    stopped = ReadAhead.for_groups([[(f, 0, 16 * MiB)]], step=4 * MiB)
    assert len(stopped.pieces) == 4
    stopped.stop()  # before it starts: it reads nothing
    with stopped:
        assert stopped._thread is None
    assert stopped.pieces_read == 0
    running = ReadAhead.for_groups([[(f, 0, 16 * MiB)]], step=4 * MiB)
    with running:
        thread = running._thread
        assert thread is not None
    assert not thread.is_alive()
    assert set(os.listdir("/proc/self/fd")) <= before


@linux_only
@pytest.mark.parametrize("value", [None, "0", "off"])
def test_on_by_default_and_off_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    f = data_file(tmp_path / "x.bin", 4 * MiB)
    if not evict(f):
        pytest.skip("this file system keeps files in memory")
    if value is None:
        monkeypatch.delenv("SURGEON_READAHEAD")
    else:
        monkeypatch.setenv("SURGEON_READAHEAD", value)
    ahead = ReadAhead.for_groups([[(f, 0, 4 * MiB)]])
    ahead.close()
    assert bool(ahead.pieces) == (value is None)


def test_no_read_ahead_where_the_os_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*args: object, **kwargs: object) -> None:
        raise OSError("no C library here")

    monkeypatch.setattr(readahead, "_Files", no_libc)
    f = data_file(tmp_path / "x.bin", MiB)
    ahead = ReadAhead.for_groups([[(f, 0, MiB)]])
    with ahead:
        ahead.stop()
    assert ahead.pieces == [] and ahead._thread is None


@linux_only
def test_a_cold_diff_equals_a_warm_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-ahead only warms the cache: the report is the same, bit for bit, with and without it."""
    base = make_checkpoint(tmp_path / "base", num_layers=3, hidden_size=256, intermediate_size=512, num_heads=4,
                           num_kv_heads=2, vocab_size=1024, dtype="bf16", shard_bytes=2 * MiB)
    tuned = make_tuned(base, tmp_path / "tuned")
    if not evict(base, tuned):
        pytest.skip("this file system keeps files in memory")
    started = []
    real_enter = ReadAhead.__enter__

    def spy(self: ReadAhead) -> ReadAhead:
        started.append(len(self.pieces))
        return real_enter(self)

    monkeypatch.setattr(ReadAhead, "__enter__", spy)
    cold = diff_checkpoints(base, tuned, chunk_bytes=64 * 1024)
    assert started and started[0] > 0  # the cold run did read ahead
    monkeypatch.setenv("SURGEON_READAHEAD", "0")
    warm = diff_checkpoints(base, tuned, chunk_bytes=64 * 1024)
    strip = lambda r: json.dumps({**r.to_dict(), "timing": None, "created": None}, sort_keys=True)  # noqa: E731
    assert strip(cold) == strip(warm)


@linux_only
def test_a_file_it_cannot_open_means_no_read_ahead_and_nothing_left_open(tmp_path: Path) -> None:
    """The diff's own reads report such files; the read-ahead only steps aside."""
    f = data_file(tmp_path / "x.bin", MiB)
    before = set(os.listdir("/proc/self/fd"))
    ahead = ReadAhead.for_groups([[(f, 0, MiB), (tmp_path / "gone.bin", 0, MiB)]])
    with ahead:
        pass
    assert ahead.pieces == [] and ahead._thread is None
    assert set(os.listdir("/proc/self/fd")) <= before


def test_the_cli_starts_reading_ahead_before_numpy_and_numba_are_imported(tmp_path: Path) -> None:
    """Cold, the disk must not wait for those imports (numpy 0.07 s, numba 0.4 s): the CLI
    plans the diff without them and enters the read-ahead first."""
    base = make_checkpoint(tmp_path / "base", num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
                           num_kv_heads=2, vocab_size=512, dtype="bf16")
    tuned = make_tuned(base, tmp_path / "tuned")
    probe = (
        "import sys\n"
        "import weightsurgeon.readahead as ra\n"
        "enter = ra.ReadAhead.__enter__\n"
        "def spy(self):\n"
        "    print('loaded at read-ahead:', sorted(m for m in ('numpy', 'numba') if m in sys.modules), flush=True)\n"
        "    return enter(self)\n"
        "ra.ReadAhead.__enter__ = spy\n"
        "from weightsurgeon.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, "diff", str(base), str(tuned), "-o", str(tmp_path / "report"),
                           "--no-plots", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loaded at read-ahead: []" in done.stdout
    assert (tmp_path / "report" / "report.json").exists()
