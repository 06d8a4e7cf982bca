"""A progress reporter over bytes: rich on a terminal, silent elsewhere or with --quiet."""
from __future__ import annotations

import sys
from typing import Any


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
    """Compile the numba kernels before a progress bar starts, on the first run after an install.

    Compiling takes about 20 s once; numba caches the result for every later run. A silent
    20 s looks like a hang (`make demo` on a fresh machine), so when numba's cache holds no
    current kernels one line on stderr says what is happening. Elapsed time is no signal:
    loading cached kernels takes over 10 s on a machine at load 18.
    """
    from weightsurgeon.kernels.delta import needs_compiling, warmup

    if needs_compiling():
        if not quiet:
            print("compiling the numeric kernels (once after an install; later runs load them from the cache) ...",
                  file=sys.stderr, flush=True)
        warmup()
    # else each kernel loads from the cache on its first use: only those the run needs (each costs
    # a few MiB of memory: all of them ~20 MiB, most of which a diff of one dtype never calls)
