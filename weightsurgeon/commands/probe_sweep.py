"""`surgeon probe MODEL --sweep paper|FILE.yaml`: print and write the destruction table (the engine is
weightsurgeon.recipes.eval.sweep; heavy imports stay inside the function)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from weightsurgeon.errors import SurgeonError


def run_sweep_command(models: tuple[str, ...], sweep: str, backend: str, prompt_mode: str, max_new_tokens: int,
                      device: str | None, dtype: str | None, output: str | None, force: bool, as_json: bool,
                      donor: str | None = None, tasks: str | None = None, data: dict[str, str] | None = None,
                      limit: int | None = None) -> None:
    from weightsurgeon.atomic import check_output_path
    from weightsurgeon.recipes.eval.sweep import run_sweep, table_header, table_rows, write_sweep
    from weightsurgeon.recipes.eval.tables import print_table

    if len(models) != 1:
        raise SurgeonError(f"--sweep probes one MODEL (loaded once), got {len(models)}")
    if backend != "hf":
        raise SurgeonError("--sweep changes weights in memory between cells: it runs on the hf backend only")
    if output:
        check_output_path(Path(output), [], force)
    options = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    eval_cfg = None
    if tasks:
        from weightsurgeon.recipes.eval.config import build_config

        eval_cfg = build_config({}, {"model": models[0], "tasks": [t.strip() for t in tasks.split(",") if t.strip()],
                                     "prompt": prompt_mode, "max_tokens": max_new_tokens, "limit": limit, "data": data or None})
    elif data or limit:
        raise SurgeonError("--data and --limit go with --tasks")
    result = run_sweep(models[0], sweep, options, prompt_mode=prompt_mode, max_new_tokens=max_new_tokens, log=log,
                       donor=donor, eval_cfg=eval_cfg)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        base = result["baseline"]
        print_table(f"{models[0]}: output levels per cell (first row: the intact model)", table_header(result),
                    table_rows(result, with_baseline=True))
    if output:
        write_sweep(result, output, force)
        stem = result["stem"]
        click.echo(f"wrote {output}: {stem}.csv, {stem}.md, {stem}.png, probe.json, generations.jsonl", err=as_json)
