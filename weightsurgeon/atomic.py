"""Nothing lost: outputs are built in a temporary sibling directory and renamed into place.

`atomic_output_dir` is the one way the engine creates an output folder. The temporary
directory lives beside the final one (same file system, so the rename is atomic), is
fsynced before the rename, and is removed on any exception, on Ctrl-C and on SIGTERM.
An existing output is replaced only with ``force``; an output inside an input is refused.

What no handler can catch (SIGKILL, the OOM killer, a power cut) leaves the temporary
folder behind, up to the size of a whole model. So each one holds a lock file naming its
owner (pid, host, start), ``flock``-ed for as long as the run lives: the kernel drops the
lock when the process dies, however it dies. The next run writing into the same parent
removes the folders whose lock nobody holds and says how much it freed (`temp_folders`
and `remove_stale` are also what `surgeon clean` runs), and refuses to start while
another live run writes the same output.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from weightsurgeon.errors import Interrupted, SurgeonError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; folders are then never judged stale
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".surgeon-tmp-"
LOCK_NAME = ".surgeon-lock"  # inside a temporary folder: who owns it, flock-ed while the owner lives
# A folder without a lock file is either a run between its mkdir and its lock (microseconds)
# or one left by a version without locks: judged stale once nothing in it changed for this long.
UNLOCKED_GRACE_S = 600.0


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
    if final.is_symlink():
        raise SurgeonError(f"{final}: is a symbolic link; outputs never replace a link (even with --force): choose another path")
    if final.exists() and not final.is_dir():
        raise SurgeonError(f"{final}: exists and is not a directory; --force replaces only a folder: remove it or choose another path")
    if final.exists() and not force:
        raise SurgeonError(f"{final}: already exists; pass --force to replace it")
    parent = resolved.parent
    if not parent.is_dir():
        raise SurgeonError(f"{parent}: the output's parent directory does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise SurgeonError(f"{parent}: not writable; choose an output folder you can write to")
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

    def __init__(self, final: Path, inputs: Sequence[Path] = (), force: bool = False, fsync: bool = True,
                 notify: Callable[[str], None] | None = None) -> None:
        self.final = check_output_path(Path(final), inputs, force)
        self.force = force
        self.fsync = fsync
        self.parent = self.final.resolve().parent
        self.notify = notify or _warn
        self.tmp: Path | None = None
        self._lock_fd: int | None = None
        self._previous: dict | None = None

    def __enter__(self) -> Path:
        self._previous = _install_interrupt_handlers()
        candidate = self.parent / f"{TEMP_PREFIX}{self.final.name}-{secrets.token_hex(6)}"
        try:
            freed = remove_stale(self.parent)
            if freed:
                self.notify(_freed_message(self.parent, freed))
            with _parent_mutex(self.parent):  # no second run for the same output between the check and the mkdir
                _refuse_concurrent_run(self.parent, self.final)
                os.mkdir(candidate)
                self.tmp = candidate
                self._lock_fd = _take_ownership(candidate, self.final)
        except BaseException as e:
            if not isinstance(e, FileExistsError):
                shutil.rmtree(candidate, ignore_errors=True)
            self._release()
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
                    # Still ours (the flock is held): only a SIGKILL between the rename and here leaves it.
                    with contextlib.suppress(OSError):
                        os.unlink(self.final / LOCK_NAME)
                    self._release()
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
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

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
    """Rename ``tmp`` to ``final``; with ``force`` an existing ``final`` is replaced.

    The replacement is one atomic exchange where the system offers it (Linux
    ``renameat2(RENAME_EXCHANGE)``), so a SIGKILL or power cut at any moment leaves either
    the old output or the new one at ``final``, never neither. Elsewhere the old output is
    moved aside first and put back if the second rename fails; a kill between the two
    renames then leaves the old output in a ``-old-`` temporary folder, which
    ``surgeon clean`` and the next run find."""
    if final.exists() and force:
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old output
            return
        old = final.parent / f"{TEMP_PREFIX}{final.name}-old-{secrets.token_hex(6)}"
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the C library or the file system cannot
    (not Linux, a libc without ``renameat2``, NFS and other file systems answering EINVAL)."""
    libc_renameat2 = _libc_renameat2()
    if libc_renameat2 is None:
        return False
    if libc_renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _libc_renameat2():  # noqa: ANN202 - a ctypes function or None
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, a libc without it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


