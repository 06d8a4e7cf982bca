"""The bytes of `surgeon cast`'s sources: dequantized and quantized tensors, streamed.

Three source kinds of a surgery plan (surgery.Source) mean a change of format:

- ``dequantize``: the logical tensor ``name`` of a quantized input (quant.QuantTensor),
  decode(data) x scale in float32, rounded to the planned dtype (BF16, F16, F32). FP8 goes
  a slice of whole rows at a time, with only the scale rows it needs; MXFP4 a slice of whole
  32-value groups, or, where the output is transposed (GPT-OSS expert stacks, see
  quant.dequantized_shape), one expert at a time in bands of rows.
- ``quantize``: the float tensor ``name`` as F8_E4M3 codes, one block row (block[0] rows)
  at a time: scale = block amax / 448 rounded to ``scale_dtype``, code = value / scale.
- ``quantize_scale``: those scales, kept from the codes' pass (the plan puts the scale right
  after its weight), else computed by a pass of their own.

Many small FP8 tensors in a row (a DeepSeek-V3 layer has 768 expert matrices) are written by
`write_dequant_run`: one read of the input bytes they span, one compiled call, one write.
"""
from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from weightsurgeon.errors import SurgeonError
from weightsurgeon.kernels.dtypes import itemsize
from weightsurgeon.kernels.quant import (E_CODES, E_COLS, E_OUT, E_RAW, E_ROW0, E_SCALES, ENTRY_WIDTH, FP8_TABLES,
                                         OUT_KINDS, P_E0, P_E1, SCALE_KINDS)

if TYPE_CHECKING:
    from weightsurgeon.quant import QuantTensor
    from weightsurgeon.surgery import PlannedTensor
    from weightsurgeon.writer import OverlappedWrites, SourceReader

CAST_KINDS = ("dequantize", "quantize", "quantize_scale")
RUN_INPUT_BYTES = 8 * 1024 * 1024  # input bytes one batched call may span (its output: at most twice that)
RUN_TENSOR_BYTES = 4 * 1024 * 1024  # larger tensors stream by row slices instead
F16_MAX = 65504.0


def quant_of(reader: "SourceReader", t: "PlannedTensor") -> "QuantTensor":
    src = t.source
    return reader.inputs[src.role].quant.tensors[src.name]


def is_transposed(q: "QuantTensor", t: "PlannedTensor") -> bool:
    return tuple(t.shape) != tuple(q.shape)


