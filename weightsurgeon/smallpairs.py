"""Small tensor pairs, computed many at a time: one kernel launch for a run of them.

A MoE checkpoint holds ~100k tensors of a few kB (DeepSeek-V3 ~91k, Qwen3-235B-A22B ~95k).
One kernel call per tensor paid a thread-pool launch and fresh buffers and scratch for
each: 70-100 us of CPU per tiny tensor, most of a diff's time there. The diff's loop hands
each chunk here first; a chunk that is a whole small tensor (at most one kernel part) read
by the kernel itself waits in a batch, and the batch goes to the kernel in one launch
when it is full, when the loop reaches a chunk that cannot join, or at the end. The
numbers are those of one call per tensor, bit for bit (kernels.delta.batch_from_files), and
they stay columns of arrays (kernels/stats.StatsColumns) on their way to the report.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from weightsurgeon.kernels.stats import PART

if TYPE_CHECKING:
    from weightsurgeon.checkpoint import Checkpoint, TensorInfo
    from weightsurgeon.diff import Pair

BATCH_PAIRS = 4096  # pairs per launch: enough to spread the launch, few enough to keep the read order


class SmallPairs:
    """Collects whole small tensor pairs that the kernel reads itself, and runs them in batches.

    `fallback(info, pairs, start, stop)` computes the pairs of a batch whose read failed (it
    reads them itself and names the error) as the diff computes any chunk; `done(pairs,
    columns)` gets the pairs the batch completed and their statistics (row i: pairs[i]).
    """

    def __init__(self, base: Checkpoint, others: list[Checkpoint], bins: int, clip: float,
                 groups: dict[tuple[int, str], Any], fallback: Callable[..., int],
                 done: Callable[[list[Pair], Any], None]) -> None:
        from weightsurgeon.kernels.delta import batch_from_files, reads_files

        self.base, self.others, self.bins, self.clip, self.groups = base, others, bins, clip, groups
        self.fallback, self.done = fallback, done
        self.run_batch, self.reads_files = batch_from_files, reads_files
        # (base fd, tuned fd, base dtype, tuned dtype) -> [(info, pair, base position, tuned position)]
        self.pending: dict[tuple, list[tuple[TensorInfo, Pair, int, int]]] = {}
        self.count = 0

    def _batchable(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int) -> list[tuple] | None:
        """Each pair's batch key and positions, or None where the chunk must run on its own."""
        if start != 0 or stop != info.numel or not 0 < info.numel <= PART:
            return None
        at_a = self.base.locate(info)
        if at_a is None:
            return None
        out = []
        for p in pairs:
            if (p.kind != "file" or p.decoded or p.numel != info.numel or (p.tuned, p.name) in self.groups
                    or not self.reads_files(p.base.dtype, p.other.dtype)):
                return None
            at_b = self.others[p.tuned].locate(p.other)
            if at_b is None:
                return None
            out.append(((at_a[0], at_b[0], p.base.dtype, p.other.dtype), p, at_a[1], at_b[1]))
        return out

    def take(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int) -> int | None:
        """Queue the chunk (returns the bytes it will read), or None: run it yourself, after `flush`."""
        entries = self._batchable(info, pairs, start, stop)
        if entries is None:
            return None
        nbytes = info.numel * info.itemsize
        for key, p, pos_a, pos_b in entries:
            self.pending.setdefault(key, []).append((info, p, pos_a, pos_b))
            nbytes += p.numel * p.other.itemsize
        self.count += len(entries)
        if self.count >= BATCH_PAIRS:
            self.flush()
        return nbytes

    def flush(self) -> None:
        """Run every queued pair; pairs whose read failed go to the fallback, which names the error."""
        import numpy as np

        pending, self.pending, self.count = self.pending, {}, 0
        for (fd_a, fd_b, dtype_a, dtype_b), entries in pending.items():
            columns, failed = self.run_batch(self.bins, self.clip, fd_a, np.array([e[2] for e in entries], dtype=np.int64),
                                             dtype_a, fd_b, np.array([e[3] for e in entries], dtype=np.int64), dtype_b,
                                             np.array([p.numel for _, p, _, _ in entries], dtype=np.int64))
            bad = failed.tolist()
            self.done([p for (_, p, _, _), b in zip(entries, bad) if not b], columns)
            for (info, p, _, _), b in zip(entries, bad):
                if b:
                    self.fallback(info, [p], 0, info.numel)
