"""Dequantization of scaled formats: FP8 with block / per-channel / per-tensor scales, and MXFP4.

The value of a quantized element is ``decode(stored) x scale``, computed in float32 and
rounded to nearest there (as DeepSeek's ``weight_dequant`` kernel, transformers' FP8 and
MXFP4 loaders and torch's ``float8_e4m3fn.float() * scale`` all compute it). The element
codes decode through the one table of 8-bit formats (decode.py); MXFP4's 4-bit E2M1 codes
through the table below. These functions work on one row-aligned slice of a tensor at a
time (the caller streams), never on a whole tensor or an expanded scale.
"""
from __future__ import annotations

import functools

import numpy as np

from weightsurgeon.kernels.decode import _f8_table

# OCP MX v1.0 E2M1: sign, 2 exponent bits (bias 1), 1 mantissa bit; no inf, no NaN.
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
E2M1_VALUES.setflags(write=False)
MX_BLOCK = 32  # values sharing one E8M0 scale
MX_BLOCK_BYTES = MX_BLOCK // 2  # two E2M1 codes per byte, the even index in the low nibble


def dequantize_fp8(codes: np.ndarray, dtype: str, scales: np.ndarray, block: tuple[int, int], row0: int,
                   cols: int, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of whole rows ``row0 ..`` of a 2-D FP8 tensor with one scale per block.

    `codes`: the rows' stored bytes (uint8, rows * cols of them); `scales`: float32
    scales of the block rows that cover them, starting at block row ``row0 // block[0]``
    (shape: those block rows x ceil(cols / block[1])). Per-channel scales are blocks of
    (1, cols), a per-tensor scale one block of the whole tensor. Edge blocks may be
    partial: a block's scale applies to the elements that exist. `out` (float32, at least
    rows * cols) is filled and returned when given: the diff reuses one buffer.
    """
    rows = codes.size // cols if cols else 0
    n = rows * cols
    target = np.empty(n, dtype=np.float32) if out is None else out[:n]
    if n:
        table = _f8_table(dtype)
        grid = np.ascontiguousarray(np.asarray(scales, dtype=np.float32).reshape(-1, scales.shape[-1]))
        _compiled().fp8_rows(np.ascontiguousarray(codes[:n]), table, grid, block[0], block[1], row0, cols, target)
    return target


def _compiled():
    """The compiled loops (numba, imported and compiled or loaded from its cache on first use)."""
    global _LOOPS
    if _LOOPS is None:
        from weightsurgeon.kernels import _quant_loops

        _LOOPS = _quant_loops
    return _LOOPS


_LOOPS = None


def e8m0_scales(codes: np.ndarray) -> np.ndarray:
    """float32 value of E8M0 scale codes: 2**(code - 127); 0xFF is NaN (OCP MX v1.0)."""
    return _f8_table("F8_E8M0")[np.asarray(codes, dtype=np.uint8)]


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of MXFP4 groups: 16 bytes (32 E2M1 codes) and one E8M0 scale per group.

    Element 2k of a group is byte k's low nibble, element 2k+1 its high nibble (the layout
    of GPT-OSS checkpoints, read the same way by transformers' convert_moe_packed_tensors).
    The product is rounded to float32 (6 x 2**127 overflows to inf, as float32 arithmetic does).
    """
    groups = scales.size
    target = np.empty(groups * MX_BLOCK, dtype=np.float32) if out is None else out[:groups * MX_BLOCK]
    if groups:
        raw = np.ascontiguousarray(np.asarray(blocks, dtype=np.uint8).reshape(-1)[:groups * MX_BLOCK_BYTES])
        _compiled().mxfp4_groups(raw, np.ascontiguousarray(e8m0_scales(scales).reshape(-1)), E2M1_VALUES, target)
    return target


