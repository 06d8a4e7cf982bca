"""`surgeon demo`: the main job on an embedded default, a synthetic model it generates."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("demo-work"), show_default=True,
              help="Where the synthetic models and the report go.")
def demo_cmd(workdir: Path) -> None:
    """Generate a small synthetic checkpoint, then inspect and verify it."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.commands.inspect import describe
    from weightsurgeon.synth import make_checkpoint
    from weightsurgeon.verify import verify_checkpoint

    base = workdir / "base"
    if not base.exists():
        make_checkpoint(base, arch="qwen2", num_layers=4, dtype="bf16", shard_bytes=200_000)
    with open_checkpoint(base) as ckpt:
        info = describe(ckpt)
        verify_checkpoint(ckpt, deep=True)
    click.echo(f"{base}: {info['architecture']}, {info['num_layers']} layers, {info['num_parameters']:,} parameters, "
               f"{len(info['shards'])} shards: valid, every value finite")
