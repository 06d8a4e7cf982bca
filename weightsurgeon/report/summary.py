"""The terminal summary of a diff: where the change is, at a glance.

Two tables per tuned model: the (layer, module) cells with the largest L2 of the delta,
and every module kind across layers (median and peak relative L2, share of the total
squared delta). With several tuned models, one more table puts their per-module medians
side by side. Then notes, mismatches and where the files went.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from weightsurgeon.report.model import DiffReport


def fmt(x: float | None, digits: int = 4) -> str:
    """Numbers that span decades: fixed for ordinary magnitudes, scientific for tiny or huge ones."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 2, 1)}e}"


def _layer(layer: int | None) -> str:
    return "-" if layer is None else str(layer)


SHOWN_NONFINITE = 3  # tensors named per model; report.json lists them all


def nonfinite_lines(report: DiffReport) -> list[str]:
    """One line per model holding NaN/Inf: how many tensors, the worst few, and how they were treated."""
    lines = []
    for model in ["base", *report.labels]:
        entries = sorted((e for e in report.nonfinite if e["model"] == model), key=lambda e: (-e["count"], e["name"]))
        if not entries:
            continue
        worst = ", ".join(f"{e['name']} ({e['count']} of {e['numel']}, {100 * e['count'] / max(e['numel'], 1):.2f}%)"
                          for e in entries[:SHOWN_NONFINITE])
        more = f" and {len(entries) - SHOWN_NONFINITE} more" if len(entries) > SHOWN_NONFINITE else ""
        lines.append(f"{model}: {len(entries)} tensor(s) hold NaN/Inf: {worst}{more}; elements where either side is "
                     "NaN/Inf are left out of L2, cosine, means and histograms (counted as n_nonfinite in report.json; "
                     "--strict makes them an error)")
    return lines


def top_cells(report: DiffReport, tuned: str, n: int = 10) -> list[Any]:
    """The n (layer, module) rows of one tuned model with the largest L2 of the delta."""
    rows = [m for m in report.modules if m.tuned == tuned and math.isfinite(m.stats.l2_delta) and m.stats.l2_delta > 0]
    rows.sort(key=lambda m: -m.stats.l2_delta)
    return rows[:n]


def print_findings(report: DiffReport, say: Any) -> None:
    """The findings block (report/findings.py): one line per finding, per tuned model, then their agreement."""
    from weightsurgeon.report.findings import report_findings

    blocks = report_findings(report)
    say("findings:")
    for label, lines in blocks.items():
        if not lines:
            continue
        if len(report.labels) > 1:
            say(f"  {label}:" if label else "  patterns compared:")
        indent = "    " if len(report.labels) > 1 else "  "
        for finding in lines:
            say(f"{indent}- {finding.text}")


def print_summary(report: DiffReport, console: Any = None, top: int = 10, files: Sequence[str] = ()) -> None:
    """Print the summary tables with rich (console: a rich Console; default stdout)."""
    from rich.markup import escape
    from rich.table import Table

    from weightsurgeon.output import stdout_console

    console = console or stdout_console()

    def say(text: str) -> None:  # paths and tensor names may contain [brackets]: never markup
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    timing = report.timing or {}
    speed = timing.get("gb_per_s")
    say(f"base: {report.base.path}  ({report.base.architecture or 'unknown architecture'}, "
                  f"{report.base.num_layers} layers, {report.base.dtype})")
    for t in report.tuned:
        say(f"tuned {t.label}: {t.path}  ({t.dtype})")
    say(f"compared {report.num_tensors} tensor pair(s), read {timing.get('bytes_read', 0) / 1e9:.2f} GB in "
                  f"{timing.get('seconds', 0):.1f} s" + (f" ({speed:.2f} GB/s)" if speed else ""))
    for line in nonfinite_lines(report):
        say(line)

    print_findings(report, say)

    for label in report.labels:
        cells = Table(title=escape(f"{label}: top {top} (layer, module) by L2 of the delta"), title_justify="left")
        for col, justify in (("#", "right"), ("layer", "right"), ("module", "left"), ("L2 delta", "right"),
                             ("rel L2", "right"), ("cosine", "right"), ("max |delta|", "right")):
            cells.add_column(col, justify=justify)
        for i, m in enumerate(top_cells(report, label, top), 1):
            s = m.stats
            cells.add_row(str(i), _layer(m.layer), m.module, fmt(s.l2_delta), fmt(s.rel_l2), fmt(s.cosine, 6),
                          fmt(s.max_abs_delta))
        if cells.row_count:
            console.print(cells)
        elif any(m.stats.n_nonfinite for m in report.modules if m.tuned == label):  # modules sum their tensors
            left = sum(m.stats.n_nonfinite for m in report.modules if m.tuned == label)
            say(f"{label}: no change in the finite values; {left} element(s) where either side is NaN/Inf were left out (above)")
        else:
            say(f"{label}: no change: every compared tensor equals the base exactly (delta 0)")

        kinds = Table(title=escape(f"{label}: per module across layers (sorted by median relative L2)"), title_justify="left")
        for col, justify in (("module", "left"), ("layers", "right"), ("median rel L2", "right"),
                             ("max rel L2 (layer)", "right"), ("median L2 delta", "right"),
                             ("share of squared delta", "right")):
            kinds.add_column(col, justify=justify)
        rows = report.module_kinds(label)
        rows.sort(key=lambda r: -(r["median_rel_l2"] if math.isfinite(r["median_rel_l2"]) else -1.0))
        for r in rows:
            peak = f"{fmt(r['max_rel_l2'])} ({_layer(r['max_rel_l2_layer'])})"
            median = "unchanged" if r["unchanged"] else fmt(r["median_rel_l2"])
            kinds.add_row(r["module"], _layer(r["layers"] or None), median, peak, fmt(r["median_l2_delta"]),
                          f"{100 * r['share']:.2f}%")
        console.print(kinds)

    if len(report.labels) > 1:
        side = Table(title="median relative L2 across layers, side by side", title_justify="left")
        side.add_column("module")
        for label in report.labels:
            side.add_column(escape(label), justify="right")
        per = {label: {r["module"]: r for r in report.module_kinds(label)} for label in report.labels}
        modules = list(dict.fromkeys(r["module"] for label in report.labels for r in report.module_kinds(label)))
        for module in modules:
            side.add_row(module, *[fmt(per[label][module]["median_rel_l2"]) if module in per[label] else "-"
                                   for label in report.labels])
        console.print(side)

    for note in report.notes:
        say(f"note: {note}")
    if report.missing:
        say(f"not compared ({len(report.missing)}):")
        for m in report.missing[:20]:
            say(f"  {m['tuned']}: {m['name']}: {m['where']} ({m['detail']})")
        if len(report.missing) > 20:
            say(f"  ... and {len(report.missing) - 20} more (see report.json)")
    for path in files:
        say(f"wrote {path}")
