"""Read ahead of the diff's kernel while the disk is slower than the kernel.

Why a thread of our own: before the diff reads its first byte it imports numpy and loads
its kernel (0.07 s with the native kernel, 0.3-0.5 s where numba's serves), with the disk
idle and one core idle. This thread uses exactly those: it
reads the byte ranges the diff will consume, in the order it consumes them. It goes on
reading once the kernel runs, up to WINDOW bytes ahead of what the kernel has consumed
(`advance`), and ends for good the first time it gets that far ahead: the disk then reads
faster than the kernel computes, and the OS's read-ahead for the kernel's own reads is
enough. So on a slow disk it keeps the disk busy the whole run, and on a fast one it only
covers the start-up, where every further copy would take CPU the kernel needs.

Measured on the 2.6 GB benchmark pair, the variants taking turns, cold, 6 rounds each
(README, "Performance"), with numba's kernel: with the disk throttled to 1.6 GB/s, `cat`
1.76 s, this 2.08 s, a read-ahead that stops once the kernel runs 2.35 s, one that always
stays a window ahead 2.06 s; on the unthrottled virtual disk (`cat` 0.6-1.6 s), 1.68,
2.15 and 2.41 s: there, always reading ahead costs the kernel CPU for the copies. With
the native kernel, throttled: this 1.80 s, none 2.06 s, `cat` 2.03 s; 10 rounds on the
virtual disk: this 1.01 s, none 1.47 s, posix_fadvise(WILLNEED) instead of reads 1.56 s,
madvise(MADV_POPULATE_READ) 1.25 s, `cat` 1.09 s. Warm, no thread starts.

Details that matter:
- Only pieces not already in the page cache are read: mincore(2) on a mapping of each
  file tells, for the first and last page of each piece, without causing any I/O (a
  RWF_NOWAIT read would: it starts read-ahead at every page it probes, which measured
  60% slower cold). On a warm cache no thread starts at all. Pieces the kernel has
  reached before the thread did are skipped: the kernel read them itself.
- The thread reads through descriptors of its own, so the OS's read-ahead state for the
  kernel's descriptors is left alone.
- Each read lands in one small buffer named many times in the read's list of buffers
  (preadv): the copy out of the page cache stays in the core's cache.
- posix_fadvise(WILLNEED) instead of reads, a window of 256 or 512 MiB ahead, was no
  better than stopping once the kernel runs (2.23 and 2.28 s throttled).
- Where the OS cannot tell what is cached (no mincore via ctypes: Windows) there is no
  read-ahead. Errors end the thread quietly: the diff's own reads meet the same error
  and report it. SURGEON_READAHEAD=0 turns it off (benchmarks, odd storage).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, NamedTuple, Sequence

STEP = 8 * 1024 * 1024  # bytes per read call
SLICE = 128 * 1024  # the reused buffer each read call fills STEP / SLICE times over
WINDOW = 1024 * 1024 * 1024  # at most this far ahead of the consumer (page cache, not our memory)
PAGE = 4096

Range = tuple[Path, int, int]  # (file, byte position, nbytes)


def enabled() -> bool:
    """On unless SURGEON_READAHEAD is 0, no, off or false."""
    return os.environ.get("SURGEON_READAHEAD", "1").strip().lower() not in ("0", "no", "off", "false")


class Piece(NamedTuple):
    """A range of one file to read, and how many bytes the consumer takes before it needs it."""

    path: Path
    pos: int
    nbytes: int
    due: int


def plan_pieces(groups: Sequence[Sequence[Range]], step: int = STEP) -> list[Piece]:
    """Pieces of at most `step` bytes, in the order the consumer needs them.

    Each group holds the ranges the consumer reads side by side (a base tensor and its
    tuned counterparts), so byte k of each is due about k * len(group) bytes after the
    group starts. Contiguous ranges of one file merge (norms and biases are small).
    """
    pieces: list[list[Any]] = []
    last: dict[Path, list[Any]] = {}  # file -> its latest piece, still growing while contiguous
    due = 0
    for group in groups:
        sides = len(group)
        for path, pos, nbytes in group:
            offset = 0
            while offset < nbytes:
                piece = last.get(path)
                if piece is not None and piece[1] + piece[2] == pos + offset and piece[2] < step:
                    take = min(step - piece[2], nbytes - offset)
                    piece[2] += take
                else:
                    take = min(step, nbytes - offset)
                    piece = [path, pos + offset, take, due + offset * sides]
                    pieces.append(piece)
                    last[path] = piece
                offset += take
        due += sum(nbytes for _, _, nbytes in group)
    pieces.sort(key=lambda p: p[3])
    return [Piece(*p) for p in pieces]


class _Files:
    """Our own read-only descriptors and mappings of the files, to read them and to ask mincore(2)."""

    def __init__(self) -> None:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)  # OSError/AttributeError where there is no C library to ask
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        self._libc, self._mmap = libc, mmap
        self._vec = ctypes.create_string_buffer(1)
        self._map_failed = ctypes.c_void_p(-1).value  # (void *) -1
        self._open: dict[Path, tuple[int, int, int]] = {}  # path -> (fd, mapping address, size)

    def fd(self, path: Path) -> int:
        return self._entry(path)[0]

    def _entry(self, path: Path) -> tuple[int, int, int]:
        entry = self._open.get(path)
        if entry is None:
            fd = os.open(path, os.O_RDONLY)
            size = os.fstat(fd).st_size
            addr = self._libc.mmap(None, size, self._mmap.PROT_READ, self._mmap.MAP_SHARED, fd, 0) if size else 0
            if size and (addr is None or addr == self._map_failed):
                os.close(fd)
                raise OSError(f"{path}: cannot map to ask what is cached")
            entry = self._open[path] = (fd, addr, size)
        return entry

    def cached(self, path: Path, pos: int) -> bool:
        """Whether the page holding byte `pos` of the file is in the page cache (asks, reads nothing)."""
        _, addr, size = self._entry(path)
        if pos >= size:
            return True
        if self._libc.mincore(addr + pos - pos % PAGE, 1, self._vec) != 0:
            raise OSError("mincore failed")
        return bool(self._vec.raw[0] & 1)

    def close(self) -> None:
        for fd, addr, size in self._open.values():
            if size:
                self._libc.munmap(addr, size)
            os.close(fd)
        self._open.clear()


class ReadAhead:
    """Reads `pieces` (through `files`) in a daemon thread, at most `window` bytes ahead of
    the consumer, until it would get further ahead, runs out of pieces, or `stop` is called.

    Use as a context manager around the consumer, which calls `advance` as it goes;
    leaving it stops and joins the thread and closes its descriptors.
    """

    def __init__(self, pieces: Sequence[Piece] = (), files: _Files | None = None, window: int = WINDOW) -> None:
        self.pieces = list(pieces)
        self.window = window
        self.consumed = 0  # bytes the consumer has taken (see advance)
        self.pieces_read = 0
        self._files = files
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_groups(cls, groups: Sequence[Sequence[Range]], window: int | None = None, step: int = STEP) -> "ReadAhead":
        """A read-ahead of every piece not cached yet; an idle one when turned off, on a warm
        cache, or where the OS cannot tell. `window`: how far ahead of the consumer it may
        get (default WINDOW, less where memory is short)."""
        if not enabled():
            return cls()
        try:
            files = _Files()
        except (OSError, AttributeError):
            return cls()
        todo: list[Piece] = []
        try:
            for p in plan_pieces(groups, step):
                if not (files.cached(p.path, p.pos) and files.cached(p.path, p.pos + p.nbytes - 1)):
                    todo.append(p)
        except OSError:  # a file that cannot be opened or mapped: the diff's own reads will say why
            todo = []
        except BaseException:
            files.close()
            raise
        if not todo:
            files.close()
            return cls()
        return cls(todo, files, _window() if window is None else window)

    def __enter__(self) -> "ReadAhead":
        if self.pieces and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="surgeon-readahead", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, consumed: int) -> None:
        """The consumer has taken `consumed` bytes (counted as Piece.due counts them)."""
        self.consumed = consumed

    def stop(self) -> None:
        """No more reads after the one in flight."""
        self._stop.set()

    def close(self) -> None:
        """Stop and join the thread (if it started) and close our descriptors."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._files is not None:
            self._files.close()
            self._files = None

    def _run(self) -> None:
        assert self._files is not None
        small = memoryview(bytearray(SLICE))
        try:
            for piece in self.pieces:
                if self._stop.is_set():
                    return
                consumed = self.consumed
                if piece.due < consumed:
                    continue  # the consumer got there first and read it itself
                if piece.due >= consumed + self.window:
                    return  # the disk outpaces the consumer: its own reads (and the OS's read-ahead) suffice
                full, rest = divmod(piece.nbytes, SLICE)
                os.preadv(self._files.fd(piece.path), [small] * full + ([small[:rest]] if rest else []), piece.pos)
                self.pieces_read += 1
        except (OSError, AttributeError):  # AttributeError: no os.preadv on this platform
            return


def _window() -> int:
    """WINDOW, or a quarter of the memory available where that is less (Linux; WINDOW elsewhere):
    pages read too far ahead on a full machine would be dropped again before their use."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return max(STEP, min(WINDOW, int(line.split()[1]) * 1024 // 4))
    except (OSError, ValueError, IndexError):
        pass
    return WINDOW


def drop_cached(paths: Sequence[Path]) -> None:
    """Make files cold: flush and drop them from the page cache (benchmarks and tests; Linux, BSD)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
