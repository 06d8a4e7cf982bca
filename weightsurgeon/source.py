"""Byte sources: positioned reads into the caller's reused buffers, from a local file or a remote one.

The engine reads tensor bytes through this one interface, so planning, selection, the
diff loop and the writer do not care where the bytes live. A local file also hands out
its descriptor (`fileno`) to readers of our own that want it (the diff kernel's pread,
copy_file_range); a remote file has none, and those readers fall back to `read_into`.
A remote file whose bytes were fetched ahead can instead lend them where they landed
(`lendable`, `lend`, `give_back`), so the diff kernel and the writer read the fetch
buffers themselves: no second copy of every byte.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from weightsurgeon.errors import SurgeonError


class ByteSource(Protocol):
    """A file's bytes by position. `read_into` fills the view, or returns fewer bytes only at end of file."""

    name: str  # shown in error messages
    size: int

    def read_into(self, pos: int, view: memoryview) -> int: ...

    def fileno(self) -> int | None: ...

    def lendable(self, pos: int, align: int = 1) -> tuple[int, bool]:
        """(bytes from `pos` to the end of the fetched piece holding it, whether `lend` can hand them
        out in place); (0, False) where no piece holds `pos`. Never waits."""
        ...

    def lend(self, pos: int, nbytes: int) -> memoryview:
        """The bytes [pos, pos + nbytes) where they are held (nbytes <= lendable(pos)); waits until they arrived."""
        ...

    def give_back(self, pos: int, nbytes: int) -> None:
        """The reader is done with lent bytes: their buffer may be reused."""
        ...

    def close(self) -> None: ...


def open_sequential(path: Path) -> int:
    """A read-only descriptor with the kernel told we read front to back (more read-ahead)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise SurgeonError(f"{path}: cannot open: {e.strerror} (its header was read when the run started: was it "
                           "moved, deleted or made unreadable since?)") from e
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:  # only a hint; some file systems refuse it
            pass
    return fd


def pread_into(fd: int, view: memoryview, pos: int) -> int:
    """One positioned read into ``view`` (no allocation where os.preadv exists); returns bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], pos)
    data = os.pread(fd, len(view), pos)  # portable fallback (allocates)
    view[: len(data)] = data
    return len(data)


class LocalFile:
    """A file on a local disk, opened on first read. OSError escapes: the caller names the tensor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._fd: int | None = None

    @property
    def size(self) -> int:
        return os.fstat(self.fileno()).st_size

    def fileno(self) -> int:
        if self._fd is None:
            self._fd = open_sequential(self.path)
        return self._fd

    def read_into(self, pos: int, view: memoryview) -> int:
        fd = self.fileno()
        done = 0
        while done < len(view):
            n = pread_into(fd, view[done:], pos + done)
            if n == 0:
                break
            done += n
        return done

    def lendable(self, pos: int, align: int = 1) -> tuple[int, bool]:
        return 0, False  # the page cache is read by pread or copy_file_range, never lent

    def lend(self, pos: int, nbytes: int) -> memoryview:
        raise ValueError(f"internal: {self.name} lends no bytes")

    def give_back(self, pos: int, nbytes: int) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
