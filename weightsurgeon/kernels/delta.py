"""Python entry points of the kernels: pick the representation, call the compiled code, fold results.

The compiled module (and numba with it) is imported on the first call, never at import
time: commands that only decode or encode (surgery, synth) do not pay for numba.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Any

import numpy as np

from weightsurgeon.kernels.decode import as_bits, decode_to_float32, decode_to_float64, work_dtype
from weightsurgeon.kernels.dtypes import dtype_info, itemsize
from weightsurgeon.kernels.shape import central_sums
from weightsurgeon.kernels.stats import PART, DeltaStats, StatsColumns

# numba's portable "workqueue" threading layer aborts the process when two threads launch
# parallel kernels at once: launches are serialised.
_LAUNCH = threading.Lock()

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _compiled():
    from weightsurgeon.kernels import _compiled as compiled

    return compiled


@functools.lru_cache(maxsize=64)
def _histogram_constants(bins: int, clip: float, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """What the kernel needs to reproduce np.histogram(..., range=(-clip, clip)) on `dtype` data.

    numpy's own edges (the final word on every bin), and constants in the work dtype. The
    kernel's arithmetic bin position and numpy's edges are both off the ideal grid by
    rounding only, together by less than 2.5 * bins * eps bins; positions closer than
    8 * bins * eps to an edge are settled against the edge itself.
    """
    edges = np.histogram_bin_edges(np.empty(0, dtype=dtype), bins=bins, range=(-clip, clip))
    lo, hi = edges[0], edges[-1]
    near = min(0.25, 8 * bins * float(np.finfo(dtype).eps))
    zero_bin = min(int(np.searchsorted(edges, 0.0, side="right")) - 1, bins - 1)  # edges[k] <= 0 < edges[k+1]
    consts = np.array(
        [lo, hi, bins / (float(hi) - float(lo)), np.finfo(dtype).max, 0.0, 0.5, 1.0, near, zero_bin], dtype=dtype
    )
    edges.setflags(write=False)
    consts.setflags(write=False)
    return consts, edges


def _fast_code(dtype: str) -> int | None:
    """The compiled kernel's decode code for a float32-work dtype it decodes itself, else None."""
    k = _compiled()
    return {"BF16": k.CODE_BF16, "F16": k.CODE_F16, "F32": k.CODE_F32}.get(dtype)


def _kernel_operand(x: np.ndarray, dtype: str, wide: bool) -> tuple[np.ndarray, int]:
    """(bit patterns, decode code) the compiled kernel takes for one side."""
    k = _compiled()
    if wide:
        if dtype == "F64":
            return as_bits(x, dtype), k.CODE_F64
        return decode_to_float64(x, dtype).view(np.uint64), k.CODE_F64
    code = _fast_code(dtype)
    if code is not None:
        return as_bits(x, dtype), code
    # Slow exact path: decode with numpy, then the float32 kernel.
    return decode_to_float32(x, dtype).view(np.uint32), k.CODE_F32


_NO_GROUPS = np.zeros(3, dtype=np.int64)


def _grouping(groups: "Groups | None", start: int) -> np.ndarray:
    if groups is None:
        return _NO_GROUPS
    return np.array([start, groups.run, groups.count], dtype=np.int64)


class Groups:
    """Per-group sums of one tensor: sum d^2 and sum A^2 of every run of `run` consecutive
    elements, run k going to group k % count (attention heads by rows or by head_dim
    columns, stacked experts). `sums` is (count, 2), added to chunk after chunk."""

    def __init__(self, run: int, count: int, kind: str = "") -> None:
        if run < 1 or count < 1:
            raise ValueError(f"groups need run >= 1 and count >= 1, got run={run}, count={count}")
        self.run, self.count, self.kind = int(run), int(count), kind
        self.sums = np.zeros((self.count, 2), dtype=np.float64)

    def add(self, part_sums: np.ndarray) -> None:
        self.sums += part_sums.sum(axis=0)


