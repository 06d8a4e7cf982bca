"""The numba kernels. Imported on first use only: numba costs time to import, compile or load.

A chunk pair is split in fixed-size parts run in parallel (fixed, so that results do not
depend on the thread count), each part in blocks of BLOCK elements (scratch arrays in L2:
larger blocks measured faster than L1-sized ones, fewer calls and loop set-ups), each
block in five tight loops:

1. decode A and B to the work precision (bf16/f16 bits decoded in-register);
2. zero the elements where A or B is not finite, d = B - A, max |d|, and r = d / A
   clipped to the histogram range, NaN where A is zero (8 float32 lanes; for bf16 pairs
   steps 1 and 2 are one loop; the division here, not in the bin loop, keeps each loop's
   dependency chain short enough for the out-of-order window);
3. bin the clipped r by arithmetic, 8 lanes, marking the few positions so close to an
   edge that rounding could put them on the wrong side (with bf16 inputs these are
   common: ratios such as 0.95 of two 8-bit mantissas);
4. the float64 sums, as two independent accumulator chains (one chain is latency-bound),
   or, for tensors summed per group too (heads, experts), run by run with each run's
   sums added to its group (_sum_group_block), and the float64 power sums of the
   clipped r shifted by the part's first counted r
   (kernels/shape.py turns them into mean, std, skewness and kurtosis);
5. count the bins into four interleaved sub-histograms (a run of equal bins would
   otherwise serialise on one counter), settling the marked ones against numpy's own
   bin edges, so that the counts equal np.histogram's exactly.

Exactness and fast math: the loops may reassociate (so the float64 sums vectorise) and
contract (a product of two float32 values is exact in float64, so a fused multiply-add
rounds exactly as multiply-then-add does). The values that must be exact, d and r, come
from the exact_* intrinsics below, whose instructions carry their own flags:
reassociation cannot reach into them ('reassoc' on `s += y - x` may rewrite it as
`(s + y) - x`) and the division is never a reciprocal estimate. (Plain fastmath=True
breaks exactness in exactly these ways.) Bin positions are only estimates; numpy's edges
decide every close call. The power sums of r are the exception to 'may reassociate': LLVM
ordered that loop differently when it compiled the kernel in the process and when numba
loaded it from its cache, so the same diff gave different last bits cold and warm. They
are explicit vector lanes (lane_power_sums) with a fixed order, at the same speed.

Performance traps avoided on purpose: numba's default error model checks every division
for zero (no SIMD); an index computed as `start + i` gets a negative-index check (no
SIMD: slice first); a select written back into the array it read becomes a masked store
(microcoded, very slow on AMD); a table lookup per element (gather) keeps LLVM from
vectorising a loop at all; numba widens integer arithmetic to 64 bits (the bit
manipulations wrap every step in np.uint32 to keep 8 lanes); and one function holding
all loops spills registers, so each loop is its own function (folding the sums into
the mask loop measured 15% slower). The scratch arrays are skewed against each other
(see _delta_part): arrays a multiple of 4 KiB apart cost about 8% on bf16.
"""
from __future__ import annotations

import os
from typing import Any

# numba's parallel loops run on GNU OpenMP here, whose idle threads spin at every barrier.
# On a machine shared with other jobs that spinning takes the cores from the threads with
# work: a 2.3 GB diff at load 14 on 2 cores took 39-60 s with spinning, 8.6-9.2 s passive.
# Set before numba loads its threading layer; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

from weightsurgeon.kernels.stats import PART  # noqa: E402  # elements per parallel task: results do not depend on threads

# How the kernel decodes a source array (it always receives unsigned-integer bit patterns).
CODE_BF16, CODE_F16, CODE_F32, CODE_F64 = range(4)

BLOCK = 8192  # elements per block: its scratch arrays (about 230 KiB) stay in L2; fewer calls
SKEW = 16  # elements between scratch arrays (see _delta_part)

# Columns of the per-part float results and integer counts (delta.fold_parts reads them):
# the sums of d, then the shift K and the power sums sum (c - K)^k, k = 1..4, of the clipped r.
SUM_SQ_DELTA, SUM_SQ_A, SUM_SQ_B, DOT_AB, SUM_DELTA, MAX_ABS_DELTA, R_SHIFT, R_S1, R_S2, R_S3, R_S4 = range(11)
N_SUMS = 11
N_FINITE, N_BASE_ZERO = range(2)
# Entries of the constants array (work dtype) that delta passes in: the histogram range,
# bins / (hi - lo), the largest finite value, 0, 1/2, 1, how close (in bins) an
# arithmetic bin position may come to an edge before numpy's edge decides, and numpy's
# bin of 0.0.
C_LO, C_HI, C_SCALE, C_BIG, C_ZERO, C_HALF, C_ONE, C_NEAR, C_ZERO_BIN = range(9)

# Scratch one part needs, allocated once per thread and reused part after part:
SCRATCH_SIZE = 6 * (BLOCK + SKEW)  # work-dtype elements: six block arrays, skewed
CODES_SIZE = BLOCK + 8 * SKEW  # int32 bin codes, skewed
ACC_SIZE = 14  # float64 accumulators: two chains of the five sums, then the four power sums

FASTMATH = {"reassoc", "nsz", "contract"}  # never "arcp", "afn", "nnan", "ninf": see above

U32 = np.uint32


def _to_width(builder, value, width: int):
    """Truncate or zero-extend an LLVM integer to `width` bits."""
    have = value.type.width
    if have > width:
        return builder.trunc(value, ir.IntType(width))
    if have < width:
        return builder.zext(value, ir.IntType(width))
    return value


@intrinsic
def as_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (numba has no scalar view)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_to_width(builder, args[0], 32), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def as_f64(typingctx, bits):
    """Reinterpret an integer (zero-extended to 64 bits) as a float64."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_to_width(builder, args[0], 64), ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def f32_bits(typingctx, value):
    """The bit pattern of a float32 as a uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(value), codegen


