"""Small tensor pairs, computed many at a time: one kernel launch for a run of them.

A MoE checkpoint holds ~100k tensors of a few kB (DeepSeek-V3 ~91k, Qwen3-235B-A22B ~95k).
One kernel call per tensor paid a thread-pool launch and fresh buffers and scratch for
each: 70-100 us of CPU per tiny tensor, most of a diff's time there. The diff's loop hands
each base tensor's pairs here first; a whole small tensor (at most one kernel part) read
by the kernel itself waits in a batch, and the batch goes to the kernel in one launch
when it is full, when the loop reaches a chunk that cannot join, or at the end. The
numbers are those of one call per tensor, bit for bit (kernels.delta.batch_from_files), and
they stay columns of arrays (kernels/stats.StatsColumns) on their way to the report.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from weightsurgeon.format import DTYPE_NAMES, DTYPE_WIDTHS
from weightsurgeon.kernels.stats import PART
from weightsurgeon.pairs import numel_of

if TYPE_CHECKING:
    from weightsurgeon.checkpoint import Checkpoint
    from weightsurgeon.pairs import PairTable

BATCH_PAIRS = 4096  # pairs per launch: enough to spread the launch, few enough to keep the read order


class SmallPairs:
    """Collects whole small tensor pairs that the kernel reads itself, and runs them in batches.

    Pairs are rows of the plan's PairTable: a plain row is judged and queued from the header
    tables' columns, with no record or Pair made. `fallback(row)` computes a pair of a batch
    whose read failed (it reads it itself and names the error) as the diff computes any
    chunk; `done(rows, columns)` gets the rows the batch completed and their statistics
    (row i of the columns: rows[i]).
    """

    def __init__(self, base: Checkpoint, others: list[Checkpoint], pairs: PairTable, bins: int, clip: float,
                 groups: dict[tuple[int, str], Any], fallback: Callable[[int], int],
                 done: Callable[[list[int], Any], None]) -> None:
        from weightsurgeon.kernels.delta import batch_from_files, reads_files

        self.base, self.others, self.pairs, self.bins, self.clip, self.groups = base, others, pairs, bins, clip, groups
        self.fallback, self.done = fallback, done
        self.run_batch, self.reads_files = batch_from_files, reads_files
        # (base fd, tuned fd, base dtype, tuned dtype) -> [(row, base position, tuned position)]
        self.pending: dict[tuple, list[tuple[int, int, int]]] = {}
        self.count = 0
        self.readable: dict[tuple[str, str], bool] = {}  # reads_files per dtype pair: asked once, not per tensor
        self.fds: dict[tuple[int, Any], int | None] = {}  # (model, shard path) -> descriptor: no Path hashed per tensor
        self.last: dict[int, tuple[Any, int | None]] = {}  # model -> its last (shard path, descriptor)
        self.numels: dict[tuple[int, ...], int] = {}
        self.shards: dict[tuple[int, int], tuple] = {}  # (model, shard index) -> see _shard

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

    def _ok(self, dtypes: tuple[str, str]) -> bool:
        ok = self.readable.get(dtypes)
        if ok is None:
            ok = self.readable[dtypes] = self.reads_files(*dtypes)
        return ok

    def _shard(self, model: int, tensors: Any, ckpt: Checkpoint, s: int) -> tuple:
        """(names, dtype codes, element counts by shape id, shape ids, begins, descriptor) of shard `s` of a
        model (-1 the base), looked up once per shard instead of once per tensor."""
        found = self.shards.get((model, s))
        if found is None:
            table = tensors.tables[s]
            codes, shape_ids, shapes, begins, _ = table.columns()
            found = self.shards[(model, s)] = (table.names, codes, [numel_of(x, self.numels) for x in shapes],
                                               shape_ids, begins, ckpt.byte_source(table.file).fileno())
        return found

    def _batchable(self, key: int, rows: list[int], elems: int) -> tuple[list[tuple], int] | None:
        """(each row's batch key and positions, the bytes they read) for the pairs of base tensor `key`,
        or None where they must run on their own (not one whole small chunk, a side the kernel cannot read)."""
        pairs = self.pairs
        brow = key & 0xFFFFFFFF
        names, codes, numels, shape_ids, begins, fd_a = self._shard(-1, pairs.base, self.base, key >> 32)
        numel = numels[shape_ids[brow]]
        if not 0 < numel <= min(PART, elems) or fd_a is None:  # one chunk, the whole tensor (diff._chunks)
            return None
        dtype_a, pos_a = DTYPE_NAMES[codes[brow]], begins[brow]
        nbytes = numel * DTYPE_WIDTHS[codes[brow]]
        groups, special, tuned, other_at, maps = self.groups, pairs.special, pairs.tuned, pairs.other_at, pairs.maps
        out = []
        for i in rows:
            p = special.get(i)
            if p is not None:
                if p.kind != "file" or p.decoded or p.numel != numel or (groups and (p.tuned, p.name) in groups):
                    return None
                t, pos_b, width, dtype_b = p.tuned, p.other.begin, p.other.itemsize, p.other.dtype
                fd_b = self._fd(t, self.others[t], p.other.file)
            else:
                t = tuned[i]
                if groups and (t, names[brow]) in groups:
                    return None
                at = other_at[i]
                r = at & 0xFFFFFFFF
                _, ocodes, _, _, obegins, fd_b = self._shard(t, maps[t], self.others[t], at >> 32)
                pos_b, width, dtype_b = obegins[r], DTYPE_WIDTHS[ocodes[r]], DTYPE_NAMES[ocodes[r]]
            if fd_b is None or not self._ok((dtype_a, dtype_b)):
                return None
            out.append(((fd_a, fd_b, dtype_a, dtype_b), i, pos_a, pos_b))
            nbytes += numel * width
        return out, nbytes

    def take(self, key: int, rows: list[int], elems: int) -> int | None:
        """Queue the pairs of base tensor `key` (rows of the PairTable; `elems`: the run's chunk
        elements) and return the bytes they will read, or None: run them yourself, after `flush`."""
        found = self._batchable(key, rows, elems)
        if found is None:
            return None
        entries, nbytes = found
        pending = self.pending
        for batch, i, pos_a, pos_b in entries:
            queue = pending.get(batch)
            if queue is None:
                queue = pending[batch] = []
            queue.append((i, pos_a, pos_b))
        self.count += len(entries)
        if self.count >= BATCH_PAIRS:
            self.flush()
        return nbytes

    def flush(self) -> None:
        """Run every queued pair; pairs whose read failed go to the fallback, which names the error."""
        import numpy as np

        pending, self.pending, self.count = self.pending, {}, 0
        numel = self.pairs.numel
        for (fd_a, fd_b, dtype_a, dtype_b), entries in pending.items():
            rows = [e[0] for e in entries]
            columns, failed = self.run_batch(self.bins, self.clip, fd_a, np.array([e[1] for e in entries], dtype=np.int64),
                                             dtype_a, fd_b, np.array([e[2] for e in entries], dtype=np.int64), dtype_b,
                                             np.array([numel[i] for i in rows], dtype=np.int64))
            bad = failed.tolist()
            self.done([i for i, b in zip(rows, bad) if not b], columns)
            for i, b in zip(rows, bad):
                if b:
                    self.fallback(i)