def accumulate_delta(stats: DeltaStats, a: np.ndarray, b: np.ndarray, dtype_a: str, dtype_b: str,
                     groups: Groups | None = None, start: int = 0) -> None:
    """Fold one chunk pair (stored representation) into `stats`, in place; with `groups`, the
    chunk's per-group sums into groups.sums too (`start`: the chunk's first element's index
    in its tensor).

    BF16/F16/F32 are decoded inside the kernel, which releases the GIL; other dtypes are
    decoded exactly with numpy first. Values are compared in float32, or float64 when
    either side is F64 or a 32/64-bit integer.
    """
    rows = chunk_rows(a, b, dtype_a, dtype_b, stats.bins, stats.clip, groups, start)
    if rows is not None:
        fold_rows(stats, [rows], groups)


def chunk_rows(a: np.ndarray, b: np.ndarray, dtype_a: str, dtype_b: str, bins: int, clip: float,
               groups: Groups | None = None, start: int = 0) -> tuple | None:
    """The kernel's per-part rows of one chunk pair (sums, counts, hists, group sums, elements), or None
    for an empty one: what accumulate_delta folds. A chunk read in pieces of whole parts gives, piece
    by piece, the rows of the whole chunk (fold_rows them together)."""
    dt = work_dtype(dtype_a, dtype_b)
    wide = dt is np.float64
    bits_a, code_a = _kernel_operand(a, dtype_a, wide)
    bits_b, code_b = _kernel_operand(b, dtype_b, wide)
    if bits_a.dtype != bits_b.dtype:
        # Mixed widths (BF16 against F32): decode the 16-bit side with numpy rather than
        # compile, cache and load two more kernel signatures for a rare case.
        if bits_a.itemsize == 2:
            bits_a, code_a = decode_to_float32(bits_a, dtype_a).view(np.uint32), _compiled().CODE_F32
        else:
            bits_b, code_b = decode_to_float32(bits_b, dtype_b).view(np.uint32), _compiled().CODE_F32
    if bits_a.size != bits_b.size:
        raise ValueError(f"chunks differ in length: {bits_a.size} vs {bits_b.size} elements")
    if bits_a.size == 0:
        return None
    consts, edges = _histogram_constants(bins, clip, dt)
    with _LAUNCH:
        sums, counts, hists, group_sums = _compiled().delta_chunk(bits_a, code_a, bits_b, code_b, consts, edges,
                                                                  _grouping(groups, start))
    return sums, counts, hists, group_sums, bits_a.size


def fold_rows(stats: DeltaStats, pieces: list[tuple], groups: Groups | None = None) -> None:
    """Fold the chunk_rows of one chunk's pieces, in order, into `stats` (and `groups`): one fold for
    the chunk, so the sums are bit for bit those of one kernel call on the whole chunk."""
    if len(pieces) == 1:
        sums, counts, hists, group_sums, numel = pieces[0]
    else:
        sums, counts, hists, group_sums = (np.concatenate([p[i] for p in pieces]) for i in range(4))
        numel = sum(p[4] for p in pieces)
    fold_parts(stats, sums, counts, hists, numel)
    if groups is not None:
        groups.add(group_sums)


_LIKE = {2: np.empty(0, np.uint16), 4: np.empty(0, np.uint32), 8: np.empty(0, np.uint64)}


def _file_code(dtype: str, wide: bool) -> int | None:
    """The kernel's decode code for a side read straight from a file, or None (no such path)."""
    if wide:
        return _compiled().CODE_F64 if dtype == "F64" else None
    return _fast_code(dtype)


@functools.lru_cache(maxsize=64)  # asked once per tensor pair: ~100k times in a MoE diff
def reads_files(dtype_a: str, dtype_b: str) -> bool:
    """Whether accumulate_delta_from_files handles this pair of stored dtypes (same width, decoded in the kernel)."""
    # Equal widths among these: BF16/F16 pairs, F32 pairs, F64 pairs (the kernel decodes all).
    return (hasattr(os, "pread") and dtype_info(dtype_a).name in _FILE_DTYPES and dtype_info(dtype_b).name in _FILE_DTYPES
            and itemsize(dtype_a) == itemsize(dtype_b))


_FILE_DTYPES = ("BF16", "F16", "F32", "F64")