@intrinsic
def magnitude_bits(typingctx, value):
    """|value| as an unsigned integer of the same width: ordered like |value| (NaN-free input).

    Integer max reductions vectorise; a float max written as a select does not without 'nnan'.
    """
    if value not in (types.float32, types.float64):
        return None
    width = value.bitwidth
    out = types.uint32 if width == 32 else types.uint64

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], ir.IntType(width))
        return builder.and_(bits, ir.Constant(ir.IntType(width), (1 << (width - 1)) - 1))

    return out(value), codegen


@intrinsic
def to_int32(typingctx, value):
    """Truncate a float to int32 in one instruction (numba's np.int32() detours via float64)."""
    if value not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        return builder.fptosi(args[0], ir.IntType(32))

    return types.int32(value), codegen


def _libc_io(symbol: str, doc: str) -> Any:
    """An intrinsic calling libc's `symbol` (pread or pwrite: fd, array, nbytes, offset -> bytes or -1) by name.

    The symbol is resolved when the machine code is loaded, so the kernel stays cacheable (a ctypes
    function pointer would bake an address into it).
    """

    def typer(typingctx, fd, buf, nbytes, offset):
        if not isinstance(buf, types.Array) or not all(isinstance(t, types.Integer) for t in (fd, nbytes, offset)):
            return None

        def codegen(context, builder, signature, args):
            fd_v, buf_v, n_v, off_v = args
            data = context.make_array(signature.args[1])(context, builder, buf_v).data
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(32), i8p, ir.IntType(64), ir.IntType(64)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
            return builder.call(fn, [_to_width(builder, fd_v, 32), builder.bitcast(data, i8p),
                                     _to_width(builder, n_v, 64), _to_width(builder, off_v, 64)])

        return types.int64(fd, buf, nbytes, offset), codegen

    typer.__name__ = f"c_{symbol}"
    typer.__doc__ = doc
    return intrinsic(typer)


c_pread = _libc_io("pread", "pread(2) from compiled code into an array; returns bytes read, or -1 (see c_errno).")
c_pwrite = _libc_io("pwrite", "pwrite(2) from compiled code of an array's first bytes; returns bytes written, or -1 (see c_errno).")


@intrinsic
def c_errno(typingctx):
    """The calling thread's errno (glibc's __errno_location: Linux only), read right after a failed c_pread/c_pwrite,
    so that a compiled writer can say why (ENOSPC, EIO) as os.pwrite would."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32.as_pointer(), []), "__errno_location")
        return builder.sext(builder.load(builder.call(fn, [])), ir.IntType(64))

    return types.int64(), codegen


MOMENT_LANES = 8  # lanes of the power sums' explicit vectors (two AVX2 registers of float64)


@intrinsic
def lane_power_sums(typingctx, arr, count, shift):
    """(sum t, sum t^2, sum t^3, sum t^4), t = arr[i] - shift (0 where arr[i] is NaN), over
    i < count - count % MOMENT_LANES, in one fixed order whatever the compile context.

    Lane j adds the elements i = j mod MOMENT_LANES in index order, t^3 and t^4 by fused
    multiply-add (one rounding: llvm.fma, exact by definition); the lanes are then added
    pairwise. Written as explicit LLVM vectors with no fast-math flags because the
    reassociated loop LLVM vectorised itself summed in an order that changed between a
    kernel compiled in the process and the same kernel loaded from numba's cache (the
    moments of one diff differed in their last bits between a cold and a warm run). The
    tail (count % MOMENT_LANES elements) is the caller's.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and arr.dtype in (types.float32, types.float64) and isinstance(count, types.Integer)
            and shift == types.float64):
        return None
    lanes = MOMENT_LANES

    def codegen(context, builder, signature, args):
        arr_v, count_v, shift_v = args
        elt = context.get_data_type(signature.args[0].dtype)
        data = context.make_array(signature.args[0])(context, builder, arr_v).data
        intp = context.get_value_type(types.intp)
        count_v = context.cast(builder, count_v, signature.args[1], types.intp)
        f64 = ir.DoubleType()
        vec = ir.VectorType(f64, lanes)
        i32 = ir.IntType(32)
        zeros = ir.Constant(vec, [0.0] * lanes)
        shifts = builder.insert_element(ir.Constant(vec, ir.Undefined), shift_v, ir.Constant(i32, 0))
        shifts = builder.shuffle_vector(shifts, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
        fma_name = f"llvm.fma.v{lanes}f64"
        fma = builder.module.globals.get(fma_name) or ir.Function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), name=fma_name)
        steps = builder.sdiv(count_v, ir.Constant(intp, lanes))
        entry = builder.basic_block
        head = builder.append_basic_block("power_sums.head")
        body = builder.append_basic_block("power_sums.body")
        done = builder.append_basic_block("power_sums.done")
        builder.branch(head)
        builder.position_at_end(head)
        step = builder.phi(intp)
        sums = [builder.phi(vec) for _ in range(4)]
        step.add_incoming(ir.Constant(intp, 0), entry)
        for total in sums:
            total.add_incoming(zeros, entry)
        builder.cbranch(builder.icmp_signed("<", step, steps), body, done)
        builder.position_at_end(body)
        where = builder.gep(data, [builder.mul(step, ir.Constant(intp, lanes))])
        x = builder.load(builder.bitcast(where, ir.VectorType(elt, lanes).as_pointer()), align=signature.args[0].dtype.bitwidth // 8)
        x = builder.fpext(x, vec) if elt != f64 else x
        t = builder.select(builder.fcmp_ordered("ord", x, x), builder.fsub(x, shifts), zeros)
        t2 = builder.fmul(t, t)
        added = [builder.fadd(sums[0], t), builder.fadd(sums[1], t2),
                 builder.call(fma, [t2, t, sums[2]]), builder.call(fma, [t2, t2, sums[3]])]
        step.add_incoming(builder.add(step, ir.Constant(intp, 1)), body)
        for total, value in zip(sums, added):
            total.add_incoming(value, body)
        builder.branch(head)
        builder.position_at_end(done)
        out = []
        for total in sums:
            parts = [builder.extract_element(total, ir.Constant(i32, j)) for j in range(lanes)]
            while len(parts) > 1:
                parts = [builder.fadd(parts[j], parts[j + 1]) for j in range(0, len(parts), 2)]
            out.append(parts[0])
        return context.make_tuple(builder, signature.return_type, out)

    return types.UniTuple(types.float64, 4)(arr, count, shift), codegen


def as_type_of(value, like):
    """`value` converted to the float type of `like` (resolved at compile time: numba
    would otherwise promote int32 and float32 arithmetic to float64)."""


@overload(as_type_of)
def _as_type_of(value, like):
    if like == types.float32:
        return lambda value, like: np.float32(value)
    return lambda value, like: np.float64(value)


def from_magnitude_bits(bits, like):
    """Inverse of magnitude_bits, as a float64."""


@overload(from_magnitude_bits)
def _from_magnitude_bits(bits, like):
    if like == types.float32:
        return lambda bits, like: np.float64(as_f32(bits))
    return lambda bits, like: as_f64(bits)


@njit(inline="always")
def f16_to_f32(h):
    """IEEE half bits -> float32, exact for normals, subnormals, signed zeros, inf and NaN.

    Exponent and mantissa moved into float32 position make a float32 2**112 times too
    small, for subnormal halves too; one exact multiplication fixes the scale. Inf/NaN
    (exponent 31) keep their bits instead.
    """
    h32 = U32(h)
    shifted = U32(U32(h32 & U32(0x7FFF)) << U32(13))
    scaled = f32_bits(as_f32(shifted) * np.float32(5.192296858534828e33))  # 2**112
    special = U32(h32 & U32(0x7C00)) == U32(0x7C00)
    magnitude = U32(shifted | U32(0x7F800000)) if special else scaled
    return as_f32(U32(magnitude | U32(U32(h32 & U32(0x8000)) << U32(16))))


@njit(inline="always")
def _decode_block(src, code, out):
    """Decode bit patterns src[:] into out[:src.size]; the dtype branch is taken once per block."""
    if code == CODE_BF16:
        for i in range(src.size):
            out[i] = as_f32(U32(U32(src[i]) << U32(16)))
    elif code == CODE_F16:
        for i in range(src.size):
            out[i] = f16_to_f32(src[i])
    elif code == CODE_F32:
        for i in range(src.size):
            out[i] = as_f32(src[i])
    else:
        for i in range(src.size):
            out[i] = as_f64(src[i])


# --- exact arithmetic -------------------------------------------------------------------
# numba's fast-math pass adds the function's flags to every float instruction that has
# none, callees included. These intrinsics emit their instructions with 'nsz' only (the
# sign of a zero never changes a statistic or a bin), so that pass leaves them alone:
# no reassociation, no contraction into fused multiply-add, no reciprocal division.

_EXACT = ("nsz",)


def _same_float(*args) -> bool:
    return args[0] in (types.float32, types.float64) and all(arg == args[0] for arg in args)


@intrinsic
def exact_sub(typingctx, y, x):
    """y - x, correctly rounded, whatever fast-math the caller uses."""
    if not _same_float(y, x):
        return None

    def codegen(context, builder, signature, args):
        return builder.fsub(args[0], args[1], flags=_EXACT)

    return y(y, x), codegen


@intrinsic
def exact_div(typingctx, d, x):
    """d / x, correctly rounded (a true division, not a reciprocal estimate)."""
    if not _same_float(d, x):
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1], flags=_EXACT)

    return d(d, x), codegen


