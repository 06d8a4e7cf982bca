"""Nothing lost: outputs are built in a temporary sibling directory and renamed into place.

`atomic_output_dir` is the one way the engine creates an output folder. The temporary
directory lives beside the final one (same file system, so the rename is atomic), is
fsynced before the rename, and is removed on any exception, on Ctrl-C and on SIGTERM.
An existing output is replaced only with ``force``; an output inside an input is refused.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from weightsurgeon.errors import Interrupted, SurgeonError

TEMP_PREFIX = ".surgeon-tmp-"


def check_output_path(final: Path, inputs: Sequence[Path] = (), force: bool = False) -> Path:
    """Validate an output path before any work: not inside (or equal to) an input, not existing unless forced."""
    final = Path(final).expanduser()
    resolved = final.resolve()
    for inp in inputs:
        root = Path(inp).expanduser().resolve()
        if root.is_dir() and (resolved == root or root in resolved.parents):
            raise SurgeonError(f"{final}: the output would be inside the input {inp}; choose another folder")
        if resolved == root or resolved in root.parents:
            raise SurgeonError(f"{final}: the output would replace or contain the input {inp}; choose another folder")
    if final.exists() or final.is_symlink():
        if not force:
            raise SurgeonError(f"{final}: already exists; pass --force to replace it")
        if final.is_symlink() or not final.is_dir():
            raise SurgeonError(f"{final}: exists and is not a directory; refusing to replace it")
    parent = resolved.parent
    if not parent.is_dir():
        raise SurgeonError(f"{parent}: the output's parent directory does not exist")
    if not os.access(parent, os.W_OK):
        raise SurgeonError(f"{parent}: not writable")
    return final


def fsync_tree(root: Path) -> None:
    """Flush every file and directory below root to disk (before the rename makes them visible)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _ignore(_signum: int, _frame: object) -> None:
    """A Python-level no-op rather than SIG_IGN: switching to SIG_IGN while a signal is pending
    surfaces as OSError("Signal N ignored due to race condition") in the middle of a cleanup."""


def _ignore_signals() -> None:
    if _in_main_thread():
        for s in _SIGNALS:
            signal.signal(s, _ignore)


def _install_interrupt_handlers() -> dict | None:
    """First SIGINT/SIGTERM raises `Interrupted`; later ones are ignored (returns the previous handlers).

    Ignoring the later ones matters: a user pressing Ctrl-C three times must not cut short
    the cleanup that the first one started and leave a half-removed temporary folder.
    """
    if not _in_main_thread():
        return None

    def handler(signum: int, _frame: object) -> None:
        _ignore_signals()
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; nothing was written")

    return {s: signal.signal(s, handler) for s in _SIGNALS}


def _restore_handlers(previous: dict | None) -> None:
    if previous:
        for s, h in previous.items():
            signal.signal(s, h)


class atomic_output_dir:  # noqa: N801 - used like a function: `with atomic_output_dir(out) as tmp:`
    """A fresh temporary sibling directory; on success it becomes ``final``, on failure it vanishes.

    A class rather than a generator on purpose: Python runs signal handlers between
    bytecodes, and a generator-based context manager has a window after it yields but
    before the caller's ``with`` body starts, where an `Interrupted` would escape without
    cleanup. Here the only code between creating the folder and the caller's body runs
    inside ``__enter__``'s own ``try``. The folder's name is chosen before ``mkdir`` so
    that a signal landing right after the ``mkdir`` can still remove it (signal masks do
    not help: a signal delivered to any worker thread trips the main thread's handler).
    """

    def __init__(self, final: Path, inputs: Sequence[Path] = (), force: bool = False, fsync: bool = True) -> None:
        self.final = check_output_path(Path(final), inputs, force)
        self.force = force
        self.fsync = fsync
        self.parent = self.final.resolve().parent
        self.tmp: Path | None = None
        self._previous: dict | None = None

    def __enter__(self) -> Path:
        self._previous = _install_interrupt_handlers()
        candidate = self.parent / f"{TEMP_PREFIX}{self.final.name}-{secrets.token_hex(6)}"
        try:
            os.mkdir(candidate)
            self.tmp = candidate
        except BaseException as e:
            if not isinstance(e, FileExistsError):
                shutil.rmtree(candidate, ignore_errors=True)
            _restore_handlers(self._previous)
            raise self._translate(e) from (None if isinstance(e, KeyboardInterrupt) else e)
        return candidate

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        try:
            if exc is None:
                try:
                    if self.fsync:
                        fsync_tree(self.tmp)
                    _ignore_signals()  # the renames below must not be cut in half
                    move_into_place(self.tmp, self.final, self.force)
                    _fsync_dir(self.parent)
                except BaseException as e:
                    self._cleanup()
                    raise self._translate(e) from (None if isinstance(e, KeyboardInterrupt) else e)
                return False
            self._cleanup()
            translated = self._translate(exc)
            if translated is not exc:
                raise translated from (None if isinstance(exc, KeyboardInterrupt) else exc)
            return False
        finally:
            _restore_handlers(self._previous)

    def _cleanup(self) -> None:
        _ignore_signals()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _translate(self, e: BaseException) -> BaseException:
        if isinstance(e, KeyboardInterrupt):
            return Interrupted("interrupted by SIGINT; nothing was written")
        if isinstance(e, OSError) and not isinstance(e, SurgeonError):
            return SurgeonError(f"{self.final}: writing failed: {e.strerror or e}")
        return e


def replace_file(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write one file atomically: `write(fh)` fills a temporary sibling, which is renamed over
    `path` only once complete (a reader never sees half a PNG or page), and removed on any failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, mode)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def move_into_place(tmp: Path, final: Path, force: bool) -> None:
    """Rename ``tmp`` to ``final``; with ``force`` an existing ``final`` is swapped out first and restored on failure."""
    if final.exists() and force:
        old = final.parent / f"{TEMP_PREFIX}{final.name}-old-{os.getpid()}"
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
