"""`surgeon extract DONOR --base BASE --take ... --lora R`: open, plan, print (--dry-run) or write, report.

The engine is weightsurgeon.extract; this module parses nothing itself (the options live on
`extract_cmd`) and only prints: the plan, or the kept-energy table and how to load the adapter.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import click

from weightsurgeon.output import emit_json, print_warnings, stdout_console


def print_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    stdout_console().print(table)


def run_extract_lora(ctx: click.Context, donor: str, base: str, take: str, layers: str | None, rank: int,
                     dtype: str, svd: str, bias: str) -> None:
    from weightsurgeon.atomic import check_output_path
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.commands.surgery import _arguments, _show_plan, command_line
    from weightsurgeon.extract import ENERGY_CSV, energy_summary, plan_lora, write_lora
    from weightsurgeon.surgery import input_paths

    p = ctx.params
    output: Path | None = p["output"]
    if output is None and not p["dry_run"]:
        raise click.UsageError("missing option -o/--output (or pass --dry-run)")
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(open_checkpoint(base, remote=bool(ctx.params.get("remote"))))
        d = stack.enter_context(open_checkpoint(donor, remote=bool(ctx.params.get("remote"))))
        for c in (b, d):
            print_warnings(c.warnings)
        lp = plan_lora(b, d, take, layers, rank, dtype=dtype, method=svd, bias=bias, arguments=_arguments(ctx))
        print_warnings(lp.plan.warnings)
        if output is not None:
            check_output_path(output, input_paths(lp.plan), p["force"])
        if p["dry_run"]:
            _show_plan(lp.plan, output, 1 << 62, p["as_json"])
            return
        report = write_lora(lp, output, force=p["force"], fsync=not p["no_fsync"], quiet=p["quiet"],
                            command=command_line(ctx))
    if p["as_json"]:
        emit_json({"output": str(output), "lora": report})
        return
    print_rows(f"LoRA rank {rank}: share of each delta's squared norm kept",
               ["module", "layers", "matrices", "kept min", "kept median", "kept max"], energy_summary(report))
    click.echo(f"wrote {output}: {len(report['matrices'])} module(s), rank {rank}, {report['kept_share_total']:.4f} of the "
               f"delta's squared norm kept overall (per matrix: {output / ENERGY_CSV})")
    serve = report["vllm_max_lora_rank"]
    if report["vllm_problems"]:
        click.echo(f"vLLM would refuse it: {report['vllm_problems'][0]}")
    elif serve is not None:
        click.echo(f"load: PeftModel.from_pretrained(base_model, '{output}'); "
                   f"serve: vllm serve BASE --enable-lora --max-lora-rank {serve} --lora-modules NAME={output}")
