"""`surgeon diff` as a user runs it: the real entry point in a fresh interpreter.

Exit codes and the one-line error contract, the report folder appearing only on success,
--json on stdout, the CSV columns, and figures (when the figures module is present).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from conftest import report_rows
from weightsurgeon.synth import make_checkpoint, make_tuned

TINY = dict(num_layers=3, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, vocab_size=300)
REQUIRED_COLUMNS = ["tuned", "name", "layer", "module", "param", "dtype", "numel", "l2_delta", "l2_base", "l2_tuned",
                    "rel_l2", "cosine", "max_abs_delta", "mean_delta", "n_base_zero", "n_nonfinite"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    base = make_checkpoint(root / "base", arch="qwen2", dtype="bf16", shard_bytes=30_000, **TINY)
    return base, make_tuned(base, root / "tuned")


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".surgeon-tmp-")]


def test_diff_writes_the_report_folder(pair: tuple[Path, Path], tmp_path: Path, run_cli) -> None:
    base, tuned = pair
    out = tmp_path / "report"
    res = run_cli("diff", base, tuned, "-o", out, "--every", "2")
    assert res.returncode == 0, res.stderr
    assert (out / "report.json").is_file() and (out / "report.csv").is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == "weightsurgeon.diff/4" and data["options"]["every"] == 2
    assert "tensors" not in data and data["tensor_files"]["csv"] == "report.csv"  # the rows are in files
    tensors = report_rows(out)
    assert data["tuned"][0]["label"] == "tuned" and data["base"]["num_layers"] == 3
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
    assert len(rows) == len(tensors) == data["tensor_files"]["rows"] > 0
    # The terminal summary names the most changed module (o_proj is planted largest) and the files.
    assert "o_proj" in res.stdout and f"wrote {out / 'report.json'}" in res.stdout
    try:
        import weightsurgeon.report.figures  # noqa: F401  (drawn by another module; present once it lands)
    except ImportError:
        return
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = (out / "report.html").read_text()
    assert "o_proj" in html and not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)  # self-contained


def test_json_to_stdout_and_nothing_written(pair: tuple[Path, Path], tmp_path: Path, run_cli) -> None:
    base, tuned = pair
    res = run_cli("diff", base, tuned, tuned, "--json", "--module", "o_proj", "--label", "a", "--label", "b",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [t["label"] for t in data["tuned"]] == ["a", "b"]
    assert {t["module"] for t in data["tensors"]} == {"o_proj"} and len(data["tensors"]) == 2 * 3
    a = {t["name"]: t["l2_delta"] for t in data["tensors"] if t["tuned"] == "a"}
    b = {t["name"]: t["l2_delta"] for t in data["tensors"] if t["tuned"] == "b"}
    assert a == b and all(v > 0 for v in a.values())
    assert list(tmp_path.iterdir()) == []


def test_mismatched_pair_is_one_error_line_and_no_folder(tmp_path: Path, run_cli) -> None:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    other = make_checkpoint(tmp_path / "other", dtype="bf16", **{**TINY, "num_layers": 2, "intermediate_size": 64})
    out = tmp_path / "report"
    res = run_cli("diff", base, other, "-o", out)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: other: ")
    assert "do not pair with the base" in lines[0] and "model.layers.0.mlp.down_proj.weight (base [64, 96] vs tuned [64, 64])" in lines[0]
    assert "Traceback" not in res.stderr and not out.exists() and leftovers(tmp_path) == []
    # --allow-missing compares what pairs and lists the rest.
    res = run_cli("diff", base, other, "-o", out, "--allow-missing", "--no-plots")
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "report.json").read_text())
    assert {m["where"] for m in data["missing"]} == {"shape", "base_only"}
    tensors = report_rows(out)
    assert tensors and all(t["name"] not in {m["name"] for m in data["missing"]} for t in tensors)


def test_refusals(pair: tuple[Path, Path], tmp_path: Path, surgeon) -> None:
    base, tuned = pair
    out = tmp_path / "report"
    out.mkdir()
    res = surgeon("diff", base, tuned, "-o", out)
    assert res.code == 1 and res.err_lines == [f"error: {out}: already exists; pass --force to replace it"]
    res = surgeon("diff", base, tuned, "-o", base / "report")
    assert res.code == 1 and "inside the input" in res.stderr and len(res.err_lines) == 1
    assert not (base / "report").exists()
    res = surgeon("diff", base, tmp_path / "nope")
    assert res.code == 1 and len(res.err_lines) == 1 and "no such file" in res.stderr
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x02")
    res = surgeon("diff", base, tmp_path / "pickled")
    assert res.code == 1 and "pickle" in res.stderr and len(res.err_lines) == 1
    res = surgeon("diff", base, tuned, "--bins", "0")
    assert res.code == 1 and res.err_lines[0].startswith("error: --bins must be")
    res = surgeon("diff", base, tuned, "--module", "o_prj")
    assert res.code == 1 and "unknown module 'o_prj'" in res.stderr
    res = surgeon("diff", base, tuned, "--label", "x", "--label", "y")
    assert res.code == 2  # usage error: one label per tuned model
    res = surgeon("diff", base, tuned, "-o", out, "--force", "--no-plots", "--layers", "0", "-q")
    assert res.code == 0, res.stderr
    assert {t["layer"] for t in report_rows(out)} == {0}


def test_tensor_rows_stream_to_files_that_read_back_exactly(pair: tuple[Path, Path], tmp_path: Path, run_cli) -> None:
    """Schema 4: report.json holds the module rows and names report.csv and histograms.safetensors,
    which hold every tensor row; read back, they are the in-memory report's rows bit for bit."""
    import numpy as np
    from safetensors.numpy import load_file

    from weightsurgeon.diff import diff_checkpoints
    from weightsurgeon.report.model import DiffReport

    base, tuned = pair
    out = tmp_path / "rep"
    res = run_cli("diff", base, tuned, base, "-o", out, "--no-plots", "-q", "--label", "t", "--label", "same")
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "report.json").read_text())
    assert "tensors" not in data and data["tensor_files"]["rows"] > 0 and data["modules"]
    counts = load_file(str(out / "histograms.safetensors"))["histograms"]
    with open(out / "report.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert counts.dtype == np.int32 and counts.shape == (len(csv_rows), 200) == (data["tensor_files"]["rows"], 200)
    want = diff_checkpoints(base, [tuned, base], labels=["t", "same"])
    loaded = DiffReport.from_json(out / "report.json")
    assert len(loaded.tensors) == len(want.tensors) == len(csv_rows) and loaded.num_tensors == len(csv_rows)
    # Every number bit for bit, the moment sums too: the CLI's process may compile the kernel
    # (a cold numba cache, as in CI) and this one load it, and the sums' order is fixed
    # (tests/test_kernels.py::test_power_sums_have_the_same_bits_in_every_compile_context).
    exact = ("n", "n_nonfinite", "n_base_zero", "sum_sq_delta", "sum_sq_a", "sum_sq_b", "dot_ab", "sum_delta",
             "max_abs_delta", "r_mean", "r_m2", "r_m3", "r_m4")
    for got, ref in zip(loaded.tensors, want.tensors):
        assert (got.tuned, got.name, got.layer, got.module, got.shape, got.numel) == \
               (ref.tuned, ref.name, ref.layer, ref.module, ref.shape, ref.numel)
        assert [repr(getattr(got.stats, k)) for k in exact] == [repr(getattr(ref.stats, k)) for k in exact]
        np.testing.assert_array_equal(got.stats.hist, ref.stats.hist)
    for got, ref in zip(loaded.modules, want.modules):
        assert (got.tuned, got.layer, got.module, got.num_tensors) == (ref.tuned, ref.layer, ref.module, ref.num_tensors)
        np.testing.assert_array_equal(got.stats.hist, ref.stats.hist)
        assert got.stats.sum_sq_delta == pytest.approx(ref.stats.sum_sq_delta, rel=1e-12, abs=0)
    # the CSV row of each tensor is its histogram's row
    first = next(i for i, r in enumerate(csv_rows) if r["tuned"] == "t" and float(r["l2_delta"]) > 0)
    assert counts[first].sum() == int(csv_rows[first]["n"]) - int(csv_rows[first]["n_base_zero"])
    # an older report (schema 3: rows inline) still loads
    data3 = {**data, "schema": "weightsurgeon.diff/3", "tensors": [t.to_dict() for t in want.tensors]}
    del data3["tensor_files"]
    (tmp_path / "old.json").write_text(json.dumps(data3))
    old = DiffReport.from_json(tmp_path / "old.json")
    assert [t.name for t in old.tensors] == [t.name for t in want.tensors]
    # a missing row file is one clear error when the rows are asked for
    (out / "histograms.safetensors").unlink()
    res = run_cli("plot", out)
    assert res.returncode == 0, res.stderr  # figures need the module rows only
    from weightsurgeon.errors import SurgeonError

    with pytest.raises(SurgeonError, match="histograms.safetensors, which is missing"):
        len(DiffReport.from_json(out / "report.json").tensors)
