"""`surgeon splice | zero | reinit | remove | extract`: the Merge and Destruction stethoscopes.

Each command opens its inputs, builds a plan (weightsurgeon.surgery), prints it with
--dry-run, or hands it to the one executor (weightsurgeon.writer) and prints a summary.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import click

from weightsurgeon.output import emit_json, human, print_warnings, stdout_console


def _output_options(f: Callable) -> Callable:
    options = [
        click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder (created atomically)."),
        click.option("--force", is_flag=True, help="Replace an existing output folder."),
        click.option("--dry-run", is_flag=True, help="Print the plan (what changes, where, how many bytes); write nothing."),
        click.option("--verify", is_flag=True, help="After writing, re-read every tensor and compare its bytes with its source. "
                     "A remote (--remote) source is not fetched again: the output is compared with the sha256 of the "
                     "bytes as they were fetched and written."),
        click.option("--no-fsync", is_flag=True,
                     help="Skip flushing the output to disk before the rename (faster; not safe against a power loss)."),
        click.option("--checksums/--no-checksums", default=False, show_default=True,
                     help="Record the sha256 of every file written in surgeon.json, taken while writing (copies then "
                          "pass through memory instead of copy_file_range); `surgeon verify --deep` checks them later."),
        click.option("--max-shard-size", default="5GB", show_default=True, help="Largest shard (5GB, 500MB, 2GiB, bytes)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the plan (--dry-run) or the result as JSON on stdout."),
        click.option("--remote", is_flag=True,
                     help="Hub ids (ORG/NAME[@REV]) not in the local cache are read from the Hub: only the tensors the "
                          "output takes from them, by range, pinned to one commit, streamed into the output. Remote "
                          "bytes cannot be checked against the files' sha256 (that needs whole files).")
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _arguments(ctx: click.Context) -> dict:
    """The command's parameters as given, for surgeon.json (paths as strings)."""
    skip = {"quiet", "as_json", "dry_run"}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.params.items() if k not in skip}


def command_line(ctx: click.Context) -> str | None:
    """The exact command as typed (from cli.main), for surgeon.json and the model card."""
    import shlex

    argv = (ctx.find_root().obj or {}).get("argv")
    return shlex.join(argv) if argv else None