def quantize_fp8_blocks(values: np.ndarray, block: tuple[int, int], dtype: str = "F8_E4M3",
                        scale_dtype: str = "F32") -> tuple[np.ndarray, np.ndarray]:
    """(codes, float32 scales) of a 2-D float32 array: one scale per block, amax / 448 (DeepSeek's scheme).

    The scale is rounded to `scale_dtype` (nearest even; Qwen3-FP8 stores BF16 scales)
    before it divides, so that codes x stored scale is what a reader computes. codes =
    round-to-nearest-even of value / scale on the E4M3 grid (saturating at 448, where a
    scale rounded down pushes a value past it); an all-zero block gets scale 1. Holds the
    array in memory: one block row at a time when streaming (surgeon cast), never a whole tensor.
    """
    from weightsurgeon.kernels.decode import decode_to_float32, encode_from_float32

    rows, cols = values.shape
    br, bc = block
    srows, scols = -(-rows // br), -(-cols // bc)
    fmax = np.float32(np.nanmax(_f8_table(dtype)[np.isfinite(_f8_table(dtype))]))
    pad = np.zeros((srows * br, scols * bc), dtype=np.float32)
    pad[:rows, :cols] = np.abs(values)
    amax = pad.reshape(srows, br, scols, bc).max(axis=(1, 3))
    scales = np.where(amax > 0, amax / fmax, np.float32(1.0)).astype(np.float32)
    if scale_dtype != "F32":
        scales = decode_to_float32(encode_from_float32(scales, scale_dtype), scale_dtype).reshape(scales.shape)
    expanded = np.repeat(np.repeat(scales, br, axis=0), bc, axis=1)[:rows, :cols]
    return encode_from_float32(values / expanded, dtype).view(np.uint8), scales


FP8_TABLES = ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ")  # rows of fp8_tables(), by dtype
# Columns of one row of cast_fp8's `entries` table, and the codes of its dtypes.
E_CODES, E_SCALES, E_SCALE_KIND, E_ROWS, E_COLS, E_BR, E_BC, E_TABLE, E_OUT, E_OUT_KIND, E_ROW0 = range(11)
E_RAW = 11  # cast_fp8_file only: > 0 makes the entry a raw copy of that many bytes from E_CODES to E_OUT
ENTRY_WIDTH = 12
# Columns of one row of cast_fp8_file's `parts` table: its entries [P_E0, P_E1), the file it reads, span A
# (P_A, P_A_LEN bytes) read to the lane's window at 0 and span B right after it (P_B_LEN 0: none), and the
# output range (P_OUT, P_OUT_LEN bytes) its entries fill, written with one pwrite.
P_E0, P_E1, P_FD, P_A, P_A_LEN, P_B, P_B_LEN, P_OUT, P_OUT_LEN = range(9)
SCALE_KINDS = {"F32": 0, "BF16": 1, "F16": 2}
OUT_KINDS = {"BF16": 0, "F16": 1, "F32": 2}


@functools.lru_cache(maxsize=1)
def fp8_tables() -> np.ndarray:
    """float32 [len(FP8_TABLES), 256]: every code's value in each 8-bit float format."""
    return np.stack([_f8_table(d) for d in FP8_TABLES]).astype(np.float32)


def cast_fp8(window: np.ndarray, entries: np.ndarray, out: np.ndarray) -> tuple[int, int] | None:
    """Dequantize FP8 row slices from `window` into stored BF16/F16/F32 bytes in `out` (see _quant_loops.fp8_cast).

    One compiled call for a whole batch of tensors: the writer packs many small ones (a
    DeepSeek-V3 layer holds 768 expert matrices) into one read, one call and one write.
    Returns (entry, element) of the first finite value F16 cannot hold, or None.
    """
    bad = np.full(2, -1, dtype=np.int64)
    if len(entries):
        entries = np.ascontiguousarray(entries, dtype=np.int64)
        _compiled().fp8_cast(window, entries, cast_parts(entries), fp8_tables(), out, bad)
    return None if bad[0] < 0 else (int(bad[0]), int(bad[1]))


def cast_fp8_file(fd_out: int, entries: np.ndarray, parts: np.ndarray) -> tuple[tuple[int, int] | None, np.ndarray]:
    """Run _quant_loops.fp8_cast_file on its tables (int64, ENTRY_WIDTH and P_* columns): the parts read
    their input and write their output themselves, one lane per numba thread. Returns (entry, element)
    of the first finite value F16 cannot hold, or None, and each part's status (0, -1: a read failed or
    came short, else the errno of its failed write)."""
    import numba

    bad = np.full(2, -1, dtype=np.int64)
    status = np.zeros(len(parts), dtype=np.int64)
    if len(parts):
        in_size = int((parts[:, P_A_LEN] + parts[:, P_B_LEN]).max())
        out_size = int(parts[:, P_OUT_LEN].max())
        lanes = max(1, min(numba.get_num_threads(), len(parts)))
        _compiled().fp8_cast_file(fd_out, entries, parts, fp8_tables(), lanes, in_size, out_size, bad, status)
    return (None if bad[0] < 0 else (int(bad[0]), int(bad[1]))), status


CAST_PART_ELEMS = 1 << 17  # elements per unit of fp8_cast's parallel loop: a writer chunk (2M elements) gives 16


def cast_parts(entries: np.ndarray, part_elems: int | None = None) -> np.ndarray:
    """int64 [parts, 3] (entry, first row, end row): each entry's rows cut into parts of about
    `part_elems` elements (whole rows), in entry and row order, so that one large tensor, as
    well as a batch of small ones, spreads over the threads."""
    rows, cols = entries[:, E_ROWS], np.maximum(entries[:, E_COLS], 1)
    per = np.maximum(1, (part_elems or CAST_PART_ELEMS) // cols)
    counts = np.maximum(1, -(-rows // per))
    owner = np.repeat(np.arange(len(entries)), counts)
    index = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    first = index * per[owner]
    end = np.minimum(first + per[owner], rows[owner])
    return np.ascontiguousarray(np.stack([owner, first, end], axis=1), dtype=np.int64)


def quantize_mxfp4(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blocks uint8 [groups, 16], scale codes uint8 [groups]) of float32 values in groups of 32.

    The OCP MX v1.0 recipe: shared exponent floor(log2(amax)) - 2 (E2M1's largest exponent),
    elements rounded to the nearest E2M1 value (ties away from zero here) and clamped to +-6.
    """
    groups = values.reshape(-1, MX_BLOCK).astype(np.float32)
    amax = np.abs(groups).max(axis=1)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2, -127)
    exp = np.clip(exp, -127, 127).astype(np.int32)
    scaled = groups / np.ldexp(np.float32(1.0), exp)[:, None]
    grid = E2M1_VALUES[:8]
    mids = (grid[1:] + grid[:-1]) / 2
    mag = np.minimum(np.abs(scaled), np.float32(6.0))
    codes = np.searchsorted(mids, mag, side="left").astype(np.uint8)
    codes |= np.where(np.signbit(scaled) & (codes > 0), np.uint8(8), np.uint8(0))
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, (exp + 127).astype(np.uint8)
