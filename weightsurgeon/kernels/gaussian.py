"""Reinit's Gaussian at disk speed: values that are a pure function of (key, element index).

`surgeon reinit` of a large model's MLP writes tens of GB of N(mean, std^2) values; a
stateful generator on one thread (numpy's PCG64) made about 40 MB/s of them. Here every
element is computed on its own, from its index alone:

- a counter-based generator, Philox4x32-10 (Salmon, Moraes, Dror and Shaw, SC 2011):
  ten rounds of multiply-and-xor turn the counter (i mod 2^32, i div 2^32, attempt, 0)
  under a 64-bit key into 128 random bits; no state runs from one element to the next;
- a ziggurat of 256 layers (Marsaglia and Tsang, 2000) turns those bits into a standard
  normal: one table look-up and a compare for about 99% of the elements; the rest (a
  wedge or the tail beyond r) use the other 64 bits, and a rejected element draws
  again with the next `attempt`, still a function of its own index only.

So any chunking and any thread count give the same bytes, and the parallel loop needs no
coordination. The value written is float32(mean + std * z), computed in float64.
"""
from __future__ import annotations

import math

import numpy as np
import numba
from numba import get_thread_id, njit, prange

# Philox4x32 round multipliers and key increments (Salmon et al., Random123).
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF

# Ziggurat of 256 layers: r is the base layer's right edge, v each layer's area
# (Marsaglia and Tsang, "The Ziggurat Method for Generating Random Variables", 2000).
_LAYERS = 256
_R = 3.6541528853610088
_V = 4.92867323399e-3
_PART = 1 << 14  # elements per parallel task: fixed, so the split never depends on the thread count


def _density(x: float) -> float:
    return math.exp(-0.5 * x * x)


def ziggurat_tables() -> tuple[np.ndarray, np.ndarray]:
    """Layer edges X[0..256] (X[0] the base layer's virtual width, X[1] = r, X[256] = 0) and F = density(X).

    Layer i spans x in [0, X[i]] and heights [F[i], F[i+1]]; every layer has area v.
    """
    x = np.empty(_LAYERS + 1)
    x[0] = _V / _density(_R)
    x[1] = _R
    for i in range(1, _LAYERS - 1):
        x[i + 1] = math.sqrt(-2.0 * math.log(_density(x[i]) + _V / x[i]))
    x[_LAYERS] = 0.0
    f = np.exp(-0.5 * x * x)
    return x, f


_X, _F = ziggurat_tables()


@njit(cache=True, inline="always")
def _philox(c0, c1, c2, c3, k0, k1):  # pragma: no cover (compiled)
    """Philox4x32-10 of the counter (c0..c3) under the key (k0, k1); every value a uint64 < 2^32."""
    for _ in range(10):
        p0 = np.uint64(_M0) * c0
        p1 = np.uint64(_M1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & np.uint64(_MASK32),
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & np.uint64(_MASK32))
        k0 = (k0 + np.uint64(_W0)) & np.uint64(_MASK32)
        k1 = (k1 + np.uint64(_W1)) & np.uint64(_MASK32)
    return c0, c1, c2, c3


