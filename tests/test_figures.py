"""Figures, report.html and `surgeon plot`, drawn from report.json alone.

Reports here are built by hand (`make_report`): several tuned models, a few layers, every
linear module and the norms, histograms with the contract's bin edges, and the
layerless tensors (embed_tokens unchanged, lm_head, norm). One test goes through the real
`surgeon diff` on a synthetic pair and redraws its report.
"""
from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.errors import SurgeonError
from weightsurgeon.report.figures import FIGURE_NAMES, as_report, draw_all, hist_layers, parse_formats
from weightsurgeon.report.html import ranked_kinds, render_html, write_html

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Planted relative scale per module: o_proj largest, post_attention_layernorm exactly unchanged.
SCALE = {"q_proj": 0.02, "k_proj": 0.01, "v_proj": 0.05, "o_proj": 0.2, "gate_proj": 0.03, "up_proj": 0.03,
         "down_proj": 0.04, "input_layernorm": 0.002, "post_attention_layernorm": 0.0}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gauss_hist(edges: np.ndarray, sd: float, n: int) -> list[int]:
    """Counts of n Gaussian relative changes with std sd, tails clipped into the edge bins."""
    if sd <= 0:
        counts = np.zeros(len(edges) - 1, dtype=np.int64)
        counts[np.searchsorted(edges, 0.0, side="right") - 1] = n
        return counts.tolist()
    cdf = np.array([0.5 * (1 + math.erf(e / (sd * math.sqrt(2)))) for e in edges])
    cdf[0], cdf[-1] = 0.0, 1.0
    counts = np.floor(np.diff(cdf) * n).astype(np.int64)
    counts[len(counts) // 2] += n - counts.sum()
    return counts.tolist()


def set_change(row: dict, rel: float | None) -> dict:
    """Give a hand-made row relative change ``rel`` (None: not measured), raw sums and derived numbers alike:
    a report's numbers are rebuilt from its sums."""
    base = row["l2_base"]
    if rel is None:
        row.update(l2_delta=None, rel_l2=None, sum_sq_delta=None, dot_base_tuned=None)
        return row
    delta, tuned = rel * base, base * (1 + rel)
    row.update(l2_delta=delta, rel_l2=rel, l2_tuned=tuned, n=row["numel"], sum_sq_delta=delta ** 2,
               sum_sq_base=base ** 2, sum_sq_tuned=tuned ** 2, dot_base_tuned=(base ** 2 + tuned ** 2 - delta ** 2) / 2,
               sum_delta=0.0, max_abs_delta=0.08 * rel)
    return row


def make_report(tuned=("distill", "math"), num_layers=6, bins=40, clip=1.0, hidden=64, inter=128, every=2,
                modules: tuple[str, ...] | None = None) -> dict:
    """A plausible report.json dict (the diff helper's contract) with a planted, known pattern.

    ``modules`` keeps only those per-layer modules (fewer panels: faster tests)."""
    edges = np.linspace(-clip, clip, bins + 1)
    numel = {"q_proj": hidden * hidden, "k_proj": hidden * hidden // 2, "v_proj": hidden * hidden // 2,
             "o_proj": hidden * hidden, "gate_proj": hidden * inter, "up_proj": hidden * inter,
             "down_proj": hidden * inter, "input_layernorm": hidden, "post_attention_layernorm": hidden}
    if modules is not None:
        numel = {m: n for m, n in numel.items() if m in modules}
    rows = []
    for t_i, label in enumerate(tuned):
        profile = 0.5 + np.sin(np.linspace(0, 3, num_layers)) ** 2 * (1 + t_i)
        for layer in range(num_layers):
            for module, n in numel.items():
                rel = SCALE[module] * float(profile[layer])
                base = 0.02 * math.sqrt(n)
                rows.append(set_change({"tuned": label, "layer": layer, "module": module, "numel": n, "l2_base": base,
                                        "cosine": 1 - rel ** 2 / 2, "mean_delta": 0.0, "n_base_zero": 0,
                                        "n_nonfinite": 0, "hist": _gauss_hist(edges, rel, n)}, rel))
        for module, n, rel in (("embed_tokens", 512 * hidden, 0.0), ("norm", hidden, 0.01), ("lm_head", 512 * hidden, 0.05)):
            base = 0.02 * math.sqrt(n)
            rows.append(set_change({"tuned": label, "layer": None, "module": module, "numel": n, "l2_base": base,
                                    "cosine": 1.0, "mean_delta": 0.0, "n_base_zero": 0, "n_nonfinite": 0,
                                    "hist": _gauss_hist(edges, rel, n)}, rel))

    def ident(src: str) -> dict:
        return {"source": src, "path": f"/models/{src}", "layout_digest": "sha256:" + "ab" * 32,
                "architecture": "Qwen2ForCausalLM", "num_layers": num_layers, "dtype": "BF16"}

    return {"schema": "weightsurgeon.diff/2", "version": "0.1.0", "created": "2026-11-22T03:00:00+00:00",
            "base": ident("Qwen/Qwen2.5-1.5B"), "tuned": [{"label": t, **ident(f"org/{t}")} for t in tuned],
            "options": {"bins": bins, "clip": clip, "modules": None, "layers": None, "every": every},
            "bin_edges": edges.tolist(), "notes": ["lm_head compared against the base's tied embed_tokens"],
            "missing": [{"tuned": tuned[0], "name": "model.extra.weight", "where": "tuned only", "detail": "not in base"}],
            "tensors": [], "modules": rows, "timing": {"seconds": 1.5, "bytes_read": 3_000_000_000, "gb_per_s": 2.0}}


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        width, height = im.size
    assert 300 < width < 4000 and 200 < height < 3000, (path, im.size)


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path
    assert len(list(root.iter())) > 50, f"{path}: suspiciously empty"


def assert_self_contained(page: str) -> None:
    """No external asset of any kind: every URL-valued attribute is a data: URI or a fragment."""
    from html.parser import HTMLParser

    class Audit(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.urls: list[str] = []
            self.styles: list[str] = []
            self._in_style = False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self._in_style = tag == "style"
            for name, value in attrs:
                if name in ("src", "href", "action", "poster", "srcset", "data", "xlink:href"):
                    self.urls.append(value or "")
                if name == "style":
                    self.styles.append(value or "")

        def handle_endtag(self, tag):
            self._in_style = False

        def handle_data(self, data):
            if self._in_style:
                self.styles.append(data)

    audit = Audit()
    audit.feed(page)
    assert audit.tags[:2] == ["html", "head"] and "body" in audit.tags
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(audit.tags), set(audit.tags)
    for url in audit.urls:
        assert url.startswith(("data:", "#")), url[:80]
    for css in audit.styles:
        assert "url(" not in css and "@import" not in css


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list[Path]]:
    """Two tuned models, 6 layers, both formats: drawn once, looked at by several tests."""
    report = make_report()
    out = tmp_path_factory.mktemp("figs")
    return report, out, draw_all(report, out)


# ---------------------------------------------------------------------------------------- figures

def test_draw_all_writes_every_figure_as_valid_png_and_svg(drawn):
    _report, out, files = drawn
    assert [p.name for p in files] == [f"{n}.{f}" for n in FIGURE_NAMES for f in ("png", "svg")]
    for path in files:
        assert path.parent == out and path.stat().st_size > 1000
        (assert_png if path.suffix == ".png" else assert_svg)(path)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_svg_is_reproducible(tmp_path):
    report = make_report(tuned=("a",), num_layers=2, modules=("o_proj", "input_layernorm"))
    first = draw_all(report, tmp_path / "1", formats="svg")
    again = draw_all(report, tmp_path / "2", formats="svg")
    assert len(first) == len(FIGURE_NAMES)
    for a, b in zip(first, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_single_tuned_model_png_only_and_a_dataclass_like_report(tmp_path):
    class Report:  # what the diff engine's DiffReport offers
        def to_dict(self):
            return make_report(tuned=("only",), num_layers=4, modules=("q_proj", "o_proj", "down_proj"))

    files = draw_all(Report(), tmp_path, every=3, formats="png")
    assert sorted(p.name for p in files) == sorted(f"{n}.png" for n in FIGURE_NAMES)
    for p in files:
        assert_png(p)


def test_histogram_layers_follow_every():
    assert hist_layers(list(range(28)), 5) == [0, 5, 10, 15, 20, 25]
    assert hist_layers(list(range(5, 31)), 5) == [5, 10, 15, 20, 25, 30]  # --layers 5-30
    assert hist_layers([3, 7, 11], 5) == [3]  # no multiple of 5 selected: every 5th present layer
    assert hist_layers([0, 1, 2], 1) == [0, 1, 2]


def test_identical_models_and_partial_selections_draw_without_errors(tmp_path):
    # Nothing changed at all: no log scale, no share figure (0 of 0 is no share), nothing crashes.
    same = make_report(tuned=("same",), num_layers=3, modules=("o_proj", "up_proj", "input_layernorm"))
    for m in same["modules"]:
        set_change(m, 0.0)
        m["hist"] = _gauss_hist(np.asarray(same["bin_edges"]), 0.0, m["numel"])
    files = draw_all(same, tmp_path / "same", formats="png")
    assert {p.stem for p in files} == {"l2_by_layer", "rel_change_hist", "rel_l2_heatmap"}
    assert "No weight changed" in render_html(same, files)

    # --module embed_tokens,lm_head: no per-layer module, only the share figure.
    head = make_report(tuned=("a", "b"), num_layers=3)
    head["modules"] = [m for m in head["modules"] if m["layer"] is None]
    assert [p.name for p in draw_all(head, tmp_path / "head", formats="png")] == ["delta_share.png"]

    # --module norm with NaN-derived nulls and rows without histograms: still drawn.
    norms = make_report(tuned=("a",), num_layers=4, modules=("input_layernorm", "post_attention_layernorm"))
    norms["modules"] = [m for m in norms["modules"] if m["module"].endswith("layernorm")]
    set_change(norms["modules"][1], None)["hist"] = None  # an unchanged module's row: the share stays drawn
    files = draw_all(norms, tmp_path / "norms", formats="png")
    assert {p.stem for p in files} == {"l2_by_layer", "rel_change_hist", "rel_l2_heatmap", "delta_share"}


def test_formats_are_checked():
    assert parse_formats("PNG, svg,png") == ("png", "svg")
    with pytest.raises(SurgeonError, match="unknown figure format 'jpg'"):
        parse_formats("png,jpg")
    with pytest.raises(SurgeonError, match="no figure format"):
        parse_formats(",")


# ---------------------------------------------------------------------------------------- html

def test_html_is_self_contained_with_summary_and_every_figure(drawn):
    report, out, files = drawn
    page = write_html(report, out, figures=files)
    assert page == out / "report.html"
    text = page.read_text(encoding="utf-8")
    assert_self_contained(text)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == len(FIGURE_NAMES)  # PNG preferred when both formats exist
    import base64

    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in images)
    for label in ("distill", "math", "Qwen/Qwen2.5-1.5B", "model.extra.weight", "tied embed_tokens"):
        assert label in text
    # The summary ranks o_proj (planted largest) first for every tuned model.
    assert text.count("Most changed: <b>o_proj</b>") == 2


def test_html_ranks_module_kinds_by_total_l2_with_shares_as_fractions():
    data = make_report(tuned=("t",), num_layers=5)
    rows = ranked_kinds(as_report(data), "t")
    assert rows[0]["module"] == "o_proj"
    assert [r["l2_delta"] for r in rows] == sorted((r["l2_delta"] for r in rows), reverse=True)
    assert math.isclose(sum(r["share"] for r in rows), 1.0)
    o = rows[0]
    per_layer = sorted(m["rel_l2"] for m in data["modules"] if m["module"] == "o_proj")
    assert o["layers"] == 5 and math.isclose(o["median_rel_l2"], per_layer[2])
    assert math.isclose(o["l2_delta"], math.sqrt(sum(m["l2_delta"] ** 2 for m in data["modules"] if m["module"] == "o_proj")))
    unchanged = next(r for r in rows if r["module"] == "post_attention_layernorm")
    assert unchanged["l2_delta"] == 0 and unchanged["max_rel_l2_layer"] is None
    head = next(r for r in rows if r["module"] == "lm_head")
    assert head["layers"] == 0  # layerless modules count no layer, in every view


def test_html_without_figure_files_draws_in_memory_and_escapes_labels(tmp_path):
    hostile = '<script>alert("x")</script>'
    report = make_report(tuned=(hostile, "ok"), num_layers=3, modules=("v_proj", "o_proj"))
    report["notes"].append('<img src="http://example.com/x.png">')
    page = write_html(report, tmp_path).read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "&lt;script&gt;" in page and "&lt;img src=" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(FIGURE_NAMES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no figure files written


def test_html_embeds_svg_when_only_svg_was_drawn(drawn, tmp_path):
    report, out, files = drawn
    svgs = [p for p in files if p.suffix == ".svg"]
    text = write_html(report, tmp_path, figures=svgs).read_text(encoding="utf-8")
    assert_self_contained(text)
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', text)) == len(FIGURE_NAMES)


# ---------------------------------------------------------------------------------------- surgeon plot

def test_plot_round_trips_a_saved_report(tmp_path, run_cli):
    folder = tmp_path / "report"
    folder.mkdir()
    report = make_report(tuned=("a", "b", "c"), num_layers=5, modules=("q_proj", "o_proj", "down_proj", "input_layernorm"))
    report["modules"][1]["rel_l2"] = float("nan")  # written as NaN by a careless tool: treated as missing
    (folder / "report.json").write_text(json.dumps(report))
    done = run_cli("plot", folder / "report.json", "--format", "png", "--every", "2")
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.splitlines()]
    assert [p.name for p in written] == [f"{n}.png" for n in FIGURE_NAMES] + ["report.html"]
    assert all(p.parent == folder and p.exists() for p in written)
    assert_self_contained((folder / "report.html").read_text(encoding="utf-8"))

    # A folder works as the argument too; -o elsewhere leaves the report's folder alone.
    other = tmp_path / "redrawn"
    done = run_cli("plot", folder, "-o", other, "--format", "svg", "--no-html", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in other.iterdir()) == sorted(f"{n}.svg" for n in FIGURE_NAMES)


def _bad_reports() -> dict[str, tuple[object, str]]:
    good = make_report(tuned=("a",), num_layers=2, bins=10)
    wrong_tuned = json.loads(json.dumps(good))
    wrong_tuned["modules"][3]["tuned"] = "nobody"
    short_hist = json.loads(json.dumps(good))
    short_hist["modules"][0]["hist"] = [1, 2, 3]
    no_modules = {k: v for k, v in good.items() if k != "modules"}
    bad_layer = json.loads(json.dumps(good))
    bad_layer["modules"][2]["layer"] = "two"
    bad_edges = json.loads(json.dumps(good))
    bad_edges["bin_edges"] = [1.0, 0.0] + bad_edges["bin_edges"][2:]
    return {
        "not json": ("{", "not valid JSON (line 1, column 2"),
        "a list": ("[1, 2]", "not a diff report (the JSON is a list"),
        "wrong schema": ({"schema": "mergekit/1"}, "not a weightsurgeon diff report"),
        "future schema": ({**good, "schema": "weightsurgeon.diff/9"}, "'weightsurgeon.diff/9' is not supported"),
        "no modules": (no_modules, "'modules' is missing or not a list"),
        "unknown tuned": (wrong_tuned, "modules[3]: 'tuned' is 'nobody'"),
        "short hist": (short_hist, "modules[0]: 'hist' has 3 bins but 'bin_edges' describes 10"),
        "bad layer": (bad_layer, "modules[2]: 'layer' must be an integer or null"),
        "bad edges": (bad_edges, "'bin_edges' must be finite and increasing"),
        "binary": (b"\xff\xfe\x00garbage", "not a JSON report (the file is not UTF-8 text)"),
    }


@pytest.mark.parametrize("case", sorted(_bad_reports()))
def test_plot_rejects_bad_reports_with_one_error_line(case, tmp_path, surgeon):
    content, message = _bad_reports()[case]
    path = tmp_path / "report.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = surgeon("plot", path)
    assert result.code == 1
    assert result.err_lines == [result.err_lines[0]] and result.err_lines[0].startswith("error: "), result.stderr
    assert message in result.err_lines[0]
    assert str(path) in result.err_lines[0] or "schema" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # nothing drawn


def test_plot_missing_inputs_and_bad_options_fail_cleanly(tmp_path, run_cli):
    done = run_cli("plot", tmp_path / "nope.json")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"error: {tmp_path / 'nope.json'}: no such file (give the report.json")
    done = run_cli("plot", tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == (f"error: {tmp_path}: folder has no report.json; give a folder "
                                                            "written by `surgeon diff`, or its report.json")
    (tmp_path / "report.json").write_text(json.dumps(make_report(tuned=("a",), num_layers=2)))
    done = run_cli("plot", tmp_path, "--format", "png,gif")
    assert done.returncode == 1 and done.stderr.strip() == "error: unknown figure format 'gif'; choose from png, svg"
    (tmp_path / "file").write_text("x")
    done = run_cli("plot", tmp_path, "-o", tmp_path / "file" / "sub")
    assert done.returncode == 1 and done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------- with the real diff

def test_plot_redraws_what_surgeon_diff_wrote(tmp_path, run_cli):
    from weightsurgeon.synth import make_checkpoint, make_tuned

    base = make_checkpoint(tmp_path / "base", num_layers=3, hidden_size=32, intermediate_size=64, vocab_size=300,
                           dtype="bf16")
    make_tuned(base, tmp_path / "ft1", seed=1)
    make_tuned(base, tmp_path / "ft2", seed=2)
    done = run_cli("diff", base, tmp_path / "ft1", tmp_path / "ft2", "-o", tmp_path / "rep", "--every", "1", "-q")
    assert done.returncode == 0, done.stderr
    rep = tmp_path / "rep"
    assert (rep / "report.html").exists() and (rep / "rel_l2_heatmap.png").exists()
    assert not list(rep.glob("*.svg"))  # SVG only on request (--format png,svg)
    done = run_cli("plot", rep / "report.json", "-o", tmp_path / "again", "--format", "png")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "again" / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "ft1" in page and "ft2" in page
    heads = sorted(p.stem for p in (tmp_path / "again").glob("heads_*.png"))
    assert heads == ["heads_k_proj", "heads_o_proj", "heads_q_proj", "heads_v_proj"]
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(FIGURE_NAMES) + len(heads)
    for name in list(FIGURE_NAMES) + heads:
        assert_png(tmp_path / "again" / f"{name}.png")


def test_diff_draws_svg_on_request_and_refuses_a_wrong_format_before_reading(tmp_path, run_cli):
    from weightsurgeon.synth import make_checkpoint, make_tuned

    base = make_checkpoint(tmp_path / "base", num_layers=2, hidden_size=32, intermediate_size=64, vocab_size=300,
                           dtype="bf16")
    make_tuned(base, tmp_path / "ft", seed=1)
    done = run_cli("diff", base, tmp_path / "ft", "-o", tmp_path / "rep", "--format", "svg,png", "-q")
    assert done.returncode == 0, done.stderr
    svgs = sorted(p.stem for p in (tmp_path / "rep").glob("*.svg"))
    assert svgs == sorted(p.stem for p in (tmp_path / "rep").glob("*.png")) and "l2_by_layer" in svgs
    for stem in svgs:
        assert_svg(tmp_path / "rep" / f"{stem}.svg")
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(svgs)  # the page embeds the PNGs
    done = run_cli("diff", base, tmp_path / "ft", "-o", tmp_path / "bad", "--format", "png,gif")
    assert done.returncode == 1 and done.stderr.strip() == "error: unknown figure format 'gif'; choose from png, svg"
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".surgeon-tmp-*"))


