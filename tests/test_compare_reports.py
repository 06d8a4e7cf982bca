"""surgeon compare-reports: several saved reports in one table, figure and agreement; old (schema 1) reports too."""
from __future__ import annotations

import csv
import json
import math

import pytest
import scipy.stats

from conftest import report_rows
from weightsurgeon.report.findings import module_medians
from weightsurgeon.report.model import DiffReport

SHAPE_KEYS = ("r_mean", "r_std", "r_skewness", "r_excess_kurtosis", "bimodality", "modes", "r_m2", "r_m3", "r_m4")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Two saved reports: the planted pattern, and one whose linear modules' ranking is reversed."""
    from conftest import run_cli
    from weightsurgeon.synth import DEFAULT_PATTERN, make_checkpoint, make_tuned

    root = tmp_path_factory.mktemp("compare")
    base = make_checkpoint(root / "base", num_layers=3, hidden_size=64, intermediate_size=128, vocab_size=300)
    linear = ["o_proj", "v_proj", "q_proj", "k_proj", "down_proj", "up_proj", "gate_proj"]
    t1 = make_tuned(base, root / "t1")
    t2 = make_tuned(base, root / "t2", pattern={m: DEFAULT_PATTERN[n] for m, n in zip(linear, reversed(linear))})
    for name, tuned in (("small", t1), ("large", t2)):
        res = run_cli("diff", base, tuned, "-o", root / name, "--no-plots")
        assert res.returncode == 0, res.stderr
    return root


def test_compare_reports_table_figures_and_agreement(reports, run_cli) -> None:
    out = reports / "summary"
    res = run_cli("compare-reports", reports / "small", reports / "large" / "report.json", "-o", out)
    assert res.returncode == 0, res.stderr
    names = {p.name for p in out.iterdir()}
    assert {"compare.csv", "compare.json", "compare_modules.png", "compare_agreement.png", "compare_modules.svg"} <= names
    small = DiffReport.from_json(reports / "small" / "report.json")
    large = DiffReport.from_json(reports / "large" / "report.json")
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {r["module"]: r for r in small.module_kinds(small.labels[0])}
    mine = [r for r in rows if r["pattern"] == "small"]
    assert {r["module"] for r in mine} == {m for m, k in kinds.items() if k["layers"] > 0}
    for r in mine:
        assert float(r["median_rel_l2"]) == kinds[r["module"]]["median_rel_l2"]
    assert next(r for r in mine if r["module"] == "o_proj")["bimodal_layers"] == "3"
    data = json.loads((out / "compare.json").read_text())
    a, b = module_medians(small, small.labels[0]), module_medians(large, large.labels[0])
    shared = sorted(set(a) & set(b))
    want = scipy.stats.spearmanr([a[m] for m in shared], [b[m] for m in shared]).statistic
    assert data["agreement"][0]["rho"] == pytest.approx(want, abs=1e-12) and want < 0
    assert "small vs large: Spearman" in res.stdout and "largest change: o_proj" in res.stdout


def test_old_reports_still_compare_and_plot(reports, run_cli, tmp_path) -> None:
    """A schema 1 report (no shape numbers, no units) loads, compares and plots."""
    data = json.loads((reports / "small" / "report.json").read_text())
    data["schema"] = "weightsurgeon.diff/1"
    data.pop("units", None)
    data.pop("tensor_files")  # schema 1 held the tensor rows inline
    data["tensors"] = report_rows(reports / "small")
    for row in data["tensors"] + data["modules"]:
        for key in SHAPE_KEYS:
            row.pop(key, None)
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps(data))
    report = DiffReport.from_json(old / "report.json")
    assert math.isnan(report.modules[0].stats.r_std) and report.units == []
    res = run_cli("compare-reports", old, reports / "large", "-o", tmp_path / "sum")
    assert res.returncode == 0, res.stderr
    res = run_cli("plot", old / "report.json", "-o", tmp_path / "figs")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "figs" / "l2_by_layer.png").is_file()


def test_compare_reports_bad_input(reports, run_cli, tmp_path) -> None:
    res = run_cli("compare-reports", reports / "small", "-o", tmp_path / "x")
    assert res.returncode == 1 and res.stderr.strip() == "error: compare-reports needs at least two reports"
    res = run_cli("compare-reports", reports / "small", tmp_path / "nothing", "-o", tmp_path / "x")
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "no such report" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    res = run_cli("compare-reports", reports / "small", reports / "large", "-o", tmp_path / "taken")
    assert res.returncode == 1 and res.stderr.startswith("error: ") and list((tmp_path / "taken").iterdir()) == []


def test_spectrum_of_planted_low_rank_deltas(tiny_model, tmp_path, run_cli) -> None:
    """o_proj gets a rank-2 change, q_proj a full-rank one: --spectrum says so, and sigma equals numpy's SVD."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    base = tiny_model(num_layers=2, hidden_size=64, dtype="f32")
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    rng = np.random.default_rng(0)
    deltas = {}
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            (tuned / f.name).write_bytes(f.read_bytes())
            continue
        tensors = load_file(f)
        for name in list(tensors):
            if name.endswith("o_proj.weight"):
                d = (rng.standard_normal((64, 2)) @ rng.standard_normal((2, 64)) * 1e-3).astype(np.float32)
            elif name.endswith("q_proj.weight"):
                d = (rng.standard_normal((64, 64)) * 1e-3).astype(np.float32)
            else:
                continue
            tensors[name] = tensors[name] + d
            deltas[name] = tensors[name] - load_file(f)[name]
        save_file(tensors, tuned / f.name, metadata={"format": "pt"})
    res = run_cli("diff", base, tuned, "-o", tmp_path / "r", "--no-plots", "--spectrum", "o_proj,q_proj")
    assert res.returncode == 0, res.stderr
    report = DiffReport.from_json(tmp_path / "r" / "report.json")
    assert len(report.spectra) == 4 and (tmp_path / "r" / "report_spectrum.csv").is_file()
    for row in report.spectra:
        want = np.linalg.svd(deltas[row.name].astype(np.float64), compute_uv=False)
        assert np.allclose(row.sigma, want[:len(row.sigma)], rtol=1e-4)
        assert row.energy == pytest.approx(float(np.sum(deltas[row.name].astype(np.float64) ** 2)), rel=1e-12)
        if row.module == "o_proj":
            assert row.share(1) < 0.99 and row.share(8) == pytest.approx(1.0, abs=1e-6)
        else:
            assert row.share(8) < 0.5 and row.share(64) == pytest.approx(1.0, abs=1e-6)
    res = run_cli("diff", base, tuned, "-o", tmp_path / "r2", "--spectrum", "input_layernorm")
    assert res.returncode == 1 and "selects no 2-D tensor" in res.stderr and not (tmp_path / "r2").exists()


def test_randomized_singular_values_match_lapack() -> None:
    import numpy as np

    from weightsurgeon.lowrank import singular_values

    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((2000, 300)))
    v, _ = np.linalg.qr(rng.standard_normal((1500, 300)))
    s = 0.9 ** np.arange(300)  # a decaying spectrum, as fine-tune deltas have
    d = ((u * s) @ v.T).astype(np.float32)
    got = singular_values(d, 40)  # randomized: 4 * 50 < 1500
    assert np.allclose(got[:20], s[:20], rtol=1e-3)
