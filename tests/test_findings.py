"""Findings: every line is a number of the report, recomputed here from the rows; several fine-tunes compared."""
from __future__ import annotations

import math
import statistics

import pytest
import scipy.stats

from weightsurgeon.report.findings import findings, report_findings, spearman


def test_spearman_equals_scipy_with_ties() -> None:
    cases = [([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]), ([0.3, 0.3, 0.1, 0.9], [1, 2, 2, 3]), ([3, 1, 2], [1, 3, 2]),
             ([1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1])]
    for x, y in cases:
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """A base and three fine-tunes: the planted pattern, the same pattern reseeded, and its ranking reversed."""
    from weightsurgeon.diff import diff_checkpoints
    from weightsurgeon.synth import DEFAULT_PATTERN, make_checkpoint, make_tuned

    root = tmp_path_factory.mktemp("findings")
    base = make_checkpoint(root / "base", num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=300)
    linear = ["o_proj", "v_proj", "q_proj", "k_proj", "down_proj", "up_proj", "gate_proj"]
    reverse = {m: DEFAULT_PATTERN[n] for m, n in zip(linear, reversed(linear))}
    t1 = make_tuned(base, root / "t1", seed=1)
    t2 = make_tuned(base, root / "t2", seed=2)
    t3 = make_tuned(base, root / "t3", seed=3, pattern=reverse, shapes={})
    return diff_checkpoints(base, [t1, t2, t3], labels=["t1", "t2", "t3"])


def test_findings_are_the_report_numbers(three) -> None:
    report = three
    got = {f.key: f for f in findings(report, "t1")}
    medians = {}
    for m in report.modules:
        if m.tuned == "t1" and m.layer is not None:
            medians.setdefault(m.module, []).append(m.stats.l2_delta)
    medians = {k: statistics.median(v) for k, v in medians.items()}
    order = sorted((v for v in medians.values() if v > 0), reverse=True)
    largest = got["largest"].numbers
    assert largest["module"] == "o_proj" and largest["median_l2_delta"] == order[0]
    assert largest["ratio"] == pytest.approx(order[0] / order[1])
    assert f"{largest['ratio']:.3g}x the next" in got["largest"].text
    first = got["first"].numbers
    assert first["layers"] == 4 and first["counts"] == {"o_proj": 4}
    assert got["bimodal"].numbers == {"o_proj": {"layers": 4, "of": 4}}
    assert "unimodal: " in got["bimodal"].text and "o_proj in 4 of 4 layers" in got["bimodal"].text
    assert got["unchanged"].numbers["modules"] == ["embed_tokens"]
    top = got["top_units"].numbers["units"]
    best = max((u for u in report.units if u.tuned == "t1"), key=lambda u: u.rel_l2)
    assert top[0] == (best.layer, best.module, best.kind, best.index, best.rel_l2)


def test_patterns_compared_across_fine_tunes(three) -> None:
    blocks = report_findings(three)
    assert set(blocks) == {"t1", "t2", "t3", ""}
    rho = {(f.numbers["a"], f.numbers["b"]): f.numbers["rho"] for f in blocks[""]}
    assert rho[("t1", "t2")] > 0.9  # the same planted pattern, other noise
    assert rho[("t1", "t3")] < -0.5  # the ranking of the linear modules reversed
    t3 = {f.key: f for f in blocks["t3"]}
    assert t3["largest"].numbers["module"] != "o_proj" and "bimodal" in t3 and "none" in t3["bimodal"].text


def test_diff_prints_findings_first(tiny_model, tmp_path, run_cli) -> None:
    from weightsurgeon.synth import make_tuned

    base = tiny_model(num_layers=3)
    tuned = make_tuned(base, tmp_path / "tuned")
    res = run_cli("diff", base, tuned, "-o", tmp_path / "r", "--no-plots")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    start = lines.index("findings:")
    assert lines[start + 1].startswith("  - largest change: o_proj")
    assert any("bimodal relative change: o_proj" in line for line in lines[start:start + 6])
    assert start < min(i for i, line in enumerate(lines) if "top 10" in line)