def test_l2_legend_has_one_entry_per_module_and_panels_name_their_unchanged_ones():
    """A module unchanged in one fine-tune only is one legend entry (its lines are the same
    colour in every panel); the panel where it did not change says so above the plot."""
    from weightsurgeon.report.figures import figure_l2_by_layer

    data = make_report(tuned=("distill", "math"), num_layers=3, modules=("q_proj", "o_proj", "post_attention_layernorm"))
    for row in data["modules"]:
        if row["tuned"] == "math" and row["module"] == "q_proj":
            set_change(row, 0.0)
    fig = figure_l2_by_layer(as_report(data))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["q_proj", "o_proj", "post_attention_layernorm (unchanged)"]  # unchanged in both: said once
    notes = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes if ax.get_visible()}
    assert notes == {"distill": [], "math": ["unchanged: q_proj"]}


def test_table_csv_html_and_figures_show_the_same_numbers(tmp_path, run_cli):
    """One model: the terminal table, report.csv, report.html and the share figure's data all read DiffReport."""
    import csv

    from weightsurgeon.report.figures import share_data
    from weightsurgeon.report.html import _num, _percent
    from weightsurgeon.report.model import DiffReport
    from weightsurgeon.report.summary import fmt
    from weightsurgeon.synth import make_checkpoint, make_tuned

    base = make_checkpoint(tmp_path / "base", num_layers=3, hidden_size=32, intermediate_size=64, vocab_size=300, dtype="bf16")
    make_tuned(base, tmp_path / "ft", seed=1)
    from conftest import cli_env

    done = run_cli("diff", base, tmp_path / "ft", "-o", tmp_path / "rep", "--every", "1", "-q", env=cli_env(COLUMNS="250"))
    assert done.returncode == 0, done.stderr
    report = DiffReport.from_json(tmp_path / "rep" / "report.json")
    kinds = report.module_kinds("ft")
    table = {}  # the per-module table's rows: module -> its cells
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells[0] in {k["module"] for k in kinds} and len(cells) == 6:
            table[cells[0]] = cells
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    modules, pct, absolute = share_data(report)
    for k in kinds:
        share = f"{100 * k['share']:.2f}%"
        median = "unchanged" if k["unchanged"] else fmt(k["median_rel_l2"])
        assert table[k["module"]][1:] == ["-" if not k["layers"] else str(k["layers"]), median,
                                          f"{fmt(k['max_rel_l2'])} ({'-' if k['max_rel_l2_layer'] is None else k['max_rel_l2_layer']})",
                                          fmt(k["median_l2_delta"]), share], (k, table[k["module"]])
        assert (_num(k["l2_delta"]) + "</td>") in page and (_percent(100 * k["share"]) + "</td>") in page
        i = modules.index(k["module"])
        assert pct["ft"][i] == 100 * k["share"] and absolute["ft"][i] == k["sum_sq_delta"]
    with open(tmp_path / "rep" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {t.name: t for t in report.tensors}
    assert sorted(r["name"] for r in rows) == sorted(by_name)  # the CSV lists the tensors in reading order
    for row in rows:
        t = by_name[row["name"]]
        assert float(row["l2_delta"]) == t.stats.l2_delta and float(row["rel_l2"]) == t.stats.rel_l2
    # The module rows are the exact merge of the CSV's tensor rows (squared L2 adds up).
    for k in kinds:
        csv_sq = sum(float(r["l2_delta"]) ** 2 for r in rows if r["module"] == k["module"])
        assert math.isclose(csv_sq, k["sum_sq_delta"], rel_tol=1e-9)