# ---------------------------------------------------------------------------------------
# Temporary folders: owners, stale ones, concurrent runs
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TempFolder:
    """A temporary folder beside an output, and what became of its owner."""

    path: Path
    state: str  # "live" (owner running), "stale" (owner gone), "recent" (no lock yet), "foreign" (another host)
    owner: dict | None  # the lock file's JSON: pid, host, started, output
    bytes: int  # disk usage

    def describe(self) -> str:
        o = self.owner or {}
        who = f"pid {o.get('pid', '?')} on {o.get('host', '?')}, started {o.get('started', '?')}" if o else "no lock file"
        why = {"live": "in use by a running surgeon", "stale": "its run is gone (killed or crashed)",
               "recent": "no lock file, changed in the last minutes (a run starting, or an older version's)",
               "foreign": "written on another host; remove it by hand if no run is alive there"}[self.state]
        return f"{self.path} ({_size_text(self.bytes)}; {who}): {why}"


def temp_folders(parent: Path) -> list[TempFolder]:
    """Every surgeon temporary folder directly inside ``parent``, with its owner's state."""
    found = []
    try:
        entries = sorted(p for p in Path(parent).iterdir() if p.name.startswith(TEMP_PREFIX))
    except OSError:
        return []
    for path in entries:
        if path.is_symlink() or not path.is_dir():
            continue
        state, owner = _owner_state(path)
        found.append(TempFolder(path, state, owner, _disk_usage(path)))
    return found


def remove_stale(parent: Path) -> list[TempFolder]:
    """Remove the temporary folders in ``parent`` whose owner is gone; returns what was removed."""
    removed = []
    for folder in temp_folders(parent):
        if folder.state != "stale":
            continue
        with _holding_lock(folder.path) as held:  # another cleaner sees it as live meanwhile
            if held is False:
                continue
            shutil.rmtree(folder.path, ignore_errors=True)
        if not folder.path.exists():
            removed.append(folder)
    return removed


def _owner_state(path: Path) -> tuple[str, dict | None]:
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _unlocked_state(path), None
    except OSError:
        return "live", None  # cannot tell: never remove
    try:
        owner = _read_owner(fd)
        if owner and owner.get("host") != socket.gethostname():
            return "foreign", owner
        if fcntl is None:
            return "live", owner
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "live", owner
        except OSError:  # a file system without locks: cannot tell
            return "live", owner
        return "stale", owner  # the lock drops when fd closes below
    finally:
        os.close(fd)


def _unlocked_state(path: Path) -> str:
    """No lock file: judged by age. ``-old-`` folders (an output moved aside by a --force swap)
    by ctime, which the rename sets; the others by the newest mtime inside."""
    try:
        if "-old-" in path.name:
            newest = path.stat().st_ctime
        else:
            newest = max([path.stat().st_mtime] + [e.stat(follow_symlinks=False).st_mtime for e in os.scandir(path)])
    except OSError:
        return "recent"
    return "stale" if time.time() - newest > UNLOCKED_GRACE_S else "recent"


def _read_owner(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _holding_lock(path: Path) -> Iterator[bool | None]:
    """Hold ``path``'s lock while removing it: True if taken, False if someone holds it, None if it has none."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        yield None
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
        yield True
    finally:
        os.close(fd)


def _take_ownership(folder: Path, final: Path) -> int | None:
    """Write and flock ``folder``'s lock file; the returned descriptor holds the lock until closed.

    The file is locked under another name and renamed into place, so a scanner never finds
    a lock file that nobody holds yet.
    """
    if fcntl is None:
        return None
    pending = folder / (LOCK_NAME + ".new")
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "output": str(final.resolve()),
                 "started": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
        os.write(fd, json.dumps(owner).encode())
        os.rename(pending, folder / LOCK_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_concurrent_run(parent: Path, final: Path) -> None:
    target = str(final.resolve())
    for folder in temp_folders(parent):
        if folder.state == "live" and folder.owner and folder.owner.get("output") == target:
            o = folder.owner
            raise SurgeonError(f"{final}: another surgeon run (pid {o.get('pid')} on {o.get('host')}, started "
                               f"{o.get('started')}) is writing this output now; wait for it to finish or stop it")


@contextlib.contextmanager
def _parent_mutex(parent: Path) -> Iterator[None]:
    """An exclusive flock on the parent folder itself, held for the moment between checking for a
    concurrent run and creating our own folder (best effort: some file systems refuse it)."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _freed_message(parent: Path, removed: list[TempFolder]) -> str:
    size = _size_text(sum(f.bytes for f in removed))
    names = ", ".join(f.path.name for f in removed[:3]) + (" ..." if len(removed) > 3 else "")
    return (f"{parent}: removed {len(removed)} temporary folder(s) left by killed or crashed runs ({names}): "
            f"{size} freed")


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()
