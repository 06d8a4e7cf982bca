"""`surgeon diff`: the Delta stethoscope on the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

REPORT_JSON = "report.json"


FIGURE_FORMATS = "png"  # SVG on request: a second drawing of every figure, ~0.7 CPU-s a report


def write_report_folder(report: Any, folder: Path, plots: bool = True, every: int | None = None,
                        formats: str = FIGURE_FORMATS) -> tuple[list[str], list[str]]:
    """Write report.json, the tensor rows (report.csv, histograms.safetensors: already there when
    the diff streamed them) and (if the figures module is importable) the figures in `formats`
    and report.html.

    Returns (file names written, warnings). Figures are optional: a missing matplotlib or
    figures module is a warning, never a failed diff.
    """
    files = report.write_rows(folder)
    report.write_json(folder / REPORT_JSON)
    written = [REPORT_JSON, files["csv"], files["histograms"]] + ([files["units"]] if "units" in files else [])
    if report.spectra:
        from weightsurgeon.report.spectrum import SPECTRUM_CSV, write_spectrum_csv

        write_spectrum_csv(report.spectra, folder / SPECTRUM_CSV)
        written.append(SPECTRUM_CSV)
    warnings: list[str] = []
    if not plots:
        return written, warnings
    every = every or report.every or 5
    try:
        from weightsurgeon.report.figures import draw_all
    except ImportError as e:
        warnings.append(f"figures not drawn ({e}); report.json and report.csv are complete")
        return written, warnings
    figures = draw_all(report, folder, every=every, formats=formats)
    written += [Path(f).name for f in figures]
    try:
        from weightsurgeon.report.html import write_html
    except ImportError as e:
        warnings.append(f"report.html not written ({e})")
        return written, warnings
    written.append(Path(write_html(report, folder, figures=figures)).name)
    return written, warnings


def _refuse_nonfinite(entries: list[dict]) -> None:
    """--strict: the first tensor holding NaN/Inf, in the words of `verify --deep`."""
    from weightsurgeon.errors import SurgeonError

    e = entries[0]
    more = f"; {len(entries)} tensor(s) in all" if len(entries) > 1 else ""
    raise SurgeonError(f"{e['file']}: tensor {e['name']!r} has {e['count']} NaN/Inf value(s) of {e['numel']} "
                       f"(--strict{more}); no report written")


def _input_paths(checkpoints: Sequence[Any]) -> list[Path]:
    """Local inputs' folders or files (the output may not be inside one); remote inputs have none."""
    return [c.path for c in checkpoints if not c.is_remote]


def input_reads(plan: Any, per: dict[int, int] | None = None) -> list[dict]:
    """What each input of a diff plan reads (fetches, when remote), against its full size
    (`per`: plan.read_bytes(), where the caller has it)."""
    from weightsurgeon.output import input_read_row

    per = plan.read_bytes() if per is None else per

    return [input_read_row(label, ckpt, per.get(i, 0))
            for i, (ckpt, label) in enumerate([(plan.base, "base"), *zip(plan.others, plan.labels)], start=-1)]


def _say_reads(rows: list[dict], done: bool) -> None:
    """One line per input read from the Hub or the cache: which, and how many bytes of how many."""
    from weightsurgeon.output import human

    for r in rows:
        if r["origin"] == "remote":
            what = (f"fetched {human(r['fetched_bytes'])}" if done
                    else f"will fetch {human(r['read_bytes'])} of tensors")
            click.echo(f"{r['input']}: read remotely from {r['path']}: {what} (the model is {human(r['total_bytes'])})",
                       err=True)
        elif r["origin"] == "cache":
            click.echo(f"{r['input']}: {r['source']} read from the local Hugging Face cache", err=True)


