"""Structural and deep checks of a checkpoint.

Opening a checkpoint already enforces every header and index rule (checkpoint.py);
`verify_checkpoint` adds what needs the whole model in view: config against tensors,
complete layers, tying, per-layer config lists, and with ``deep`` a NaN/Inf scan of every
tensor in bounded memory. Problems that make a model wrong or unloadable raise
`SurgeonError`; the rest are returned as warnings.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from weightsurgeon.checkpoint import Checkpoint, DEFAULT_CHUNK_BYTES
from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import PER_LAYER_LISTS, READS_HIDDEN, WRITES_HIDDEN, ConfigView, ModelLayout, layout_of, split_layer


_SHA256 = re.compile(r"[0-9a-f]{64}")
_HUB_REPO_DIR = re.compile(r"^(models|datasets|spaces)--(.+)$")


@dataclass
class VerifyResult:
    layout: ModelLayout
    warnings: list[str] = field(default_factory=list)
    scanned_bytes: int = 0
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> what its sha256 matched ("surgeon.json", ...)


def verify_checkpoint(ckpt: Checkpoint, deep: bool = False, progress: object | None = None,
                      require_config: bool = True, layout: ModelLayout | None = None) -> VerifyResult:
    """Check the whole model; ``require_config``: a (whole) model folder without config.json is an error,
    since loaders cannot build it (a single file needs none; `inspect` only warns). ``layout``: the
    checkpoint's, when the caller has it (the writer's check of its output)."""
    layout = layout or layout_of(ckpt.tensors, ckpt.config)
    result = VerifyResult(layout=layout, warnings=list(ckpt.warnings))
    where = ckpt.root or ckpt.source
    if layout.other:
        result.warnings.append(f"{len(layout.other)} tensor name(s) not recognised as a known module, reported as 'other' (e.g. {layout.other[0]!r})")
    if ckpt.config is None and require_config and ckpt.root is not None and not ckpt.is_partial:
        raise SurgeonError(f"{ckpt.root}: model folder has no config.json; transformers and vLLM cannot load it "
                           "(copy the model's config.json into the folder)")
    if ckpt.config is None:
        result.warnings.append(f"{where}: no config.json; config consistency not checked")
        if not ckpt.is_partial:
            _warn_layer_gaps(layout, result, "no config.json")
    else:
        _check_config(ckpt, layout, result)
    if not ckpt.is_partial:
        _check_layers_alike(ckpt, layout, result)
        _check_embedding_present(ckpt, layout)
    if deep:
        _scan_nonfinite(ckpt, result, progress)
        ckpt.check_unchanged()  # "every value finite" of a file still being written would be a guess
    return result


def _check_config(ckpt: Checkpoint, layout: ModelLayout, result: VerifyResult) -> None:
    view = ckpt.config_view
    cfg = view.text
    cfg_path = f"{ckpt.root}/config.json" if ckpt.root else "config.json"
    wrong = view.wrong_types()
    if wrong:
        raise SurgeonError(f"{cfg_path}: {wrong[0]}")
    layers_present = layout.locations.layers_present()
    declared = view.num_layers
    if declared is not None:
        # DeepSeek-V3/GLM-4.5 store their multi-token-prediction layers after the decoder layers.
        extra = view.int_value("num_nextn_predict_layers")
        allowed = declared + (extra if extra is not None and extra > 0 else 0)
        beyond = [l for l in layers_present if l >= allowed]
        if beyond:
            raise SurgeonError(f"{cfg_path}: num_hidden_layers is {declared} but tensors exist for layer {beyond[0]}")
        if not layers_present and layout.other:
            # Not a decoder layout we know (BERT's encoder.layer.N, T5's block.N): nothing to count.
            result.warnings.append(f"{cfg_path}: no tensor recognised as part of a decoder layer; layer checks skipped")
        elif not ckpt.is_partial:
            missing = _first_missing(layers_present, declared)
            if missing is not None:
                raise SurgeonError(f"{cfg_path}: num_hidden_layers is {declared} but layer {missing} has no tensors")
        for key in PER_LAYER_LISTS:
            value = cfg.get(key)
            if value is not None and (not isinstance(value, list) or len(value) != declared):
                n = len(value) if isinstance(value, list) else type(value).__name__
                raise SurgeonError(f"{cfg_path}: {key} has {n} entries but num_hidden_layers is {declared}")
    elif not ckpt.is_partial:
        _warn_layer_gaps(layout, result, f"{cfg_path}: no num_hidden_layers")
    hidden = view.int_value("hidden_size")
    _check_linear_widths(ckpt, layout, hidden, cfg_path)
    # OPT-350m projects its embeddings: they are word_embed_proj_dim wide, not hidden_size.
    emb_dim = cfg.get("word_embed_proj_dim", hidden)
    emb_name, head_name = layout.locations.weight_of("embed_tokens"), layout.locations.weight_of("lm_head")
    emb = ckpt[emb_name] if emb_name is not None else None
    if emb is not None and isinstance(emb_dim, int) and len(emb.shape) == 2 and emb.shape[1] != emb_dim:
        raise SurgeonError(f"{cfg_path}: hidden_size is {emb_dim} but {emb.name} has shape {list(emb.shape)}")
    vocab = cfg.get("vocab_size")
    if emb is not None and isinstance(vocab, int) and len(emb.shape) == 2 and emb.shape[0] != vocab:
        raise SurgeonError(f"{cfg_path}: vocab_size is {vocab} but {emb.name} has {emb.shape[0]} rows")
    head = ckpt[head_name] if head_name is not None else None
    if head is not None and len(head.shape) == 2:
        if isinstance(vocab, int) and not isinstance(vocab, bool) and head.shape[0] != vocab:
            raise SurgeonError(f"{cfg_path}: vocab_size is {vocab} but {head.name} has {head.shape[0]} rows")
        if isinstance(emb_dim, int) and head.shape[1] != emb_dim:
            raise SurgeonError(f"{cfg_path}: hidden_size is {emb_dim} but {head.name} has shape {list(head.shape)}")
    tie = view.lookup("tie_word_embeddings")
    has_head = "lm_head" in layout.locations.modules()
    if tie is False and not has_head and emb is not None and not ckpt.is_partial:
        raise SurgeonError(f"{cfg_path}: tie_word_embeddings is false but there is no lm_head.weight (the head would be random)")
    if tie is True and has_head:
        result.warnings.append("tie_word_embeddings is true but lm_head.weight is stored too; loaders tie them and may ignore it")


def _check_embedding_present(ckpt: Checkpoint, layout: ModelLayout) -> None:
    """Decoder layers without any input embedding cannot run; unless an unrecognised name might be it."""
    modules = layout.locations.modules()
    has_layers = bool(layout.locations.layers_present())
    if has_layers and "embed_tokens" not in modules and "other" not in modules:
        raise SurgeonError(f"{ckpt.root or ckpt.source}: decoder layers but no input embedding (embed_tokens) tensor")


def _warn_layer_gaps(layout: ModelLayout, result: VerifyResult, why: str) -> None:
    """Without a declared layer count, a hole in the layer numbers is suspicious but not provably wrong."""
    present = layout.locations.layers_present()
    missing = _first_missing(present, present[-1] + 1) if present else None
    if missing is not None:
        result.warnings.append(f"{why}, and layer {missing} has no tensors (layers up to {present[-1]} exist)")


def _first_missing(present: list[int], count: int) -> int | None:
    """The first index in range(count) absent from sorted ``present``; never builds range(count)
    (a config may claim 10**12 layers)."""
    expected = 0
    for layer in present:
        if layer >= count:
            break
        if layer != expected:
            return expected
        expected += 1
    return expected if expected < count else None


def _check_layers_alike(ckpt: Checkpoint, layout: ModelLayout, result: VerifyResult) -> None:
    """One layer holding a strict subset of what several other layers hold has lost some: an error.

    Layers that differ by design are legitimate and only warned about: dense and MoE layers
    (DeepSeek), attention and Mamba layers (hybrids), and also *families* of layers that lack
    something, like the KV-sharing layers of cross-layer attention (half the layers have no
    k_proj/v_proj) or NAS models with per-layer block_configs. Hence the error needs the
    smaller set of tensors to occur in exactly one layer, and the larger in at least two: with
    one layer on each side, the larger may as well hold an extra tensor (a warning).
    """
    cfg = ckpt.config_view.text
    declared = ckpt.config_view.num_layers
    per_layer: dict[int, dict[str, str]] = {}  # layer -> {prefix|rest: full name}
    for name in layout.locations:
        split = split_layer(name)
        if split is not None and (declared is None or split[0] < declared):  # not MTP layers past the decoder
            per_layer.setdefault(split[0], {})[split[1]] = name
    if len(per_layer) < 2:
        return
    kinds: dict[frozenset[str], list[int]] = {}  # distinct layer contents -> layers holding them
    for layer in sorted(per_layer):
        kinds.setdefault(frozenset(per_layer[layer]), []).append(layer)
    if "block_configs" not in cfg:
        for small, layers in kinds.items():
            for big, others in kinds.items():
                if len(layers) == 1 and len(others) >= 2 and small < big:
                    key = sorted(big - small)[0]
                    raise SurgeonError(f"{ckpt.root or ckpt.source}: layer {layers[0]} has no '{key.split('|', 1)[1]}' "
                                       f"but {per_layer[others[0]][key]} exists: a tensor is missing")
    if "block_configs" not in cfg:
        _check_shapes_alike(ckpt, per_layer)
    if len(kinds) > 1:
        (first, a), (second, b) = list(kinds.items())[:2]
        example = sorted(first ^ second)[0].split("|", 1)[1]
        result.warnings.append(f"layers differ in their tensors (e.g. '{example}' in layer {a[0]} or {b[0]} only); "
                               "fine for hybrid, mixed dense/MoE or KV-sharing models")



def _check_linear_widths(ckpt: Checkpoint, layout: ModelLayout, hidden: int | None, cfg_path: str) -> None:
    """Every dense projection touches the residual stream, whose width config.json states."""
    if hidden is None:
        return
    for name, loc in layout.locations.items():
        if loc.param != "weight" or loc.layer is None:
            continue
        shape = ckpt[name].shape
        if len(shape) != 2:
            continue
        if (loc.module in READS_HIDDEN and shape[1] != hidden) or (loc.module in WRITES_HIDDEN and shape[0] != hidden):
            raise SurgeonError(f"{cfg_path}: hidden_size is {hidden} but {name} has shape {list(shape)}")


def _check_shapes_alike(ckpt: Checkpoint, per_layer: dict[int, dict[str, str]]) -> None:
    """The same tensor of every layer has one shape; a single layer that disagrees is damaged.

    Models whose layers vary by design (OpenELM's per-layer head counts) show many shapes,
    not one outlier, and pass.
    """
    shapes: dict[str, dict[tuple[int, ...], list[str]]] = {}
    for names in per_layer.values():
        for key, name in names.items():
            shapes.setdefault(key, {}).setdefault(ckpt[name].shape, []).append(name)
    for by_shape in shapes.values():
        if len(by_shape) != 2:
            continue
        (shape_a, names_a), (shape_b, names_b) = sorted(by_shape.items(), key=lambda kv: len(kv[1]))
        if len(names_a) == 1 and len(names_b) >= 2:
            raise SurgeonError(f"{ckpt[names_a[0]].file}: tensor {names_a[0]!r} has shape {list(shape_a)} but the same "
                               f"tensor of the other layers has {list(shape_b)} (e.g. {names_b[0]})")


def _scan_nonfinite(ckpt: Checkpoint, result: VerifyResult, progress: object | None) -> None:
    """Count NaN/Inf in every float tensor; where a shard's sha256 is known (see expected_checksums),
    hash it in the same pass, so a file is read once."""
    from weightsurgeon.kernels.delta import count_nonfinite
    from weightsurgeon.kernels.dtypes import dtype_info

    buffer = bytearray(DEFAULT_CHUNK_BYTES)
    expected = expected_checksums(ckpt)
    changed: list[str] = []
    for shard in ckpt.shards:
        digest = hashlib.sha256() if shard.path in expected else None
        if digest is not None:
            with open(shard.path, "rb") as f:
                digest.update(f.read(shard.data_start))
        nonfinite: str | None = None
        for entry in shard.tensors:
            info = ckpt[entry.name]
            bad = 0
            is_float = dtype_info(info.dtype).is_float
            if (is_float or digest is not None) and info.nbytes:
                for chunk in ckpt.iter_chunks(info, buffer=buffer):
                    if digest is not None:
                        digest.update(chunk)
                    if is_float:
                        bad += count_nonfinite(chunk, info.dtype)
                    if progress is not None:
                        progress.advance(len(chunk) * info.itemsize)
            elif progress is not None:
                progress.advance(info.nbytes)
            result.scanned_bytes += info.nbytes
            if bad and nonfinite is None:
                nonfinite = f"{info.file}: tensor {info.name!r} has {bad} NaN/Inf value(s) of {info.numel}"
                if digest is None:
                    raise SurgeonError(nonfinite)
        if digest is not None:
            problem = _compare(shard.path, digest.hexdigest(), expected.pop(shard.path), result)
            if problem:
                changed.append(problem)  # the root cause: reported before any NaN it may have brought
            elif nonfinite:
                raise SurgeonError(nonfinite)
    for path, want in expected.items():  # the small files surgeon.json lists: config, index, tokenizer
        if not path.is_file():
            changed.append(f"{path}: listed in surgeon.json but missing; the output is incomplete: rewrite it")
            continue
        problem = _compare(path, sha256_file(path), want, result)
        if problem:
            changed.append(problem)
    if changed:
        more = f" (and {len(changed) - 1} more file(s) changed)" if len(changed) > 1 else ""
        raise SurgeonError(changed[0] + more)


def expected_checksums(ckpt: Checkpoint) -> dict[Path, tuple[str, str]]:
    """file -> (sha256 it must have, where that comes from): surgeon.json's ``files`` (written by the
    writer while writing), and for a model in the Hugging Face cache each shard's blob name."""
    out: dict[Path, tuple[str, str]] = {}
    files = (ckpt.surgeon or {}).get("files") if ckpt.root is not None else None
    if isinstance(files, dict):
        for name, entry in files.items():
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if isinstance(name, str) and "/" not in name and name not in ("", ".", "..") and isinstance(digest, str) \
                    and _SHA256.fullmatch(digest):
                out[ckpt.root / name] = (digest, "surgeon.json")
    for path in ckpt.files:
        blob = hub_blob(path)
        if blob is not None and path not in out:
            out[path] = blob
    return out


