"""report.html: one self-contained page (summary tables and every figure) to open or send.

Everything the page needs is inside it: images are embedded as ``data:`` URIs, the
style sheet is inline, there is no script and no link to anything outside, so the
file opens the same from a mail attachment, an air-gapped machine or a CI artifact.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from weightsurgeon.atomic import replace_file
from weightsurgeon.report.figures import FIGURE_NAMES, as_report, caption, render_png
from weightsurgeon.report.model import DiffReport, finite

PAGE_NAME = "report.html"
MAX_MISSING_ROWS = 200

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.barfill { display: inline-block; height: 0.8em; background: #e07b39; vertical-align: middle; }
code { font-size: 0.95em; }
figure { margin: 1.2em 0 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
.headline { background: #fbf6ef; border-left: 4px solid #e07b39; padding: 0.4em 0.8em; }
"""


def ranked_kinds(report: DiffReport, tuned: str) -> list[dict]:
    """`DiffReport.module_kinds` of one tuned model, largest total L2 of the delta first (unmeasured last)."""
    kinds = report.module_kinds(tuned)
    kinds.sort(key=lambda k: (finite(k["l2_delta"]) is None, -(finite(k["l2_delta"]) or 0.0)))
    return kinds


def _num(x: float | None) -> str:
    x = finite(x)
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.3e}"
    return f"{x:.4g}"


def _percent(x: float | None) -> str:
    x = finite(x)
    if x is None:
        return "–"
    if 0 < x < 0.01:
        return "&lt;0.01%"
    return f"{x:.2f}%"


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table from already-escaped cells; columns listed in ``numeric`` align right."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _inputs_section(data: dict) -> str:
    base = data.get("base") if isinstance(data.get("base"), dict) else {}
    rows = []
    for role, ident in [("base", base)] + [("tuned", t) for t in data.get("tuned", []) if isinstance(t, dict)]:
        digest = str(ident.get("layout_digest") or ident.get("digest") or "")  # "digest" in schema 1
        if ident.get("commit"):  # the weights' own identity, where known
            digest = f"{digest} ({ident.get('repo')}@{str(ident['commit'])[:12]})"
        rows.append([
            role, _e(ident.get("label", "")), f"<code>{_e(ident.get('source'))}</code>", f"<code>{_e(ident.get('path'))}</code>",
            _e(ident.get("architecture")), _e(ident.get("num_layers")), _e(ident.get("dtype")),
            f'<code title="{_e(digest)}">{_e(digest[:19] + ("…" if len(digest) > 19 else ""))}</code>',
        ])
    out = ["<h2>Inputs</h2>", _table(["role", "label", "source", "path", "architecture", "layers", "dtype", "layout digest"], rows)]
    options = data.get("options") if isinstance(data.get("options"), dict) else {}
    if options:
        out.append('<p class="meta">options: ' + ", ".join(
            f"{_e(k)} = <code>{_e(v if v is not None else 'all')}</code>" for k, v in options.items()) + "</p>")
    timing = data.get("timing") if isinstance(data.get("timing"), dict) else {}
    parts = []
    if isinstance(timing.get("seconds"), (int, float)):
        parts.append(f"{timing['seconds']:.2f} s")
    if isinstance(timing.get("bytes_read"), (int, float)):
        parts.append(f"{timing['bytes_read'] / 1e9:.2f} GB read")
    if isinstance(timing.get("gb_per_s"), (int, float)):
        parts.append(f"{timing['gb_per_s']:.2f} GB/s")
    if parts:
        out.append(f'<p class="meta">timing: {", ".join(parts)}</p>')
    return "\n".join(out)


def _summary_section(report: DiffReport) -> str:
    out = ["<h2>Summary</h2>",
           '<p class="meta">Per tuned model, module kinds ordered by the total L2 norm of their delta '
           "(√ of Σ‖B − A‖² over layers); the share is of the model's total squared delta; the relative L2 "
           "‖B − A‖ / ‖A‖ is summarised across layers.</p>"]
    for tuned in report.labels:
        kinds = ranked_kinds(report, tuned)
        out.append(f"<h3>{_e(tuned)}</h3>")
        if not kinds:
            out.append("<p>No module was measured for this model.</p>")
            continue
        top = kinds[0]
        if finite(top["l2_delta"]):
            out.append(f'<p class="headline">Most changed: <b>{_e(top["module"])}</b>, {100 * top["share"]:.1f}% of the '
                       f"squared delta; median relative L2 across layers {_num(top['median_rel_l2'])}.</p>")
        elif all(k["l2_delta"] == 0 for k in kinds):
            out.append('<p class="headline">No weight changed: every measured module is identical to the base.</p>')
        rows = []
        for rank, k in enumerate(kinds, 1):
            share = 100.0 * k["share"] if finite(k["l2_delta"]) is not None else None
            width = 0 if share is None else max(0.0, min(100.0, share))
            bar = f'<span class="barfill" style="width:{width * 0.8:.1f}px"></span>' if width else ""
            rows.append([
                str(rank), f"<code>{_e(k['module'])}</code>", str(k["layers"]) if k["layers"] else "–",
                _num(k["l2_delta"]), _percent(share), bar, _num(k["median_rel_l2"]), _num(k["max_rel_l2"]),
                "–" if k["max_rel_l2_layer"] is None else str(k["max_rel_l2_layer"]),
            ])
        out.append(_table(["#", "module", "layers", "total L2 of delta", "share of ‖Δ‖²", "", "median rel. L2",
                           "max rel. L2", "at layer"], rows, numeric=(0, 2, 3, 4, 6, 7, 8)))
    return "\n".join(out)