def step(reader: "SourceReader", t: "PlannedTensor") -> int:
    """Elements per chunk of a cast source: whole rows, whole groups, one expert or whole block rows."""
    src = t.source
    if src.kind == "quantize_scale":
        return max(t.numel, 1)
    if src.kind == "quantize":
        cols = t.shape[-1]
        band = src.block[0] * cols
        return band * max(1, reader.chunk_elems // band)
    q = quant_of(reader, t)
    if q.scheme == "mxfp4":
        if is_transposed(q, t):
            return q.shape[-1] * q.shape[-2]
        return max(32, reader.chunk_elems - reader.chunk_elems % 32)
    cols = q.cols if q.scheme != "fp8-tensor" else max(q.cols, 1)
    return cols * max(1, reader.chunk_elems // max(cols, 1))


def values(reader: "SourceReader", t: "PlannedTensor", start: int, count: int) -> np.ndarray | memoryview:
    """Stored bytes of elements [start, start + count) of a cast source (whole steps, see `step`)."""
    kind = t.source.kind
    if kind == "dequantize":
        q = quant_of(reader, t)
        if q.scheme == "mxfp4":
            return _mxfp4(reader, t, q, start, count)
        return _fp8_rows(reader, t, q, start, count)
    if kind == "quantize":
        return _quantize(reader, t, start, count)
    if kind == "quantize_scale":
        return _scales(reader, t)
    raise SurgeonError(f"internal: {kind!r} is not a cast source")  # internal: CAST_KINDS lists every kind handled above


# ---------------------------------------------------------------------------------------
# FP8 -> BF16/F16/F32
# ---------------------------------------------------------------------------------------

def fp8_entry(q: "QuantTensor", codes_at: int, scales_at: int, row0: int, rows: int, out_at: int,
              out_dtype: str) -> list[int]:
    """One row of the compiled loop's table (kernels/quant.py: E_* columns)."""
    cols = q.cols if q.shape else 1
    return [codes_at, scales_at, SCALE_KINDS[q.scale.dtype], rows, cols, q.block[0], q.block[1],
            FP8_TABLES.index(q.data.dtype), out_at, OUT_KINDS[out_dtype], row0]


def _scale_rows(q: "QuantTensor", row0: int, rows: int) -> tuple[int, int]:
    """(byte offset into the scale tensor, bytes) of the scale rows covering tensor rows [row0, row0 + rows)."""
    cols = q.cols if q.shape else 1
    per_row = -(-cols // q.block[1]) * q.scale.itemsize
    if q.scheme == "fp8-tensor":
        return 0, q.scale.nbytes
    first, last = row0 // q.block[0], (row0 + rows - 1) // q.block[0]
    return first * per_row, (last - first + 1) * per_row


def _overflow_error(t: "PlannedTensor", element: int) -> SurgeonError:
    return SurgeonError(f"{t.name}: element {element} is beyond F16's range (+-{F16_MAX:g}) and would become inf; "
                        f"cast to bf16 or f32, or pass --allow-overflow to write inf")


def _fp8_rows(reader: "SourceReader", t: "PlannedTensor", q: "QuantTensor", start: int, count: int) -> memoryview:
    from weightsurgeon.kernels.quant import cast_fp8

    cols = q.cols if q.shape else 1
    row0, rows = start // cols, count // cols
    ckpt = reader.inputs[t.source.role]
    s_off, s_len = _scale_rows(q, row0, rows)
    window = reader.buffer("cast-in", count + s_len)
    ckpt.read_into(q.data, start, window[:count])
    ckpt.read_into(q.scale, s_off, window[count:])
    out = reader.rotating("cast-out", count * itemsize(t.dtype))
    bad = cast_fp8(np.frombuffer(window, np.uint8), np.array([fp8_entry(q, 0, count, row0, rows, 0, t.dtype)]),
                   np.frombuffer(out, np.uint8))
    if bad is not None and t.source.overflow != "inf":
        raise _overflow_error(t, start + bad[1])
    return out


def write_dequant_run(tensors: list["PlannedTensor"], reader: "SourceReader", writes: "OverlappedWrites", pos: int,
                      digest=None) -> tuple[int, int]:
    """Write the leading FP8 dequantize sources of `tensors` that batch (see `batchable`) with one read,
    one compiled call and one write (handed to `writes`, which writes it while the next run is
    computed); returns (how many tensors, bytes written).

    The loop below runs once per tensor of a 90k-tensor model: it keeps to plain lookups."""
    from weightsurgeon.kernels.quant import cast_fp8

    role = tensors[0].source.role
    ckpt = reader.inputs[role]
    quant = ckpt.quant.tensors
    file = quant[tensors[0].source.name].data.file
    lo = hi = None
    entries: list[list[int]] = []
    taken: list["PlannedTensor"] = []
    out_bytes = 0
    for t in tensors:
        src = t.source
        if src.kind != "dequantize" or src.role != role:
            break
        q = quant[src.name]
        data, scale = q.data, q.scale
        if q.scheme == "mxfp4" or data.file != file or scale.file != file or data.nbytes > RUN_TENSOR_BYTES \
                or not data.nbytes:
            break
        a, b = min(data.begin, scale.begin), max(data.end, scale.end)
        a, b = (a, b) if lo is None else (min(lo, a), max(hi, b))
        if b - a > RUN_INPUT_BYTES or out_bytes + t.nbytes > 2 * RUN_INPUT_BYTES:
            break
        lo, hi = a, b
        cols = q.shape[-1] if q.shape else 1
        entries.append([data.begin, scale.begin, SCALE_KINDS[scale.dtype], q.numel // cols, cols, q.block[0],
                        q.block[1], FP8_TABLES.index(data.dtype), out_bytes, OUT_KINDS[t.dtype], 0])
        taken.append(t)
        out_bytes += t.nbytes
    if not taken:
        return 0, 0
    window = reader.buffer("run-in", hi - lo)
    got = ckpt.byte_source(file).read_into(lo, window)
    if got != hi - lo:
        raise SurgeonError(f"{file}: file is shorter than its header says (truncated near {taken[0].name!r}); "
                           "download the model again")
    table = np.array(entries, dtype=np.int64)
    table[:, :2] -= lo  # file offsets -> offsets in the window
    out = reader.rotating("run-out", out_bytes)
    bad = cast_fp8(np.frombuffer(window, np.uint8), table, np.frombuffer(out, np.uint8))
    if bad is not None and taken[bad[0]].source.overflow != "inf":
        raise _overflow_error(taken[bad[0]], bad[1])
    if digest is not None:
        digest.update(out)
    writes.put(out, pos, taken[0].name)
    return len(taken), out_bytes


PART_OUT_BYTES = 256 * 1024  # output bytes of one part of the compiled writer: with its input, within one core's L2
RAW_PART_BYTES = 64 * 1024  # unchanged tensors up to this size between FP8 weights travel in the parts
CALL_OUT_BYTES = 64 * 1024 * 1024  # output bytes per compiled call: the write-behind's window moves between calls


def file_castable(reader: "SourceReader", t: "PlannedTensor") -> bool:
    """An FP8 dequantize source the compiled writer reads itself (cast_fp8_file): data and scale in one
    local file, on Linux (it reads errno through glibc)."""
    if t.source.kind != "dequantize" or not sys.platform.startswith("linux"):
        return False
    q = quant_of(reader, t)
    return (q.scheme != "mxfp4" and q.data.file == q.scale.file and q.numel > 0
            and reader.inputs[t.source.role].byte_source(q.data.file).fileno() is not None)


class _Parts:
    """The tables of cast_fp8_file (kernels/quant.py: E_*, P_*), built part by part.

    A part is either several whole small tensors (FP8 weights and small unchanged ones) whose
    input spans stay within PART_OUT_BYTES and whose output fits it, or one row slice of a large
    FP8 weight. Its input is span A (weights' codes, raw tensors) and span B (their scales), or
    one span where the two lie close; entries hold file positions until the part is closed, then
    offsets in the lane's window."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.entries: list[list[int]] = []
        self.parts: list[list[int]] = []
        self.owner: list[int] = []  # per entry: the index of its tensor in the run
        self.in_b: list[bool] = []  # per entry: its scale lies in span B
        self.out_bytes = 0  # output bytes of the closed parts
        self._open: list[int] | None = None  # e0, a_lo, a_hi, b_lo, b_hi, out_pos, out_len

    def fits(self, a: tuple[int, int], b: tuple[int, int] | None, out: int) -> bool:
        """Whether the open part can take an entry reading span a (and scales b) and writing `out` bytes."""
        o = self._open
        if o is None:
            return False
        a_len = max(o[2], a[1]) - min(o[1], a[0])
        if b is None:
            b_len = o[4] - o[3]
        elif o[4] > o[3]:
            b_len = max(o[4], b[1]) - min(o[3], b[0])
        else:
            b_len = b[1] - b[0]
        return a_len + b_len <= 2 * PART_OUT_BYTES and o[6] + out <= PART_OUT_BYTES

    def add(self, entry: list[int], owner: int, a: tuple[int, int], b: tuple[int, int] | None, out: int,
            out_pos: int) -> None:
        """Add one entry (E_CODES/E_SCALES as file positions, E_OUT ignored) to the open part, or a new one."""
        if not self.fits(a, b, out):
            self.close()
            self._open = [len(self.entries), a[0], a[1], 0, 0, out_pos, 0]
        o = self._open
        o[1], o[2] = min(o[1], a[0]), max(o[2], a[1])
        if b is not None:
            o[3], o[4] = (min(o[3], b[0]), max(o[4], b[1])) if o[4] > o[3] else b
        entry[E_OUT] = o[6]
        o[6] += out
        self.entries.append(entry)
        self.owner.append(owner)

    def close(self) -> None:
        o, self._open = self._open, None
        if o is None:
            return
        e0, a_lo, a_hi, b_lo, b_hi, out_pos, out_len = o
        if b_hi > b_lo and max(a_hi, b_hi) - min(a_lo, b_lo) <= (a_hi - a_lo) + (b_hi - b_lo) + PART_OUT_BYTES // 4:
            a_lo, a_hi, b_lo, b_hi = min(a_lo, b_lo), max(a_hi, b_hi), 0, 0  # one read, a small gap included
        a_len = a_hi - a_lo
        for e in self.entries[e0:]:
            e[E_CODES] -= a_lo
            if not e[E_RAW]:
                e[E_SCALES] = e[E_SCALES] - a_lo if b_hi <= b_lo else a_len + e[E_SCALES] - b_lo
        self.parts.append([e0, len(self.entries), self.fd, a_lo, a_len, b_lo, b_hi - b_lo, out_pos, out_len])
        self.out_bytes += out_len

    def take(self) -> tuple[np.ndarray, np.ndarray, list[int], int]:
        """The closed parts' tables (entries renumbered from 0), their owners, and their output bytes; then empty."""
        self.close()
        entries = np.array(self.entries, dtype=np.int64).reshape(-1, ENTRY_WIDTH)
        parts = np.array(self.parts, dtype=np.int64).reshape(-1, 9)
        owner, n = self.owner, self.out_bytes
        self.entries, self.parts, self.owner, self.out_bytes = [], [], [], 0
        return entries, parts, owner, n


def _slice_rows(q: "QuantTensor", width: int) -> int:
    """Rows of a large FP8 weight per part: whole block rows where PART_OUT_BYTES holds one, else the largest
    power-of-two share of a block row that fits (each block's 256 outputs are computed once per part)."""
    per_row = q.cols * width
    if q.block[0] * per_row <= PART_OUT_BYTES:
        return q.block[0] * (PART_OUT_BYTES // (q.block[0] * per_row))
    rows = q.block[0]
    while rows > 1 and rows * per_row > PART_OUT_BYTES:
        rows //= 2
    return max(rows, 1)


def write_cast_file_run(tensors: list["PlannedTensor"], reader: "SourceReader", fd: int, pos: int, behind,
                        path) -> tuple[int, int]:
    """Write the leading tensors of `tensors` that the compiled writer can do (file_castable FP8 weights, and
    unchanged tensors of at most RAW_PART_BYTES of the same file between them) with cast_fp8_file: no byte
    passes through Python, and both cores read, compute and write. Returns (how many tensors, bytes written).
    Every CALL_OUT_BYTES of output, `behind` (writeback.WriteBehind) moves its window.

    The loop below runs once per tensor of a 90k-tensor model: plain lookups only."""
    role = tensors[0].source.role
    ckpt = reader.inputs[role]
    quant = ckpt.quant.tensors
    file = quant[tensors[0].source.name].data.file
    src_fd = ckpt.byte_source(file).fileno()
    build = _Parts(src_fd)
    taken: list["PlannedTensor"] = []
    start = pos
    for t in tensors:
        src = t.source
        if src.role != role:
            break
        owner = len(taken)
        if src.kind == "copy":
            info = ckpt[src.name]
            if (info.file is not file and info.file != file) or not 0 < info.nbytes <= RAW_PART_BYTES:
                break
            entry = [info.begin, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, info.nbytes]
            build.add(entry, owner, (info.begin, info.end), None, info.nbytes, pos)
        elif src.kind == "dequantize":
            q = quant[src.name]
            data, scale = q.data, q.scale
            if q.scheme == "mxfp4" or not data.nbytes or (data.file is not file and data.file != file) \
                    or (scale.file is not file and scale.file != file):  # one Path object per shard: `is` first
                break
            width = itemsize(t.dtype)
            if t.nbytes <= PART_OUT_BYTES:
                entry = fp8_entry(q, data.begin, scale.begin, 0, q.numel // q.cols, 0, t.dtype) + [0]
                build.add(entry, owner, (data.begin, data.end), (scale.begin, scale.end), t.nbytes, pos)
            else:
                build.close()
                rows, cols = q.numel // q.cols, q.cols
                step = _slice_rows(q, width)
                for row0 in range(0, rows, step):
                    n = min(step, rows - row0)
                    s_off, s_len = _scale_rows(q, row0, n)
                    codes = data.begin + row0 * cols
                    entry = fp8_entry(q, codes, scale.begin + s_off, row0, n, 0, t.dtype) + [0]
                    build.add(entry, owner, (codes, codes + n * cols), (scale.begin + s_off, scale.begin + s_off + s_len),
                              n * cols * width, pos + row0 * cols * width)
                    build.close()
        else:
            break
        taken.append(t)
        pos += t.nbytes
        if build.out_bytes >= CALL_OUT_BYTES:
            _run_parts(build, taken, ckpt, fd, behind)
    _run_parts(build, taken, ckpt, fd, behind)
    return len(taken), pos - start


def _run_parts(build: _Parts, taken: list["PlannedTensor"], ckpt, fd: int, behind) -> None:
    """One compiled call on the parts built so far; errors named as the Python path names them."""
    from weightsurgeon.kernels.quant import cast_fp8_file

    entries, parts, owner, nbytes = build.take()
    if not len(parts):
        return
    bad, status = cast_fp8_file(fd, entries, parts)
    failed = np.flatnonzero(status)
    if failed.size:
        p = int(failed[0])
        names = [taken[owner[e]] for e in range(parts[p, P_E0], parts[p, P_E1])]
        if status[p] > 0:
            raise OSError(int(status[p]), os.strerror(int(status[p])))  # the writer names the file and tensor
        infos = []
        for t in names:
            if t.source.kind == "copy":
                infos.append(ckpt[t.source.name])
            else:
                infos += [ckpt.quant.tensors[t.source.name].data, ckpt.quant.tensors[t.source.name].scale]
        for info in infos:  # a read failed or came short: read again here, for the message that says which and why
            for _chunk in ckpt.iter_chunks(info):
                pass
        # untested: a read that fails in compiled code and then succeeds when read again here
        raise SurgeonError(f"{infos[0].file}: read failed in tensor {infos[0].name!r}; check the disk and rerun")
    if bad is not None:
        t = taken[owner[bad[0]]]
        if t.source.overflow != "inf":
            raise _overflow_error(t, int(entries[bad[0], E_ROW0] * entries[bad[0], E_COLS] + bad[1]))
    behind.advance(nbytes)


def overlappable(reader: "SourceReader", t: "PlannedTensor") -> bool:
    """An FP8 dequantize source: its chunks are computed into buffers that take turns (SourceReader.rotating),
    so each may be written while the next is computed."""
    return t.source.kind == "dequantize" and quant_of(reader, t).scheme != "mxfp4"


def batchable(reader: "SourceReader", t: "PlannedTensor") -> bool:
    """A small FP8 dequantize source whose data and scale lie in one local file."""
    if t.source.kind != "dequantize":
        return False
    q = quant_of(reader, t)
    return (q.scheme != "mxfp4" and q.data.file == q.scale.file and q.data.nbytes <= RUN_TENSOR_BYTES
            and q.numel > 0)


# ---------------------------------------------------------------------------------------
# MXFP4 -> BF16/F16/F32
# ---------------------------------------------------------------------------------------

def _mxfp4(reader: "SourceReader", t: "PlannedTensor", q: "QuantTensor", start: int, count: int) -> np.ndarray:
    """Groups [start/32, (start+count)/32) in stored order; transposed outputs one expert [in, out] per call."""
    from weightsurgeon.kernels.decode import encode_from_float32
    from weightsurgeon.kernels.quant import MX_BLOCK, MX_BLOCK_BYTES, dequantize_mxfp4

    ckpt = reader.inputs[t.source.role]
    if not is_transposed(q, t):
        groups, g0 = count // MX_BLOCK, start // MX_BLOCK
        blocks = reader.buffer("mx-blocks", groups * MX_BLOCK_BYTES)
        scales = reader.buffer("mx-scales", groups)
        ckpt.read_into(q.data, g0 * MX_BLOCK_BYTES, blocks)
        ckpt.read_into(q.scale, g0, scales)
        vals = dequantize_mxfp4(np.frombuffer(blocks, np.uint8), np.frombuffer(scales, np.uint8),
                                out=np.frombuffer(reader.buffer("mx-f32", count * 4), np.float32))
        return _encode_checked(t, vals, start, encode_from_float32)
    rows, cols = q.shape[-2], q.shape[-1]  # stored [.., rows (out), cols (in)]; written [.., cols, rows]
    band = max(1, min(rows, reader.chunk_elems // cols))
    width = itemsize(t.dtype)
    target = np.frombuffer(reader.buffer("mx-t", rows * cols * width), dtype=_np_dtype(t.dtype)).reshape(cols, rows)
    for r0 in range(0, rows, band):
        n = min(band, rows - r0)
        g0, groups = (start + r0 * cols) // MX_BLOCK, n * cols // MX_BLOCK
        blocks = reader.buffer("mx-blocks", groups * MX_BLOCK_BYTES)
        scales = reader.buffer("mx-scales", groups)
        ckpt.read_into(q.data, g0 * MX_BLOCK_BYTES, blocks)
        ckpt.read_into(q.scale, g0, scales)
        vals = dequantize_mxfp4(np.frombuffer(blocks, np.uint8), np.frombuffer(scales, np.uint8),
                                out=np.frombuffer(reader.buffer("mx-f32", n * cols * 4), np.float32))
        enc = _encode_checked(t, vals, start + r0 * cols, encode_from_float32)
        target[:, r0:r0 + n] = np.asarray(enc).view(target.dtype).reshape(n, cols).T
    return target.reshape(-1)


def _np_dtype(dtype: str) -> np.dtype:
    return {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}[dtype]


def _encode_checked(t: "PlannedTensor", vals: np.ndarray, start: int, encode) -> np.ndarray:
    if t.dtype == "F16" and t.source.overflow != "inf":
        with np.errstate(invalid="ignore"):
            over = np.flatnonzero(np.isfinite(vals) & (np.abs(vals) >= 65520.0))
        if over.size:
            raise _overflow_error(t, start + int(over[0]))
    return encode(vals, t.dtype)


# ---------------------------------------------------------------------------------------
# BF16/F16/F32 -> FP8 with block scales
# ---------------------------------------------------------------------------------------

def _quantize(reader: "SourceReader", t: "PlannedTensor", start: int, count: int) -> np.ndarray:
    """Codes of whole block rows; their scales are kept in reader.cache for the scale tensor after them."""
    from weightsurgeon.kernels.decode import decode_to_float32
    from weightsurgeon.kernels.quant import quantize_fp8_blocks

    src = t.source
    rows, cols = t.shape
    info = reader.inputs[src.role][src.name]
    raw = reader._read("a", src.role, src.name, start, count)
    vals = decode_to_float32(raw, info.dtype).reshape(count // cols, cols)
    if not np.isfinite(vals).all():
        bad = int(np.flatnonzero(~np.isfinite(vals.reshape(-1)))[0]) + start
        raise SurgeonError(f"{src.name}: element {bad} is not finite; FP8 block scales need finite values "
                           f"(a NaN or inf would spoil its whole {src.block[0]}x{src.block[1]} block)")
    codes, scales = quantize_fp8_blocks(vals, tuple(src.block), t.dtype, src.scale_dtype)
    grid = reader.cache.get(("fp8-scales", src.role, src.name))
    if grid is None or start == 0:
        grid = np.empty((-(-rows // src.block[0]), -(-cols // src.block[1])), dtype=np.float32)
        reader.cache[("fp8-scales", src.role, src.name)] = grid
    first = start // cols // src.block[0]
    grid[first:first + scales.shape[0]] = scales
    reader.cache[("fp8-scales-done", src.role, src.name)] = start + count == t.numel
    return codes.reshape(-1)


def _scales(reader: "SourceReader", t: "PlannedTensor") -> np.ndarray:
    """The block scales of the weight `t.source.name`, stored as t.dtype (the scheme's scale dtype)."""
    from weightsurgeon.kernels.decode import encode_from_float32
    from weightsurgeon.surgery import PlannedTensor, Source

    src = t.source
    key = ("fp8-scales", src.role, src.name)
    if not reader.cache.get(("fp8-scales-done", src.role, src.name)):
        info = reader.inputs[src.role][src.name]
        weight = PlannedTensor(src.name, "F8_E4M3", info.shape,
                               Source("quantize", role=src.role, name=src.name, block=src.block,
                                      scale_dtype=src.scale_dtype), True)
        for _start, _codes in reader.chunks(weight):
            pass
    grid = reader.cache[key]
    if math.prod(grid.shape) != t.numel:
        # internal: the planner shapes the scale tensor from the same blocks the quantizer fills
        raise SurgeonError(f"internal: {t.name} has {t.numel} scales, the weight's blocks {grid.size}")
    return encode_from_float32(grid.reshape(-1), t.dtype)