@njit(cache=True)
def philox4x32(c0, c1, c2, c3, k0, k1):  # pragma: no cover (compiled)
    """One Philox4x32-10 block, for the known-answer test."""
    return _philox(np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3), np.uint64(k0), np.uint64(k1))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _first_draws(bits, first_pair, k0, k1):  # pragma: no cover (compiled)
    """Every element's first 64 bits: pair m = i // 2 shares Philox(m, 0) (branch-free: 8 lanes)."""
    mask = np.uint64(_MASK32)
    for m in range(bits.size // 2):
        pair = np.uint64(first_pair + m)
        r0, r1, r2, r3 = _philox(pair & mask, pair >> np.uint64(32), np.uint64(0), np.uint64(0), k0, k1)
        bits[2 * m] = (r1 << np.uint64(32)) | r0
        bits[2 * m + 1] = (r3 << np.uint64(32)) | r2


@njit(cache=True, error_model="numpy", boundscheck=False)
def _layer_draws(bits, skew, out, inside, xs, mean, std):  # pragma: no cover (compiled)
    """The ziggurat's common case: x = u * X[layer] is inside its layer's rectangle when x < X[layer + 1]."""
    for j in range(out.size):
        v = bits[skew + j]
        layer = np.intp(v & np.uint64(0xFF))
        x = np.float64(v >> np.uint64(11)) * (1.0 / 9007199254740992.0) * xs[layer]  # u in [0, 1) from 53 bits
        inside[j] = x < xs[layer + 1]
        out[j] = np.float32(mean + std * ((1.0 - np.float64((v >> np.uint64(7)) & np.uint64(2))) * x))  # bit 8: sign


@njit(cache=True, error_model="numpy")
def _outside_draws(bits, skew, out, inside, first, k0, k1, xs, fs, mean, std):  # pragma: no cover (compiled)
    """The about 1.5% of elements whose first draw left its rectangle."""
    for j in range(out.size):
        if not inside[j]:
            out[j] = np.float32(mean + std * _redraw(first + j, bits[skew + j], k0, k1, xs, fs))


@njit(cache=True, error_model="numpy")
def _redraw(i, v, k0, k1, xs, fs):  # pragma: no cover (compiled)
    """Element i whose first draw `v` left its rectangle: the wedge or tail test, then fresh draws.

    Draw d's test uses Philox(i, d, 1)'s first 64 bits, whose last 64 bits are draw d + 1.
    """
    mask = np.uint64(_MASK32)
    scale32 = 1.0 / 4294967296.0
    attempt = np.uint64(0)
    while True:
        layer = np.intp(v & np.uint64(0xFF))
        sign = 1.0 - np.float64((v >> np.uint64(7)) & np.uint64(2))
        x = np.float64(v >> np.uint64(11)) * (1.0 / 9007199254740992.0) * xs[layer]
        if x < xs[layer + 1]:
            return sign * x
        r0, r1, r2, r3 = _philox(np.uint64(i) & mask, np.uint64(i) >> np.uint64(32), attempt, np.uint64(1), k0, k1)
        u1 = (np.float64(r0) + 0.5) * scale32  # in (0, 1)
        u2 = (np.float64(r1) + 0.5) * scale32
        if layer == 0:  # the tail beyond r, by Marsaglia's exponential rejection
            t = -math.log(u1) / _R
            if -2.0 * math.log(u2) > t * t:
                return sign * (_R + t)
        elif fs[layer] + u2 * (fs[layer + 1] - fs[layer]) < math.exp(-0.5 * x * x):  # under the curve in the wedge
            return sign * x
        attempt += np.uint64(1)
        v = (r3 << np.uint64(32)) | r2


@njit(cache=True, error_model="numpy", boundscheck=False)
def _to_bf16(values, out):  # pragma: no cover (compiled)
    """float32 -> bf16 bits, nearest even (the values are never NaN: mean and std are finite)."""
    bits = values.view(np.uint32)
    for j in range(out.size):
        b = bits[j]
        out[j] = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(cache=True, parallel=True, error_model="numpy")
def _fill(out, bf16, start, k0, k1, mean, std, xs, fs, bits, inside):  # pragma: no cover (compiled)
    """out[j] = float32(mean + std * normal(start + j)), in fixed parts of _PART elements, in parallel.

    bits and inside are each thread's scratch rows, allocated once by the caller: fresh
    scratch per part (page faults on first touch) cost more than the arithmetic. With a
    non-empty `bf16`, each part is also rounded into it while still in cache.
    """
    n = out.size
    for part in prange((n + _PART - 1) // _PART):
        row = get_thread_id()
        lo = part * _PART
        hi = min(n, lo + _PART)
        first = start + lo  # global index of out[lo]
        skew = first & 1  # an odd first element shares its pair's draw with the one before it
        _first_draws(bits[row, :hi - lo + skew + 1], first >> 1, k0, k1)
        _layer_draws(bits[row], skew, out[lo:hi], inside[row], xs, mean, std)
        _outside_draws(bits[row], skew, out[lo:hi], inside[row], first, k0, k1, xs, fs, mean, std)
        if bf16.size:
            _to_bf16(out[lo:hi], bf16[lo:hi])


_scratch: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def gaussian_fill(out: np.ndarray, key: int, start: int, mean: float, std: float,
                  bf16: np.ndarray | None = None) -> np.ndarray:
    """Fill float32 `out` with elements [start, start + out.size) of stream `key` (64-bit); also as bf16 bits into `bf16`.

    Returns `bf16` when given, else `out`.
    """
    if out.dtype != np.float32 or out.ndim != 1:
        raise ValueError("gaussian_fill needs a one-dimensional float32 array")
    if bf16 is not None and (bf16.dtype != np.uint16 or bf16.shape != out.shape):
        raise ValueError("gaussian_fill: bf16 must be a uint16 array of out's shape")
    threads = numba.get_num_threads()
    if threads not in _scratch:
        _scratch[threads] = (np.empty((threads, _PART + 2), np.uint64), np.empty((threads, _PART), np.bool_))
    _fill(out, np.empty(0, np.uint16) if bf16 is None else bf16, np.int64(start), np.uint64(key & _MASK32),
          np.uint64((key >> 32) & _MASK32), np.float64(mean), np.float64(std), _X, _F, *_scratch[threads])
    return out if bf16 is None else bf16
