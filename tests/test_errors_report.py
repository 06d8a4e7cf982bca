"""Every refusal of a saved diff report, as a user meets it: `surgeon plot` (and the Python API for
the tensor rows, which no command reads) on a real report folder, damaged one way per case.

Each case: exit 1, one ``error:`` line with the message's distinctive words, and no figure written.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from weightsurgeon.synth import make_checkpoint, make_tuned

TINY = dict(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, vocab_size=300)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real report folder (`surgeon diff --no-plots`), copied by each case before it damages it."""
    from weightsurgeon.cli import main

    root = tmp_path_factory.mktemp("report")
    base = make_checkpoint(root / "base", dtype="bf16", **TINY)
    tuned = make_tuned(base, root / "tuned")
    with pytest.raises(SystemExit) as done:
        main(["diff", str(base), str(tuned), "-o", str(root / "r"), "--no-plots", "-q"])
    assert done.value.code == 0
    return root / "r"


@pytest.fixture
def report(report_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "r"
    shutil.copytree(report_dir, dst)
    return dst


def _edit(report: Path, change: Callable[[dict], object]) -> None:
    path = report / "report.json"
    d = json.loads(path.read_text())
    out = change(d)  # a replacement of the whole document, or None (edited in place)
    path.write_text(json.dumps(d if out is None else out))


def _set(path: list, value: object) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        node = d
        for key in path[:-1]:
            node = node[key]
        if value is ...:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return change


# (case id, edit of report.json's dict, words the one error line must hold)
JSON_CASES = [
    ("not-an-object", lambda d: [1, 2], "not a diff report (the JSON is a list, not an object)"),
    ("newer-schema", _set(["schema"], "weightsurgeon.diff/99"), "is not supported by this version"),
    ("foreign-schema", _set(["schema"], "other/1"), "not a weightsurgeon diff report (schema 'other/1'"),
    ("tensor-files", _set(["tensor_files"], 5), "'tensor_files' must name the row files and their row count"),
    ("damaged-module", _set(["modules", 0, "numel"], ...), "damaged diff report: KeyError: 'numel'"),
    ("tuned-not-list", _set(["tuned"], {}), "'tuned' is missing or not a list"),
    ("tuned-no-label", _set(["tuned", 0, "label"], ...), "tuned[0] has no 'label'"),
    ("no-tuned", _set(["tuned"], []), "the report lists no tuned model"),
    ("no-bins", _set(["options", "bins"], ...), "'options' has no integer 'bins'"),
    ("edges-short", _set(["bin_edges"], [1.0]), "'bin_edges' must be a list of at least two numbers"),
    ("edges-decreasing", _set(["bin_edges"], [1.0, 0.0]), "'bin_edges' must be finite and increasing"),
    ("edges-count", _set(["bin_edges"], [0.0, 1.0, 2.0]), "'bin_edges' describes 2 bins but options.bins is"),
    ("module-not-object", _set(["modules", 0], 5), "modules[0] is not an object"),
    ("module-tuned", _set(["modules", 0, "tuned"], "nobody"), "modules[0]: 'tuned' is 'nobody', not one of the report's"),
    ("module-name", _set(["modules", 0, "module"], ""), "modules[0]: 'module' is missing"),
    ("module-layer", _set(["modules", 0, "layer"], "one"), "modules[0]: 'layer' must be an integer or null, not 'one'"),
    ("module-hist", _set(["modules", 0, "hist"], "x"), "modules[0]: 'hist' must be a list of counts"),
    ("module-hist-len", _set(["modules", 0, "hist"], [1, 2]), "modules[0]: 'hist' has 2 bins but 'bin_edges' describes"),
]


@pytest.mark.parametrize("change,words", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_a_damaged_report_json_is_one_line(report: Path, surgeon, change, words: str) -> None:
    _edit(report, change)
    r = surgeon("plot", report)
    assert r.code == 1 and len(r.err_lines) == 1, r.stderr
    assert r.err_lines[0].startswith(f"error: {report / 'report.json'}: ") and words in r.stderr, r.stderr
    assert not list(report.glob("*.png")) and not (report / "report.html").exists()


TEXT_CASES = [
    ("not-utf8", b"\xff\xfe{}", "not a JSON report (the file is not UTF-8 text)"),
    ("bad-json", b"{bad", "not valid JSON (line 1, column 2"),
    ("deep-json", b"[" * 200_000 + b"]" * 200_000, "not valid JSON (nested too deeply)"),
]


@pytest.mark.parametrize("raw,words", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_a_report_that_is_not_json_is_one_line(report: Path, surgeon, raw: bytes, words: str) -> None:
    (report / "report.json").write_bytes(raw)
    r = surgeon("plot", report / "report.json")
    assert r.code == 1 and len(r.err_lines) == 1 and words in r.stderr, r.stderr


def test_paths_that_hold_no_report(report: Path, tmp_path: Path, surgeon) -> None:
    r = surgeon("plot", tmp_path / "nothing.json")
    assert r.code == 1 and "nothing.json: no such file" in r.stderr, r.stderr
    assert "give the report.json, or the folder, that `surgeon diff -o` wrote" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = surgeon("plot", empty)
    assert r.code == 1 and f"{empty}: folder has no report.json" in r.stderr, r.stderr
    r = surgeon("plot", report, "--format", "gif")
    assert r.code == 1 and "unknown figure format 'gif'; choose from png, svg" in r.stderr, r.stderr


def test_an_unreadable_report_is_one_line(report: Path, surgeon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads anything, so the OSError (EACCES, EIO) is made by hand."""
    real = Path.read_text

    def refuse(self: Path, *a, **kw) -> str:
        if self.name == "report.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", refuse)
    r = surgeon("plot", report)
    assert r.code == 1 and "report.json: cannot read (Permission denied)" in r.stderr, r.stderr
    assert "check that the file is readable" in r.stderr


def test_a_missing_heads_file_is_named(report: Path, surgeon) -> None:
    assert json.loads((report / "report.json").read_text())["tensor_files"].get("units") == "report_heads.csv"
    (report / "report_heads.csv").unlink()
    r = surgeon("plot", report)
    assert r.code == 1 and "its head and expert rows are in report_heads.csv, which is missing beside it" in r.stderr


def _set_cell(path: Path, column: str, value: str) -> None:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


ROW_CASES = [
    ("csv-missing", lambda r: (r / "report.csv").unlink(), "its tensor rows are in report.csv, which is missing beside it"),
    ("hist-missing", lambda r: (r / "histograms.safetensors").unlink(),
     "its tensor rows are in histograms.safetensors, which is missing beside it"),
    ("hist-damaged", lambda r: (r / "histograms.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}"),
     "histograms.safetensors: not a histogram file of a diff report"),
    ("csv-short", lambda r: (r / "report.csv").write_text("".join((r / "report.csv").read_text().splitlines(True)[:-1])),
     "the report folder is damaged; run surgeon diff again"),
    ("csv-cell", lambda r: _set_cell(r / "report.csv", "numel", "six"),
     "damaged tensor rows: ValueError: invalid literal"),
]


@pytest.mark.parametrize("damage,words", [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_damaged_tensor_row_files_are_named(report: Path, damage, words: str) -> None:
    """No command reads the tensor rows (plot needs the module rows): the Python API does, on first use."""
    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.report.model import DiffReport

    damage(report)
    loaded = DiffReport.from_json(report / "report.json")
    with pytest.raises(SurgeonError) as e:
        list(loaded.tensors)
    assert words in str(e.value), str(e.value)


def test_compare_reports_needs_two(report: Path, tmp_path: Path, surgeon) -> None:
    r = surgeon("compare-reports", report, "-o", tmp_path / "summary")
    assert r.code == 1 and "compare-reports needs at least two reports" in r.stderr, r.stderr
    assert not (tmp_path / "summary").exists()
