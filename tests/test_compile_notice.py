"""The first run after an install compiles the kernels (~20 s): one stderr line says so while it happens."""
from __future__ import annotations

import time

import pytest

from weightsurgeon import progress


@pytest.mark.parametrize("seconds, quiet, expected", [(0.4, False, 1), (0.0, False, 0), (0.4, True, 0)])
def test_one_line_only_while_a_slow_compile_runs(monkeypatch, capsys, seconds: float, quiet: bool, expected: int) -> None:
    import weightsurgeon.kernels.delta as delta

    monkeypatch.setattr(progress, "COMPILE_NOTICE_AFTER_S", 0.1)
    monkeypatch.setattr(delta, "warmup", lambda: time.sleep(seconds))
    progress.kernels_ready(quiet=quiet)
    time.sleep(0.2)  # a cancelled notice must stay silent afterwards too
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert out == "" and len(lines) == expected
    assert all(line.startswith("compiling the numeric kernels") for line in lines)


def test_warmup_prepares_the_file_kernel() -> None:
    import weightsurgeon.kernels._compiled as compiled
    from weightsurgeon.kernels.delta import warmup

    warmup()
    assert len(compiled.delta_file.signatures) >= 3  # BF16, F32, F64 read straight from files
