"""A progress reporter over bytes: rich on a terminal, silent elsewhere or with --quiet."""
from __future__ import annotations

import sys
import threading
from typing import Any

COMPILE_NOTICE_AFTER_S = 2.0  # loading cached kernels takes well under this; compiling them takes ~20 s


class ByteProgress:
    """Context manager: ``with ByteProgress(total, "diff") as p: p.advance(n)``."""

    def __init__(self, total: int, description: str, quiet: bool = False) -> None:
        self.total = total
        self.description = description
        self.enabled = not quiet and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "ByteProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def kernels_ready(quiet: bool = False) -> None:
    """Compile (first run after an install) or load the numba kernels before a progress bar starts.

    Compiling takes about 20 s once; numba caches the result for every later run. A
    silent 20 s looks like a hang (`make demo` on a fresh machine), so when preparing
    takes longer than a cache load a line on stderr says what is happening.
    """
    from weightsurgeon.kernels.delta import warmup

    def notice() -> None:
        print("compiling the numeric kernels (once after an install; later runs load them from the cache) ...",
              file=sys.stderr, flush=True)

    timer = threading.Timer(COMPILE_NOTICE_AFTER_S, notice)
    timer.daemon = True
    if not quiet:
        timer.start()
    try:
        warmup()
    finally:
        timer.cancel()