# --- the four loops of a block, and the part kernel that runs them --------------------
# Separate functions: each loop gets the registers to itself (one big body spilled).


@njit(inline="always")
def _clipped_ratio(x, d, lo, hi, zero, one, nan):
    """r = d / x clipped to [lo, hi]; NaN where x is zero (excluded from the histogram)."""
    counted = x != zero
    r = exact_div(d, x if counted else one)
    c = lo if r < lo else r
    c = hi if c > hi else c
    return c if counted else nan


def load_value(src, i):
    """src[i] as a float: float arrays as they are, bit-pattern arrays as bf16 (the only
    bits _mask_block is handed; _delta_part compiles that branch for every width)."""


@overload(load_value, inline="always")
def _load_value(src, i):
    if isinstance(src.dtype, types.Integer):  # bf16 decoded in-register: saves a decode pass on the hot path
        return lambda src, i: as_f32(U32(U32(src[i]) << U32(16)))
    return lambda src, i: src[i]


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _mask_block(raw_a, raw_b, count, consts, xs, ys, ds, clipped):
    """Zero the elements where A or B is not finite, take d = B - A and r = d / A clipped
    (NaN where A is zero); (finite count, max |d| bits). raw_a/raw_b: decoded values, or
    bf16 bit patterns, which load_value decodes in the loop."""
    big, zero, one = consts[C_BIG], consts[C_ZERO], consts[C_ONE]
    lo, hi = consts[C_LO], consts[C_HI]
    nan = as_type_of(np.nan, zero)
    n_ok = np.int32(0)
    max_bits = magnitude_bits(zero)
    for i in range(count):
        x = load_value(raw_a, i)
        y = load_value(raw_b, i)
        ok = (abs(x) <= big) & (abs(y) <= big)
        x = x if ok else zero
        y = y if ok else zero
        d = exact_sub(y, x)
        xs[i] = x
        ys[i] = y
        ds[i] = d
        clipped[i] = _clipped_ratio(x, d, lo, hi, zero, one, nan)
        n_ok = np.int32(n_ok + np.int32(ok))
        bits = magnitude_bits(d)
        max_bits = bits if bits > max_bits else max_bits
    return n_ok, max_bits


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _bin_block(clipped, count, consts, nbins, codes):
    """Bin codes of the clipped ratios: the bin, ~edge when numpy's edge must decide,
    nbins where excluded (NaN)."""
    lo, hi, scale, zero = consts[C_LO], consts[C_HI], consts[C_SCALE], consts[C_ZERO]
    half, one, near = consts[C_HALF], consts[C_ONE], consts[C_NEAR]
    zero_bin = to_int32(consts[C_ZERO_BIN])
    last = np.int32(nbins - 1)
    excluded = np.int32(nbins)
    for i in range(count):
        c = clipped[i]
        counted = c == c
        # The bin by arithmetic is off by far less than `near` bins: when the position lies
        # closer than that to an edge, the edge itself must decide; mark it with ~edge.
        u = (c - lo) * scale
        t = to_int32(u)
        frac = u - as_type_of(t, u)
        edge = np.int32(t + np.int32(frac > half))
        unsure = (frac < near) | (frac > one - near)
        t = last if t > last else t
        # Exact points are sure: the clipped ends (lo == -hi) and r == 0 (unchanged weights).
        unsure = unsure & (abs(c) < hi) & (c != zero)
        t = zero_bin if c == zero else t
        code = ~edge if unsure else t
        codes[i] = code if counted else excluded


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _sum_block(xs, ys, ds, count, acc):
    """Add the float64 sums of a block to acc[0:5] and acc[5:10]: two halves of the block
    give two independent accumulator chains per sum (one chain is latency-bound)."""
    s_dd, s_aa, s_bb, s_ab, s_d = acc[0], acc[1], acc[2], acc[3], acc[4]
    t_dd, t_aa, t_bb, t_ab, t_d = acc[5], acc[6], acc[7], acc[8], acc[9]
    mid = count // 2
    for i in range(mid):
        xd = np.float64(xs[i])
        yd = np.float64(ys[i])
        dd = np.float64(ds[i])
        s_dd += dd * dd
        s_aa += xd * xd
        s_bb += yd * yd
        s_ab += xd * yd
        s_d += dd
        xd = np.float64(xs[i + mid])
        yd = np.float64(ys[i + mid])
        dd = np.float64(ds[i + mid])
        t_dd += dd * dd
        t_aa += xd * xd
        t_bb += yd * yd
        t_ab += xd * yd
        t_d += dd
    if count % 2:
        xd = np.float64(xs[count - 1])
        yd = np.float64(ys[count - 1])
        dd = np.float64(ds[count - 1])
        s_dd += dd * dd
        s_aa += xd * xd
        s_bb += yd * yd
        s_ab += xd * yd
        s_d += dd
    acc[0], acc[1], acc[2], acc[3], acc[4] = s_dd, s_aa, s_bb, s_ab, s_d
    acc[5], acc[6], acc[7], acc[8], acc[9] = t_dd, t_aa, t_bb, t_ab, t_d


