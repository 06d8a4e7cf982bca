"""`surgeon inspect` and `surgeon verify`: what a checkpoint holds, and whether it is sound."""
from __future__ import annotations

from collections import Counter, defaultdict

import click

from weightsurgeon.checkpoint import Checkpoint, open_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import layout_of
from weightsurgeon.output import emit_json, human, print_warnings, stdout_console


def describe(ckpt: Checkpoint, per_layer: bool = False, warnings: list[str] | None = None) -> dict:
    """The machine-readable inspection of a checkpoint (what `inspect --json` prints)."""
    layout = layout_of(ckpt.tensors, ckpt.config)
    view = ckpt.config_view
    params_by_group: Counter = Counter()
    bytes_by_dtype: Counter = Counter()
    tensors_by_dtype: Counter = Counter()
    layers: dict[int, Counter] = defaultdict(Counter)
    for info in ckpt:
        loc = layout.locations[info.name]
        params_by_group[loc.group] += info.numel
        bytes_by_dtype[info.dtype] += info.nbytes
        tensors_by_dtype[info.dtype] += 1
        if loc.layer is not None:
            layers[loc.layer][loc.module] += info.numel
    from weightsurgeon.identity import hub_identity

    identity = hub_identity(ckpt)
    shards = [{"file": s.path.name, "bytes": s.file_size, "tensors": len(s.tensors), "sha256": i["sha256"]}
              for s, i in zip(ckpt.shards, identity["shards"])]
    out = {
        "source": ckpt.source,
        "path": ckpt.location,
        "origin": ckpt.origin,
        "repo": identity["repo"],
        "commit": identity["commit"],
        "architecture": view.architecture,
        "model_type": view.model_type,
        "num_layers": layout.num_layers,
        "hidden_size": view.get("hidden_size"),
        "vocab_size": view.get("vocab_size"),
        "tied_embeddings": layout.tied_embeddings,
        "partial": ckpt.is_partial,
        "num_tensors": len(ckpt),
        "num_parameters": sum(params_by_group.values()),
        "total_bytes": ckpt.total_bytes,
        "dtypes": {d: {"tensors": tensors_by_dtype[d], "bytes": bytes_by_dtype[d]} for d in sorted(bytes_by_dtype)},
        "parameters_by_group": dict(sorted(params_by_group.items(), key=lambda kv: -kv[1])),
        "modules": layout.modules_present(),
        "shards": shards,
        "other": list(layout.other),
        "warnings": list(ckpt.warnings if warnings is None else warnings),
    }
    if per_layer:
        out["parameters_by_layer"] = {str(l): dict(sorted(c.items())) for l, c in sorted(layers.items())}
    if ckpt.remote is not None:
        out["fetched"] = fetched(ckpt)
    return out


def fetched(ckpt: Checkpoint) -> dict:
    """What reading a remote checkpoint has cost so far: bytes and requests."""
    return {"bytes": ckpt.remote.fetched, "requests": ckpt.remote.requests}


def origin_text(info: dict) -> str | None:
    """One line on where a checkpoint was read from, for a Hub id: the cache, or the Hub itself."""
    if info.get("origin") == "remote":
        f = info["fetched"]
        return (f"read remotely from {info['path']}: {human(f['bytes'])} fetched in {f['requests']} request(s) "
                "(config, index, shard headers); no weights downloaded")
    if info.get("origin") == "cache":
        return f"read from the local Hugging Face cache: {info['path']}"
    return None


_REVISION = click.option("--revision", default=None, metavar="REV",
                         help="Hub ids only: branch, tag or commit (also ORG/NAME@REV); resolved to a commit hash.")


def _count(n: int) -> str:
    return human(n, "").strip()


