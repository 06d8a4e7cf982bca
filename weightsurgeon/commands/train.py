"""`surgeon train` and `surgeon recipe ls|cp`: thin click layers over weightsurgeon.recipes.

Nothing heavy is imported at module level: torch, transformers, TRL and DeepSpeed load
only when a run (or a --dry-run) actually starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from weightsurgeon.errors import SurgeonError


@click.command(
    "train",
    context_settings={"ignore_unknown_options": False},
    help=(
        "Freeze-SFT: train only the selected modules under DeepSpeed ZeRO-3.\n\n"
        "CONFIG is a recipe file or a shipped recipe name (`surgeon recipe ls`); OVERRIDES are "
        "key=value pairs such as freeze.modules=o_proj,norm,emb,head train.learning_rate=2e-5.\n\n"
        "With one device it trains in this process; for several devices or nodes it prints the "
        "launcher command (run it with --launch, or write a SLURM script with --slurm)."
    ),
)
@click.argument("config")
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Count trainable parameters on the meta device; load no weights.")
@click.option("--launch", is_flag=True, help="Run the multi-device launcher command instead of printing it.")
@click.option("--slurm", "slurm", type=click.Path(dir_okay=False), default=None,
              help="Write a SLURM sbatch script for the recipe's nodes and devices to this file.")
@click.option("--force", is_flag=True, help="Replace an existing output directory (output.overwrite=true).")
def train_cmd(config: str, overrides: tuple[str, ...], dry_run: bool, launch: bool, slurm: str | None,
              force: bool) -> None:
    from weightsurgeon.recipes.catalog import resolve_config
    from weightsurgeon.recipes.train.config import gradient_accumulation, load_config
    from weightsurgeon.recipes.train.launch import launch_command, sbatch_script, shell_line

    path = resolve_config(config)
    overrides = tuple(overrides) + (("output.overwrite=true",) if force else ())
    for item in overrides:
        if "=" not in item:
            raise click.UsageError(f"override {item!r} is not key=value")
    cfg = load_config(path, overrides)
    world = cfg.world_size

    if dry_run:
        from weightsurgeon.recipes.train.freeze import dry_run as count, format_plan

        plan = count(cfg.model, cfg.freeze)
        click.echo(f"recipe {cfg.name or path.stem}: {cfg.model.path}")
        click.echo(format_plan(plan))
        click.echo(
            f"devices {world} ({cfg.distributed.nnodes} node(s) x {cfg.distributed.nproc_per_node}), ZeRO-"
            f"{cfg.distributed.zero_stage}; batch {cfg.train.per_device_batch_size}/device x "
            f"{gradient_accumulation(cfg, world)} accumulation = {cfg.train.global_batch_size}; "
            f"max_length {cfg.train.max_length}; {cfg.train.precision}"
        )
        return

    if slurm:
        Path(slurm).write_text(sbatch_script(cfg, str(path), overrides))
        click.echo(f"wrote {slurm}; submit it with: sbatch {slurm}")
        return

    launched = "RANK" in os.environ or "LOCAL_RANK" in os.environ
    if world > 1 and not launched:
        if cfg.distributed.nnodes > 1 and launch:
            raise SurgeonError("--launch starts one node; for several nodes use --slurm or run the printed command on each")
        if not launch:
            argv = launch_command(cfg, str(path), overrides)
            click.echo(shell_line(argv))
            click.echo("(run it with --launch, or on each node for several nodes)", err=True)
            return
        from weightsurgeon.recipes.train.runner import free_port

        argv = launch_command(cfg, str(path), overrides, master_port=free_port(), python=sys.executable)
        click.echo(shell_line(argv), err=True)
        rc = subprocess.call(argv)
        if rc:
            raise SurgeonError(f"training processes exited with status {rc} (see the log above)")
        return

    from weightsurgeon.recipes.train.runner import run, summary_line

    summary = run(cfg, base_dir=path.resolve().parent)
    if summary.get("output"):
        click.echo(summary_line(summary))


@click.group("recipe", help="List the shipped recipes and copy one to edit.")
def recipe_group() -> None:
    pass


@recipe_group.command("ls", help="List shipped recipe configs.")
def recipe_ls() -> None:
    from weightsurgeon.recipes.catalog import list_recipes

    entries = list_recipes()
    width = max((len(e.name) for e in entries), default=4)
    for e in entries:
        click.echo(f"{e.name:<{width}}  {e.kind:<5}  {e.description}")


@recipe_group.command("cp", help="Copy recipe NAME to DEST (a file or a directory) to edit it: every key is in the file.")
@click.argument("name")
@click.argument("dest", type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def recipe_cp(name: str, dest: str, force: bool) -> None:
    from weightsurgeon.recipes.catalog import copy_recipe

    out = copy_recipe(name, dest, force=force)
    click.echo(f"copied {name} -> {out}")


@click.command("train-plot", help="Overlay the training-loss curves of `surgeon train` outputs (as the paper's Fig. 6).")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Image file to write (.png, .pdf or .svg).")
@click.option("--smooth", default=1, show_default=True, type=click.IntRange(min=1),
              help="Moving-average window in logged steps.")
def train_plot_cmd(runs: tuple[str, ...], output: str, smooth: int) -> None:
    from weightsurgeon.recipes.train.plots import plot_losses

    out = plot_losses([Path(r) for r in runs], Path(output), smooth=smooth)
    click.echo(f"wrote {out}")