def accumulate_delta_from_files(stats: DeltaStats, fd_a: int, pos_a: int, dtype_a: str, fd_b: int, pos_b: int,
                                dtype_b: str, numel: int, groups: Groups | None = None, start: int = 0,
                                direct: Any = None) -> bool:
    """accumulate_delta on `numel` elements read by the kernel's own threads from two open files.

    `pos_a`/`pos_b` are byte positions in the files. Each thread reads the part it
    computes into its own small buffer (see delta_file), so nothing is copied while the
    kernel runs and no large buffer exists. Returns False, leaving `stats` untouched, when
    a read fails or comes up short: the caller then reads the same bytes itself, which
    retries an interrupted read and otherwise names the error. Only for `reads_files` pairs.
    `direct`: a directreads.DirectReads, to read the ranges the page cache lacks with O_DIRECT.
    """
    return accumulate_tuned_from_files([stats], fd_a, pos_a, dtype_a, [(fd_b, pos_b, dtype_b)], numel, [groups], start,
                                       direct)


def accumulate_tuned_from_files(targets: list[DeltaStats], fd_a: int, pos_a: int, dtype_a: str,
                                sides: list[tuple[int, int, str]], numel: int, groups: list[Groups | None],
                                start: int = 0, direct: Any = None) -> bool:
    """accumulate_delta_from_files of one base range against one or several tuned files in one launch:
    side k is (descriptor, byte position, stored dtype) of tuned k, folded into targets[k] (and
    groups[k]). The kernel reads each base part once for all of them (delta_file); tuned k's
    statistics are bit for bit those of a call with it alone. Every side must be a reads_files pair
    of the base's width, with the same work dtype and grouping (run, count), or none. Returns False,
    leaving every target untouched, when a read fails: the caller then goes one side at a time.
    With `direct` (a directreads.DirectReads), the sides whose range the page cache lacks are read
    with O_DIRECT (_compiled.delta_file_spans: the same rows, bit for bit); where that read fails,
    the call is made again through the cache.
    """
    if not sides or any(not reads_files(dtype_a, d) for _, _, d in sides):
        raise ValueError(f"no file path for {dtype_a} against {', '.join(d for _, _, d in sides)}: use accumulate_delta")
    if len({None if g is None else (g.run, g.count) for g in groups}) != 1:
        raise ValueError("accumulate_tuned_from_files: the sides' groupings differ")
    dt = work_dtype(dtype_a, sides[0][2])
    if any(work_dtype(dtype_a, d) is not dt for _, _, d in sides):
        raise ValueError("accumulate_tuned_from_files: the sides' work dtypes differ")
    if numel <= 0:
        return True
    wide = dt is np.float64
    consts, edges = _histogram_constants(targets[0].bins, targets[0].clip, dt)
    like = _LIKE[itemsize(dtype_a)]
    fds = np.array([fd for fd, _, _ in sides], dtype=np.int64)
    positions = np.array([pos for _, pos, _ in sides], dtype=np.int64)
    codes = np.array([_file_code(d, wide) for _, _, d in sides], dtype=np.int64)
    import numba  # loaded by _compiled() already

    result = None
    if direct is not None:
        result = _launch_spans(direct, fd_a, pos_a, like, _file_code(dtype_a, wide), fds, positions, codes, numel,
                               consts, edges, _grouping(groups[0], start))
    if result is None:
        with _LAUNCH:
            result = _compiled().delta_file(
                fd_a, pos_a, like, _file_code(dtype_a, wide), fds, positions, like, codes, numel, consts, edges,
                numba.get_num_threads(), _grouping(groups[0], start))
    sums, counts, hists, group_sums, failed = result
    if failed:
        return False
    for k, target in enumerate(targets):
        fold_parts(target, sums[k], counts[k], hists[k], numel)
        if groups[k] is not None:
            groups[k].add(group_sums[k])
    return True


