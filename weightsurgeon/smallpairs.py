"""Small tensor pairs, computed many at a time: one kernel launch for a run of them.

A MoE checkpoint holds ~100k tensors of a few kB (DeepSeek-V3 ~91k, Qwen3-235B-A22B ~95k).
One kernel call per tensor paid a thread-pool launch and fresh buffers and scratch for
each: 70-100 us of CPU per tiny tensor, most of a diff's time there. A whole small tensor
(at most one kernel part) read by the kernel itself waits in a batch, and the batch goes
to the kernel in one launch when it is full, when the diff's loop reaches a chunk that
cannot join, or at the end. The numbers are those of one call per tensor, bit for bit
(kernels.delta.batch_from_files), and they stay columns of arrays (kernels/stats.StatsColumns)
on their way to the report.

Deciding and queueing a pair in Python cost ~6 us a pair (a 100k-tensor diff: 0.6 CPU-s),
so the plain pairs are judged once for the whole run by numpy over the PairTable's and the
header tables' columns (`judge`), and the diff's loop hands over runs of base tensors as
slices of those columns (`take_run`); only base tensors the columns cannot decide (a special
pair among theirs, or one that cannot join) go through `take`, one at a time, as before.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from weightsurgeon.format import DTYPE_NAMES, DTYPE_WIDTHS
from weightsurgeon.kernels.stats import PART
from weightsurgeon.pairs import numel_of

if TYPE_CHECKING:
    import numpy as np

    from weightsurgeon.checkpoint import Checkpoint
    from weightsurgeon.pairs import PairTable

BATCH_PAIRS = 4096  # pairs per launch: enough to spread the launch, few enough to keep the read order
_DTYPE_CODE = {name: code for code, name in enumerate(DTYPE_NAMES)}


@dataclass
class Runs:
    """The pairs of a run grouped by base tensor, in reading order, judged by `SmallPairs.judge`.

    Group g holds rows[starts[g]:starts[g + 1]] (rows of the PairTable) of base key keys[g].
    `batchable[g]`: every pair of the group joins a batch (the columns below are valid for its
    rows); otherwise `SmallPairs.take` decides it. Per row: byte positions of each side, the
    batch (index into SmallPairs' batch keys) and the element count; per group: bytes read.
    """

    starts: np.ndarray
    keys: np.ndarray
    rows: np.ndarray
    batchable: np.ndarray
    nbytes: np.ndarray
    pos_a: np.ndarray
    pos_b: np.ndarray
    batch: np.ndarray
    numel: np.ndarray


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
        # queued pairs as column pieces: (rows, base positions, tuned positions, batch indices, element counts)
        self.pending: list[tuple[Any, ...]] = []
        self.count = 0
        # a batch: (base fd, tuned fd, base dtype code, tuned dtype code), by index in `batches`
        self.batches: list[tuple[int, int, int, int]] = []
        self.batch_of: dict[tuple[int, int, int, int], int] = {}
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

    def _batch(self, key: tuple[int, int, int, int]) -> int:
        """The index of batch `key` (fd_a, fd_b, dtype code a, dtype code b)."""
        b = self.batch_of.get(key)
        if b is None:
            b = self.batch_of[key] = len(self.batches)
            self.batches.append(key)
        return b

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

    # -- runs of plain pairs, judged by numpy over the columns -----------------------------------
    def judge(self, order: Any, elems: int) -> Runs:
        """Group `order` (PairTable rows in reading order, each with a base key) by base tensor and
        decide from the columns which groups join a batch: every pair plain (not in `special`), no
        per-head/expert accumulator, the base tensor one whole chunk of 1..min(PART, elems) elements,
        both sides on a local descriptor and a dtype pair the file kernel reads; what `_batchable`
        decides one group at a time, for all groups at once."""
        import numpy as np

        pairs = self.pairs
        rows = np.frombuffer(order, dtype=np.int64) if isinstance(order, array) else np.asarray(order, dtype=np.int64)
        keys = np.frombuffer(pairs.base_at, dtype=np.int64)[rows]
        n = rows.size
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if n else np.zeros(0, dtype=np.int64)
        tuned = np.frombuffer(pairs.tuned, dtype=np.int32)[rows].astype(np.int64)
        other_at = np.frombuffer(pairs.other_at, dtype=np.int64)[rows]
        numel = np.frombuffer(pairs.numel, dtype=np.int64)[rows]
        ok = pairs.plain_mask(rows)
        other_at = np.where(ok, other_at, 0)  # a special row's own columns are not read below
        code_a, width_a, base_numel, pos_a, fd_a = self._sides(-1, pairs.base, self.base, keys)
        code_b = np.zeros(n, dtype=np.int64)
        width_b, pos_b, fd_b = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        for t in np.unique(tuned[ok]).tolist():
            mine = ok & (tuned == t)
            code_b[mine], width_b[mine], _, pos_b[mine], fd_b[mine] = self._sides(t, pairs.maps[t], self.others[t],
                                                                                  other_at[mine])
        ok &= (base_numel > 0) & (base_numel <= min(PART, elems)) & (numel == base_numel) & (fd_a >= 0) & (fd_b >= 0)
        if self.groups:  # pairs with per-head/expert sums go one by one (a plain pair's name is its base tensor's)
            where = pairs.base.where
            marked = [(t, where(name)) for t, name in self.groups]
            packed = np.array([k * 65536 + t for t, k in marked if k is not None], dtype=np.int64)
            ok &= ~np.isin(keys * 65536 + tuned, packed)
        pair_codes = code_a * 256 + code_b
        for c in np.unique(pair_codes[ok]).tolist():
            if not self._ok((DTYPE_NAMES[c // 256], DTYPE_NAMES[c % 256])):
                ok &= pair_codes != c
        batch = np.zeros(n, dtype=np.int64)
        if ok.any():
            packed = ((fd_a * (1 << 24) + fd_b) * 256 + code_a) * 256 + code_b  # descriptors below 2**23
            uniq, inverse = np.unique(packed[ok], return_inverse=True)
            ids = np.array([self._batch((u >> 40, (u >> 16) & 0xFFFFFF, (u >> 8) & 0xFF, u & 0xFF))
                            for u in uniq.tolist()], dtype=np.int64)
            batch[ok] = ids[inverse]
        if n:
            batchable = np.logical_and.reduceat(ok, starts)
            nbytes = base_numel[starts] * width_a[starts] + np.add.reduceat(numel * width_b, starts)
        else:
            batchable, nbytes = np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        return Runs(np.append(starts, n), keys[starts], rows, batchable, nbytes, pos_a, pos_b, batch, numel)

    def _sides(self, model: int, tensors: Any, ckpt: Checkpoint, keys: Any) -> tuple[Any, ...]:
        """(dtype codes, widths, element counts, byte positions, descriptors: -1 for none) of the tensors at
        `keys` of one model (-1 the base), gathered per shard from the header tables' columns."""
        import numpy as np

        n = keys.size
        codes, widths, numels = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        begins, fds = np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        shard, row = keys >> 32, keys & 0xFFFFFFFF
        width_of = np.asarray(DTYPE_WIDTHS, dtype=np.int64)
        for s in np.unique(shard).tolist():
            sel = shard == s
            _, table_codes, table_numels, shape_ids, table_begins, fd = self._shard(model, tensors, ckpt, s)
            r = row[sel]
            c = np.frombuffer(table_codes, dtype=np.uint8)[r].astype(np.int64)
            codes[sel], widths[sel] = c, width_of[c]
            numels[sel] = np.asarray(table_numels, dtype=np.int64)[np.frombuffer(shape_ids, dtype=f"u{shape_ids.itemsize}")[r]]
            begins[sel] = np.frombuffer(table_begins, dtype=np.int64)[r]
            if fd is not None:
                if fd >= 1 << 23:
                    continue  # beyond the batch key's packing: these pairs go one by one
                fds[sel] = fd
        return codes, widths, numels, begins, fds

    def take_run(self, runs: Runs, g0: int, g1: int) -> int:
        """Queue groups g0 .. g1 - 1 of `runs` (every one batchable) and return the bytes they will read;
        a batch is run whenever BATCH_PAIRS pairs wait, after the group that reaches it, as `take` does."""
        starts = runs.starts
        at, end = int(starts[g0]), int(starts[g1])
        while at < end:
            need = BATCH_PAIRS - self.count  # >= 1: a batch is run as soon as it is full
            j = int(starts.searchsorted(at + need))  # the first group ending at or beyond the batch's room
            cut = int(starts[j]) if j <= g1 else end
            self.pending.append((runs.rows[at:cut], runs.pos_a[at:cut], runs.pos_b[at:cut], runs.batch[at:cut],
                                 runs.numel[at:cut]))
            self.count += cut - at
            at = cut
            if self.count >= BATCH_PAIRS:
                self.flush()
        return int(runs.nbytes[g0:g1].sum())

    # -- one base tensor at a time ---------------------------------------------------------------
    def _batchable(self, key: int, rows: list[int], elems: int) -> tuple[list[tuple], int] | None:
        """(each row's batch, row and positions, the bytes they read) for the pairs of base tensor `key`,
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
            out.append((self._batch((fd_a, fd_b, _DTYPE_CODE[dtype_a], _DTYPE_CODE[dtype_b])), i, pos_a, pos_b))
            nbytes += numel * width
        return out, nbytes

    def take(self, key: int, rows: list[int], elems: int) -> int | None:
        """Queue the pairs of base tensor `key` (rows of the PairTable; `elems`: the run's chunk
        elements) and return the bytes they will read, or None: run them yourself, after `flush`."""
        import numpy as np

        found = self._batchable(key, rows, elems)
        if found is None:
            return None
        entries, nbytes = found
        batch, i, pos_a, pos_b = (np.array(c, dtype=np.int64) for c in zip(*entries))
        numel = np.frombuffer(self.pairs.numel, dtype=np.int64)[i]
        self.pending.append((i, pos_a, pos_b, batch, numel))
        self.count += len(entries)
        if self.count >= BATCH_PAIRS:
            self.flush()
        return nbytes

    def flush(self) -> None:
        """Run every queued pair, one launch per batch in the order the batches were first queued;
        pairs whose read failed go to the fallback, which names the error."""
        import numpy as np

        pending, self.pending, self.count = self.pending, [], 0
        if not pending:
            return
        rows, pos_a, pos_b, batch, numel = (np.concatenate(c) for c in zip(*pending))
        found, first = np.unique(batch, return_index=True)
        for b in found[np.argsort(first)].tolist():
            sel = slice(None) if found.size == 1 else np.flatnonzero(batch == b)
            fd_a, fd_b, code_a, code_b = self.batches[b]
            mine = rows[sel]
            columns, failed = self.run_batch(self.bins, self.clip, fd_a, pos_a[sel], DTYPE_NAMES[code_a], fd_b,
                                             pos_b[sel], DTYPE_NAMES[code_b], numel[sel])
            if failed.any():
                self.done(mine[~failed].tolist(), columns)
                for i in mine[failed].tolist():
                    self.fallback(i)
            else:
                self.done(mine.tolist(), columns)
