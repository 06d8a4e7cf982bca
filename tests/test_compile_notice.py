"""The first run after an install compiles the kernels (~20 s): one stderr line says so while it happens."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from weightsurgeon import progress


@pytest.mark.parametrize("compiling, quiet, expected", [(True, False, 1), (False, False, 0), (True, True, 0)])
def test_one_line_only_when_numba_must_compile(monkeypatch, capsys, compiling: bool, quiet: bool, expected: int) -> None:
    import weightsurgeon.kernels.delta as delta

    monkeypatch.setattr(delta, "needs_compiling", lambda: compiling)
    monkeypatch.setattr(delta, "warmup", lambda: None)
    progress.kernels_ready(quiet=quiet)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert out == "" and len(lines) == expected
    assert all(line.startswith("compiling the numeric kernels") for line in lines)


def test_needs_compiling_reads_numbas_cache(tmp_path) -> None:
    """An empty NUMBA_CACHE_DIR means compiling; after warmup the same cache answers no."""
    code = ("from weightsurgeon.kernels.delta import needs_compiling, warmup; "
            "before = needs_compiling(); warmup(); print(before, needs_compiling())")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    before, after = res.stdout.split()
    assert (before, after) == ("True", "False")