def _launch_spans(direct: Any, fd_a: int, pos_a: int, like: np.ndarray, code_a: int, fds: np.ndarray,
                  positions: np.ndarray, codes: np.ndarray, numel: int, consts: np.ndarray, edges: np.ndarray,
                  grouping: np.ndarray) -> tuple | None:
    """delta_file's results, computed by _compiled.delta_spans_lane on `direct`'s threads where at
    least one side's range is read with O_DIRECT (direct.choose), or None: no side is, a position is
    not a multiple of the element width (the lanes view their aligned spans as elements), or a read
    failed (the twins used are refused from then on, and the caller reads through the cache).

    `direct` is a weightsurgeon.directreads.DirectReads (kernels import nothing of the project):
    choose, refuse, pool, lanes, span_bytes and run_lanes are all this uses of it.
    """
    width = like.itemsize
    plain = [fd_a, *fds.tolist()]
    places = [pos_a, *positions.tolist()]
    if any(pos % width for pos in places):
        return None
    chosen = [direct.choose(fd, pos, numel * width) for fd, pos in zip(plain, places)]
    if chosen == plain:
        return None
    k = _compiled()
    group = max(1, direct.span_bytes // (PART * width))  # parts per read
    span = group * PART * width + 2 * k.DIRECT_ALIGN  # an aligned superset of `group` parts at any offset
    lanes = direct.lanes
    pool = direct.pool(2 * lanes * span, k.DIRECT_ALIGN)
    tuned, nparts, nbins = fds.size, (numel + PART - 1) // PART, edges.size - 1
    sums = np.zeros((tuned, nparts, k.N_SUMS), dtype=np.float64)
    counts = np.zeros((tuned, nparts, 2), dtype=np.int64)
    hists = np.zeros((tuned, nparts, nbins), dtype=np.int64)
    groups = np.zeros((tuned, nparts, max(int(grouping[2]), 1), 2), dtype=np.float64)
    failed = np.zeros(nparts, dtype=np.int64)
    fds_b = np.array(chosen[1:], dtype=np.int64)
    with _LAUNCH:
        direct.run_lanes([
            (k.delta_spans_lane, lane, lanes, chosen[0], pos_a, like, code_a, fds_b, positions, like, codes, numel,
             consts, edges, grouping, pool[2 * lane * span:(2 * lane + 1) * span],
             pool[(2 * lane + 1) * span:(2 * lane + 2) * span], group, sums, counts, hists, groups, failed)
            for lane in range(lanes)])
    if failed.any():
        for fd, used in zip(plain, chosen):
            if used != fd:
                direct.refuse(fd)
        return None
    return sums, counts, hists, groups, 0


def part_encoding(dtype: str, scheme: str | None = None) -> int | None:
    """The parts kernel's encoding code of one side: a plain BF16/F16/F32 tensor (scheme None) or
    the data of a quantized one (fp8-* schemes: its F8 dtype; mxfp4); None where it has none."""
    k = _compiled()
    if scheme is None:
        return {"BF16": k.ENC_BF16, "F16": k.ENC_F16, "F32": k.ENC_F32}.get(dtype)
    if scheme == "mxfp4":
        return k.ENC_E2M1
    return {"F8_E4M3": k.ENC_E4M3, "F8_E5M2": k.ENC_E5M2}.get(dtype)


def item_width() -> int:
    """Columns of a side's item table (see _compiled.IT_*)."""
    return _compiled().IT_WIDTH


def delta_parts(items_a: np.ndarray, pool_a: np.ndarray, items_b: np.ndarray, pool_b: np.ndarray, n: np.ndarray,
                grouping: np.ndarray, bins: int, clip: float) -> tuple[np.ndarray, ...]:
    """Per-part statistics of a batch of parts read and decoded by the kernel (_compiled.delta_parts):
    (sums, counts, hists, groups, failed), one row per part; fold each tensor's rows with fold_parts."""
    import numba  # loaded by _compiled() already

    consts, edges = _histogram_constants(bins, clip, np.float32)
    with _LAUNCH:
        return _compiled().delta_parts(items_a, pool_a, items_b, pool_b, n, consts, edges, numba.get_num_threads(),
                                       grouping)


def batch_from_files(bins: int, clip: float, fd_a: int, pos_a: np.ndarray, dtype_a: str, fd_b: int,
                     pos_b: np.ndarray, dtype_b: str, numel: np.ndarray) -> tuple[StatsColumns, np.ndarray]:
    """accumulate_delta_from_files on many small pairs in one kernel launch: pair i is numel[i]
    (1..PART) elements at byte positions pos_a[i], pos_b[i].

    Returns (the statistics of the pairs that were read, as columns: row j is the j-th pair
    not in the mask; the boolean mask of pairs whose read failed, which the caller reads
    itself). Each row equals one accumulate_delta_from_files call on fresh statistics, bit for
    bit (a pair of at most PART elements is one part either way).
    """
    if not reads_files(dtype_a, dtype_b):
        raise ValueError(f"no file path for {dtype_a} against {dtype_b}: use accumulate_delta")
    numel = np.asarray(numel, dtype=np.int64)
    if numel.size == 0:
        return StatsColumns.empty(0, bins), np.zeros(0, dtype=bool)
    if numel.min() < 1 or numel.max() > PART:
        raise ValueError(f"a batched pair holds 1..{PART} elements")
    dt = work_dtype(dtype_a, dtype_b)
    wide = dt is np.float64
    consts, edges = _histogram_constants(bins, clip, dt)
    like = _LIKE[itemsize(dtype_a)]
    import numba  # loaded by _compiled() already

    with _LAUNCH:
        sums, counts, hists, failed = _compiled().delta_file_batch(
            fd_a, np.asarray(pos_a, dtype=np.int64), like, _file_code(dtype_a, wide), fd_b,
            np.asarray(pos_b, dtype=np.int64), like, _file_code(dtype_b, wide), numel, consts, edges,
            numba.get_num_threads())
    bad = failed.astype(bool)
    if bad.any():
        ok = ~bad
        sums, counts, hists, numel = sums[ok], counts[ok], hists[ok], numel[ok]
    if not numel.size:
        return StatsColumns.empty(0, bins), bad
    return segment_columns(np.arange(numel.size), sums, counts, hists, numel), bad  # one part per tensor


def accumulate_batch_from_files(targets: list[DeltaStats], fd_a: int, pos_a: np.ndarray, dtype_a: str, fd_b: int,
                                pos_b: np.ndarray, dtype_b: str, numel: np.ndarray) -> np.ndarray:
    """batch_from_files folded into the fresh targets[i]; returns the mask of failed reads (their
    targets untouched)."""
    if not targets:
        return np.zeros(0, dtype=bool)
    first = targets[0]
    columns, bad = batch_from_files(first.bins, first.clip, fd_a, pos_a, dtype_a, fd_b, pos_b, dtype_b, numel)
    kept = [t for t, failed in zip(targets, bad.tolist()) if not failed]
    for j, t in enumerate(kept):
        columns.into(j, t)
    return bad


def fold_parts(stats: DeltaStats, sums: np.ndarray, counts: np.ndarray, hists: np.ndarray, numel: int) -> None:
    """Add the kernel's per-part results into `stats`.

    The parts depend on the chunk length only, never on the thread count, so these sums
    come out the same, bit for bit, however many threads ran the kernel.
    """
    k = _compiled()
    stats.sum_sq_delta += float(sums[:, k.SUM_SQ_DELTA].sum())
    stats.sum_sq_a += float(sums[:, k.SUM_SQ_A].sum())
    stats.sum_sq_b += float(sums[:, k.SUM_SQ_B].sum())
    stats.dot_ab += float(sums[:, k.DOT_AB].sum())
    stats.sum_delta += float(sums[:, k.SUM_DELTA].sum())
    stats.max_abs_delta = max(stats.max_abs_delta, float(sums[:, k.MAX_ABS_DELTA].max()))
    n_finite = int(counts[:, k.N_FINITE].sum())
    stats.n += n_finite
    stats.n_nonfinite += numel - n_finite
    stats.n_base_zero += int(counts[:, k.N_BASE_ZERO].sum())
    n_r = hists.sum(axis=1)
    stats.add_moments(n_r, *central_sums(n_r, sums[:, k.R_SHIFT], sums[:, k.R_S1], sums[:, k.R_S2],
                                         sums[:, k.R_S3], sums[:, k.R_S4]))
    stats.hist += hists.sum(axis=0)


def _segments(first: np.ndarray, sums: np.ndarray, counts: np.ndarray, hists: np.ndarray, n: np.ndarray) -> tuple:
    """Each segment's sums, counts, histogram and merged moments (see fold_segments), as columns.

    Where every segment is one part (a batch of small tensors: first = 0, 1, 2 ...), each
    reduction over a segment is its one value, so the reductions are skipped; the numbers are
    the same, bit for bit, at a third of the cost (the histograms are not copied)."""
    k = _compiled()
    first = np.asarray(first, dtype=np.intp)
    if len(first) == sums.shape[0]:  # one part a segment: reduceat would return each row as it is
        lengths = None

        def add(x: np.ndarray, ufunc: Any = np.add) -> np.ndarray:
            return x
    else:
        lengths = np.diff(np.append(first, sums.shape[0]))

        def add(x: np.ndarray, ufunc: Any = np.add) -> np.ndarray:
            return ufunc.reduceat(x, first, axis=0)
    seg = [add(sums[:, col]) for col in (k.SUM_SQ_DELTA, k.SUM_SQ_A, k.SUM_SQ_B, k.DOT_AB, k.SUM_DELTA)]
    max_abs = add(sums[:, k.MAX_ABS_DELTA], np.maximum)
    n_finite = add(counts[:, k.N_FINITE])
    n_base_zero = add(counts[:, k.N_BASE_ZERO])
    hist = add(hists)
    n_r = hists.sum(axis=1).astype(np.float64)
    mean, m2, m3, m4 = central_sums(n_r, sums[:, k.R_SHIFT], sums[:, k.R_S1], sums[:, k.R_S2], sums[:, k.R_S3],
                                    sums[:, k.R_S4])
    total = add(n_r)
    pooled = add(n_r * mean) / np.where(total > 0, total, 1.0)
    d = mean - (pooled if lengths is None else np.repeat(pooled, lengths))
    c2 = np.maximum(add(m2 + n_r * d * d), 0.0)
    c3 = add(m3 + 3.0 * m2 * d + n_r * d ** 3)
    c4 = np.maximum(add(m4 + 4.0 * m3 * d + 6.0 * m2 * d * d + n_r * d ** 4), 0.0)
    numel = add(np.asarray(n, dtype=np.int64))
    return seg, max_abs, n_finite, numel, n_base_zero, total, pooled, c2, c3, c4, hist


def fold_segments(targets: list[DeltaStats], first: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                  hists: np.ndarray, n: np.ndarray) -> None:
    """fold_parts for many tensors at once: rows first[i] .. first[i + 1] - 1 of the kernel's per-part
    results (n: each part's elements) belong to targets[i] (the last segment runs to the end).

    A batch of small tensors is thousands of segments; fold_parts on each costs ~20 numpy
    calls per tensor. Here every reduction is one numpy call over the whole batch and each
    target gets a few float additions. The parts' shape sums merge into one mean and central
    sums per segment first (the formula of shape.combine, by segment), then into the target.
    """
    from weightsurgeon.kernels.shape import combine

    if not targets:
        return
    seg, max_abs, n_finite, numel, n_base_zero, total, pooled, c2, c3, c4, hist = _segments(first, sums, counts,
                                                                                            hists, n)
    rows = zip(targets, *(c.tolist() for c in seg), max_abs.tolist(), n_finite.tolist(), numel.tolist(),
               n_base_zero.tolist(), total.tolist(), pooled.tolist(), c2.tolist(), c3.tolist(), c4.tolist(), hist)
    for st, sdd, saa, sbb, sab, sd, mx, nf, ne, nbz, nr, mu, q2, q3, q4, h in rows:
        st.sum_sq_delta += sdd
        st.sum_sq_a += saa
        st.sum_sq_b += sbb
        st.dot_ab += sab
        st.sum_delta += sd
        st.max_abs_delta = max(st.max_abs_delta, mx)
        st.n += nf
        st.n_nonfinite += ne - nf
        st.n_base_zero += nbz
        if nr > 0:
            if st.r_n == 0:
                st.r_mean, st.r_m2, st.r_m3, st.r_m4 = mu, q2, q3, q4
            else:
                _, st.r_mean, st.r_m2, st.r_m3, st.r_m4 = combine(np.array([st.r_n, nr]), np.array([st.r_mean, mu]),
                                                                  np.array([st.r_m2, q2]), np.array([st.r_m3, q3]),
                                                                  np.array([st.r_m4, q4]))
        st.hist += h


def segment_columns(first: np.ndarray, sums: np.ndarray, counts: np.ndarray, hists: np.ndarray,
                    n: np.ndarray) -> StatsColumns:
    """What fold_segments leaves in fresh (empty) targets, as columns: no DeltaStats per tensor.

    Each value is the fresh target's field after fold_segments' update (0.0 + sum, max(0.0, m),
    the moments where the histogram counted anything), so the two agree bit for bit.
    """
    seg, max_abs, n_finite, numel, n_base_zero, total, pooled, c2, c3, c4, hist = _segments(first, sums, counts,
                                                                                            hists, n)
    counted = total > 0
    zero = np.zeros(len(total))
    return StatsColumns(
        n=n_finite.astype(np.int64), n_nonfinite=(numel - n_finite).astype(np.int64),
        n_base_zero=n_base_zero.astype(np.int64), sum_sq_delta=0.0 + seg[0], sum_sq_a=0.0 + seg[1],
        sum_sq_b=0.0 + seg[2], dot_ab=0.0 + seg[3], sum_delta=0.0 + seg[4],
        max_abs_delta=np.where(max_abs > 0.0, max_abs, 0.0),  # Python's max(0.0, m): NaN stays out
        r_mean=np.where(counted, pooled, zero), r_m2=np.where(counted, c2, zero), r_m3=np.where(counted, c3, zero),
        r_m4=np.where(counted, c4, zero), hist=hist.astype(np.int64, copy=False))


def count_nonfinite(x: np.ndarray, dtype: str) -> int:
    """NaN/Inf count of one chunk in stored representation (the table's NaN pattern); integers have none."""
    info = dtype_info(dtype)
    if info.kind == "complex":  # NaN/Inf in either half: no single bit pattern, numpy says it
        values = np.asarray(x).reshape(-1).view(info.storage)
        return int(values.size - np.count_nonzero(np.isfinite(values)))
    if info.nan is None:
        return 0
    bits = as_bits(x, dtype)
    if bits.size == 0:
        return 0
    uint = _UINT[info.width]
    mask, value = info.nan
    with _LAUNCH:
        return int(_compiled().count_matching(bits, uint(mask), uint(value)))


def needs_compiling() -> bool:
    """Whether the next call of the file kernel compiles it (numba's cache holds no current entry).

    Reads numba's cache index, which numba itself checks against the source file's stamp;
    that index is numba's internal API, so any surprise answers False (say nothing).
    """
    try:
        index = _compiled().delta_file._cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - an internal API: a changed numba must not break a diff
        return False
    return not index


def warmup() -> None:
    """Compile, or load from numba's cache, the kernels for the common dtypes once
    (the in-memory and the file-reading variants)."""
    import tempfile

    stats = DeltaStats.empty()
    with tempfile.TemporaryFile() as f:
        f.write(bytes(64))
        f.flush()
        fd = f.fileno()
        for dtype in ("BF16", "F32", "F64"):
            width = _UINT[itemsize(dtype)]
            z = np.zeros(8, dtype=width)
            accumulate_delta(stats, z, z, dtype, dtype)
            count_nonfinite(z, dtype)
            if reads_files(dtype, dtype):
                accumulate_delta_from_files(stats, fd, 0, dtype, fd, 0, dtype, 4)
                accumulate_batch_from_files([DeltaStats.empty()], fd, np.zeros(1, np.int64), dtype, fd,
                                            np.zeros(1, np.int64), dtype, np.full(1, 4, np.int64))
