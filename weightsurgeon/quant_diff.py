"""Pairs with a quantized side (FP8, MXFP4), decoded inside the kernel's parallel loop, in batches.

A DeepSeek-V3-shaped model holds 46k FP8 weights, most of them small expert matrices. The
diff cuts each pair's elements into parts of at most PART elements and queues them; one
kernel launch (kernels/_compiled.delta_parts) then reads every queued part of both sides
from the files, decodes it (FP8 code x the scale of its block, MXFP4 code x 2^e, or a plain
bf16/f16/f32 side of a mixed pair) and folds it into the statistics. The scales a queued
chunk needs are read here, once per chunk and side, into a float32 pool the kernel indexes:
for FP8 block scales that is 1/4096 of the data's bytes, for MXFP4 1/16. Nothing the size of
a tensor, or of an expanded scale, is held.

Exactness is the slow path's: value = decode(code) x scale rounded to float32, then the same
_delta_part on the values. Only the parts differ from the old chunk-relative ones, which moves
float64 sums by rounding (tests hold both to a float64 reference at 1e-9).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weightsurgeon.errors import SurgeonError
from weightsurgeon.kernels.stats import PART

if TYPE_CHECKING:
    import numpy as np

    from weightsurgeon.checkpoint import Checkpoint, TensorInfo
    from weightsurgeon.quant import QuantTensor

MAX_BATCH_PARTS = 4096  # per launch: the per-part result rows stay a few MB
MAX_BATCH_ELEMS = 32 * 1024 * 1024  # per launch: bounds the scale pools (MXFP4: 4 bytes per 32 elements)
HIST_BUDGET_BYTES = 16 * 1024 * 1024  # the per-part histograms of one launch (--bins 100000)
_WHOLE = 1 << 62  # a block geometry that never ends: one scale for the whole tensor


class PartBatch:
    """Queued parts of quantized (or mixed) pairs; `flush` computes them in one launch."""

    def __init__(self, base: "Checkpoint", others: list["Checkpoint"], bins: int, clip: float) -> None:
        from weightsurgeon.kernels import delta

        self.base, self.others, self.bins, self.clip = base, others, bins, clip
        self.delta = delta
        self.max_parts = max(1, min(MAX_BATCH_PARTS, HIST_BUDGET_BYTES // (8 * bins)))
        self.paths: dict[int, Any] = {}  # descriptor -> shard path, for messages
        self._reset()

    def _reset(self) -> None:
        self.rows_a: list[tuple[int, ...]] = []
        self.rows_b: list[tuple[int, ...]] = []
        self.n: list[int] = []
        self.grouping: list[tuple[int, int]] = []
        self.targets: list[tuple[Any, Any]] = []  # (DeltaStats, Groups or None) per part
        self.pools: tuple[list, list] = ([], [])
        self.pool_len = [0, 0]
        self.elems = 0
        self.waiting: list[tuple[Any, tuple]] = []  # (callback, args) to run once the queued parts are folded

    def then(self, callback: Any, *args: Any) -> None:
        """Run callback(*args) once every part queued so far is folded into its statistics: now when
        nothing is queued, else right after the next flush. A caller that uses a tensor's statistics
        when its last chunk has been handed over (a report row streamed out) must go through here:
        until the flush its statistics are incomplete."""
        if self.n:
            self.waiting.append((callback, args))
        else:
            callback(*args)

    # -- what the batch takes ------------------------------------------------------------

    def accepts(self, pair: Any) -> bool:
        """Whether this pair's parts can be decoded by the kernel: both sides local files, and
        encodings it decodes (quantized data, or plain BF16/F16/F32 beside a quantized side)."""
        if pair.kind != "file" or pair.added_rows or pair.transposed:
            return False
        for ckpt, info, q in ((self.base, pair.base, pair.base_q), (self.others[pair.tuned], pair.other, pair.other_q)):
            if self.delta.part_encoding(info.dtype, q.scheme if q is not None else None) is None:
                return False
            if ckpt.locate(info) is None:
                return False
        return True

    def _side(self, ckpt: "Checkpoint", info: "TensorInfo", q: "QuantTensor | None", start: int, stop: int,
              side: int) -> tuple[int, int, int, tuple[int, int, int, int, int], int]:
        """(fd, byte position of element `start`, encoding, (off, br, bc, cols, scols), bytes read) of one
        side of a chunk, its scales appended to this side's pool."""
        import numpy as np

        fd, begin = ckpt.locate(info)  # type: ignore[misc]
        self.paths[fd] = info.file
        enc = self.delta.part_encoding(info.dtype, q.scheme if q is not None else None)
        if q is None:
            return fd, begin + start * info.itemsize, enc, (0, 1, _WHOLE, _WHOLE, 0), (stop - start) * info.itemsize
        from weightsurgeon.kernels.decode import decode_to_float32
        from weightsurgeon.kernels.quant import e8m0_scales

        at = self.pool_len[side]
        scale, scheme = q.scale, q.kind.scheme  # one record per side and chunk: made on access (quant.QuantTensor)
        if scheme == "mxfp4":
            g0, g1 = start // 32, -(-stop // 32)
            raw = np.empty(g1 - g0, dtype=np.uint8)
            ckpt.read_into(scale, g0, raw)
            scales = e8m0_scales(raw)
            geometry = (at - g0, 1, 32, 32, 1)
            pos, nbytes = begin + start // 2, (stop - start) // 2 + raw.size
        elif scheme == "fp8-tensor":
            raw = np.empty(scale.nbytes, dtype=np.uint8)
            ckpt.read_into(scale, 0, raw)
            scales = decode_to_float32(raw, scale.dtype)[:1]
            geometry = (at, 1, _WHOLE, _WHOLE, 0)
            pos, nbytes = begin + start, stop - start
        else:  # fp8-block and fp8-channel: one scale per (br, bc) block, a row of scols scales per br rows
            br, bc = q.kind.block
            cols = q.cols
            scols = scale.shape[-1]
            s0, s1 = start // cols // br, (stop - 1) // cols // br + 1
            width = scale.itemsize
            raw = np.empty((s1 - s0) * scols * width, dtype=np.uint8)
            ckpt.read_into(scale, s0 * scols * width, raw)
            scales = decode_to_float32(raw, scale.dtype)
            geometry = (at - s0 * scols, br, bc, cols, scols)
            pos, nbytes = begin + start, stop - start + raw.size
        self.pools[side].append(np.asarray(scales, dtype=np.float32).reshape(-1))
        self.pool_len[side] += scales.size
        return fd, pos, enc, geometry, nbytes

    def add(self, pair: Any, start: int, stop: int, stats: Any, groups: Any) -> tuple[int, int]:
        """Queue elements [start, stop) of one pair (its statistics `stats`, its units `groups` or
        None); returns the bytes that will be read of each side. The batch is flushed whenever
        it is full, so a long chunk may span launches (cut at part boundaries)."""
        step = min(self.max_parts * PART, MAX_BATCH_ELEMS)
        read = [0, 0]
        for piece in range(start, stop, step):
            end = min(stop, piece + step)
            if self.n and (len(self.n) + -(-(end - piece) // PART) > self.max_parts
                           or self.elems + (end - piece) > MAX_BATCH_ELEMS):
                self.flush()
            a = self._side(self.base, pair.base, pair.base_q, piece, end, 0)
            b = self._side(self.others[pair.tuned], pair.other, pair.other_q, piece, end, 1)
            unit = (groups.run, groups.count) if groups is not None else (1, 0)
            for k0 in range(piece, end, PART):
                self.rows_a.append((a[0], a[1] + _bytes(a[2], k0 - piece, self.delta), a[2], k0, *a[3]))
                self.rows_b.append((b[0], b[1] + _bytes(b[2], k0 - piece, self.delta), b[2], k0, *b[3]))
                self.n.append(min(PART, end - k0))
                self.grouping.append(unit)
                self.targets.append((stats, groups))
            self.elems += end - piece
            read[0] += a[4]
            read[1] += b[4]
        return read[0], read[1]

    # -- computing -----------------------------------------------------------------------

    def flush(self) -> None:
        """Compute every queued part and fold it into its statistics, in queue order."""
        import numpy as np

        if not self.n:
            return
        pools = [np.concatenate(p) if p else np.zeros(1, dtype=np.float32) for p in self.pools]
        items_a = np.array(self.rows_a, dtype=np.int64)
        items_b = np.array(self.rows_b, dtype=np.int64)
        n = np.array(self.n, dtype=np.int64)
        grouping = np.array(self.grouping, dtype=np.int64)
        sums, counts, hists, groups, failed = self.delta.delta_parts(items_a, pools[0], items_b, pools[1], n, grouping,
                                                                     self.bins, self.clip)
        if failed.any():
            self._reread(items_a, items_b, n, failed)
            sums, counts, hists, groups, failed = self.delta.delta_parts(items_a, pools[0], items_b, pools[1], n,
                                                                         grouping, self.bins, self.clip)
            if failed.any():
                files = sorted({str(self.paths.get(int(row[0]), "?")) for k in failed.nonzero()[0]
                                for row in (items_a[k], items_b[k])})
                raise SurgeonError(f"{' or '.join(files)}: a read failed twice while diffing quantized tensors (the file changed "
                                   "or went away during the run); run again once nothing writes to the model")
        self._fold(sums, counts, hists, groups, n)
        waiting = self.waiting
        self._reset()
        for callback, args in waiting:
            callback(*args)

    def _fold(self, sums: "np.ndarray", counts: "np.ndarray", hists: "np.ndarray", groups: "np.ndarray",
              n: "np.ndarray") -> None:
        """Fold each run of consecutive parts of one tensor into its statistics (and units), all runs at once."""
        targets = self.targets
        first = [i for i in range(len(targets)) if i == 0 or targets[i][0] is not targets[i - 1][0]]
        self.delta.fold_segments([targets[i][0] for i in first], first, sums, counts, hists, n)
        for i, j in zip(first, first[1:] + [len(targets)]):
            units = targets[i][1]
            if units is not None:
                units.add(groups[i:j, :units.count])

    def _reread(self, items_a: "np.ndarray", items_b: "np.ndarray", n: "np.ndarray", failed: "np.ndarray") -> None:
        """Read the failed parts' bytes in Python: a short file or an I/O error becomes its SurgeonError."""
        import os

        for i in (int(k) for k in failed.nonzero()[0]):
            for row in (items_a[i], items_b[i]):
                fd, pos, enc = int(row[0]), int(row[1]), int(row[2])
                want = _bytes(enc, int(n[i]), self.delta)
                path = self.paths.get(fd, "a checkpoint file")
                try:
                    got = len(os.pread(fd, want, pos))
                except OSError as e:
                    raise SurgeonError(f"{path}: read failed while diffing quantized tensors ({e.strerror}); check "
                                       "the file's permissions and the disk") from e
                if got != want:
                    raise SurgeonError(f"{path}: shorter than its header says (truncated while diffing quantized "
                                       "tensors); download or save the model again")


def _bytes(enc: int, elems: int, delta: Any) -> int:
    """Stored bytes of `elems` elements of an encoding (MXFP4: two a byte)."""
    k = delta._compiled()
    if enc in (k.ENC_BF16, k.ENC_F16):
        return 2 * elems
    if enc == k.ENC_F32:
        return 4 * elems
    if enc == k.ENC_E2M1:
        return elems // 2
    return elems
