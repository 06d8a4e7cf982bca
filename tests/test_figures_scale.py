"""Figures of a report at MoE scale: 64 layers x 512 experts x 3 matrices (98,304 expert rows)
plus heads, drawn from the report's columns in bounded memory, one expert heatmap (matrices
pooled) beside the per-layer, per-module-kind figures.

The report is built by hand (as in test_figures.py) and written as `surgeon diff -o` writes
it: report.json and report_heads.csv.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from test_figures import _gauss_hist, set_change

LAYERS, EXPERTS, BINS = 64, 512, 40
HEADS = {"q_proj": 16, "k_proj": 4, "v_proj": 4, "o_proj": 16}
EXPERT_KINDS = ("expert_gate_proj", "expert_up_proj", "expert_down_proj")
PLANTED = (10, 300)  # (layer, expert) whose down_proj changed 50x more than anything else


def expert_sums(layer: int, expert: int, module: str) -> tuple[float, float]:
    """(sum d^2, sum A^2) of one planted expert matrix."""
    sa = 4.0 + (expert % 7) + (1.0 if module == "expert_down_proj" else 0.0)
    rel = 0.01 * (1 + layer / LAYERS) * (1 + (expert % 5) / 10)
    if (layer, expert) == PLANTED and module == "expert_down_proj":
        rel = 0.5
    return rel * rel * sa, sa


@pytest.fixture(scope="module")
def moe_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightsurgeon.report.model import DiffReport
    from weightsurgeon.report.units import UnitDiff, UnitTable

    edges = np.linspace(-1.0, 1.0, BINS + 1)
    rows = []
    for layer in range(LAYERS):
        for module in (*HEADS, "router", *EXPERT_KINDS, "input_layernorm"):
            rel, n = 0.01 * (1 + layer / LAYERS) * (2 if module == "o_proj" else 1), 4096
            base = 0.02 * math.sqrt(n)
            rows.append(set_change({"tuned": "moe-ft", "layer": layer, "module": module, "numel": n, "l2_base": base,
                                    "cosine": 1.0, "mean_delta": 0.0, "n_base_zero": 0, "n_nonfinite": 0,
                                    "hist": _gauss_hist(edges, rel, n)}, rel))
    ident = {"source": "moe", "path": "/models/moe", "layout_digest": "sha256:" + "cd" * 32,
             "architecture": "Qwen3MoeForCausalLM", "num_layers": LAYERS, "dtype": "BF16"}
    report = DiffReport.from_dict({
        "schema": "weightsurgeon.diff/4", "version": "0", "created": "2026-12-06T00:00:00+00:00", "base": ident,
        "tuned": [{"label": "moe-ft", **ident}], "options": {"bins": BINS, "clip": 1.0, "every": 8},
        "bin_edges": edges.tolist(), "tensors": [], "modules": rows})
    units = [UnitDiff("moe-ft", layer, module, "head", h, 1e-4 * (1 + h), 1.0)
             for layer in range(LAYERS) for module, count in HEADS.items() for h in range(count)]
    units += [UnitDiff("moe-ft", layer, module, "expert", e, *expert_sums(layer, e, module))
              for layer in range(LAYERS) for module in EXPERT_KINDS for e in range(EXPERTS)]
    report.units = UnitTable.of(units)
    folder = tmp_path_factory.mktemp("moe-report")
    report.write_rows(folder)
    report.write_json(folder / "report.json")
    return folder


DRIVER = r"""
import json, sys
from pathlib import Path

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

from weightsurgeon.report.figures import _configure_matplotlib, draw_all
from weightsurgeon.report.model import DiffReport

_configure_matplotlib()
from matplotlib.figure import Figure

warm = Figure(figsize=(4, 3))  # fonts and renderers loaded before the baseline
warm.subplots(1, 2)[0].set_title("warm ‖B − A‖")
for fmt in ("png", "svg"):
    warm.savefig(Path(sys.argv[2]) / f"warm.{fmt}", format=fmt)
del warm
report = DiffReport.from_json(Path(sys.argv[1]) / "report.json")
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark restarts from here
files = draw_all(report, Path(sys.argv[2]))
print(json.dumps({"before": before, "peak": status("VmHWM"), "files": [p.name for p in files]}))
"""


def test_figures_of_512_experts_draw_in_bounded_memory(moe_report: Path, tmp_path: Path) -> None:
    """Eleven figures held at once and matplotlib's float resampling of a full-page heatmap took
    ~150 MiB above the loaded report; one figure at a time, meshes, one expert figure: < 60 MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        pytest.skip(f"the high-water mark cannot be reset here ({e})")
    out = tmp_path / "figs"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(moe_report), str(out)], capture_output=True, text=True,
                          env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["peak"] - got["before"] < 60, got
    assert "experts.png" in got["files"] and not any(f.startswith("experts_") for f in got["files"])
    assert {f"heads_{m}.png" for m in HEADS} <= set(got["files"])


def test_one_expert_heatmap_pools_each_experts_matrices(moe_report: Path) -> None:
    from weightsurgeon.report.model import DiffReport
    from weightsurgeon.report.unit_figures import expert_matrices, head_matrices, unit_figure_makers

    report = DiffReport.from_json(moe_report / "report.json")
    assert len(report.units) == LAYERS * (sum(HEADS.values()) + len(EXPERT_KINDS) * EXPERTS)
    layers, mats, pooled = expert_matrices(report)
    assert layers == list(range(LAYERS)) and pooled == list(EXPERT_KINDS)
    mat = mats["moe-ft"]
    assert mat.shape == (LAYERS, EXPERTS)
    for layer, expert in ((0, 0), (63, 511), PLANTED, (37, 123)):
        sums = [expert_sums(layer, expert, m) for m in EXPERT_KINDS]
        want = math.sqrt(sum(s[0] for s in sums)) / math.sqrt(sum(s[1] for s in sums))
        assert mat[layer, expert] == pytest.approx(want, rel=1e-12)
    assert np.unravel_index(np.nanargmax(mat), mat.shape) == PLANTED
    heads = head_matrices(report, "k_proj")[1]["moe-ft"]
    assert heads.shape == (LAYERS, HEADS["k_proj"]) and heads[5, 3] == pytest.approx(math.sqrt(4e-4), rel=1e-12)
    stems = [stem for stem, _ in unit_figure_makers(report)]
    assert stems == [f"heads_{m}" for m in HEADS] + ["experts"]


def test_plot_draws_the_moe_report_with_aggregates_per_layer_and_module_kind(moe_report: Path, tmp_path: Path,
                                                                              run_cli) -> None:
    """`surgeon plot` reads report_heads.csv back; the module figures hold one row per (layer, module
    kind); every heatmap panel is one raster image in the SVG, not a path per cell."""
    out = tmp_path / "plot"
    r = run_cli("plot", str(moe_report), "-o", str(out), "--format", "svg,png")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "experts.svg" in names and "rel_l2_heatmap.png" in names and "report.html" in names
    svg = (out / "experts.svg").read_text()
    assert svg.count("<image") == 2  # the panel and the colour bar
    assert svg.count("<path") < 400, svg.count("<path")
    from PIL import Image

    with Image.open(out / "experts.png") as im:
        assert 1000 < im.size[0] < 2500 and 800 < im.size[1] < 2000, im.size
