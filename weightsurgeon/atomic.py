"""Nothing lost: outputs are built in a temporary sibling directory and renamed into place.

`atomic_output_dir` is the one way the engine creates an output folder. The temporary
directory lives beside the final one (same file system, so the rename is atomic), is
fsynced before the rename, and is removed on any exception, on Ctrl-C and on SIGTERM.
An existing output is replaced only with ``force``; an output inside an input is refused.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

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


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into `Interrupted` inside the block, so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; nothing was written")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def atomic_output_dir(final: Path, inputs: Sequence[Path] = (), force: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it becomes ``final``, on failure it vanishes."""
    final = check_output_path(Path(final), inputs, force)
    parent = final.resolve().parent
    with signals_as_exceptions():
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + final.name + "-", dir=parent))
        try:
            yield tmp
            if fsync:
                fsync_tree(tmp)
            _move_into_place(tmp, final, force)
            _fsync_dir(parent)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted("interrupted by SIGINT; nothing was written") from None
            if isinstance(e, OSError) and not isinstance(e, SurgeonError):
                raise SurgeonError(f"{final}: writing failed: {e.strerror or e}") from e
            raise


def _move_into_place(tmp: Path, final: Path, force: bool) -> None:
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
