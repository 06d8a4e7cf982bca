"""`surgeon plot report.json`: redraw the figures and report.html from a saved diff report.

The report is the source of truth, so pictures can be redrawn (another --every, SVG only,
a newer version's figures) without reading a checkpoint again.
"""
from __future__ import annotations

from pathlib import Path

import click

from weightsurgeon.commands.diff import REPORT_JSON
from weightsurgeon.errors import SurgeonError


def report_path(path: Path) -> Path:
    """report.json itself, or the one in a report folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / REPORT_JSON).is_file():
            raise SurgeonError(f"{path}: folder has no {REPORT_JSON}; give a folder written by `surgeon diff`, or its {REPORT_JSON}")
        return path / REPORT_JSON
    return path


@click.command("plot")
@click.argument("report", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for the figures and report.html  [default: the report's folder]")
@click.option("--every", type=click.IntRange(min=1), default=None,
              help="Histograms of every N-th layer  [default: the report's --every, else 5]")
@click.option("--format", "formats", default="png,svg", show_default=True, metavar="LIST",
              help="Figure formats, comma-separated: png, svg.")
@click.option("--no-html", is_flag=True, help="Draw the figures only.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def plot_cmd(report: Path, output: Path | None, every: int | None, formats: str, no_html: bool, quiet: bool) -> None:
    """Redraw the figures and report.html of a saved `surgeon diff` report.

    \b
    Writes into the report's folder (or -o DIR), replacing earlier figures of the same name:
      l2_by_layer       L2 of the delta across layers, one line per module (paper Fig. 2)
      rel_change_hist   relative-change histograms every N layers, one panel per module (Fig. 3)
      rel_l2_heatmap    layers x modules heatmap of the relative L2
      delta_share       each module kind's share of the squared delta (percent, absolute)
      report.html       one self-contained page with the summary tables and every figure
    """
    from weightsurgeon.report.figures import draw_all, parse_formats
    from weightsurgeon.report.model import DiffReport

    fmts = parse_formats(formats)
    loaded = DiffReport.from_json(report_path(report))
    out_dir = output if output is not None else (report if report.is_dir() else report.parent)
    out_dir = out_dir.expanduser()
    if out_dir.exists() and not out_dir.is_dir():  # click checks -o as typed; `~/file` is only a file once expanded
        raise SurgeonError(f"{out_dir}: exists and is not a folder; give -o a folder for the figures")
    if not out_dir.parent.is_dir():
        raise SurgeonError(f"{out_dir.parent}: the output's parent folder does not exist; create it first")
    figures = draw_all(loaded, out_dir, every=every, formats=fmts)
    written = [str(p) for p in figures]
    if not no_html:
        from weightsurgeon.report.html import write_html

        written.append(str(write_html(loaded, out_dir, figures=figures, every=every)))
    if not quiet:
        if not figures:
            click.echo("no figure drawn: the report has no per-layer module or histogram to show", err=True)
        for path in written:
            click.echo(path)
