"""O_DIRECT reads for the diff kernel, of the ranges the page cache does not hold.

A cold diff of several fine-tunes is bound by the two cores, not by the disk: reading a
file the page cache's way costs the reading thread about 0.25-0.3 CPU-s per GB (pages
allocated, filled, mapped into the cache, copied out, later evicted), 5 of the 16 CPU-s
of `surgeon diff BASE T1 T2 T3` on 4 x 4.2 GB. Read with O_DIRECT, the disk writes into
the kernel lane's own buffer and the CPU does almost nothing per byte.

What O_DIRECT changes, and how each is handled:

- it bypasses the cache both ways, so a range the cache already holds would be read from
  the disk again: each side of a kernel call asks `cachestat(2)` first and reads through
  the cache where half or more of its pages are there (a warm rerun stays warm-fast);
  where cachestat is missing (Linux < 6.5), nothing is read directly;
- offsets, lengths and buffer addresses must be aligned: the kernel's lanes read aligned
  supersets of their spans into an aligned pool (`_compiled.delta_spans_lane`);
- there is no read-ahead behind it, and the reads are synchronous: the lanes run on threads
  of their own, more than the cores (`LANES_PER_CORE`), so that a lane waiting for the disk
  leaves its core to another, and each reads `SPAN_BYTES` per side at a time;
- some file systems refuse it (EINVAL when the descriptor is opened, or on the first
  read): that descriptor is then read through the cache, with the same results.

The O_DIRECT descriptor is opened through /proc/self/fd/N (the very file N refers to,
whatever its path names now) and closed with the run.
"""
from __future__ import annotations

import errno
import os
import platform
import sys
from typing import Any

SPAN_BYTES = 2 << 20  # bytes of one side per read (1 MiB suits dd here; with the lanes' compute between reads 2 MiB did better)
LANES_PER_CORE = 4  # lanes per core while reading directly (2, 3, 4 and 6 measured: more lanes, more reads in flight)
ENABLED = os.environ.get("SURGEON_DIRECT", "1") != "0"  # SURGEON_DIRECT=0: every read through the page cache
CACHESTAT = 451  # cachestat(2)'s number on every Linux architecture but alpha (Linux 6.5+)


class DirectReads:
    """Per input descriptor of one run, its O_DIRECT twin (or None where refused), the choice per
    kernel call between the two, and the aligned pool the kernel's lanes read into."""

    def __init__(self, enabled: bool | None = None) -> None:
        linux = sys.platform.startswith("linux") and hasattr(os, "O_DIRECT") and platform.machine() != "alpha"
        self.enabled = (ENABLED if enabled is None else enabled) and linux
        self._twins: dict[int, tuple[tuple[int, int], int | None]] = {}  # fd -> ((dev, inode), twin or None)
        self._pool: Any = None  # an aligned numpy uint8 array
        self._cachestat: Any = None  # (function, Range, Stat), loaded on first use; False where there is none
        self._threads: Any = None  # the lanes' ThreadPoolExecutor, made on first use
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.lanes = max(1, LANES_PER_CORE * cores)
        self.span_bytes = SPAN_BYTES

    def twin(self, fd: int) -> int | None:
        """The O_DIRECT descriptor of the file `fd` reads, or None where O_DIRECT is refused."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        ident = (st.st_dev, st.st_ino)
        known = self._twins.get(fd)
        if known is not None and known[0] == ident:
            return known[1]
        if known is not None and known[1] is not None:  # the number now names another file
            os.close(known[1])
        twin = None
        try:
            twin = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
            other = os.fstat(twin)
            if (other.st_dev, other.st_ino) != ident:
                os.close(twin)
                twin = None
        except OSError:  # EINVAL: the file system refuses O_DIRECT; ENOENT: no /proc
            twin = None
        self._twins[fd] = (ident, twin)
        return twin

    def refuse(self, fd: int) -> None:
        """A read through fd's twin failed: read fd through the cache from now on."""
        known = self._twins.get(fd)
        if known is not None and known[1] is not None:
            os.close(known[1])
            self._twins[fd] = (known[0], None)

    def choose(self, fd: int, pos: int, nbytes: int) -> int:
        """The descriptor to read [pos, pos + nbytes) of fd through: its twin where the cache holds
        less than half of the range's pages, else fd itself."""
        if not self.enabled or nbytes <= 0:
            return fd
        cached = self.cached_pages(fd, pos, nbytes)
        if cached is None or 2 * cached * self._page >= nbytes:
            return fd
        twin = self.twin(fd)
        return fd if twin is None else twin

    def cached_pages(self, fd: int, pos: int, nbytes: int) -> int | None:
        """Pages of the range in the page cache (cachestat), or None where that cannot be asked."""
        if self._cachestat is None:
            self._cachestat = _load_cachestat()
        if not self._cachestat:
            return None
        call, rng, stat = self._cachestat
        import ctypes

        r, s = rng(pos, nbytes), stat()
        if call(CACHESTAT, fd, ctypes.byref(r), ctypes.byref(s), 0) != 0:
            return None
        return int(s.cache)

    def pool(self, nbytes: int, align: int) -> Any:
        """An `align`-aligned byte buffer of at least nbytes, reused call after call (a fresh one per
        call would cost its page faults every time)."""
        import numpy as np

        if self._pool is None or self._pool.size < nbytes or self._pool.ctypes.data % align:
            base = np.empty(nbytes + align, dtype=np.uint8)
            skip = -base.ctypes.data % align
            self._pool = base[skip: skip + nbytes]
        return self._pool

    def run_lanes(self, calls: list[tuple]) -> None:
        """Run each (function, *args) on a thread of its own, all at once, and wait for them all (the
        kernel's lanes: compiled functions that release the GIL)."""
        if self._threads is None:
            from concurrent.futures import ThreadPoolExecutor

            self._threads = ThreadPoolExecutor(self.lanes, thread_name_prefix="surgeon-lane")
        for done in [self._threads.submit(*call) for call in calls]:
            done.result()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)  # no lane reads through a descriptor closed below
            self._threads = None
        for _, twin in self._twins.values():
            if twin is not None:
                os.close(twin)
        self._twins.clear()
        self._pool = None


def _load_cachestat() -> Any:
    """(syscall, Range, Stat) for cachestat(2) through libc's syscall(), or False where there is none."""
    try:
        import ctypes

        class Range(ctypes.Structure):
            _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

        class Stat(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]

        call = ctypes.CDLL(None, use_errno=True).syscall
        call.restype = ctypes.c_long
        probe_r, probe_s = Range(0, 4096), Stat()
        if call(CACHESTAT, -1, ctypes.byref(probe_r), ctypes.byref(probe_s), 0) != 0 and ctypes.get_errno() == errno.ENOSYS:
            return False  # EBADF for the probe's -1 where the call exists
        return call, Range, Stat
    except (OSError, AttributeError):
        return False

