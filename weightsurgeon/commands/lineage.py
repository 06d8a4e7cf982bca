"""`surgeon lineage`: rank candidate parents of a model by a small, stated sample of its weights."""
from __future__ import annotations

import click


@click.command("lineage")
@click.argument("model")
@click.argument("candidates", nargs=-1, required=True)
@click.option("--sample", "modules", default="attn,mlp,norm", show_default=True, metavar="SPEC",
              help="Modules sampled (the --module syntax: o_proj, attn, norm, re:REGEX ...).")
@click.option("--layers", default=None, metavar="SPEC", help="Layers sampled (default: the first and the last).")
@click.option("--elements", type=click.IntRange(min=1), default=65_536, show_default=True,
              help="Leading elements read of each sampled tensor.")
@click.option("--remote", is_flag=True,
              help="Hub ids not in the local cache are read from the Hub by range: only the sample's bytes.")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON to stdout.")
def lineage_cmd(model: str, candidates: tuple[str, ...], modules: str, layers: str | None, elements: int,
                remote: bool, as_json: bool) -> None:
    """Rank CANDIDATE... as the parent MODEL was fine-tuned from.

    Candidates whose tensor names or shapes cannot be the parent's are dropped with the
    reason; the rest are ranked by the median relative L2 of a fixed sample (the leading elements
    of the first and last layers' attention, MLP and norm tensors), so only megabytes are
    read. The verdict states its rule.

    \b
    surgeon lineage my-finetune/ Qwen/Qwen2.5-1.5B Qwen/Qwen2.5-Math-1.5B --remote
    """
    from contextlib import ExitStack

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import default_label, unique_labels
    from weightsurgeon.lineage import rank_candidates
    from weightsurgeon.output import emit_json, human, print_warnings

    with ExitStack() as stack:
        target = stack.enter_context(open_checkpoint(model, remote=remote))
        others = [stack.enter_context(open_checkpoint(c, remote=remote)) for c in candidates]
        print_warnings([w for c in [target, *others] for w in c.warnings])
        labels = unique_labels([default_label(c) for c in others])
        report = rank_candidates(target, others, labels, modules=modules, layers=layers, elements=elements)
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(f"model: {report.model}")
    click.echo(f"sample: {report.sample_text}")
    for i, c in enumerate(report.candidates, 1):
        if c.dropped:
            click.echo(f"  -  {c.label:<24} dropped: {c.dropped}")
            continue
        click.echo(f"  {i}. {c.label:<24} median relative L2 {c.distance:<10.4g} worst tensor {c.worst:<10.4g} "
                   f"read {human(c.bytes_read)}")
        if c.note:
            click.echo(f"     {c.note}")
    click.echo(f"read {human(report.bytes_read)} in all (the model's sample: {human(report.model_bytes)})")
    click.echo(f"rule: {report.rule}")
    click.echo(report.verdict)