def _findings_section(report: DiffReport) -> str:
    """The findings block (report/findings.py) at the top of the page: one list per tuned model."""
    from weightsurgeon.report.findings import report_findings

    out = ["<h2>Findings</h2>"]
    for label, lines in report_findings(report).items():
        if not lines:
            continue
        if len(report.labels) > 1:
            out.append(f"<h3>{_e(label) if label else 'Patterns compared'}</h3>")
        out.append('<ul class="findings">' + "".join(f"<li>{_e(f.text)}</li>" for f in lines) + "</ul>")
    return "\n".join(out) if len(out) > 1 else ""


def _notes_section(data: dict) -> str:
    out = []
    notes = [n for n in data.get("notes") or [] if isinstance(n, str)]
    if notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    nonfinite = [e for e in data.get("nonfinite") or [] if isinstance(e, dict)]
    if nonfinite:
        rows = [[_e(e.get("model")), f"<code>{_e(e.get('name'))}</code>", _e(e.get("count")), _e(e.get("numel"))]
                for e in nonfinite[:MAX_MISSING_ROWS]]
        out.append(f"<h2>Tensors holding NaN/Inf ({len(nonfinite)})</h2>")
        out.append("<p>Elements where either side is NaN/Inf are left out of L2, cosine, means and histograms.</p>")
        out.append(_table(["model", "tensor", "NaN/Inf values", "elements"], rows))
    missing = [m for m in data.get("missing") or [] if isinstance(m, dict)]
    if missing:
        rows = [[_e(m.get("tuned")), f"<code>{_e(m.get('name'))}</code>", _e(m.get("where")), _e(m.get("detail"))]
                for m in missing[:MAX_MISSING_ROWS]]
        out.append(f"<h2>Not compared ({len(missing)})</h2>")
        out.append(_table(["tuned", "tensor", "where", "detail"], rows))
        if len(missing) > MAX_MISSING_ROWS:
            out.append(f"<p>… and {len(missing) - MAX_MISSING_ROWS} more (see report.json).</p>")
    return "\n".join(out)


def _embedded_images(figures: Sequence[Path] | None, report: DiffReport, every: int) -> list[tuple[str, str]]:
    """(figure name, data: URI) per figure: PNG preferred over SVG; drawn in memory when no files are given."""
    if figures is None:
        return [(name, "data:image/png;base64," + base64.b64encode(png).decode("ascii"))
                for name, png in render_png(report, every)]
    chosen: dict[str, Path] = {}
    for path in map(Path, figures):
        kind = path.suffix.lower().lstrip(".")
        if kind not in ("png", "svg"):
            continue
        if path.stem not in chosen or (kind == "png" and chosen[path.stem].suffix.lower() != ".png"):
            chosen[path.stem] = path
    order = {name: i for i, name in enumerate(FIGURE_NAMES)}
    out = []
    for stem, path in sorted(chosen.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        mime = "image/png" if path.suffix.lower() == ".png" else "image/svg+xml"
        out.append((stem, f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")))
    return out


def render_html(report: Any, figures: Sequence[Path] | None = None, every: int | None = None) -> str:
    """The page as a string (see write_html)."""
    report = as_report(report)
    data = {**report.to_dict_header(), "timing": dict(report.timing)}  # identities and notes; no rows
    every = every or report.every or 5
    title = f"weightsurgeon diff: {report.base.source or report.base.path or 'base'} vs " + ", ".join(report.labels)
    meta = ", ".join(f"{k} {_e(data.get(k))}" for k in ("created", "version") if data.get(k))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Delta stethoscope report, schema <code>{_e(data.get("schema"))}</code>'
        + (f"; {meta}" if meta else "") + "</p>",
        _findings_section(report),
        _inputs_section(data),
        _summary_section(report),
    ]
    images = _embedded_images(figures, report, every)
    if images:
        parts.append("<h2>Figures</h2>")
        for name, uri in images:
            parts.append(f'<figure id="{_e(name)}"><img src="{uri}" alt="{_e(name)}">'
                         f"<figcaption>{_e(caption(name, every))}</figcaption></figure>")
    parts.append(_notes_section(data))
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def write_html(report: Any, out_dir: Path, figures: Sequence[Path] | None = None, every: int | None = None) -> Path:
    """Write out_dir/report.html (atomically); figures are the files draw_all wrote, or None to draw in memory."""
    page = render_html(report, figures, every)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return replace_file(out_dir / PAGE_NAME, lambda fh: fh.write(page.encode("utf-8")))
