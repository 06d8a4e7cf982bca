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

import os
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
    """Queued parts of quantized (or mixed) pairs; `flush` computes them in one launch.

    A 92k-tensor FP8 model queues 46k tensors of one or a few parts each. The queue holds
    one tuple per chunk and side (no object per part); the part rows the kernel reads are
    expanded from them with numpy at `flush`. Scales are read as each chunk is queued,
    straight into a growing float32 pool per side (F32 scales in place, other dtypes decoded).
    """

    def __init__(self, base: "Checkpoint", others: list["Checkpoint"], bins: int, clip: float) -> None:
        import numpy as np

        from weightsurgeon.kernels import delta

        self.base, self.others, self.bins, self.clip = base, others, bins, clip
        self.delta = delta
        self.max_parts = max(1, min(MAX_BATCH_PARTS, HIST_BUDGET_BYTES // (8 * bins)))
        self.paths: dict[int, Any] = {}  # descriptor -> shard path, for messages
        self.pools = [np.zeros(4096, dtype=np.float32), np.zeros(4096, dtype=np.float32)]  # grown, reused
        self._encodings: dict[tuple[str, str | None], int | None] = {}
        self._widths = _widths(delta)
        self._reset()

    def _reset(self) -> None:
        self.chunks: list[tuple[int, ...]] = []  # per queued chunk: both sides' item columns, start, stop, grouping
        self.targets: list[tuple[Any, Any]] = []  # (DeltaStats, Groups or None) per queued chunk
        self.pool_len = [0, 0]
        self.parts = 0
        self.elems = 0
        self.waiting: list[tuple[Any, tuple]] = []  # (callback, args) to run once the queued parts are folded

    def then(self, callback: Any, *args: Any) -> None:
        """Run callback(*args) once every part queued so far is folded into its statistics: now when
        nothing is queued, else right after the next flush. A caller that uses a tensor's statistics
        when its last chunk has been handed over (a report row streamed out) must go through here:
        until the flush its statistics are incomplete."""
        if self.parts:
            self.waiting.append((callback, args))
        else:
            callback(*args)

    # -- what the batch takes ------------------------------------------------------------

    def _encoding(self, dtype: str, q: "QuantTensor | None") -> int | None:
        key = (dtype, q.kind.scheme if q is not None else None)
        enc = self._encodings.get(key, -1)
        if enc == -1:
            enc = self._encodings[key] = self.delta.part_encoding(*key)
        return enc

    def accepts(self, pair: Any) -> bool:
        """Whether this pair's parts can be decoded by the kernel: both sides local files, and
        encodings it decodes (quantized data, or plain BF16/F16/F32 beside a quantized side)."""
        if pair.kind != "file" or pair.added_rows or pair.transposed:
            return False
        for ckpt, info, q in ((self.base, pair.base, pair.base_q), (self.others[pair.tuned], pair.other, pair.other_q)):
            if self._encoding(info.dtype, q) is None:
                return False
            if ckpt.locate(info) is None:
                return False
        return True

    def _read_scales(self, ckpt: "Checkpoint", scale: "TensorInfo", offset: int, count: int, side: int) -> int:
        """Read `count` scales of `scale` from byte `offset` into this side's pool; returns where they start."""
        import numpy as np

        at = self.pool_len[side]
        pool = self.pools[side]
        if at + count > pool.size:
            grown = np.zeros(max(2 * pool.size, at + count), dtype=np.float32)
            grown[:at] = pool[:at]
            pool = self.pools[side] = grown
        width = scale.itemsize
        nbytes = count * width
        if scale.dtype == "F32":
            view = memoryview(pool[at:at + count]).cast("B")
        else:
            raw = np.empty(nbytes, dtype=np.uint8)
            view = memoryview(raw)
        fd, begin = ckpt.locate(scale)  # type: ignore[misc]
        try:
            done = os.preadv(fd, [view], begin + offset)
        except OSError:
            done = -1
        if done != nbytes:  # read again through the checkpoint: its failure names the file and the tensor
            ckpt.read_into(scale, offset, view)
        if scale.dtype != "F32":
            from weightsurgeon.kernels.decode import decode_to_float32
            from weightsurgeon.kernels.quant import e8m0_scales

            pool[at:at + count] = e8m0_scales(raw) if scale.dtype in ("U8", "F8_E8M0") \
                else decode_to_float32(raw, scale.dtype)
        self.pool_len[side] = at + count
        return at

    def _side(self, ckpt: "Checkpoint", info: "TensorInfo", q: "QuantTensor | None", start: int, stop: int,
              side: int) -> tuple[int, int, int, int, int, int, int, int, int]:
        """(fd, byte position of element `start`, encoding, scale offset, br, bc, cols, scols, bytes read) of
        one side of a chunk, its scales appended to this side's pool."""
        fd, begin = ckpt.locate(info)  # type: ignore[misc]
        self.paths[fd] = info.file
        enc = self._encoding(info.dtype, q)
        if q is None:
            return fd, begin + start * info.itemsize, enc, 0, 1, _WHOLE, _WHOLE, 0, (stop - start) * info.itemsize
        scale, scheme = q.scale, q.kind.scheme  # one record per side and chunk: made on access (quant.QuantTensor)
        if scheme == "mxfp4":
            g0, g1 = start // 32, -(-stop // 32)
            at = self._read_scales(ckpt, scale, g0, g1 - g0, side)
            return fd, begin + start // 2, enc, at - g0, 1, 32, 32, 1, (stop - start) // 2 + g1 - g0
        if scheme == "fp8-tensor":
            at = self._read_scales(ckpt, scale, 0, 1, side)
            return fd, begin + start, enc, at, 1, _WHOLE, _WHOLE, 0, stop - start
        # fp8-block and fp8-channel: one scale per (br, bc) block, a row of scols scales per br rows
        br, bc = q.kind.block
        cols = q.cols
        scols = scale.shape[-1]
        s0, s1 = start // cols // br, (stop - 1) // cols // br + 1
        at = self._read_scales(ckpt, scale, s0 * scols * scale.itemsize, (s1 - s0) * scols, side)
        return fd, begin + start, enc, at - s0 * scols, br, bc, cols, scols, stop - start + (s1 - s0) * scols * scale.itemsize

    def add(self, pair: Any, start: int, stop: int, stats: Any, groups: Any) -> tuple[int, int]:
        """Queue elements [start, stop) of one pair (its statistics `stats`, its units `groups` or
        None); returns the bytes that will be read of each side. The batch is flushed whenever
        it is full, so a long chunk may span launches (cut at part boundaries)."""
        step = min(self.max_parts * PART, MAX_BATCH_ELEMS)
        read = [0, 0]
        unit = (groups.run, groups.count) if groups is not None else (1, 0)
        for piece in range(start, stop, step):
            end = min(stop, piece + step)
            parts = -(-(end - piece) // PART)
            if self.parts and (self.parts + parts > self.max_parts or self.elems + (end - piece) > MAX_BATCH_ELEMS):
                self.flush()
            a = self._side(self.base, pair.base, pair.base_q, piece, end, 0)
            b = self._side(self.others[pair.tuned], pair.other, pair.other_q, piece, end, 1)
            self.chunks.append((*a[:8], *b[:8], piece, end, *unit))
            self.targets.append((stats, groups))
            self.parts += parts
            self.elems += end - piece
            read[0] += a[8]
            read[1] += b[8]
        return read[0], read[1]

    def _items(self) -> tuple["np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"]:
        """(items_a, items_b, n, grouping, each chunk's first part) of the queued chunks, one row per
        part (kernels/_compiled IT_* columns)."""
        import numpy as np

        c = np.array(self.chunks, dtype=np.int64).reshape(-1, 20)
        start, stop = c[:, 16], c[:, 17]
        count = (stop - start + PART - 1) // PART
        first = np.zeros(len(c), dtype=np.int64)
        np.cumsum(count[:-1], out=first[1:])
        chunk = np.repeat(np.arange(len(c)), count)
        k0 = start[chunk] + PART * (np.arange(chunk.size) - first[chunk])
        n = np.minimum(PART, stop[chunk] - k0)
        num, den = self._widths
        sides = []
        for col in (0, 8):
            side = c[chunk, col:col + 8]
            enc = side[:, 2]
            items = np.empty((chunk.size, 9), dtype=np.int64)
            items[:, 0] = side[:, 0]
            items[:, 1] = side[:, 1] + (k0 - start[chunk]) * num[enc] // den[enc]
            items[:, 2] = enc
            items[:, 3] = k0
            items[:, 4:9] = side[:, 3:8]
            sides.append(items)
        return sides[0], sides[1], n, c[chunk, 18:20], first

    # -- computing -----------------------------------------------------------------------

    def flush(self) -> None:
        """Compute every queued part and fold it into its statistics, in queue order."""
        if not self.parts:
            return
        items_a, items_b, n, grouping, first = self._items()
        pools = [self.pools[0][:max(self.pool_len[0], 1)], self.pools[1][:max(self.pool_len[1], 1)]]
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
        self._fold(sums, counts, hists, groups, n, first)
        waiting = self.waiting
        self._reset()
        for callback, args in waiting:
            callback(*args)

    def _fold(self, sums: "np.ndarray", counts: "np.ndarray", hists: "np.ndarray", groups: "np.ndarray",
              n: "np.ndarray", first: "np.ndarray") -> None:
        """Fold each run of consecutive parts of one tensor into its statistics (and units), all runs at once
        (`first`: each queued chunk's first part; consecutive chunks of one tensor make one run)."""
        targets = self.targets
        runs = [i for i in range(len(targets)) if i == 0 or targets[i][0] is not targets[i - 1][0]]
        starts = first[runs].tolist()
        self.delta.fold_segments([targets[i][0] for i in runs], starts, sums, counts, hists, n)
        for i, j0, j1 in zip(runs, starts, starts[1:] + [len(n)]):
            units = targets[i][1]
            if units is not None:
                units.add(groups[j0:j1, :units.count])

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


def _widths(delta: Any) -> tuple["np.ndarray", "np.ndarray"]:
    """Stored bytes per element of each encoding code, as numerator and denominator (MXFP4: two a byte)."""
    import numpy as np

    k = delta._compiled()
    codes = (k.ENC_BF16, k.ENC_F16, k.ENC_F32, k.ENC_E2M1, k.ENC_E4M3, k.ENC_E5M2)
    num = np.ones(max(codes) + 1, dtype=np.int64)
    for code in codes:
        num[code] = _bytes(code, 2, delta)
    return num, np.full_like(num, 2)


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
