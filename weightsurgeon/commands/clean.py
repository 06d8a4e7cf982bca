"""`surgeon clean`: find and remove temporary folders that killed runs left beside their outputs.

A run killed by SIGKILL, the OOM killer or a power cut cannot remove its own temporary
folder (see weightsurgeon.atomic). Every later run writing into the same folder removes
such leftovers by itself; this command does it on demand, and shows what it keeps and why.
"""
from __future__ import annotations

from pathlib import Path

import click

from weightsurgeon.output import emit_json


@click.command("clean")
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="List the temporary folders; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was found and removed as JSON.")
def clean_cmd(folders: tuple[Path, ...], dry_run: bool, as_json: bool) -> None:
    """Remove temporary folders (.surgeon-tmp-*) whose run is gone, in FOLDERS (default: the current one).

    Folders in use by a running surgeon, or written on another host, are listed and kept.
    """
    from weightsurgeon.atomic import _size_text, remove_stale, temp_folders
    from weightsurgeon.errors import SurgeonError

    report = []
    freed = 0
    for parent in folders or (Path("."),):
        if not parent.is_dir():
            raise SurgeonError(f"{parent}: not a directory; give the folder that holds the outputs")
        found = temp_folders(parent)
        removed = set() if dry_run else {f.path for f in remove_stale(parent)}
        for f in found:
            action = "removed" if f.path in removed else ("stale" if f.state == "stale" else "kept")
            freed += f.bytes if f.path in removed else 0
            report.append({"folder": str(f.path), "state": f.state, "bytes": f.bytes, "owner": f.owner,
                           "action": action})
            if not as_json:
                click.echo(f"{action}: {f.describe()}")
    if as_json:
        emit_json({"folders": report, "freed_bytes": freed, "dry_run": dry_run})
        return
    if not report:
        click.echo("no temporary folders found")
    elif dry_run:
        stale = sum(r["bytes"] for r in report if r["state"] == "stale")
        click.echo(f"dry run: {_size_text(stale)} in stale folders would be freed")
    else:
        click.echo(f"freed {_size_text(freed)}")
