"""Every dtype the reader accepts, through every command: handled, or refused in one line.

A tiny model's o_proj weights are rewritten in each dtype of the one table
(weightsurgeon.kernels.dtypes.TABLE), and a "tuned" twin gets other values; then the
commands a user runs go over it. A command that cannot handle a dtype must say so in a
single `error:` line naming the dtype and the tensor, and write nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.format import build_header
from weightsurgeon.kernels.decode import decode_to_float64, encode_from_float32
from weightsurgeon.kernels.dtypes import TABLE
from weightsurgeon.kernels.reference import reference_delta_stats

O_PROJ = "self_attn.o_proj.weight"


def values_in(dtype: str, n: int, seed: int) -> bytes:
    """n finite elements of `dtype` as stored bytes (small weights for floats)."""
    rng = np.random.default_rng(seed)
    info = TABLE[dtype]
    if info.kind == "complex":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64).tobytes()
    if dtype == "F8_E8M0":
        return rng.integers(110, 130, n, dtype=np.uint8).tobytes()  # powers of two near 1
    if info.kind == "float":
        return encode_from_float32((rng.standard_normal(n) * 0.05).astype(np.float32), dtype).tobytes()
    if info.kind == "bool":
        return rng.integers(0, 2, n, dtype=np.uint8).tobytes()
    return rng.integers(0, 100, n * info.width, dtype=np.uint8).tobytes()  # any bytes are valid integers


def model_with(src: Path, dst: Path, dtype: str, seed: int) -> Path:
    """`src` rewritten as one file with every o_proj weight stored as `dtype`."""
    dst.mkdir(parents=True)
    for f in src.glob("*.json"):
        if f.name != "model.safetensors.index.json":
            (dst / f.name).write_bytes(f.read_bytes())
    entries, blobs = [], []
    with open_checkpoint(src) as ckpt:
        for t in ckpt:
            if t.name.endswith(O_PROJ):
                entries.append((t.name, dtype, t.shape))
                blobs.append(values_in(dtype, t.numel, seed + len(blobs)))
            else:
                entries.append((t.name, t.dtype, t.shape))
                blobs.append(ckpt.read_tensor(t.name).tobytes())
    prefix, _ = build_header(entries, {"format": "pt"})
    (dst / "model.safetensors").write_bytes(prefix + b"".join(blobs))
    return dst


@pytest.fixture(scope="module")
def pair_source(tmp_path_factory) -> Path:
    from weightsurgeon.synth import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("src") / "m", num_layers=2, hidden_size=32, intermediate_size=64,
                           num_heads=4, num_kv_heads=2, vocab_size=300)


def refused(result, dtype: str, out: Path | None = None) -> None:
    assert result.code == 1, result.stderr
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("error: "), result.stderr
    assert dtype in result.stderr and O_PROJ in result.stderr, result.stderr
    assert "internal error" not in result.stderr
    if out is not None:
        assert not out.exists()


def o_proj_bytes(folder: Path, layer: int = 0) -> np.ndarray:
    with open_checkpoint(folder) as ckpt:
        return ckpt.read_tensor(f"model.layers.{layer}.{O_PROJ}").view(np.uint8).reshape(-1)


@pytest.mark.parametrize("dtype", sorted(TABLE))
def test_every_command_handles_or_refuses_every_dtype(dtype, pair_source, tmp_path, surgeon) -> None:
    info = TABLE[dtype]
    base = model_with(pair_source, tmp_path / "base", dtype, seed=1)
    tuned = model_with(pair_source, tmp_path / "tuned", dtype, seed=100)

    assert surgeon("inspect", base).code == 0
    deep = surgeon("verify", "--deep", base)
    assert deep.code == 0, deep.stderr

    report = tmp_path / "report"
    res = surgeon("diff", base, tuned, "-o", report, "--no-plots", "-q")
    if info.work is None:
        refused(res, dtype, report)
    else:
        assert res.code == 0, res.stderr
        import json

        from conftest import report_rows

        rows = {r["name"]: r for r in report_rows(report)}
        name = f"model.layers.0.{O_PROJ}"
        want = reference_delta_stats(o_proj_bytes(base), o_proj_bytes(tuned), dtype, dtype)
        assert rows[name]["dtype"] == dtype
        assert rows[name]["n"] == want.n and rows[name]["hist"] == want.hist.tolist()
        assert rows[name]["sum_sq_delta"] == pytest.approx(want.sum_sq_delta, rel=1e-12)  # summation order only

    res = surgeon("splice", base, tuned, "--take", "o_proj", "-o", tmp_path / "spliced", "-q")
    assert res.code == 0, res.stderr
    assert np.array_equal(o_proj_bytes(tmp_path / "spliced"), o_proj_bytes(tuned))

    res = surgeon("zero", base, "--module", "o_proj", "-o", tmp_path / "zeroed", "-q")
    if not info.has_zero:
        refused(res, dtype, tmp_path / "zeroed")
    else:
        assert res.code == 0, res.stderr
        assert not o_proj_bytes(tmp_path / "zeroed").any()

    res = surgeon("reinit", base, "--module", "o_proj", "--std", "0.5", "-o", tmp_path / "reinit", "-q")
    if not info.encodable:
        refused(res, dtype, tmp_path / "reinit")
    else:
        assert res.code == 0, res.stderr
        values = decode_to_float64(o_proj_bytes(tmp_path / "reinit"), dtype)
        assert np.isfinite(values).all() and 0.3 < values.std() < 0.7

    res = surgeon("remove", base, "--layers", "1", "-o", tmp_path / "removed", "-q")
    assert res.code == 0, res.stderr
    assert np.array_equal(o_proj_bytes(tmp_path / "removed"), o_proj_bytes(base))
