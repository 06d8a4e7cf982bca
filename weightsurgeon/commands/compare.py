"""`surgeon compare-reports`: several saved diff reports in one table and one figure."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("compare-reports")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for compare.csv, compare.json and the figures; created only when complete.")
@click.option("--format", "formats", default="png,svg", show_default=True, metavar="LIST",
              help="Figure formats, comma-separated: png, svg.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def compare_cmd(reports: tuple[Path, ...], output: Path, formats: str, force: bool) -> None:
    """Compare saved `surgeon diff` reports (folders or report.json files), e.g. one per model size.

    \b
    Each tuned model of each report is one pattern. Writes:
      compare.csv          per pattern and module kind: layers, median relative L2 and L2 of
                           the delta over layers, share of the squared delta, bimodal layers
      compare.json         the same, each pattern's findings, and the agreement below
      compare_modules      the per-module medians of every pattern side by side
      compare_agreement    Spearman's rank correlation of per-module medians, every pair
    \b
    surgeon compare-reports r-1.5b/ r-7b/ r-14b/ r-32b/ -o summary/
    """
    from weightsurgeon.atomic import atomic_output_dir, check_output_path
    from weightsurgeon.report.compare import compare, load_patterns, write_outputs
    from weightsurgeon.report.figures import parse_formats

    fmts = parse_formats(formats)
    patterns = load_patterns(list(reports))
    inputs = [Path(p.source).parent for p in patterns]
    check_output_path(output, inputs, force)
    rows, agreement, per = compare(patterns)
    with atomic_output_dir(output, inputs, force) as folder:
        written = write_outputs(Path(folder), patterns, rows, agreement, per, fmts)
    for name, lines in per.items():
        click.echo(f"{name}:")
        for f in lines:
            click.echo(f"  - {f.text}")
    click.echo("patterns compared:")
    for f in agreement:
        click.echo(f"  - {f.text}")
    for path in written:
        click.echo(f"wrote {output / Path(path).name}")
