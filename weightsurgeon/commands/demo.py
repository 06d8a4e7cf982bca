"""`surgeon demo`: the main job on an embedded default, a synthetic pair with a planted change.

It writes a small base model and a "fine-tune" whose per-module change is planted and
documented (synth.make_tuned, planted.json), runs the diff, draws the figures, and then
checks the report against the ground truth: the modules must come out in the planted
order and the modules planted unchanged must measure exactly zero.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

# Small enough to finish in seconds, large enough that per-tensor estimates are steady.
DEMO_MODEL = dict(arch="qwen2", num_layers=8, hidden_size=256, intermediate_size=704, num_heads=8, num_kv_heads=2,
                  vocab_size=1024, dtype="bf16", shard_bytes=4_000_000)


def check_planted(report: Any, planted: dict, tuned: str | None = None) -> dict:
    """Compare a DiffReport with planted.json: ranking by median relative L2, and exact zeros.

    Every pair of modules planted with different scales must be measured in the same order;
    modules planted with scale 0 must show a delta of exactly 0 (sum of squares and max).
    """
    kinds = {k["module"]: k for k in report.module_kinds(tuned)}
    scale = {m: float(s) for m, s in planted["scale"].items() if m in kinds}
    measured = {m: kinds[m]["median_rel_l2"] for m in scale}
    inversions = []
    for a in scale:
        for b in scale:
            if scale[a] > scale[b] and not measured[a] > measured[b]:
                inversions.append((a, b))
    unchanged = [m for m in planted.get("unchanged", []) if m in kinds]
    not_zero = [m for m in unchanged if not kinds[m]["unchanged"]]
    changed = [m for m in scale if scale[m] > 0]
    ranking_planted = sorted(changed, key=lambda m: -scale[m])
    ranking_measured = sorted(changed, key=lambda m: -(measured[m] if math.isfinite(measured[m]) else -1.0))
    return {
        "recovered": not inversions and not not_zero,
        "ranking_planted": ranking_planted,
        "ranking_measured": ranking_measured,
        "inversions": inversions,
        "unchanged_checked": unchanged,
        "unchanged_not_zero": not_zero,
        "ratio": {m: (measured[m] / scale[m]) if scale[m] else None for m in changed},
    }


def _fresh_model(final: Path, build: Any) -> Path:
    """Write a generated model atomically, replacing an earlier demo's copy (never a foreign folder)."""
    from weightsurgeon.atomic import atomic_output_dir
    from weightsurgeon.errors import SurgeonError

    if final.exists() and not (final / "config.json").exists():
        raise SurgeonError(f"{final}: exists and is not a model written by an earlier demo; choose another --workdir")
    with atomic_output_dir(final, force=True, fsync=False) as tmp:
        build(Path(tmp))
    return final


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("demo-work"), show_default=True,
              help="Where the synthetic models and the report go (replaced on each run).")
@click.option("--no-plots", is_flag=True, help="Skip the figures and report.html.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def demo_cmd(workdir: Path, no_plots: bool, quiet: bool) -> None:
    """Generate a synthetic base and fine-tune with a planted change, diff them, draw the figures, check the result."""
    from weightsurgeon.atomic import atomic_output_dir
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.commands.diff import write_report_folder
    from weightsurgeon.diff import plan_diff, run_diff
    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.output import print_warnings
    from weightsurgeon.progress import ByteProgress, kernels_ready
    from weightsurgeon.report.summary import print_summary
    from weightsurgeon.synth import make_checkpoint, make_tuned

    workdir.mkdir(parents=True, exist_ok=True)
    base_dir, tuned_dir, report_dir = workdir / "base", workdir / "tuned", workdir / "report"
    click.echo(f"generating a synthetic {DEMO_MODEL['arch']} base ({DEMO_MODEL['num_layers']} layers, "
               f"{DEMO_MODEL['dtype']}) and a fine-tune with a planted per-module change in {workdir}/ ...")
    _fresh_model(base_dir, lambda p: make_checkpoint(p, **DEMO_MODEL))
    _fresh_model(tuned_dir, lambda p: make_tuned(base_dir, p))
    planted = json.loads((tuned_dir / "planted.json").read_text())

    with open_checkpoint(base_dir) as base, open_checkpoint(tuned_dir) as tuned:
        plan = plan_diff(base, [tuned])
        print_warnings(plan.warnings)
        kernels_ready(quiet)
        with atomic_output_dir(report_dir, inputs=[base_dir, tuned_dir], force=True) as folder:
            with ByteProgress(plan.total_bytes, "diff", quiet=quiet) as progress:
                report = run_diff(plan, progress=progress)
            written, warnings = write_report_folder(report, Path(folder), plots=not no_plots)
    print_warnings(warnings)
    print_summary(report, files=[str(report_dir / name) for name in written])

    result = check_planted(report, planted)
    click.echo("")
    click.echo(f"planted ranking : {' > '.join(result['ranking_planted'])}")
    click.echo(f"measured ranking: {' > '.join(result['ranking_measured'])}  (median relative L2 across layers)")
    ratios = ", ".join(f"{m} {r:.2f}" for m, r in result["ratio"].items() if r is not None)
    click.echo(f"measured / planted scale: {ratios}")
    if result["unchanged_checked"]:
        state = "exactly zero" if not result["unchanged_not_zero"] else f"NOT zero: {', '.join(result['unchanged_not_zero'])}"
        click.echo(f"planted unchanged ({', '.join(result['unchanged_checked'])}): {state}")
    html = report_dir / "report.html"
    if html.exists():
        click.echo(f"open {html} to see every figure and table on one page")
    if not result["recovered"]:
        shown = "; ".join(f"{a} measured below {b}" for a, b in result["inversions"][:3])
        # internal: the demo diffs a pair it planted itself; only an engine bug fails to recover it
        raise SurgeonError(f"the planted pattern was NOT recovered ({shown or 'unchanged modules moved'})")
    click.echo("planted pattern recovered: yes")
