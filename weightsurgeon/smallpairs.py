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
        self.readable: dict[tuple[str, str], bool] = {}  # reads_files per dtype pair: asked once, not per tensor
        self.fds: dict[tuple[int, Any], int | None] = {}  # (model, shard path) -> descriptor: no Path hashed per tensor
        self.last: dict[int, tuple[Any, int | None]] = {}  # model -> its last (shard path, descriptor)

    def _fd(self, model: int, ckpt: Checkpoint, file: Any) -> int | None:
        """The kernel's descriptor of a shard (None: no local descriptor); -1 is the base, i the i-th tuned model."""
        last = self.last.get(model)
        if last is not None and last[0] is file:  # the same shard as this model's last tensor
            return last[1]
        key = (model, file)
        if key not in self.fds:
            self.fds[key] = ckpt.byte_source(file).fileno()  # as Checkpoint.locate finds it
        fd = self.fds[key]
        self.last[model] = (file, fd)
        return fd

    def _batchable(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int) -> list[tuple] | None:
        """Each pair's batch key and positions, or None where the chunk must run on its own."""
        if start != 0 or stop != info.numel or not 0 < info.numel <= PART:
            return None
        fd_a = self._fd(-1, self.base, info.file)
        if fd_a is None:
            return None
        groups, readable = self.groups, self.readable
        out = []
        for p in pairs:
            if p.kind != "file" or p.decoded or p.numel != info.numel or (groups and (p.tuned, p.name) in groups):
                return None
            other = p.other
            dtypes = (p.base.dtype, other.dtype)
            ok = readable.get(dtypes)
            if ok is None:
                ok = readable[dtypes] = self.reads_files(*dtypes)
            fd_b = self._fd(p.tuned, self.others[p.tuned], other.file) if ok else None
            if fd_b is None:
                return None
            out.append(((fd_a, fd_b, *dtypes), p, info.begin, other.begin))
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