def hub_blob(path: Path) -> tuple[str, str] | None:
    """(sha256, repo) of a shard in the Hugging Face cache: a snapshot file links to
    ``models--ORG--NAME/blobs/<etag>``, and the etag of a file stored with Git LFS is its sha256.
    Follows the links one by one, not resolve(): newer caches link that blob on to a shared
    store named by another hash."""
    p = Path(path)
    for _ in range(8):
        if not p.is_symlink():
            return None
        p = Path(os.path.normpath(p.parent / os.readlink(p)))
        repo = _HUB_REPO_DIR.match(p.parent.parent.name)
        if p.parent.name == "blobs" and repo and _SHA256.fullmatch(p.name):
            return p.name, repo.group(2).replace("--", "/")
    return None


def _compare(path: Path, got: str, want: tuple[str, str], result: VerifyResult) -> str | None:
    digest, origin = want
    if got == digest:
        result.checksums[path.name] = origin if origin == "surgeon.json" else "blob name"
        return None
    if origin == "surgeon.json":
        return (f"{path}: sha256 is {got[:12]}..., not the {digest[:12]}... that surgeon.json recorded when surgeon "
                "wrote it: the file changed since; restore it or write the output again")
    return (f"{path}: sha256 is {got[:12]}..., not {digest[:12]}... as its Hugging Face cache blob name says: a "
            f"corrupted or incomplete download; delete it and download again (hf download {origin})")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()



def count_nonfinite_in(ckpt: Checkpoint, info, buffer: bytearray | None = None) -> int:
    """NaN/Inf values in one stored tensor (0 for integer dtypes), read in bounded chunks."""
    from weightsurgeon.kernels.delta import count_nonfinite
    from weightsurgeon.kernels.dtypes import dtype_info

    if not dtype_info(info.dtype).is_float or not info.nbytes:
        return 0
    buffer = buffer if buffer is not None else bytearray(min(DEFAULT_CHUNK_BYTES, info.nbytes))
    return sum(count_nonfinite(chunk, info.dtype) for chunk in ckpt.iter_chunks(info, buffer=buffer))
