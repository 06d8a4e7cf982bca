"""Read-ahead that stops where a copied run stops.

Surgery copies an input in runs of tensors that sit back to back (`writer.RawCopier`); what
lies between two runs (a spliced-out o_proj, a zeroed tensor, a removed layer) is not
copied. The kernel's own read-ahead cannot know that: on a disk with 8 MiB read_ahead_kb it
reads up to two 16 MiB windows past every run's end, so a 12 GB splice read 0.83 GB it never
copied. Its reads here are steered instead:

- the run is copied through a second open file description of the same input (its own
  read-ahead state) set to ``FADV_RANDOM``, so a read brings in only the pages it asks for;
- ahead of the copy, ``FADV_WILLNEED`` asks for the run's next `AHEAD` bytes and never a
  byte past the run's end, in pieces of at most `advice_step` (the kernel reads at most
  max(read_ahead_kb, max_sectors_kb) per call and silently drops the rest: an earlier
  attempt that asked for 64 MiB at once got 8 MiB, and every other page was then read one
  small request at a time, 2.6x slower than ``cp``).

Two kernel facts this leans on (Linux 6.x, checked on this machine's 6.18 with cachestat):
``FADV_RANDOM`` turns off the read-ahead a missing page starts, not the one a page marked
by an earlier read-ahead starts; and that marked-page read-ahead only reads the first
missing pages within one window after the mark. Pages asked for ahead of the copy are in
the cache (under I/O) before the copy reaches them, so a mark left in the run by an earlier
reader (the header's read) finds no missing page nearby and reads nothing. Where the twin
cannot be opened (no /proc), the copy reads through the input's own descriptor, as before.
"""
from __future__ import annotations

import os
from pathlib import Path

AHEAD = 64 * 1024 * 1024  # bytes asked for ahead of the copy (the kernel's own keeps 16-32 MiB in flight here)
DEFAULT_STEP = 128 * 1024  # Linux's default read_ahead_kb: a WILLNEED of this size is honoured everywhere
ENABLED = True  # False: copy through the input's own descriptor and the kernel's read-ahead (tests compare)


def advice_step(fd: int) -> int:
    """The most one FADV_WILLNEED reads on this file's device: max(read_ahead_kb, max_sectors_kb),
    from sysfs (the device's backing_dev_info, or the disk above a partition); 128 KiB if unknown."""
    try:
        dev = os.fstat(fd).st_dev
    except OSError:
        return DEFAULT_STEP
    node = f"{os.major(dev)}:{os.minor(dev)}"
    values = [_read_kb(Path("/sys/class/bdi") / node / "read_ahead_kb")]
    block = Path("/sys/dev/block") / node
    if (block / "partition").exists():
        block = block.resolve().parent
    values += [_read_kb(block / "queue" / "read_ahead_kb"), _read_kb(block / "queue" / "max_sectors_kb")]
    known = [v for v in values if v]
    return max(known) if known else DEFAULT_STEP


def _read_kb(path: Path) -> int:
    try:
        return int(path.read_text().strip()) * 1024
    except (OSError, ValueError):
        return 0


class ExactReads:
    """Per input descriptor, its read-ahead-free twin and the step its WILLNEED requests take."""

    def __init__(self) -> None:
        self._twins: dict[int, tuple[int, int] | None] = {}

    def twin(self, fd: int) -> tuple[int, int] | None:
        """(twin descriptor, advice step) for an input descriptor, or None where there is none."""
        if fd not in self._twins:
            twin = None
            if ENABLED and hasattr(os, "posix_fadvise"):
                try:  # /proc/self/fd/N opens the very file N refers to, whatever its path names now
                    twin = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    os.posix_fadvise(twin, 0, 0, os.POSIX_FADV_RANDOM)
                except OSError:
                    if twin is not None:
                        os.close(twin)
                    twin = None
            self._twins[fd] = None if twin is None else (twin, advice_step(twin))
        return self._twins[fd]

    def close(self) -> None:
        for entry in self._twins.values():
            if entry is not None:
                os.close(entry[0])
        self._twins.clear()


class RunAhead:
    """WILLNEED requests over one run [begin, end) of a twin, kept `AHEAD` bytes before the copy."""

    def __init__(self, fd: int, step: int, begin: int, end: int) -> None:
        self.fd, self.step, self.end = fd, step, end
        self.asked = begin  # everything before this was asked for

    def before_copy(self, pos: int, nbytes: int) -> None:
        """Called before copying [pos, pos + nbytes): that range and the next AHEAD bytes are asked for."""
        target = min(self.end, pos + nbytes + AHEAD)
        while self.asked < target:
            n = min(self.step, target - self.asked)
            try:
                os.posix_fadvise(self.fd, self.asked, n, os.POSIX_FADV_WILLNEED)
            except OSError:  # only a hint: the copy then reads what it asks for, as it goes
                self.asked = self.end
                return
            self.asked += n
