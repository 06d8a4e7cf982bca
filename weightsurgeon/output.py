"""How commands talk to the user: JSON to stdout, warnings to stderr, rich tables on stdout."""
from __future__ import annotations

import json
import sys
from typing import Any, Iterable

import click


def emit_json(obj: Any) -> None:
    """Machine output for --json: one JSON document on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))


def print_warnings(warnings: Iterable[str]) -> None:
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


def stdout_console():
    """A rich console on stdout; plain text (no colours, wide) when stdout is not a terminal."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(no_color=True, width=160, soft_wrap=False)


def human(n: float, unit: str = "B") -> str:
    """A size or count in decimal prefixes (1.5 GB, 7.6 M), as disks and model cards state them."""
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f} {prefix}{unit}" if prefix else f"{int(n)} {unit}"
        n /= 1000
    return f"{n} {unit}"


def input_read_row(label: str, ckpt: Any, read_bytes: int) -> dict:
    """One input's line of --dry-run / the closing read summary: what it reads (fetches, when remote) of its size."""
    row = {"input": label, "source": ckpt.source, "origin": ckpt.origin, "read_bytes": read_bytes,
           "total_bytes": ckpt.total_bytes}
    if ckpt.is_remote:
        row["path"] = ckpt.location
        row["fetched_bytes"] = ckpt.remote.fetched
    return row
