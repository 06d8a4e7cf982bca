"""compare-reports: several saved diff reports (e.g. 1.5B, 7B, 14B, 32B pairs) in one table and one figure.

Each (report, tuned model) is one pattern: per module kind, the median over layers of the
relative L2 and of the L2 of the delta, the share of the squared delta, and in how many
layers the kind changes bimodally. Patterns are compared by Spearman's rank correlation of
their per-module median L2 (report/findings.py), so "consistent across model sizes" is a
number; the figure puts the per-module medians of every pattern side by side.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightsurgeon.errors import SurgeonError
from weightsurgeon.report.findings import Finding, findings, module_medians, pattern_agreement

COMPARE_CSV = "compare.csv"
COMPARE_JSON = "compare.json"
COMPARE_FIGURE = "compare_modules"
AGREEMENT_FIGURE = "compare_agreement"
CSV_COLUMNS = ("pattern", "report", "tuned", "module", "layers", "median_rel_l2", "median_l2_delta", "share",
               "bimodal_layers")


@dataclass
class Pattern:
    """One tuned model of one report."""

    name: str  # shown in tables and figures: the report's folder name, plus the tuned label when it has several
    source: str
    tuned: str
    report: Any  # DiffReport


def report_path(path: Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise SurgeonError(f"{path}: no such report (give a report folder or its report.json)")
    return path


def load_patterns(paths: list[Path]) -> list[Pattern]:
    """Every tuned model of every report, named uniquely."""
    from weightsurgeon.report.model import DiffReport

    if len(paths) < 2:
        raise SurgeonError("compare-reports needs at least two reports")
    out: list[Pattern] = []
    seen: set[str] = set()
    for path in paths:
        file = report_path(path)
        report = DiffReport.from_json(file)
        stem = file.parent.name or str(file.parent)
        for label in report.labels:
            name = stem if len(report.labels) == 1 else f"{stem}:{label}"
            k = 2
            while name in seen:
                name, k = f"{stem}-{k}" if len(report.labels) == 1 else f"{stem}-{k}:{label}", k + 1
            seen.add(name)
            out.append(Pattern(name, str(file), label, report))
    return out


def pattern_rows(pattern: Pattern) -> list[dict]:
    """Per module kind of one pattern: the table's numbers."""
    report, tuned = pattern.report, pattern.tuned
    bimodal: dict[str, int] = {}
    for m in report.modules:
        if m.tuned == tuned and m.layer is not None and len(m.stats.modes) >= 2:
            bimodal[m.module] = bimodal.get(m.module, 0) + 1
    rows = []
    for kind in report.module_kinds(tuned):
        if kind["layers"] == 0:
            continue
        rows.append({"pattern": pattern.name, "report": pattern.source, "tuned": tuned, "module": kind["module"],
                     "layers": kind["layers"], "median_rel_l2": kind["median_rel_l2"],
                     "median_l2_delta": kind["median_l2_delta"], "share": kind["share"],
                     "bimodal_layers": bimodal.get(kind["module"], 0)})
    return rows


def compare(patterns: list[Pattern]) -> tuple[list[dict], list[Finding], dict[str, list[Finding]]]:
    """(table rows, agreement of every pair of patterns, each pattern's findings)."""
    rows = [r for p in patterns for r in pattern_rows(p)]
    agreement = pattern_agreement({p.name: module_medians(p.report, p.tuned) for p in patterns})
    return rows, agreement, {p.name: findings(p.report, p.tuned) for p in patterns}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_outputs(folder: Path, patterns: list[Pattern], rows: list[dict], agreement: list[Finding],
                  per: dict[str, list[Finding]], formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """compare.csv, compare.json and the figures into `folder`."""
    written = []
    with open(folder / COMPARE_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([_cell(r[c]) for c in CSV_COLUMNS])
    written.append(folder / COMPARE_CSV)

    def num(x: Any) -> Any:
        return None if isinstance(x, float) and not math.isfinite(x) else x

    data = {"schema": "weightsurgeon.compare/1",
            "patterns": [{"name": p.name, "report": p.source, "tuned": p.tuned} for p in patterns],
            "modules": [{k: num(v) for k, v in r.items()} for r in rows],
            "agreement": [{k: num(v) for k, v in f.numbers.items()} for f in agreement],
            "findings": {name: [f.text for f in fs] for name, fs in per.items()}}
    (folder / COMPARE_JSON).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    written.append(folder / COMPARE_JSON)
    from weightsurgeon.report.figures import _configure_matplotlib, lay_out, save_figure

    _configure_matplotlib()
    for name, fig in ((COMPARE_FIGURE, figure_modules(patterns, rows)), (AGREEMENT_FIGURE, figure_agreement(patterns, agreement))):
        if fig is None:
            continue
        lay_out(fig)
        for fmt in formats:
            written.append(save_figure(fig, folder / f"{name}.{fmt}", fmt))
    return written


def figure_modules(patterns: list[Pattern], rows: list[dict]):
    """Per module kind, the median relative L2 over layers of every pattern, side by side (log scale)."""
    from weightsurgeon.report.figures import _new_figure, _short
    from weightsurgeon.report.model import sort_key

    modules = sorted({r["module"] for r in rows}, key=lambda m: sort_key(0, None, m))
    if not modules:
        return None
    import numpy as np
    from matplotlib import colormaps

    values = {(r["pattern"], r["module"]): r["median_rel_l2"] for r in rows}
    fig = _new_figure(min(max(6.0, 0.9 * len(modules) + 3.0), 20.0), 4.8)
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    width = 0.8 / len(patterns)
    for i, p in enumerate(patterns):
        ys = np.array([values.get((p.name, m), np.nan) for m in modules], dtype=float)
        ys = np.where(ys > 0, ys, np.nan)
        xs = np.arange(len(modules)) - 0.4 + (i + 0.5) * width
        ax.bar(xs, ys, width=width * 0.95, color=cmap(i / max(1, len(patterns) - 1)), label=_short(p.name, 30))
    ax.set_xticks(range(len(modules)), modules, rotation=40, ha="right", fontsize=8)
    if any(v and v > 0 for v in values.values()):
        ax.set_yscale("log")
    ax.set_ylabel("median relative L2 over layers")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Per-module change of each report, side by side", fontsize=12)
    return fig


def figure_agreement(patterns: list[Pattern], agreement: list[Finding]):
    """Spearman's rho of every pair of patterns as a matrix."""
    if len(patterns) < 2:
        return None
    import numpy as np
    from matplotlib import colormaps

    from weightsurgeon.report.figures import _new_figure, _short

    names = [p.name for p in patterns]
    index = {n: i for i, n in enumerate(names)}
    mat = np.eye(len(names))
    for f in agreement:
        i, j = index[f.numbers["a"]], index[f.numbers["b"]]
        mat[i, j] = mat[j, i] = f.numbers["rho"]
    size = min(max(4.0, 0.55 * len(names) + 2.5), 14.0)
    fig = _new_figure(size + 1.2, size)
    ax = fig.subplots()
    image = ax.imshow(mat, cmap=colormaps["RdBu"].with_extremes(bad="#dddddd"), vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), [_short(n, 24) for n in names], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), [_short(n, 24) for n in names], fontsize=8)
    if len(names) <= 16:
        for i in range(len(names)):
            for j in range(len(names)):
                if math.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(mat[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=ax, shrink=0.85).set_label("Spearman's rho of per-module median L2")
    fig.suptitle("Agreement of the change patterns", fontsize=12)
    return fig
