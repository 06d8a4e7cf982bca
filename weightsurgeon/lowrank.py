"""Low-rank factors of one weight delta: D [out, in] ~= B [out, r] @ A [r, in].

Why these choices:
- r >= min(out, in) needs no SVD at all: B = D, A = I (or B = I, A = D) is exact, so a
  full-rank adapter reproduces the splice up to float32 rounding of one product.
- Below full rank, the best rank-r approximation (Eckart-Young) is the truncated SVD.
  Large matrices use the randomized range finder of Halko, Martinsson and Tropp (oversampling
  10, two power iterations; the choice torch.svd_lowrank makes): O(out*in*(r+10)) work
  instead of a full SVD's O(out*in*min(out, in)), at a loss that the kept-energy share
  reports exactly. Small ones, or ranks close to full, use LAPACK's SVD.
- The singular values are split evenly (B = U sqrt(S), A = sqrt(S) Vt), so neither factor
  carries the whole scale: kinder to 16-bit storage.

kept_share = ||B A||_F^2 / ||D||_F^2 is exact for the factors returned (B A is an orthogonal
projection of D), whichever method made them.

Memory: the delta in float32 (4 * out * in bytes) plus, randomized, (out + in) * (r + 10)
floats; exact, LAPACK's work arrays (about 3 * out * in floats for a square matrix).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OVERSAMPLE = 10
POWER_ITERATIONS = 2
METHODS = ("auto", "exact", "randomized")


@dataclass(frozen=True)
class Factors:
    b: np.ndarray  # [out, rank] float32
    a: np.ndarray  # [rank, in] float32
    energy: float  # ||D||_F^2 (float64)
    kept: float  # ||B A||_F^2
    method: str  # "identity", "exact", "randomized" or "zero"

    @property
    def kept_share(self) -> float:
        return 1.0 if self.energy == 0.0 else min(1.0, self.kept / self.energy)


def _split(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    root = np.sqrt(s).astype(np.float32)
    b = np.zeros((u.shape[0], rank), dtype=np.float32)
    a = np.zeros((rank, vt.shape[1]), dtype=np.float32)
    k = len(s)
    b[:, :k] = u * root[None, :]
    a[:k, :] = root[:, None] * vt
    return b, a


def squared_norm(x: np.ndarray, block: int = 1 << 20) -> float:
    """||x||_F^2 summed in float64, a block at a time (a float64 copy of a whole delta would double its memory)."""
    flat = x.reshape(-1)
    total = 0.0
    for i in range(0, flat.size, block):
        part = flat[i:i + block].astype(np.float64)
        total += float(part @ part)
    return total


def factor(delta: np.ndarray, rank: int, method: str = "auto", seed: int = 0) -> Factors:
    """Factors of ``delta`` (2-D float32) with ``rank`` columns/rows; unused ones are zero (padding)."""
    if rank < 1:
        raise ValueError("rank must be at least 1")
    m, n = delta.shape
    k = min(m, n)
    energy = squared_norm(delta)
    if energy == 0.0:
        return Factors(np.zeros((m, rank), np.float32), np.zeros((rank, n), np.float32), 0.0, 0.0, "zero")
    if rank >= k:
        b = np.zeros((m, rank), dtype=np.float32)
        a = np.zeros((rank, n), dtype=np.float32)
        if n <= m:
            b[:, :n] = delta
            a[:n, :n] = np.eye(n, dtype=np.float32)
        else:
            b[:m, :m] = np.eye(m, dtype=np.float32)
            a[:m, :] = delta
        return Factors(b, a, energy, energy, "identity")
    if method not in METHODS:
        raise ValueError(f"unknown SVD method {method!r}")
    width = min(k, rank + OVERSAMPLE)
    if method == "exact" or (method == "auto" and 4 * width > k):
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        u, s, vt = u[:, :rank], s[:rank], vt[:rank]
        used = "exact"
    else:
        q = _range(delta, width, seed)
        ub, s, vt = np.linalg.svd(q.T @ delta, full_matrices=False)
        u = (q @ ub[:, :rank]).astype(np.float32)
        s, vt = s[:rank], vt[:rank]
        used = "randomized"
    b, a = _split(u.astype(np.float32), s.astype(np.float32), vt.astype(np.float32), rank)
    kept = float(np.sum(s.astype(np.float64) ** 2))
    return Factors(b, a, energy, kept, used)


def _range(delta: np.ndarray, width: int, seed: int) -> np.ndarray:
    """An orthonormal basis Q (out x width) of delta's leading range: a seeded Gaussian sketch,
    then POWER_ITERATIONS power iterations, re-orthonormalised each time (the randomized range finder)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(delta @ rng.standard_normal((delta.shape[1], width), dtype=np.float32))
    for _ in range(POWER_ITERATIONS):
        z, _ = np.linalg.qr(delta.T @ q)
        q, _ = np.linalg.qr(delta @ z)
    return q


def singular_values(delta: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The top min(k, rank) singular values of ``delta`` (2-D float32), largest first, float64.

    The same choice as `factor`: LAPACK's SVD (values only) when k + OVERSAMPLE is over a
    quarter of min(out, in), else the randomized range finder (oversampling 10, two power
    iterations), whose values are those of the projection Q Q^T D: each at most the true
    one, and close to it for the leading values of a decaying spectrum.
    Memory: beside the delta, (out + in) * (k + 10) floats randomized, LAPACK's work arrays exact.
    """
    m, n = delta.shape
    small = min(m, n)
    width = min(small, k + OVERSAMPLE)
    if 4 * width > small:
        s = np.linalg.svd(delta, compute_uv=False)
    else:
        s = np.linalg.svd(_range(delta, width, seed).T @ delta, compute_uv=False)
    return np.asarray(s[:k], dtype=np.float64)