@click.command("diff")
@click.argument("base")
@click.argument("tuned", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Report folder (report.json, report.csv, figures, report.html); created only when the diff completes.")
@click.option("--module", "modules", default=None, metavar="SPEC",
              help="Compare only these modules: o_proj, attn, mlp, norm, 'q_proj,k_proj', re:REGEX ...")
@click.option("--layers", default=None, metavar="SPEC", help="Compare only these layers: 5-30 (inclusive), 0,2,5-9, all.")
@click.option("--experts", default=None, metavar="SPEC",
              help="Compare only these routed experts: 0-7, 0,3,8-15 (other tensors unaffected).")
@click.option("--bins", type=int, default=200, show_default=True, help="Bins of the relative-change histogram.")
@click.option("--clip", type=float, default=1.0, show_default=True,
              help="Histogram range is [-clip, clip]; relative changes beyond it land in the edge bins.")
@click.option("--every", type=click.IntRange(min=1), default=5, show_default=True,
              help="Draw the relative-change histograms of every N-th layer.")
@click.option("--label", "labels", multiple=True, metavar="NAME",
              help="Name of a tuned model in the report (repeat once per tuned model; default: its folder name).")
@click.option("--allow-missing", is_flag=True,
              help="Tensors on one side only or with other shapes are listed in the report instead of failing.")
@click.option("--no-plots", is_flag=True, help="Write report.json and report.csv only.")
@click.option("--format", "formats", default=FIGURE_FORMATS, show_default=True, metavar="LIST",
              help="Figure formats, comma-separated: png, svg. SVG draws every figure a second time (~0.7 CPU-s "
                   "a report); `surgeon plot REPORT --format svg` writes them later from the saved report.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON to stdout (no table).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rows of the 'top (layer, module)' table.")
@click.option("--chunk-mb", type=click.IntRange(min=1, max=1024), default=64, show_default=True,
              help="MiB per tensor side per kernel call; also the read buffers for pairs the kernel cannot read itself.")
@click.option("--spectrum", metavar="MODULES", default=None,
              help="Also the top 1/8/64/256 singular values of each selected 2-D delta (e.g. o_proj) and the share of "
                   "its squared norm they hold, by a randomized SVD: a second read of those tensors, holding one delta "
                   "matrix in float32 at a time (4*out*in bytes, 256 MiB for 8192x8192) plus a sketch of "
                   "(out+in)*266 floats (LAPACK's, about 3x the delta, under ~1064 on the short side).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--strict", is_flag=True,
              help="Any NaN/Inf in a compared tensor is an error (as in `verify --deep`): exit 1, no report.")
@click.option("--remote", is_flag=True,
              help="Hub ids (ORG/NAME[@REV]) not in the local cache are read from the Hub, only the compared tensors' "
                   "bytes, by range, pinned to one commit. Remote bytes cannot be checked against the files' sha256 "
                   "(that needs whole files); sizes are checked against the file list, headers and index.")
@click.option("--dry-run", is_flag=True, help="Print how many bytes each input will read (fetch, when remote); compare nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def diff_cmd(base: str, tuned: tuple[str, ...], output: Path | None, modules: str | None, layers: str | None,
             experts: str | None, bins: int, clip: float, every: int, labels: tuple[str, ...], allow_missing: bool,
             no_plots: bool, formats: str, as_json: bool, top: int, chunk_mb: int, spectrum: str | None, force: bool, strict: bool,
             remote: bool,
             dry_run: bool, quiet: bool) -> None:
    """Compare BASE with one or more fine-tunes TUNED..., tensor by tensor, streaming.

    Reports, per tensor and per (layer, module), the L2 norm of the weight delta, the L2 of
    both sides, relative L2, cosine, max and mean delta and a histogram of the elementwise
    relative change (B - A) / A. Several fine-tunes are compared in one pass that reads
    BASE once. Memory stays at a few read chunks whatever the model size.

    A TUNED that is a PEFT LoRA adapter folder is measured unmerged, exactly: each adapted
    weight as W + scaling * B @ A (rsLoRA, rank_pattern, alpha_pattern), a block of rows at
    a time in float64; modules_to_save are whole replacements. Names that differ from
    BASE's only by a prefix (_orig_mod., module., a missing model.) are paired.

    \b
    surgeon diff Qwen/Qwen2.5-Math-1.5B deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B -o report/
    surgeon diff base/ ft1/ ft2/ --module attn --layers 5-20 --json
    surgeon diff Qwen/Qwen2.5-32B deepseek-ai/DeepSeek-R1-Distill-Qwen-32B --module o_proj --remote -o report/
    surgeon diff base/ full-ft/ lora-adapter/ -o report/
    """
    from contextlib import ExitStack, nullcontext

    from weightsurgeon.atomic import atomic_output_dir, check_output_path
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import open_tuned, plan_diff, run_diff
    from weightsurgeon.output import emit_json, human, print_warnings
    from weightsurgeon.progress import ByteProgress, kernels_ready

    if output is not None and not no_plots:
        from weightsurgeon.report.figures import parse_formats

        formats = ",".join(parse_formats(formats))  # a wrong name fails before anything is read
    if labels and len(labels) != len(tuned):
        raise click.UsageError(f"{len(labels)} --label value(s) for {len(tuned)} tuned model(s): give one per tuned model")
    with ExitStack() as stack:
        base_ckpt = stack.enter_context(open_checkpoint(base, remote=remote))
        opened = [open_tuned(t, remote=remote) for t in tuned]  # (checkpoint, PEFT adapter or None)
        others = [stack.enter_context(ckpt) for ckpt, _ in opened]
        adapters = [adapter for _, adapter in opened]
        inputs = _input_paths([base_ckpt, *(c for c, a in zip(others, adapters) if a is None)])
        inputs += [a.root for a in adapters if a is not None]
        if output is not None:
            check_output_path(output, inputs, force)  # fail before reading gigabytes
        plan = plan_diff(base_ckpt, others, modules=modules, layers=layers, bins=bins, clip=clip,
                         allow_missing=allow_missing, labels=list(labels) or None, every=every, experts=experts,
                         spectrum=spectrum, adapters=adapters)
        print_warnings(plan.warnings)
        if dry_run:
            reads = input_reads(plan)
            if as_json:
                emit_json({"pairs": len(plan.pairs), "inputs": reads})
            else:
                for r in reads:
                    verb = "fetch" if r["origin"] == "remote" else "read"
                    click.echo(f"{r['input']}: {r['source']}: will {verb} {human(r['read_bytes'])} "
                               f"of {human(r['total_bytes'])} ({r['origin']})")
            return
        per = plan.read_bytes()
        _say_reads(input_reads(plan, per), done=False)
        kernels_ready(quiet)
        written: list[str] = []
        extra_warnings: list[str] = []
        target = atomic_output_dir(output, inputs, force) if output is not None else nullcontext(None)
        with target as folder:
            with ByteProgress(plan.total_bytes, "diff", quiet=quiet) as progress:
                report = run_diff(plan, chunk_bytes=chunk_mb * 1024 * 1024, progress=progress,
                                  rows_folder=Path(folder) if folder is not None else None)
            if strict and report.nonfinite:
                _refuse_nonfinite(report.nonfinite)
            reads = input_reads(plan, per)
            fetched = {r["input"]: r["fetched_bytes"] for r in reads if "fetched_bytes" in r}
            if fetched:
                report.timing["fetched_bytes"] = fetched
            # Every input is read: close them and let the plan and both headers' tables go (~60 MB at
            # 100k tensors) before the report files and figures, which then fit in that room.
            stack.close()
            del plan, base_ckpt, others, opened
            if folder is not None:
                written, extra_warnings = write_report_folder(report, Path(folder), plots=not no_plots, every=every,
                                                              formats=formats)
    print_warnings(extra_warnings)
    _say_reads(reads, done=True)
    if as_json:
        stdout = click.get_text_stream("stdout")
        report.dump(stdout)
        stdout.flush()
        return
    from weightsurgeon.report.summary import print_summary

    print_summary(report, top=top, files=[str(output / name) for name in written] if output is not None else ())