@njit(error_model="numpy", cache=True)  # no fast math: the order of the sums is fixed
def _moment_block(clipped, count, shift, acc):
    """Add sum (c - shift)^k, k = 1..4, over the counted (non-NaN) clipped ratios to acc[10:14]:
    the block's sums in lanes (lane_power_sums), then its tail, then into acc, so that the
    bits are the same in every process."""
    s1, s2, s3, s4 = lane_power_sums(clipped, count, shift)
    zero = np.float64(0.0)
    for i in range(count - count % MOMENT_LANES, count):
        c = clipped[i]
        t = np.float64(c) - shift if c == c else zero
        t2 = t * t
        s1 += t
        s2 += t2
        s3 += t2 * t
        s4 += t2 * t2
    acc[10] += s1
    acc[11] += s2
    acc[12] += s3
    acc[13] += s4


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _sum_group_block(xs, ys, ds, count, acc, pos, run, ngroups, out):
    """_sum_block for tensors also summed per group (attention heads by rows or by head_dim
    columns, stacked experts): the block walked run by run (`run` consecutive elements of
    one group, `pos` the tensor index of xs[0], group (k // run) % ngroups), each run's five
    sums added to acc[0:5] and its sum d^2, sum A^2 to out[group]. In the same pass as the
    tensor's sums: a second pass over xs and ds cost 37% of the kernel on grouped tensors,
    this one 1-5% (runs of 5120 and 128 elements)."""
    i = 0
    while i < count:
        k = pos + i
        end = min(count, i + (run - k % run))
        s_dd = np.float64(0.0)
        s_aa = np.float64(0.0)
        s_bb = np.float64(0.0)
        s_ab = np.float64(0.0)
        s_d = np.float64(0.0)
        x_run = xs[i:end]  # sliced, so that the index has no negative-index check (which blocks SIMD)
        y_run = ys[i:end]
        d_run = ds[i:end]
        for j in range(end - i):
            xd = np.float64(x_run[j])
            yd = np.float64(y_run[j])
            dd = np.float64(d_run[j])
            s_dd += dd * dd
            s_aa += xd * xd
            s_bb += yd * yd
            s_ab += xd * yd
            s_d += dd
        g = (k // run) % ngroups
        out[g, 0] += s_dd
        out[g, 1] += s_aa
        acc[0] += s_dd
        acc[1] += s_aa
        acc[2] += s_bb
        acc[3] += s_ab
        acc[4] += s_d
        i = end


@njit(inline="always")
def _first_counted(clipped, count):
    """The first non-NaN clipped ratio of a block, and whether there is one."""
    for i in range(count):
        c = clipped[i]
        if c == c:
            return np.float64(c), True
    return np.float64(0.0), False


@njit(inline="always")
def _tie_bin(k, c, edges, last):
    """The bin of clipped c whose position lies near edge k: numpy's own edge k decides
    between bins k - 1 and k (the last bin is closed on the right)."""
    t = np.int32(k - np.int32(c < edges[k]))
    return last if t > last else t


@njit(error_model="numpy", cache=True)
def _count_block(codes, clipped, count, edges, sub):
    """Count bin codes into four sub-histograms interleaved as sub[code * 4 + lane].

    Four lanes, so that a run of equal bins does not serialise on one counter; one base
    pointer for all four. Marked codes (~edge) are settled against numpy's edges first.
    """
    last = np.int32(edges.size - 2)
    quads = count // 4
    for j in range(quads):
        i = 4 * j
        c0 = codes[i]
        c1 = codes[i + 1]
        c2 = codes[i + 2]
        c3 = codes[i + 3]
        if (c0 | c1 | c2 | c3) < 0:
            c0 = _tie_bin(~c0, clipped[i], edges, last) if c0 < 0 else c0
            c1 = _tie_bin(~c1, clipped[i + 1], edges, last) if c1 < 0 else c1
            c2 = _tie_bin(~c2, clipped[i + 2], edges, last) if c2 < 0 else c2
            c3 = _tie_bin(~c3, clipped[i + 3], edges, last) if c3 < 0 else c3
        sub[U32(U32(c0) << U32(2))] += 1
        sub[U32(U32(c1) << U32(2)) + U32(1)] += 1
        sub[U32(U32(c2) << U32(2)) + U32(2)] += 1
        sub[U32(U32(c3) << U32(2)) + U32(3)] += 1
    for i in range(4 * quads, count):
        c0 = codes[i]
        c0 = _tie_bin(~c0, clipped[i], edges, last) if c0 < 0 else c0
        sub[U32(U32(c0) << U32(2))] += 1


@njit(nogil=True, error_model="numpy", cache=True)
def _delta_part(a, code_a, b, code_b, consts, edges, sums, counts, hist, scratch, codes_buf, sub, acc, grouping, groups):
    """Statistics of one part (a and b are its slices) into this part's rows sums/counts/hist,
    and per group (head, expert) into `groups` when grouping = (index of a[0] in its tensor,
    run, ngroups) has ngroups > 0.

    The scratch arrays come from the caller (sizes: SCRATCH_SIZE, CODES_SIZE, sub_size,
    ACC_SIZE) and are reused part after part: nothing here allocates.
    """
    nbins = edges.size - 1
    # The scratch arrays share one buffer, each SKEW elements after the previous one's
    # end: arrays a multiple of 4 KiB apart make element i of each alias in the
    # load/store unit (which compares the low 12 address bits), a stall in every loop.
    raw_a = scratch[0:BLOCK]  # decoded A and B
    raw_b = scratch[(BLOCK + SKEW) : (BLOCK + SKEW) + BLOCK]
    xs = scratch[2 * (BLOCK + SKEW) : 2 * (BLOCK + SKEW) + BLOCK]  # A and B, excluded ones zeroed
    ys = scratch[3 * (BLOCK + SKEW) : 3 * (BLOCK + SKEW) + BLOCK]
    ds = scratch[4 * (BLOCK + SKEW) : 4 * (BLOCK + SKEW) + BLOCK]  # d = B - A
    clipped = scratch[5 * (BLOCK + SKEW) : 5 * (BLOCK + SKEW) + BLOCK]  # r clipped, NaN if excluded
    codes = codes_buf[7 * SKEW : 7 * SKEW + BLOCK]
    for k in range(4 * (nbins + 1)):
        sub[k] = 0
    for k in range(ACC_SIZE):
        acc[k] = 0.0
    max_bits = magnitude_bits(consts[C_ZERO])
    n_ok = 0
    shift = np.float64(0.0)  # the part's first counted r: power sums about it cancel little
    shifted = False
    for block in range(0, a.size, BLOCK):
        block_a = a[block : block + BLOCK]
        block_b = b[block : block + BLOCK]
        count = block_a.size
        if code_a == CODE_BF16 and code_b == CODE_BF16:  # the common case, decoded in place
            n_ok_block, max_bits_block = _mask_block(block_a, block_b, count, consts, xs, ys, ds, clipped)
        else:
            _decode_block(block_a, code_a, raw_a)
            _decode_block(block_b, code_b, raw_b)
            n_ok_block, max_bits_block = _mask_block(raw_a, raw_b, count, consts, xs, ys, ds, clipped)
        n_ok += n_ok_block
        max_bits = max(max_bits, max_bits_block)
        _bin_block(clipped, count, consts, nbins, codes)
        if grouping[2] > 0:
            _sum_group_block(xs, ys, ds, count, acc, grouping[0] + block, grouping[1], grouping[2], groups)
        else:
            _sum_block(xs, ys, ds, count, acc)
        if not shifted:
            shift, shifted = _first_counted(clipped, count)
        _moment_block(clipped, count, shift, acc)
        _count_block(codes, clipped, count, edges, sub)
    for k in range(nbins):
        hist[k] = sub[4 * k] + sub[4 * k + 1] + sub[4 * k + 2] + sub[4 * k + 3]
    excluded = sub[4 * nbins] + sub[4 * nbins + 1] + sub[4 * nbins + 2] + sub[4 * nbins + 3]
    for k in range(5):
        sums[k] = acc[k] + acc[5 + k]  # SUM_SQ_DELTA, SUM_SQ_A, SUM_SQ_B, DOT_AB, SUM_DELTA
    sums[MAX_ABS_DELTA] = from_magnitude_bits(max_bits, consts[C_ZERO])
    sums[R_SHIFT] = shift
    for k in range(4):
        sums[R_S1 + k] = acc[10 + k]
    counts[N_FINITE] = n_ok
    counts[N_BASE_ZERO] = excluded - (a.size - n_ok)


@njit(nogil=True, error_model="numpy", cache=True)
def _part_scratch(consts, nbins):
    """Fresh scratch for _delta_part: (scratch, codes, sub, acc)."""
    return (np.empty(SCRATCH_SIZE, dtype=consts.dtype), np.empty(CODES_SIZE, dtype=np.int32),
            np.empty(4 * (nbins + 1), dtype=np.int32), np.empty(ACC_SIZE, dtype=np.float64))


@njit(nogil=True, parallel=True, error_model="numpy", cache=True)
def delta_chunk(a, code_a, b, code_b, consts, edges, grouping):
    """Per-part statistics of a chunk pair: (sums[nparts, N_SUMS], counts[nparts, 2], hist[nparts, bins],
    groups[nparts, ngroups, 2]); grouping = (index of a[0] in its tensor, run, ngroups), ngroups 0 for none."""
    n = a.size
    nparts = (n + PART - 1) // PART
    nbins = edges.size - 1
    sums = np.zeros((nparts, N_SUMS), dtype=np.float64)
    counts = np.zeros((nparts, 2), dtype=np.int64)
    hists = np.zeros((nparts, nbins), dtype=np.int64)
    groups = np.zeros((nparts, max(grouping[2], 1), 2), dtype=np.float64)
    for p in prange(nparts):
        start = p * PART
        stop = min(n, start + PART)
        scratch, codes, sub, acc = _part_scratch(consts, nbins)
        part_grouping = np.array([grouping[0] + start, grouping[1], grouping[2]], dtype=np.int64)
        _delta_part(a[start:stop], code_a, b[start:stop], code_b, consts, edges, sums[p], counts[p], hists[p],
                    scratch, codes, sub, acc, part_grouping, groups[p])
    return sums, counts, hists, groups


@njit(nogil=True, error_model="numpy", cache=True)
def _read_full(fd, out, pos):
    """Fill `out` from byte `pos` of the file; False on an error or end of file (the caller
    re-reads in Python, which retries interrupted reads and names the error)."""
    nbytes = out.size * out.itemsize
    raw = out.view(np.uint8)
    done = 0
    while done < nbytes:
        got = c_pread(fd, raw[done:], nbytes - done, pos + done)
        if got <= 0:
            return False
        done += got
    return True


@njit(nogil=True, parallel=True, error_model="numpy", cache=True)
def delta_file(fd_a, pos_a, like_a, code_a, fds_b, pos_b, like_b, codes_b, n, consts, edges, threads, grouping):
    """delta_chunk on n elements read straight from files: the base at byte pos_a of fd_a against each
    tuned file k, fds_b[k] at byte pos_b[k], decoded by codes_b[k] (one, or several for `surgeon diff
    BASE T1 T2 ...`).

    Each thread (a lane) takes parts lane, lane + lanes, ... round-robin, so the threads
    move through each file together, front to back: the OS sees one sequential reader
    and reads ahead. A part is read into the lane's own buffers of PART elements, which
    stay in that core's L2 cache, so the bytes cross memory once (page cache -> L2) and
    no thread copies while the others compute; a base part is read once and computed against
    every tuned model's part in turn (one call per tuned model read it again each time). Each
    (k, part) row comes from the same _delta_part on the same bytes, so tuned k's numbers do
    not depend on the others. `like_a`/`like_b` are empty arrays of the stored bit width (their
    dtype picks the compiled variant); `threads` is numba's thread count (results do not depend
    on it). Results: (sums, counts, hists, groups) with a leading axis k, and the number of parts
    whose read failed: their rows are zero, and the caller must not use any result then.
    """
    tuned = fds_b.size
    nparts = (n + PART - 1) // PART
    nbins = edges.size - 1
    sums = np.zeros((tuned, nparts, N_SUMS), dtype=np.float64)
    counts = np.zeros((tuned, nparts, 2), dtype=np.int64)
    hists = np.zeros((tuned, nparts, nbins), dtype=np.int64)
    failed = np.zeros(nparts, dtype=np.int64)
    groups = np.zeros((tuned, nparts, max(grouping[2], 1), 2), dtype=np.float64)
    lanes = max(1, min(threads, nparts))  # numba.get_num_threads() here would make the kernel uncacheable
    size_a = like_a.itemsize
    size_b = like_b.itemsize
    for lane in prange(lanes):
        a = np.empty(PART, dtype=like_a.dtype)
        b = np.empty(PART, dtype=like_b.dtype)
        scratch, codes, sub, acc = _part_scratch(consts, nbins)
        part_grouping = np.empty(3, dtype=np.int64)
        for p in range(lane, nparts, lanes):
            start = p * PART
            count = min(n, start + PART) - start
            if not _read_full(fd_a, a[:count], pos_a + start * size_a):
                failed[p] = 1
                continue
            for k in range(tuned):
                if not _read_full(fds_b[k], b[:count], pos_b[k] + start * size_b):
                    failed[p] = 1
                    break
                part_grouping[0] = grouping[0] + start
                part_grouping[1] = grouping[1]
                part_grouping[2] = grouping[2]
                _delta_part(a[:count], code_a, b[:count], codes_b[k], consts, edges, sums[k, p], counts[k, p],
                            hists[k, p], scratch, codes, sub, acc, part_grouping, groups[k, p])
    return sums, counts, hists, groups, failed.sum()


DIRECT_ALIGN = 4096  # O_DIRECT reads: file offset, length and buffer address multiples of this (any logical block up to 4 KiB)


@njit(nogil=True, error_model="numpy", cache=True)
def _read_span(fd, raw, lo, need):
    """Read the aligned span raw (raw.size bytes at byte lo of the file) until at least `need` bytes
    arrived: the span may run past the file's end, where a read comes up short. False on an error or
    an end of file before `need` (the caller then reads another way)."""
    done = 0
    while done < need:
        got = c_pread(fd, raw[done:], raw.size - done, lo + done)
        if got <= 0:
            return False
        done += got
    return True


@njit(nogil=True, error_model="numpy", cache=True)
def delta_spans_lane(lane, lanes, fd_a, pos_a, like_a, code_a, fds_b, pos_b, like_b, codes_b, n, consts, edges,
                     grouping, raw_a, raw_b, group, sums, counts, hists, groups, failed):
    """One lane of delta_file with each side read in spans of `group` parts aligned to DIRECT_ALIGN,
    so that a descriptor opened with O_DIRECT can serve it: the disk writes straight into the
    lane's buffer, and no page-cache copy costs CPU (about 0.25-0.3 CPU-s per GB here).

    Lanes run on threads of the caller's (not numba's pool: more lanes than cores, so that a lane
    waiting for the disk leaves its core to another; there is no read-ahead behind O_DIRECT). Lane
    `lane` of `lanes` takes span-groups g = lane, lane + lanes, ...; for each it reads the base's
    aligned span into raw_a, then each tuned file's into raw_b in turn, and runs the same
    _delta_part on the same bytes as delta_file does part by part, into the caller's result arrays
    (delta_file's shapes; rows of different lanes never overlap), so every (k, part) row is bit for
    bit delta_file's. raw_a and raw_b are DIRECT_ALIGN-aligned, each at least the aligned superset
    of `group` parts of its side (group parts + 2 * DIRECT_ALIGN). A descriptor may be a plain one
    too (a side found in the page cache): an aligned read is valid on any descriptor. Every side's
    position must be a multiple of its element width (the spans are viewed as elements). A part whose
    read fails is marked in `failed`; the caller must not use any result then.
    """
    tuned = fds_b.size
    nparts = (n + PART - 1) // PART
    nbins = edges.size - 1
    spans = (nparts + group - 1) // group
    size_a = like_a.itemsize
    size_b = like_b.itemsize
    scratch, codes, sub, acc = _part_scratch(consts, nbins)
    part_grouping = np.empty(3, dtype=np.int64)
    for g in range(lane, spans, lanes):
        p0 = g * group
        p1 = min(nparts, p0 + group)
        e0 = p0 * PART
        e1 = min(n, p1 * PART)
        first = pos_a + e0 * size_a
        lo = first // DIRECT_ALIGN * DIRECT_ALIGN
        end = pos_a + e1 * size_a
        if not _read_span(fd_a, raw_a[: (end - lo + DIRECT_ALIGN - 1) // DIRECT_ALIGN * DIRECT_ALIGN], lo, end - lo):
            failed[p0:p1] = 1
            continue
        a = raw_a[first - lo : end - lo].view(like_a.dtype)
        for k in range(tuned):
            first_b = pos_b[k] + e0 * size_b
            lo_b = first_b // DIRECT_ALIGN * DIRECT_ALIGN
            end_b = pos_b[k] + e1 * size_b
            if not _read_span(fds_b[k], raw_b[: (end_b - lo_b + DIRECT_ALIGN - 1) // DIRECT_ALIGN * DIRECT_ALIGN],
                              lo_b, end_b - lo_b):
                failed[p0:p1] = 1
                break
            b = raw_b[first_b - lo_b : end_b - lo_b].view(like_b.dtype)
            for p in range(p0, p1):
                s = (p - p0) * PART
                count = min(n, (p + 1) * PART) - p * PART
                part_grouping[0] = grouping[0] + p * PART
                part_grouping[1] = grouping[1]
                part_grouping[2] = grouping[2]
                _delta_part(a[s : s + count], code_a, b[s : s + count], codes_b[k], consts, edges, sums[k, p],
                            counts[k, p], hists[k, p], scratch, codes, sub, acc, part_grouping, groups[k, p])


@njit(nogil=True, parallel=True, error_model="numpy", cache=True)
def delta_file_batch(fd_a, pos_a, like_a, code_a, fd_b, pos_b, like_b, code_b, n, consts, edges, threads):
    """delta_file on many small pairs in one launch: pair i is n[i] <= PART elements at byte
    positions pos_a[i], pos_b[i] of the two files, so it is one part, and its row of the
    results is what delta_file's single part gives it, bit for bit.

    A MoE checkpoint holds ~100k tensors of a few kB; one delta_file call each paid a
    thread-pool launch and fresh buffers and scratch (70-100 us of a tiny tensor's cost).
    Here each lane allocates once and takes pairs lane, lane + lanes, ... Returns per-pair
    (sums[count, N_SUMS], counts[count, 2], hist[count, bins], failed[count]): a failed
    pair's rows are zero and the caller reads it again itself.
    """
    count = n.size
    nbins = edges.size - 1
    sums = np.zeros((count, N_SUMS), dtype=np.float64)
    counts = np.zeros((count, 2), dtype=np.int64)
    hists = np.zeros((count, nbins), dtype=np.int64)
    failed = np.zeros(count, dtype=np.int64)
    lanes = max(1, min(threads, count))
    size = 1
    for i in range(count):
        size = max(size, n[i])
    for lane in prange(lanes):
        a = np.empty(size, dtype=like_a.dtype)
        b = np.empty(size, dtype=like_b.dtype)
        scratch, codes, sub, acc = _part_scratch(consts, nbins)
        no_grouping = np.zeros(3, dtype=np.int64)
        no_groups = np.zeros((1, 2), dtype=np.float64)
        for i in range(lane, count, lanes):
            m = n[i]
            if _read_full(fd_a, a[:m], pos_a[i]) and _read_full(fd_b, b[:m], pos_b[i]):
                _delta_part(a[:m], code_a, b[:m], code_b, consts, edges, sums[i], counts[i], hists[i],
                            scratch, codes, sub, acc, no_grouping, no_groups)
            else:
                failed[i] = 1
    return sums, counts, hists, failed


@njit(nogil=True, parallel=True, cache=True)
def count_matching(x, mask, value):
    """Number of elements whose bits under `mask` equal `value` (the NaN/Inf patterns of float formats)."""
    total = 0
    for i in prange(x.size):
        total += np.int64((x[i] & mask) == value)
    return total


# --- quantized and mixed pairs: decode inside the parallel loop -------------------------
# How a side of delta_parts is stored (the encoding codes of its items). Plain floats are
# decoded as in _decode_block; the scaled formats as decode(code) x scale, the scale of the
# element's block read from the batch's float32 scale pool.
ENC_BF16, ENC_F16, ENC_F32, ENC_E4M3, ENC_E5M2, ENC_E2M1 = range(6)  # the first three equal CODE_BF16 .. CODE_F32
# Columns of a side's item table: the file, the byte position of the item's first stored
# byte, the encoding, the element index of the item's first element in its tensor, and the
# block geometry: the scale of element k is pool[off + (k // cols // br) * scols + (k % cols) // bc].
IT_FD, IT_POS, IT_ENC, IT_K0, IT_OFF, IT_BR, IT_BC, IT_COLS, IT_SCOLS = range(9)
IT_WIDTH = 9


@njit(inline="always")
def _e4m3(c):
    """float32 of an E4M3 ("fn": no infinities, NaN at S.1111.111) code: exponent and mantissa
    moved into float32 position make a value 2**120 too small, subnormals included; one exact
    multiplication fixes the scale."""
    c32 = U32(c)
    mag = U32(c32 & U32(0x7F))
    scaled = f32_bits(as_f32(U32(mag << U32(20))) * np.float32(1.329227995784916e36))  # 2**120
    bits = U32(0x7FC00000) if mag == U32(0x7F) else scaled
    return as_f32(U32(bits | U32(U32(c32 & U32(0x80)) << U32(24))))


@njit(inline="always")
def _e2m1(nibble):
    """float32 of an OCP MX E2M1 code (sign, 2 exponent bits of bias 1, 1 mantissa bit): moved
    into float32 position the value is 2**126 too small (the subnormal 0.5 too); no inf, no NaN."""
    n32 = U32(nibble)
    scaled = f32_bits(as_f32(U32(U32(n32 & U32(7)) << U32(22))) * np.float32(8.507059173023462e37))  # 2**126
    return as_f32(U32(scaled | U32(U32(n32 & U32(8)) << U32(28))))


@njit(error_model="numpy", cache=True)
def _decode_scaled(raw, enc, item, k0, n, pool, out):
    """Values of n elements of one side, from element k0 of its tensor, into out[:n] (float32).

    raw holds the stored bytes (for E2M1 two codes a byte, the even element in the low
    nibble). Each run of elements sharing a scale is one tight loop: value = decode(code) x
    scale, one float32 multiplication rounded as numpy's and torch's. No fast-math here:
    reassociation could fold the exact 2**k of the decode into the scale, which rounds.
    """
    if enc == ENC_BF16:
        bits16 = raw[: 2 * n].view(np.uint16)
        for i in range(n):
            out[i] = as_f32(U32(U32(bits16[i]) << U32(16)))
        return
    if enc == ENC_F16:
        bits16 = raw[: 2 * n].view(np.uint16)
        for i in range(n):
            out[i] = f16_to_f32(bits16[i])
        return
    if enc == ENC_F32:
        bits32 = raw[: 4 * n].view(np.uint32)
        for i in range(n):
            out[i] = as_f32(bits32[i])
        return
    off, br, bc, cols, scols = item[IT_OFF], item[IT_BR], item[IT_BC], item[IT_COLS], item[IT_SCOLS]
    # Where element k0 sits: its row and column, its block row and column, and its place inside
    # them; then moved along run by run without a division (four per run cost as much as the run).
    row = k0 // cols
    col = k0 - row * cols
    brow = row // br
    in_rows = row - brow * br
    bcol = col // bc
    in_cols = col - bcol * bc
    i = 0
    while i < n:
        stop = i + min(n - i, bc - in_cols, cols - col)
        s = pool[off + brow * scols + bcol]
        step = stop - i
        col += step
        in_cols += step
        if in_cols == bc:
            in_cols = 0
            bcol += 1
        if col == cols:
            col = 0
            in_cols = 0
            bcol = 0
            in_rows += 1
            if in_rows == br:
                in_rows = 0
                brow += 1
        dst = out[i:stop]  # sliced first: indices from 0 need no negative-index check, so the loops vectorise
        if enc == ENC_E4M3:
            src = raw[i:stop]
            for j in range(dst.size):
                dst[j] = _e4m3(src[j]) * s
        elif enc == ENC_E5M2:
            src = raw[i:stop]
            for j in range(dst.size):
                dst[j] = f16_to_f32(U32(U32(src[j]) << U32(8))) * s
        else:  # E2M1: i and stop are even (runs of 32 elements from an even k0)
            src = raw[i // 2 : stop // 2]
            for j in range(src.size):
                byte = src[j]
                dst[2 * j] = _e2m1(byte & np.uint8(15)) * s
                dst[2 * j + 1] = _e2m1(byte >> np.uint8(4)) * s
        i = stop


@njit(inline="always")
def _stored_bytes(enc, n):
    """Bytes that hold n elements of an encoding."""
    if enc == ENC_BF16 or enc == ENC_F16:
        return 2 * n
    if enc == ENC_F32:
        return 4 * n
    if enc == ENC_E2M1:
        return n // 2
    return n


@njit(nogil=True, parallel=True, error_model="numpy", cache=True)
def delta_parts(items_a, pool_a, items_b, pool_b, n, consts, edges, threads, grouping):
    """The statistics of a batch of parts (n[i] <= PART elements each), sides decoded in the loop.

    Part i of side a is described by items_a[i] (IT_* columns: its file, byte position,
    encoding, first element's index in its tensor and scale geometry into pool_a), the same
    for side b; grouping[i] = (run, ngroups) of its tensor's units, ngroups 0 for none. A
    batch mixes tensors, shards and encodings (FP8 block/channel/tensor-scaled, MXFP4, bf16,
    f16, f32): a MoE model's thousands of small expert matrices take one launch. Each lane
    reads its parts with pread into its own buffers, decodes them to float32 and runs
    _delta_part on them, so part i's row is what any other batching of it gives, bit for bit.
    Returns per part (sums, counts, hist, groups[i, g, 2], failed): a failed part's rows are
    zero and the caller reads it again itself.
    """
    count = n.size
    nbins = edges.size - 1
    ngroups = 1
    for i in range(count):
        ngroups = max(ngroups, grouping[i, 1])
    sums = np.zeros((count, N_SUMS), dtype=np.float64)
    counts = np.zeros((count, 2), dtype=np.int64)
    hists = np.zeros((count, nbins), dtype=np.int64)
    groups = np.zeros((count, ngroups, 2), dtype=np.float64)
    failed = np.zeros(count, dtype=np.int64)
    lanes = max(1, min(threads, count))
    for lane in prange(lanes):
        raw_a = np.empty(4 * PART, dtype=np.uint8)
        raw_b = np.empty(4 * PART, dtype=np.uint8)
        va = np.empty(PART, dtype=np.float32)
        vb = np.empty(PART, dtype=np.float32)
        bits_a = va.view(np.uint32)
        bits_b = vb.view(np.uint32)
        scratch, codes, sub, acc = _part_scratch(consts, nbins)
        part_grouping = np.empty(3, dtype=np.int64)
        for i in range(lane, count, lanes):
            m = n[i]
            ia = items_a[i]
            ib = items_b[i]
            na = _stored_bytes(ia[IT_ENC], m)
            nb = _stored_bytes(ib[IT_ENC], m)
            if _read_full(ia[IT_FD], raw_a[:na], ia[IT_POS]) and _read_full(ib[IT_FD], raw_b[:nb], ib[IT_POS]):
                _decode_scaled(raw_a, ia[IT_ENC], ia, ia[IT_K0], m, pool_a, va)
                _decode_scaled(raw_b, ib[IT_ENC], ib, ib[IT_K0], m, pool_b, vb)
                part_grouping[0] = ia[IT_K0]
                part_grouping[1] = grouping[i, 0]
                part_grouping[2] = grouping[i, 1]
                _delta_part(bits_a[:m], CODE_F32, bits_b[:m], CODE_F32, consts, edges,
                            sums[i], counts[i], hists[i], scratch, codes, sub, acc, part_grouping, groups[i])
            else:
                failed[i] = 1
    return sums, counts, hists, groups, failed