@click.command("inspect")
@click.argument("model")
@click.option("-v", "--verbose", is_flag=True, help="Also list parameters per layer and module.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
@_REVISION
def inspect_cmd(model: str, verbose: bool, as_json: bool, revision: str | None) -> None:
    """Show a checkpoint's architecture, layers, dtypes, parameters per module group and shards.

    A Hub id that is not in the local cache is read from the Hub (HF_ENDPOINT, HF_TOKEN):
    config.json, the index and one ranged request per shard header, no weights.
    """
    from weightsurgeon.verify import verify_checkpoint

    with open_checkpoint(model, remote=True, revision=revision) as ckpt:
        # The structural checks (not --deep) run first: inspecting a broken checkpoint is an error.
        checked = verify_checkpoint(ckpt, deep=False, require_config=False)
        info = describe(ckpt, per_layer=verbose, warnings=checked.warnings)
    print_warnings(info["warnings"])
    if as_json:
        emit_json(info)
        return
    origin = origin_text(info)
    if origin:
        click.echo(origin)
    from rich.markup import escape
    from rich.table import Table

    console = stdout_console()
    # Paths, names and config values come from files: escape them so "[...]" is not read as rich markup.
    kind = info["architecture"] or info["model_type"] or "unknown architecture"
    title = escape(f"{info['path']}  ({kind})")
    summary = Table(title=title, show_header=False, box=None)
    summary.add_row("layers", str(info["num_layers"]))
    summary.add_row("hidden size", escape(str(info["hidden_size"])))
    summary.add_row("vocab size", escape(str(info["vocab_size"])))
    summary.add_row("parameters", f"{_count(info['num_parameters'])} ({info['num_parameters']:,})")
    summary.add_row("size", human(info["total_bytes"]))
    summary.add_row("dtypes", ", ".join(f"{d} ({v['tensors']} tensors)" for d, v in info["dtypes"].items()))
    summary.add_row("tied embeddings", "yes" if info["tied_embeddings"] else "no")
    if info["partial"]:
        summary.add_row("partial", "yes (written by surgeon extract)")
    console.print(summary)
    groups = Table(title="parameters by module group")
    groups.add_column("group")
    groups.add_column("parameters", justify="right")
    groups.add_column("share", justify="right")
    total = max(info["num_parameters"], 1)
    for group, n in info["parameters_by_group"].items():
        groups.add_row(group, f"{n:,}", f"{100 * n / total:.2f}%")
    console.print(groups)
    shards = Table(title=f"{len(info['shards'])} shard(s)")
    shards.add_column("file")
    shards.add_column("tensors", justify="right")
    shards.add_column("size", justify="right")
    for s in info["shards"]:
        shards.add_row(escape(s["file"]), str(s["tensors"]), human(s["bytes"]))
    console.print(shards)
    if verbose and info.get("parameters_by_layer"):
        modules = sorted({m for c in info["parameters_by_layer"].values() for m in c})
        per_layer = Table(title="parameters per layer")
        per_layer.add_column("layer", justify="right")
        for m in modules:
            per_layer.add_column(m, justify="right")
        for layer, counts in info["parameters_by_layer"].items():
            per_layer.add_row(layer, *[f"{counts.get(m, 0):,}" for m in modules])
        console.print(per_layer)
    if info["other"]:
        console.print(escape(f"other: {', '.join(info['other'][:10])}{' ...' if len(info['other']) > 10 else ''}"))


@click.command("verify")
@click.argument("model")
@click.option("--deep", is_flag=True, help="Also scan every tensor for NaN/Inf (reads all bytes, bounded memory).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_REVISION
def verify_cmd(model: str, deep: bool, as_json: bool, quiet: bool, revision: str | None) -> None:
    """Check a checkpoint: headers, index, config against tensors; --deep scans values. Exit 0 if valid.

    A Hub id that is not in the local cache is checked remotely, from its headers (not with
    --deep, which reads every byte: download the model for that). A remote check cannot
    compare the bytes with each file's sha256 (that needs the whole file); it checks every
    size against the file list, the headers and the index.
    """
    from weightsurgeon.progress import ByteProgress
    from weightsurgeon.verify import verify_checkpoint

    with open_checkpoint(model, remote=True, revision=revision) as ckpt:
        if deep and ckpt.remote is not None:
            raise SurgeonError(f"{model}: verify --deep reads every byte: download the model first "
                               f"(`hf download {ckpt.remote.repo_id}`); without --deep it is checked remotely")
        with ByteProgress(ckpt.total_bytes if deep else 0, "scanning", quiet=quiet or not deep) as progress:
            result = verify_checkpoint(ckpt, deep=deep, progress=progress)
        print_warnings(result.warnings)
        summary = {
            "path": ckpt.location,
            "origin": ckpt.origin,
            "valid": True,
            "partial": ckpt.is_partial,
            "shards": len(ckpt.shards),
            "tensors": len(ckpt),
            "bytes": ckpt.total_bytes,
            "deep": deep,
            "checksums": result.checksums,
            "warnings": result.warnings,
        }
        if ckpt.remote is not None:
            summary["fetched"] = fetched(ckpt)
    if as_json:
        emit_json(summary)
    else:
        kind = "partial checkpoint" if summary["partial"] else "checkpoint"
        scanned = ", every value finite" if deep else ""
        if summary["checksums"]:
            origins = " and ".join(sorted(set(summary["checksums"].values())))
            scanned += f", {len(summary['checksums'])} file(s) match the sha256 of their {origins}"
        click.echo(f"ok: {summary['path']}: valid {kind}, {summary['tensors']} tensors in {summary['shards']} shard(s), "
                   f"{human(summary['bytes'])}{scanned}")
        origin = origin_text(summary)
        if origin:
            click.echo(origin)
