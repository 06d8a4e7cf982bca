"""`surgeon extract DONOR --base BASE --take o_proj --lora R`: the delta DONOR - BASE as a PEFT LoRA adapter.

Plan, then execute, like every surgery: `plan_lora` lists every adapter tensor (name,
dtype, shape) before a byte is written, so the safetensors header goes first and each
matrix's factors land at their offsets as soon as they are computed. One matrix at a
time: peak memory is one delta in float32 (4 * out * in bytes, 256 MiB for an 8192 x 8192
o_proj) plus the SVD's working set (see `weightsurgeon.lowrank`), never the adapter.

The adapter's format (names, config, vLLM's rules) lives in `weightsurgeon.adapter`.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from weightsurgeon.adapter import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, VLLM_MAX_LORA_RANKS, lora_bias_name, lora_config,
                                   lora_names, module_of, smallest_vllm_rank, target_modules_for, vllm_problems)
from weightsurgeon.checkpoint import Checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.kernels.dtypes import dtype_info
from weightsurgeon.layout import classify, layout_of, select_names
from weightsurgeon.surgery import Plan, PlannedTensor, Source, _problems

# Modules a LoRA adapter cannot (norms: not matrices) or should not (vLLM refuses them) carry.
NOT_LORA = frozenset({"embed_tokens", "embed_positions", "lm_head"})
ADAPTER_DTYPES = {"base": None, "f32": "F32", "bf16": "BF16", "f16": "F16"}
ENERGY_CSV = "lora_energy.csv"


@dataclass
class LoraTarget:
    weight: str  # base tensor name, e.g. model.layers.3.self_attn.o_proj.weight
    module: str
    shape: tuple[int, int]
    bias: str | None = None  # base bias tensor whose delta goes into lora_B.bias


@dataclass
class LoraPlan:
    plan: Plan  # the adapter's tensors, for --dry-run and surgeon.json
    targets: list[LoraTarget]
    rank: int
    dtype: str
    method: str
    config: dict
    dropped_bias: list[str] = field(default_factory=list)


def _bias_differs(base: Checkpoint, donor: Checkpoint, name: str) -> bool:
    import numpy as np

    return not np.array_equal(base.read_tensor(name).view(np.uint8), donor.read_tensor(name).view(np.uint8))


def plan_lora(base: Checkpoint, donor: Checkpoint, take: str, layers: str | None, rank: int, dtype: str = "base",
              method: str = "auto", bias: str = "error", arguments: dict | None = None) -> LoraPlan:
    """Every adapter tensor of the delta DONOR - BASE over the selected modules; all problems listed at once."""
    from weightsurgeon.card import hub_id
    from weightsurgeon.surgery import _refuse_partial

    _refuse_partial(base, "BASE")
    if rank < 1:
        raise SurgeonError(f"--lora must be a rank of at least 1, got {rank}")
    if dtype not in ADAPTER_DTYPES:
        raise SurgeonError(f"--dtype must be one of {', '.join(ADAPTER_DTYPES)}, got {dtype!r}")
    lay = layout_of(base.tensors, base.config)
    names = select_names(list(base.tensors), take, layers, lay.num_layers, flag="--take")
    targets: list[LoraTarget] = []
    refused: list[str] = []
    biases: dict[str, str] = {}
    for n in names:
        loc = classify(n)
        info = base[n]
        if loc.param == "weight" and len(info.shape) == 2 and loc.module not in NOT_LORA and loc.group != "norm":
            targets.append(LoraTarget(n, module_of(n), (int(info.shape[0]), int(info.shape[1]))))
        elif loc.param == "bias" and loc.module not in NOT_LORA and loc.group != "norm":
            biases[n[: -len(".bias")]] = n
        else:
            refused.append(f"{n} ({loc.module}, {len(info.shape)}-D)")
    if refused:
        raise _problems("selected tensor(s) cannot go into a LoRA adapter (only linear layers' weights can; "
                        "vLLM refuses embeddings and the head): select linear modules, or drop --lora for a plain plugin", refused)
    if not targets:
        raise SurgeonError(f"--take {take!r} selects no linear layer weights; select linear modules such as o_proj, q_proj or mlp")
    problems: list[str] = []
    for t in targets + [LoraTarget(b, k, (0, 0)) for k, b in biases.items()]:
        n = t.weight
        if n not in donor.tensors:
            problems.append(f"{n}: missing in DONOR")
        elif tuple(donor[n].shape) != tuple(base[n].shape):
            problems.append(f"{n}: BASE {list(base[n].shape)} vs DONOR {list(donor[n].shape)}")
        elif not (dtype_info(base[n].dtype).computes and dtype_info(donor[n].dtype).computes):
            problems.append(f"{n}: {base[n].dtype} / {donor[n].dtype} is not a float dtype the SVD can decode")
    if problems:
        raise _problems("problem(s) between BASE and DONOR", problems)
    changed_bias = [b for b in biases.values() if _bias_differs(base, donor, b)]
    dropped: list[str] = []
    if changed_bias:
        if bias == "error":
            raise _problems("bias delta(s) that a LoRA adapter cannot carry for vLLM: pass --bias drop to leave them "
                            "out (the adapter then differs from the splice), or --bias lora to write them as PEFT's "
                            "lora_B.bias (PEFT loads it, vLLM refuses it)", changed_bias)
        if bias == "drop":
            dropped = changed_bias
        else:
            by_module = {b[: -len(".bias")]: b for b in changed_bias}
            for t in targets:
                t.bias = by_module.get(t.module)
    out_dtype = ADAPTER_DTYPES[dtype] or base[targets[0].weight].dtype
    if out_dtype not in ("F32", "BF16", "F16", "F64"):
        out_dtype = "F32"
    tensors: list[PlannedTensor] = []
    for t in targets:
        a_name, b_name = lora_names(t.module)
        src = Source("lowrank", role="donor", name=t.weight)
        tensors.append(PlannedTensor(a_name, out_dtype, (rank, t.shape[1]), src, True))
        tensors.append(PlannedTensor(b_name, out_dtype, (t.shape[0], rank), src, True))
        if t.bias:
            tensors.append(PlannedTensor(lora_bias_name(t.module), out_dtype, tuple(base[t.bias].shape),
                                         Source("lowrank", role="donor", name=t.bias), True))
    all_modules = [module_of(n) for n in base.tensors if n.endswith(".weight") and len(base[n].shape) == 2]
    base_id = hub_id(base.source, base.root) or str(base.path.resolve())
    config = lora_config(base_id, rank, rank, target_modules_for([t.module for t in targets], all_modules),
                         lora_bias=any(t.bias for t in targets))
    plan = Plan(operation="extract", arguments=arguments or {}, inputs={"base": base, "donor": donor},
                tensors=tensors, config=None, files_from=None, partial=True)
    if dropped:
        plan.warnings.append(f"{len(dropped)} bias delta(s) left out of the adapter (--bias drop), e.g. {dropped[0]}")
    if bias == "lora" and changed_bias:
        plan.warnings.append("the adapter carries lora_B.bias tensors: PEFT loads it, vLLM refuses it")
    serve = smallest_vllm_rank(rank)
    if serve is None:
        plan.warnings.append(f"rank {rank} is above every --max-lora-rank vLLM accepts ({VLLM_MAX_LORA_RANKS[-1]}): vLLM cannot serve it")
    return LoraPlan(plan, targets, rank, out_dtype, method, config, dropped)


def _read_float32(ckpt: Checkpoint, name: str, out, subtract: bool = False) -> None:
    """Decode tensor ``name`` chunk by chunk into the flat float32 array ``out`` (or subtract it from it)."""
    from weightsurgeon.kernels.decode import decode_to_float32

    info = ckpt[name]
    pos = 0
    for raw in ckpt.iter_chunks(info):
        values = decode_to_float32(raw, info.dtype)
        if subtract:
            out[pos:pos + len(values)] -= values
        else:
            out[pos:pos + len(values)] = values
        pos += len(values)


def delta_of(base: Checkpoint, donor: Checkpoint, name: str, buffer=None):
    """DONOR - BASE of one tensor in float32, shaped (in ``buffer`` when it is large enough)."""
    import numpy as np

    info = base[name]
    numel = info.numel
    flat = buffer[:numel] if buffer is not None and len(buffer) >= numel else np.empty(numel, dtype=np.float32)
    _read_float32(donor, name, flat)
    _read_float32(base, name, flat, subtract=True)
    return flat.reshape(info.shape)


def write_lora(lp: LoraPlan, output: str | os.PathLike, force: bool = False, fsync: bool = True,
               quiet: bool = False, command: str | None = None) -> dict:
    """Compute and write the adapter, atomically; returns the energy report (also in surgeon.json)."""
    import numpy as np

    from weightsurgeon.atomic import atomic_output_dir, check_output_path
    from weightsurgeon.card import write_card
    from weightsurgeon.kernels.decode import encode_from_float32
    from weightsurgeon.lowrank import factor
    from weightsurgeon.progress import ByteProgress
    from weightsurgeon.surgery import input_paths
    from weightsurgeon.writer import prefetch, provenance, pwrite_all

    output = Path(output).expanduser()
    inputs = input_paths(lp.plan)
    check_output_path(output, inputs, force)
    plan = lp.plan
    prefix, sizes = build_header([(t.name, t.dtype, t.shape) for t in plan.tensors], {"format": "pt"})
    offsets: dict[str, int] = {}
    pos = len(prefix)
    for t, size in zip(plan.tensors, sizes):
        offsets[t.name] = pos
        pos += size
    base, donor = plan.inputs["base"], plan.inputs["donor"]
    largest = max(t.shape[0] * t.shape[1] for t in lp.targets)
    buffer = np.empty(largest, dtype=np.float32)
    rows = []
    with atomic_output_dir(output, inputs, force=force, fsync=fsync) as tmp:
        fd = os.open(tmp / ADAPTER_WEIGHTS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            pwrite_all(fd, prefix, 0)
            total = sum(t.shape[0] * t.shape[1] * 8 for t in lp.targets)
            with prefetch(plan), ByteProgress(total, "extract --lora: SVD", quiet=quiet) as progress:
                for t in lp.targets:
                    progress.describe(f"extract --lora: {t.module}")
                    delta = delta_of(base, donor, t.weight, buffer)
                    f = factor(delta, lp.rank, lp.method)
                    a_name, b_name = lora_names(t.module)
                    pwrite_all(fd, encode_from_float32(np.ascontiguousarray(f.a).ravel(), lp.dtype), offsets[a_name])
                    pwrite_all(fd, encode_from_float32(np.ascontiguousarray(f.b).ravel(), lp.dtype), offsets[b_name])
                    if t.bias:
                        bias_delta = delta_of(base, donor, t.bias).ravel()
                        pwrite_all(fd, encode_from_float32(bias_delta, lp.dtype), offsets[lora_bias_name(t.module)])
                    loc = classify(t.weight)
                    rows.append({"name": t.weight, "module": loc.module, "layer": loc.layer, "out": t.shape[0],
                                 "in": t.shape[1], "rank": min(lp.rank, min(t.shape)), "method": f.method,
                                 "l2_delta": f.energy ** 0.5, "kept_share": f.kept_share, "_kept": f.kept, "_energy": f.energy})
                    progress.advance(t.shape[0] * t.shape[1] * 8)
        finally:
            os.close(fd)
        energy = sum(r["_energy"] for r in rows)
        kept = sum(r["_kept"] for r in rows)
        for r in rows:
            del r["_kept"], r["_energy"]
        report = {"r": lp.rank, "lora_alpha": lp.config["lora_alpha"], "dtype": lp.dtype, "method": lp.method,
                  "kept_share_total": 1.0 if energy == 0 else kept / energy, "dropped_bias": lp.dropped_bias,
                  "vllm_max_lora_rank": smallest_vllm_rank(lp.rank),
                  "vllm_problems": vllm_problems(lp.config, [t.name for t in plan.tensors]), "matrices": rows}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(lp.config, indent=2) + "\n", encoding="utf-8")
        doc = provenance(plan)
        doc["output"] = str(output)
        if command:
            doc["command"] = command
        doc["lora"] = report
        (tmp / "surgeon.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _write_energy_csv(tmp / ENERGY_CSV, rows)
        write_card(tmp, doc)
        _check_adapter(tmp, plan)
    return report


def _write_energy_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["name", "module", "layer", "out", "in", "rank", "method", "l2_delta", "kept_share"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "l2_delta": f"{r['l2_delta']:.9g}", "kept_share": f"{r['kept_share']:.9g}"})


def _check_adapter(folder: Path, plan: Plan) -> None:
    """Re-open what was written: the header must hold exactly the planned tensors."""
    from weightsurgeon.format import parse_header

    header = parse_header(folder / ADAPTER_WEIGHTS)
    got = {e.name: (e.dtype, tuple(e.shape)) for e in header.tensors}
    want = {t.name: (t.dtype, tuple(t.shape)) for t in plan.tensors}
    if got != want:
        # internal: the writer wrote the plan's tensors; only a writer bug reaches this
        raise SurgeonError(f"internal: {folder / ADAPTER_WEIGHTS}: written tensors differ from the plan")


def energy_summary(report: dict) -> list[list[str]]:
    """Rows of the terminal table: per module, its layers and the kept share (min / median / max)."""
    from weightsurgeon.surgery import format_layers

    by_module: dict[str, list[dict]] = {}
    for r in report["matrices"]:
        by_module.setdefault(r["module"], []).append(r)
    rows = []
    for module, items in by_module.items():
        shares = [r["kept_share"] for r in items]
        layers = sorted(r["layer"] for r in items if r["layer"] is not None)
        rows.append([module, format_layers(layers) or "-", str(len(items)), f"{min(shares):.4f}",
                     f"{statistics.median(shares):.4f}", f"{max(shares):.4f}"])
    return rows
