"""`--force` replaces an output in one step: a run killed at any moment of the replacement
leaves the old output or the new one in place, never neither (nothing lost)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from weightsurgeon import atomic
from weightsurgeon.atomic import TEMP_PREFIX, atomic_output_dir

# A child process that replaces `out` and dies (os._exit, as SIGKILL would: no handlers, no
# cleanup) right after the first rename or exchange the replacement makes.
_KILLED_MID_REPLACE = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from weightsurgeon import atomic

    def die_after(real):
        def call(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(9)
        return call

    out = Path(sys.argv[1])
    with atomic.atomic_output_dir(out, force=True, fsync=False) as tmp:
        (tmp / "weights.txt").write_text("new")
        os.rename = die_after(os.rename)   # from here on: the replacement alone
        shutil.rmtree = lambda *a, **k: os._exit(9)   # the exchange's old output, removed after it
""")


def _old_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights.txt").write_text("old")
    return out


@pytest.mark.skipif(atomic._libc_renameat2() is None, reason="no renameat2 here: the two-rename fallback is used")
def test_a_kill_mid_replacement_leaves_an_output_in_place(tmp_path):
    out = _old_output(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_REPLACE, str(out)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    # Without the exchange the old output was renamed aside and the new one never arrived.
    assert (out / "weights.txt").read_text() == "new"


def test_force_replaces_an_output_without_the_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # not Linux, or NFS
    out = _old_output(tmp_path)
    with atomic_output_dir(out, force=True, fsync=False) as tmp:
        (tmp / "weights.txt").write_text("new")
    assert (out / "weights.txt").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_force_replaces_an_output_by_the_exchange_and_removes_the_old_one(tmp_path):
    out = _old_output(tmp_path)
    (out / "sub").mkdir()
    (out / "sub" / "more.txt").write_text("old too")
    with atomic_output_dir(out, force=True, fsync=False) as tmp:
        (tmp / "weights.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["weights.txt"]
    assert (out / "weights.txt").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
