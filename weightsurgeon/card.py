"""Model cards: the README.md with YAML front matter that the Hugging Face Hub reads.

Every output folder of splice, zero, reinit, remove, extract and train gets one, written
with huggingface_hub's `ModelCard` / `ModelCardData` (its YAML, not ours), from the same
provenance document as ``surgeon.json``: what was done in words, the exact command, and
the inputs' identities (header digests).

Front matter: ``base_model`` (Hub ids only: a local folder is no Hub id, and the Hub would
reject the card), ``base_model_relation`` where one of the Hub's relations applies
(adapter, merge, finetune; destruction has none, so none is claimed), ``library_name``
and ``tags: [weightsurgeon, <operation>, ...]``.
"""
from __future__ import annotations

import re
from pathlib import Path

CARD_NAME = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# operation -> (relation to its base model, or None, and the sentence saying what was done).
_WHAT = {
    "splice": "Modules transplanted from a donor model into a base model",
    "splice-adapter": "A LoRA adapter merged into its base model",
    "zero": "Selected modules set to zero (a destruction probe)",
    "reinit": "Selected modules re-initialised with a seeded Gaussian (a destruction probe)",
    "remove": "Whole decoder layers removed and the rest renumbered (a destruction probe)",
    "extract": "Selected tensors of a model, as a partial checkpoint (a plug-in for `surgeon splice`)",
    "extract-lora": "A LoRA adapter of the weight delta between two models, by truncated SVD",
    "train": "Freeze-SFT: only the selected modules were trained",
}


def hub_id(source: str | None, path: str | Path | None = None) -> str | None:
    """The Hub id of an input: as given (a Hub id resolved from the local cache), or read off a
    Hugging Face cache path (``.../models--Org--Name/snapshots/REV``); None for a plain folder."""
    if source and _HUB_ID.match(source) and not Path(source).expanduser().exists():
        return source
    for candidate in (path, source):
        if not candidate:
            continue
        for part in Path(str(candidate)).expanduser().resolve().parts:
            if part.startswith("models--") and part.count("--") >= 2:
                return part[len("models--"):].replace("--", "/", 1)
    return None


def _relation(doc: dict) -> tuple[str | None, str]:
    op = doc.get("operation", "")
    lora = "lora" in doc
    if op == "extract" and lora:
        return "adapter", "extract-lora"
    if op == "splice" and doc.get("adapter"):
        return "finetune", "splice-adapter"
    if op == "splice":
        return "merge", "splice"
    if op == "train":
        return "finetune", "train"
    return None, op


def card_for(doc: dict, command: str | None = None) -> "ModelCard":  # noqa: F821 - huggingface_hub, imported here
    """The card of an output described by ``doc`` (the surgeon.json document)."""
    from huggingface_hub import ModelCard, ModelCardData

    relation, kind = _relation(doc)
    inputs = doc.get("inputs", [])
    ids = [hub_id(i.get("source"), i.get("path")) for i in inputs if i.get("role") in ("base", "donor", "model")]
    ids = [i for i in dict.fromkeys(ids) if i]
    if relation != "merge":
        ids = ids[:1]
    tags = ["weightsurgeon", doc.get("operation", "surgery")]
    if kind == "extract-lora":
        tags.append("lora")
    extra: dict = {}
    if ids and relation:
        extra["base_model_relation"] = relation
    data = ModelCardData(
        base_model=(ids[0] if len(ids) == 1 else ids) or None,
        library_name="peft" if kind == "extract-lora" else "transformers",
        tags=tags,
        **extra,
    )
    command = command or doc.get("command")
    lines = [f"# {Path(str(doc.get('output', 'output'))).name or 'output'}", "",
             f"{_WHAT.get(kind, kind)}, written by weightsurgeon {doc.get('version', '')}.".replace(" ,", ","), ""]
    lines += _details(doc, kind)
    lines += ["", "## How it was made", "", "```", command or "(through the Python API; see surgeon.json's arguments)", "```", ""]
    if inputs:
        lines += ["## Inputs", "", "| role | source | header SHA-256 of each shard |", "| --- | --- | --- |"]
        for i in inputs:
            digests = ", ".join(f"`{s['file']}`: `{s['header_sha256'][:16]}…`" for s in i.get("shards", []))
            lines.append(f"| {i.get('role')} | `{i.get('source')}` | {digests} |")
        lines += ["", "The full digests, the arguments and the plan are in `surgeon.json`."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _details(doc: dict, kind: str) -> list[str]:
    args = doc.get("arguments", {}) or {}
    out = []
    for key in ("take", "exclude", "modules", "layers", "alpha", "std", "mean", "seed", "lora", "adapter"):
        if args.get(key) not in (None, False, ""):
            out.append(f"- `{key}`: `{args[key]}`")
    if doc.get("removed_layers"):
        out.append(f"- removed layers: {doc['removed_layers']}")
    lora = doc.get("lora")
    if isinstance(lora, dict):
        out.append(f"- rank {lora.get('r')}, lora_alpha {lora.get('lora_alpha')}; share of the delta's squared "
                   f"norm kept: {lora.get('kept_share_total', 0):.4f} over {len(lora.get('matrices', []))} matrices")
    edits = (doc.get("plan") or {}).get("config_edits") or {}
    for key, change in edits.items():
        out.append(f"- config.json `{key}`: `{change.get('old')}` -> `{change.get('new')}`")
    return out


def write_card(folder: str | Path, doc: dict, command: str | None = None) -> Path:
    """Write README.md into ``folder`` (a temporary output folder, before its rename)."""
    path = Path(folder) / CARD_NAME
    path.write_text(str(card_for(doc, command)), encoding="utf-8")
    return path


def input_record(role: str, source: str) -> dict:
    """An input's identity as surgeon.json gives it (source, resolved path, each shard's header digest)."""
    from weightsurgeon.checkpoint import open_checkpoint

    with open_checkpoint(source) as ckpt:
        where = ckpt.path
        return {"role": role, "source": source, "path": str(where.resolve()),
                "shards": [{"file": s.path.name, "header_sha256": ckpt.header_digest(s)} for s in ckpt.shards]}


def write_train_card(folder: str | Path, model: str, modules: str, layers: str | None, recipe: str,
                     output: str | Path, command: str | None = None) -> Path:
    """The card of a freeze-SFT output (the training runner has no surgeon.json to start from)."""
    from weightsurgeon._version import __version__

    doc = {"operation": "train", "version": __version__, "output": str(output), "inputs": [input_record("base", model)],
           "arguments": {"modules": modules, "layers": layers or "all", "recipe": recipe}}
    return write_card(folder, doc, command)
