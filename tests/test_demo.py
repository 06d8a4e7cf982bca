"""`surgeon demo`: generates a planted pair, diffs it, draws the figures, and says the pattern was recovered."""
from __future__ import annotations

import json
from pathlib import Path


def test_demo_recovers_the_planted_pattern(tmp_path: Path, run_cli) -> None:
    work = tmp_path / "work"
    res = run_cli("demo", "--workdir", work, "-q")
    assert res.returncode == 0, res.stderr
    assert "planted pattern recovered: yes" in res.stdout
    assert "planted unchanged (embed_tokens): exactly zero" in res.stdout
    assert "findings:" in res.stdout and "bimodal relative change: o_proj" in res.stdout
    report = json.loads((work / "report" / "report.json").read_text())
    assert report["schema"] == "weightsurgeon.diff/4" and report["tuned"][0]["label"] == "tuned"
    assert (work / "report" / "report.csv").is_file()
    assert (work / "tuned" / "planted.json").is_file()
    try:
        import weightsurgeon.report.figures  # noqa: F401
    except ImportError:
        pass
    else:
        assert list((work / "report").glob("*.png")), "figures module present but no figure drawn"
        assert (work / "report" / "heads_o_proj.png").is_file() and (work / "report" / "report_heads.csv").is_file()
        page = (work / "report" / "report.html").read_text()
        assert page.index("<h2>Findings</h2>") < page.index("<h2>Figures</h2>") and "largest change: o_proj" in page
    # A second run replaces the demo's own folders instead of failing on them.
    again = run_cli("demo", "--workdir", work, "-q", "--no-plots")
    assert again.returncode == 0, again.stderr
    assert not list((work / "report").glob("*.png"))


def test_demo_refuses_a_foreign_folder(tmp_path: Path, run_cli) -> None:
    work = tmp_path / "work"
    (work / "base").mkdir(parents=True)
    (work / "base" / "notes.txt").write_text("mine")
    res = run_cli("demo", "--workdir", work)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "not a model written by an earlier demo" in res.stderr
    assert (work / "base" / "notes.txt").read_text() == "mine"