def _run(ctx: click.Context, build: Callable, sources: list[str]) -> None:
    """Open the inputs, build the plan, then print it (--dry-run) or write it."""
    from weightsurgeon.atomic import check_output_path
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.surgery import input_paths, parse_size
    from weightsurgeon.writer import WriteOptions, write_plan

    p = ctx.params
    output: Path | None = p["output"]
    if output is None and not p["dry_run"]:
        raise click.UsageError("missing option -o/--output (or pass --dry-run)")
    max_shard = parse_size(p["max_shard_size"])
    with contextlib.ExitStack() as stack:
        ckpts = [stack.enter_context(open_checkpoint(s, remote=p["remote"])) for s in sources]
        for c in ckpts:
            print_warnings(c.warnings)
        plan = build(*ckpts)
        print_warnings(plan.warnings)
        if command_line(ctx):
            plan.provenance.setdefault("command", command_line(ctx))
        if p["dry_run"]:
            if output is not None:  # a dry run says now what the real run would refuse (write_plan checks it then)
                check_output_path(output, input_paths(plan), p["force"])
            _show_plan(plan, output, max_shard, p["as_json"])
            return
        # what each input gives: said on stderr for inputs off the local disk, and in --json (a walk over every tensor)
        told = p["as_json"] or any(c.origin != "local" for c in plan.inputs.values())
        if told:
            _say_reads(plan, done=False)
        result = write_plan(plan, output, WriteOptions(max_shard_bytes=max_shard, force=p["force"],
                                                       verify=p["verify"], quiet=p["quiet"],
                                                       fsync=not p["no_fsync"], checksums=p["checksums"]))
        reads = input_reads(plan) if told else []
    print_warnings(result.warnings)
    _say_reads(plan, done=True, reads=reads)
    if p["as_json"]:
        emit_json({"result": result.to_dict(), "plan": plan.summary(), "inputs": reads})
        return
    s = plan.summary()
    kept = s["tensors"] - s["changed_tensors"]
    what = f"{s['changed_tensors']} tensor(s) changed ({human(s['changed_bytes'])}), {kept} copied unchanged"
    if plan.operation == "remove":
        what = f"{s['dropped_tensors']} tensor(s) of layers {plan.provenance['removed_layers']} dropped, {s['tensors']} kept"
    elif plan.operation == "extract":
        what = f"{s['tensors']} tensor(s) extracted (partial checkpoint)"
    elif plan.operation == "cast":
        c = plan.provenance["cast"]
        did = (f"{c['dequantized']} weight(s) dequantized to {c['to']}" if "dequantized" in c
               else f"{c['quantized']} weight(s) quantized to {c['to']} ({c['block'][0]}x{c['block'][1]} blocks)")
        what = f"{did}, {kept} copied unchanged"
    click.echo(f"wrote {result.output}: {what}; {human(result.total_bytes)} in {len(result.shards)} shard(s) "
               f"in {result.seconds:.1f} s{_verified(result)}")
    for key, (old, new) in plan.config_edits.items():
        click.echo(f"  config.json {key}: {_short(old)} -> {_short(new)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def input_reads(plan) -> list[dict]:
    """What the writer reads (fetches, when remote) from each input, against the input's size."""
    from weightsurgeon.writer import plan_reads

    per: dict[int, int] = {}
    for ckpt, _file, begin, end in plan_reads(plan):
        per[id(ckpt)] = per.get(id(ckpt), 0) + end - begin
    from weightsurgeon.output import input_read_row

    return [input_read_row(role, ckpt, per.get(id(ckpt), 0)) for role, ckpt in plan.inputs.items()]


def _say_reads(plan, done: bool, reads: list[dict] | None = None) -> None:
    """On stderr, one line per input read from the Hub (what it will fetch, or fetched) or from the cache."""
    for r in reads if reads is not None else input_reads(plan):
        if r["origin"] == "remote":
            what = f"fetched {human(r['fetched_bytes'])}" if done else f"will fetch {human(r['read_bytes'])} of tensors"
            click.echo(f"{r['input']}: read remotely from {r['path']}: {what} (the model is {human(r['total_bytes'])})",
                       err=True)
        elif r["origin"] == "cache" and not done:
            click.echo(f"{r['input']}: {r['source']} read from the local Hugging Face cache", err=True)


def _show_plan(plan, output: Path | None, max_shard: int, as_json: bool) -> None:
    from rich.table import Table

    from weightsurgeon.writer import assign_shards

    shards = len(assign_shards(plan.tensors, max_shard, plan.shard_of))
    reads = input_reads(plan)
    if as_json:
        doc = plan.to_dict()
        doc["output"] = str(output) if output else None
        doc["shards"] = shards
        doc["inputs"] = reads
        emit_json(doc)
        return
    s = plan.summary()
    console = stdout_console()
    table = Table(title=f"{plan.operation} plan (dry run: nothing written)")
    for col, justify in (("source", "left"), ("module", "left"), ("layers", "left"), ("tensors", "right"), ("bytes", "right")):
        table.add_column(col, justify=justify)
    for g in s["changes"]:
        table.add_row(g["source"], g["module"], g["layers"], str(g["tensors"]), human(g["bytes"]))
    unchanged = [t for t in plan.tensors if not t.changed]
    if unchanged:
        table.add_row("unchanged (raw copy)", "", "", str(len(unchanged)), human(sum(t.nbytes for t in unchanged)))
    if s["dropped_tensors"]:
        table.add_row("dropped", "", ",".join(map(str, plan.provenance.get("removed_layers", []))), str(s["dropped_tensors"]), "")
    console.print(table)
    for key, (old, new) in plan.config_edits.items():
        console.print(f"config.json {key}: {_short(old)} -> {_short(new)}")
    console.print(f"output: {output or '(none given)'}: {s['tensors']} tensors, {human(s['bytes'])} in {shards} shard(s)")
    for r in reads:
        verb = "fetch" if r["origin"] == "remote" else "read"
        console.print(f"{r['input']}: {r['source']}: will {verb} {human(r['read_bytes'])} of {human(r['total_bytes'])} "
                      f"({r['origin']})")


@click.command("splice")
@click.argument("base")
@click.argument("donor")
@click.option("--take", help="Modules to take from DONOR: o_proj, attn, qkv, mlp, norm, emb, head, re:REGEX ...")
@click.option("--exclude", help="Take everything from DONOR except these modules (they stay BASE's).")
@click.option("--layers", help="Only these layers: 5-30 (inclusive), 0,2,5-9, all.")
@click.option("--alpha", type=float, default=1.0, show_default=True,
              help="(1-alpha)*BASE + alpha*DONOR for the taken modules; 1 copies DONOR's bytes exactly.")
@click.option("--cast", is_flag=True, help="Round DONOR tensors of another dtype to BASE's dtype (nearest even).")
@click.option("--head-from-embeddings", is_flag=True,
              help="DONOR ties its head to its embeddings: write its embed_tokens as the output's lm_head.")
@click.option("--experts", default=None, metavar="SPEC", help="Only these routed experts: 0-7, 0,3,8-15 (other tensors unaffected).")
@click.option("--tokenizer-from", type=click.Choice(["base", "donor"]), default="base", show_default=True,
              help="Whose tokenizer, chat template and generation config to copy.")
@click.option("--drop-donor-only", is_flag=True,
              help="Leave out DONOR tensors of the taken modules that BASE lacks (a bias, say) instead of refusing.")
@_output_options
@click.pass_context
def splice_cmd(ctx: click.Context, base: str, donor: str, take: str | None, exclude: str | None, layers: str | None,
               alpha: float, cast: bool, head_from_embeddings: bool, tokenizer_from: str, experts: str | None,
               drop_donor_only: bool,
               **_: object) -> None:
    """Transplant modules: DONOR's --take modules (weights and biases), BASE's everything else.

    \b
    surgeon splice BASE DONOR --take o_proj -o merged/
    surgeon splice BASE DONOR --take o_proj --layers 5-30 --alpha 0.5 -o half/
    surgeon splice BASE plugin/ --take o_proj -o merged/     (plugin/ from surgeon extract)
    surgeon splice BASE adapter/ -o merged/                  (a PEFT LoRA adapter, merged in)
    """
    from weightsurgeon.adapter import ADAPTER_WEIGHTS, is_adapter_dir, open_adapter
    from weightsurgeon.surgery import plan_splice

    if is_adapter_dir(donor):  # a PEFT LoRA adapter: merge it (--take/--layers filter its modules)
        from weightsurgeon.adapter_merge import plan_splice_adapter

        if exclude is not None or cast or head_from_embeddings or tokenizer_from != "base":
            raise click.UsageError("merging an adapter takes only --take, --layers and --alpha")
        open_adapter(donor)  # first: a missing or pickle weights file gets the adapter's message, not "no such file"
        _run(ctx, lambda b, a: plan_splice_adapter(b, a, donor, take=take, layers=layers, alpha=alpha,
                                                   arguments=_arguments(ctx)), [base, str(Path(donor) / ADAPTER_WEIGHTS)])
        return
    if (take is None) == (exclude is None):
        raise click.UsageError("give exactly one of --take MODULES or --exclude MODULES")
    _run(ctx, lambda b, d: plan_splice(b, d, take=take, exclude=exclude, layers=layers, alpha=alpha, cast=cast,
                                       head_from_embeddings=head_from_embeddings, tokenizer_from=tokenizer_from,
                                       arguments=_arguments(ctx), experts=experts, drop_donor_only=drop_donor_only),
         [base, donor])


@click.command("zero")
@click.argument("model")
@click.option("--module", "modules", required=True, help="Modules to zero: o_proj, attn, mlp, norm, ...")
@click.option("--layers", help="Only these layers: 5-30 (inclusive), 0,2,5-9, all.")
@click.option("--experts", default=None, metavar="SPEC", help="Only these routed experts: 0-7, 0,3,8-15 (other tensors unaffected).")
@_output_options
@click.pass_context
def zero_cmd(ctx: click.Context, model: str, modules: str, layers: str | None, experts: str | None, **_: object) -> None:
    """Set every parameter of the selected modules (weights and biases) to 0."""
    from weightsurgeon.surgery import plan_zero

    _run(ctx, lambda m: plan_zero(m, modules, layers, arguments=_arguments(ctx), experts=experts), [model])


@click.command("reinit")
@click.argument("model")
@click.option("--module", "modules", required=True, help="Modules to re-initialise: o_proj, attn, mlp, ...")
@click.option("--layers", help="Only these layers: 5-30 (inclusive), 0,2,5-9, all.")
@click.option("--experts", default=None, metavar="SPEC", help="Only these routed experts: 0-7, 0,3,8-15 (other tensors unaffected).")
@click.option("--std", type=float, default=0.02, show_default=True, help="Standard deviation of the Gaussian.")
@click.option("--mean", type=float, default=0.0, show_default=True, help="Mean of the Gaussian.")
@click.option("--seed", type=int, default=0, show_default=True, help="Values depend only on (seed, tensor name).")
@_output_options
@click.pass_context
def reinit_cmd(ctx: click.Context, model: str, modules: str, layers: str | None, std: float, mean: float, seed: int,
               experts: str | None, **_: object) -> None:
    """Re-initialise the selected modules with a seeded Gaussian, reproducibly."""
    from weightsurgeon.surgery import plan_reinit

    _run(ctx, lambda m: plan_reinit(m, modules, layers, std=std, mean=mean, seed=seed, arguments=_arguments(ctx),
                                    experts=experts), [model])


@click.command("remove")
@click.argument("model")
@click.option("--layers", required=True, help="Decoder layers to drop: 5-30 (inclusive), 0,2,5-9.")
@_output_options
@click.pass_context
def remove_cmd(ctx: click.Context, model: str, layers: str, **_: object) -> None:
    """Drop whole decoder layers, renumber the rest, and edit config.json to match."""
    from weightsurgeon.surgery import plan_remove

    _run(ctx, lambda m: plan_remove(m, layers, arguments=_arguments(ctx)), [model])


@click.command("extract")
@click.argument("model")
@click.option("--take", required=True, help="Modules to extract: o_proj, attn, mlp, norm, emb, head, re:REGEX ...")
@click.option("--layers", help="Only these layers: 5-30 (inclusive), 0,2,5-9, all.")
@click.option("--experts", default=None, metavar="SPEC", help="Only these routed experts: 0-7, 0,3,8-15 (other tensors unaffected).")
@click.option("--base", "base", help="With --lora: the model the delta is taken from (MODEL - BASE).")
@click.option("--lora", "lora", type=click.IntRange(min=1), help="Write a PEFT LoRA adapter of rank R of MODEL - BASE.")
@click.option("--dtype", type=click.Choice(["base", "f32", "bf16", "f16"]), default="base", show_default=True,
              help="With --lora: the adapter's dtype (base: BASE's).")
@click.option("--svd", "svd", type=click.Choice(["auto", "exact", "randomized"]), default="auto", show_default=True,
              help="With --lora: truncated SVD method (auto: randomized for ranks well below full).")
@click.option("--bias", "bias", type=click.Choice(["error", "drop", "lora"]), default="error", show_default=True,
              help="With --lora: what to do with bias deltas (Qwen2 q/k/v): refuse, leave out, or write lora_B.bias (not for vLLM).")
@_output_options
@click.pass_context
def extract_cmd(ctx: click.Context, model: str, take: str, layers: str | None, experts: str | None, base: str | None,
                lora: int | None, dtype: str, svd: str, bias: str, **_: object) -> None:
    """Write only the selected tensors: a partial checkpoint ("plugin") for `splice BASE plugin/ --take ...`.

    \b
    With --lora R --base BASE: a PEFT LoRA adapter of MODEL - BASE instead, one matrix at a time by
    truncated SVD, with the share of each delta's squared norm that rank R keeps:
    surgeon extract DONOR --base BASE --take o_proj --lora 64 -o adapter/
    """
    if lora is not None or base is not None:
        if lora is None or base is None:
            raise click.UsageError("--lora RANK and --base BASE go together")
        from weightsurgeon.commands.lora import run_extract_lora

        run_extract_lora(ctx, model, base, take, layers, lora, dtype, svd, bias)
        return
    from weightsurgeon.surgery import plan_extract

    _run(ctx, lambda m: plan_extract(m, take, layers, arguments=_arguments(ctx), experts=experts), [model])


@click.command("cast")
@click.argument("model")
@click.option("--dtype", "dtype", required=True, type=click.Choice(["bf16", "f16", "f32", "fp8"]),
              help="bf16/f16/f32: dequantize FP8 and MXFP4 weights; fp8: quantize float weights (F8_E4M3, block scales).")
@click.option("--module", "modules", default=None, help="Only these modules: o_proj, attn, mlp, experts, re:REGEX ...")
@click.option("--layers", help="Only these layers: 5-30 (inclusive), 0,2,5-9, all.")
@click.option("--experts", default=None, metavar="SPEC", help="Only these routed experts: 0-7, 0,3,8-15.")
@click.option("--like", "like", default=None, metavar="QUANTIZED",
              help="With --dtype fp8: copy this FP8 checkpoint's scheme (block, scale name and dtype, "
                   "quantization_config) and, without --module, quantize what it quantizes.")
@click.option("--allow-overflow", is_flag=True, help="With --dtype f16: write values beyond +-65504 as inf instead of refusing.")
@_output_options
@click.pass_context
def cast_cmd(ctx: click.Context, model: str, dtype: str, modules: str | None, layers: str | None, experts: str | None,
             like: str | None, allow_overflow: bool, **_: object) -> None:
    """Change the format of weights: FP8/MXFP4 to bf16, f16 or f32, or bf16/f16/f32 to FP8.

    \b
    surgeon cast deepseek-ai/DeepSeek-V3 --dtype bf16 -o v3-bf16/
    surgeon cast openai/gpt-oss-20b --dtype bf16 -o gpt-oss-bf16/   (experts in transformers' bf16 layout)
    surgeon cast tuned-bf16/ --dtype fp8 --like deepseek-ai/DeepSeek-V3 -o tuned-fp8/
    surgeon cast Qwen/Qwen3-8B --dtype fp8 --module o_proj -o oproj-fp8/

    \b
    Dequantized values are weight x scale in float32, rounded to nearest even; scales leave the
    output and quantization_config leaves config.json (after a partial cast, the cast modules join
    its modules_to_not_convert). Quantized weights get one scale per 128x128 block (amax / 448).
    The output is sharded like the input; everything not cast is copied as raw bytes.
    """
    from weightsurgeon.cast import plan_cast

    def build(m, l=None):
        return plan_cast(m, dtype, modules=modules, layers=layers, experts=experts, like=l,
                         allow_overflow=allow_overflow, arguments=_arguments(ctx))

    _run(ctx, build, [model] + ([like] if like else []))


def _verified(result) -> str:
    if not result.verified:
        return ""
    if result.verified_fetched_bytes:
        return (f", verified byte for byte ({human(result.verified_fetched_bytes)} against the sha256 of the bytes as "
                "fetched, without fetching them again)")
    return ", verified byte for byte"
