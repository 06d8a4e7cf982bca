"""`surgeon probe BASE --sweep paper -o table3/`: the paper's Table 3 from one model load (and Table 1).

Each cell of a sweep (zero or reinit of one module over a layer range, or removal of a
layer range) is applied to the loaded model in memory with the very plans and value
generators that `surgeon zero` / `reinit` / `remove` write (weightsurgeon.surgery plans,
the writer's `SourceReader`), so a destroyed tensor in memory is bit for bit what those
commands put on disk (a test checks it). The model then answers the probe prompts, each
answer is sorted into levels I-IV (weightsurgeon.recipes.eval.levels), and the weights,
layers and config are put back before the next cell.

The paper's sweep: zero and reinit of q, k, v, o, gate, up and down projections, and
removal, each over layers 5-30, clipped to the model's last layer (15 cells). A YAML file
describes any other sweep::

    methods: [zero, reinit, remove]       # any of these
    modules: [o_proj, mlp]                # selectors, as --module takes them (not for remove)
    layers: ["5-30", "0-4"]               # one string or a list, as --layers takes them
    reinit: {std: 0.02, mean: 0.0, seed: 0}
    donor: path/to/donor                  # for method splice: the donor's modules into BASE

The merge table (the paper's Table 1) is ``--sweep merge --donor DONOR``: BASE with the
donor's o_proj, its q/k/v projections, or its MLP (all layers), each in memory with the
values `surgeon splice` writes; with ``--task`` each cell is also scored on that task
through the evaluation loop of `surgeon eval` (accuracy and average generated tokens).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.eval.levels import LEVEL_NAMES

SCHEMA = "weightsurgeon.probe-sweep/1"
PAPER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PAPER_LAYERS = (5, 30)
METHODS = ("zero", "reinit", "remove", "splice")
MERGE_MODULES = ("o_proj", "qkv", "mlp")
REINIT_DEFAULTS = {"std": 0.02, "mean": 0.0, "seed": 0}  # surgeon reinit's defaults


@dataclass(frozen=True)
class Cell:
    method: str
    module: str | None  # None for remove
    layers: str

    @property
    def label(self) -> str:
        return f"{self.method} {self.module} {self.layers}" if self.module else f"{self.method} {self.layers}"


@dataclass(frozen=True)
class Sweep:
    name: str
    cells: tuple[Cell, ...]
    reinit: dict[str, float]
    donor: str | None = None

    @property
    def stem(self) -> str:
        """Output file names: table1.* for a merge table, table3.* for destruction."""
        return "table1" if all(c.method == "splice" for c in self.cells) else "table3"


def paper_layers(num_layers: int) -> str:
    """Layers 5-30 as in the paper, clipped to the model's last layer."""
    last = num_layers - 1
    lo, hi = min(PAPER_LAYERS[0], last), min(PAPER_LAYERS[1], last)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def paper_sweep(num_layers: int) -> Sweep:
    layers = paper_layers(num_layers)
    cells = [Cell(m, mod, layers) for m in ("zero", "reinit") for mod in PAPER_MODULES] + [Cell("remove", None, layers)]
    return Sweep("paper", tuple(cells), dict(REINIT_DEFAULTS))


def load_sweep(spec: str, num_layers: int, donor: str | None = None) -> Sweep:
    """``paper``, ``merge``, or a YAML file of methods x modules x layer ranges."""
    if spec == "paper":
        return paper_sweep(num_layers)
    if spec == "merge":
        if donor is None:
            raise SurgeonError("--sweep merge needs --donor DONOR (whose modules go into MODEL)")
        return Sweep("merge", tuple(Cell("splice", m, "all") for m in MERGE_MODULES), dict(REINIT_DEFAULTS), donor)
    import yaml

    path = Path(spec).expanduser()
    if not path.is_file():
        raise SurgeonError(f"--sweep {spec}: neither 'paper' nor a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SurgeonError(f"{path}: cannot read the sweep: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise SurgeonError(f"{path}: a sweep is a mapping with methods, modules and layers")
    unknown = sorted(set(raw) - {"methods", "modules", "layers", "reinit", "donor"})
    if unknown:
        raise SurgeonError(f"{path}: unknown key(s) {', '.join(unknown)} (methods, modules, layers, reinit, donor)")

    def as_list(key: str, default: list | None = None) -> list[str]:
        value = raw.get(key, default)
        if value is None:
            raise SurgeonError(f"{path}: {key} is required: add a `{key}:` entry (a name or a list of names)")
        items = [value] if isinstance(value, (str, int)) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, (str, int)) for v in items):
            raise SurgeonError(f"{path}: {key} must be a string or a non-empty list of strings")
        return [str(v) for v in items]

    methods = as_list("methods")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SurgeonError(f"{path}: unknown method(s) {', '.join(bad)} (zero, reinit, remove, splice)")
    donor = donor or (str(raw["donor"]) if raw.get("donor") is not None else None)
    if "splice" in methods and donor is None:
        raise SurgeonError(f"{path}: method splice needs a donor (donor: in the file, or --donor)")
    layers = as_list("layers")
    modules = as_list("modules") if any(m != "remove" for m in methods) else []
    reinit = dict(REINIT_DEFAULTS)
    extra = raw.get("reinit") or {}
    if not isinstance(extra, dict) or set(extra) - set(REINIT_DEFAULTS):
        raise SurgeonError(f"{path}: reinit takes std, mean and seed")
    reinit.update({k: float(v) if k != "seed" else int(v) for k, v in extra.items()})
    cells: list[Cell] = []
    for m in methods:
        if m == "remove":
            cells.extend(Cell(m, None, l) for l in layers)
        else:
            cells.extend(Cell(m, mod, l) for mod in modules for l in layers)
    return Sweep(path.stem, tuple(dict.fromkeys(cells)), reinit, donor)


def plan_for(ckpt: Any, cell: Cell, reinit: dict[str, float], donor: Any = None) -> Any:
    """The same plan `surgeon zero|reinit|remove|splice` builds for this cell."""
    from weightsurgeon.surgery import plan_remove, plan_reinit, plan_splice, plan_zero

    if cell.method == "splice":
        plan = plan_splice(ckpt, donor, take=cell.module, layers=None if cell.layers == "all" else cell.layers)
        if plan.config_edits or any(t.name not in ckpt.tensors for t in plan.tensors):
            raise SurgeonError(f"{cell.label}: this splice edits config.json or adds tensors (an untied head); "
                               "it cannot be done in memory: write it with surgeon splice")
        return plan
    if cell.method == "zero":
        return plan_zero(ckpt, cell.module, cell.layers)
    if cell.method == "reinit":
        return plan_reinit(ckpt, cell.module, cell.layers, std=reinit["std"], mean=reinit["mean"], seed=int(reinit["seed"]))
    return plan_remove(ckpt, cell.layers)


def _torch_tensor(reader: Any, t: Any) -> Any:
    """A planned tensor's values as the writer produces them, as a torch tensor of its stored dtype."""
    import numpy as np
    import torch

    from weightsurgeon.kernels.decode import storage_dtype

    sd = storage_dtype(t.dtype)
    out = np.empty(t.numel, dtype=sd)
    for start, data in reader.chunks(t):
        chunk = np.frombuffer(memoryview(data).cast("B"), dtype=sd)
        out[start:start + len(chunk)] = chunk
    if t.dtype == "BF16":
        return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).reshape(t.shape)
    return torch.from_numpy(out).reshape(t.shape)


def _layer_list(model: Any) -> tuple[Any, str]:
    """The decoder's ModuleList and its attribute name on its parent."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    for attr in ("layers", "h", "blocks"):
        if hasattr(inner, attr):
            return inner, attr
    raise SurgeonError(f"{type(model).__name__}: cannot find the decoder's layer list (.layers, .h or .blocks) to "
                       "remove layers in memory; write the cut model with surgeon remove and probe it instead")


def apply_cell(model: Any, plan: Any) -> Callable[[], None]:
    """Apply a destruction plan to a loaded transformers model in place; returns the undo."""
    import torch

    from weightsurgeon.writer import SourceReader

    undo: list[Callable[[], None]] = []
    if plan.operation == "remove":
        parent, attr = _layer_list(model)
        layers = getattr(parent, attr)
        kept = plan.provenance["kept_layers"]
        renumbered = []
        for new, old in enumerate(kept):
            for sub in layers[old].modules():
                if isinstance(getattr(sub, "layer_idx", None), int):
                    renumbered.append((sub, sub.layer_idx))
                    sub.layer_idx = new
        setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in kept]))
        config = model.config
        saved_cfg = []
        for key, (_old, new) in plan.config_edits.items():
            owner = config.get_text_config() if key.startswith("text_config.") else config
            name = key.split(".", 1)[1] if key.startswith("text_config.") else key
            saved_cfg.append((owner, name, getattr(owner, name, None)))
            setattr(owner, name, new)

        def restore_layers() -> None:
            setattr(parent, attr, layers)
            for sub, idx in renumbered:
                sub.layer_idx = idx
            for owner, name, value in saved_cfg:
                setattr(owner, name, value)

        undo.append(restore_layers)
    else:
        reader = SourceReader(plan.inputs)
        with torch.no_grad():
            for t in plan.changed:
                try:
                    param = model.get_parameter(t.name)
                except AttributeError as e:
                    raise SurgeonError(f"{t.name}: the loaded model has no such parameter (this architecture's "
                                       "names differ between checkpoint and model); write the changed checkpoint "
                                       f"with surgeon {plan.operation} and probe it instead") from e
                saved = param.detach().clone()
                param.copy_(_torch_tensor(reader, t).to(param.dtype))
                undo.append(lambda p=param, s=saved: p.detach().copy_(s))

    def restore() -> None:
        with torch.no_grad():
            for u in reversed(undo):
                u()

    return restore


def dominant_level(counts: dict[str, int]) -> str:
    """The cell's level: the most common one; a tie goes to the higher level."""
    return max(counts, key=lambda lvl: (counts[lvl], list(LEVEL_NAMES).index(lvl)))


def run_sweep(model: str, sweep_spec: str, backend_options: dict[str, Any] | None = None, prompt_mode: str = "chat",
              max_new_tokens: int = 128, log: Callable[[str], None] = lambda _m: None, donor: str | None = None,
              eval_cfg: Any = None) -> dict[str, Any]:
    """Load once, probe the intact model, then every cell with its change applied and undone.

    ``eval_cfg`` (an EvalConfig): also score every cell on its tasks, as `surgeon eval` does.
    """
    import contextlib

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.layout import layout_of
    from weightsurgeon.recipes.eval.backends import open_backend
    from weightsurgeon.recipes.eval.probe import run_probe

    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(model))
        lay = layout_of(ckpt.tensors, ckpt.config)
        sweep = load_sweep(sweep_spec, lay.num_layers, donor)
        donor_ckpt = None
        if any(c.method == "splice" for c in sweep.cells):
            donor_ckpt = stack.enter_context(open_checkpoint(sweep.donor))
        plans = [plan_for(ckpt, c, sweep.reinit, donor_ckpt) for c in sweep.cells]  # all checked before the model loads
        backend = open_backend("hf", model, backend_options)
        log(f"probe sweep {sweep.name}: {len(sweep.cells)} cells on {model}")

        def measure() -> dict[str, Any]:
            result = run_probe(backend, prompt_mode, max_new_tokens)
            if eval_cfg is not None:
                result.update(_score(backend, eval_cfg))
            return result

        baseline = measure()
        cells = []
        for i, (cell, plan) in enumerate(zip(sweep.cells, plans), 1):
            restore = apply_cell(backend.model, plan)
            try:
                result = measure()
            finally:
                restore()
            level = dominant_level(result["levels"])
            scores = "".join(f", {t} {100 * m['accuracy']:.1f}%" for t, m in result.get("tasks", {}).items())
            log(f"[{i}/{len(sweep.cells)}] {cell.label}: level {level} {result['levels']}{scores}")
            cells.append({"method": cell.method, "module": cell.module, "layers": cell.layers, "level": level, **result})
    return {"schema": SCHEMA, "model": model, "sweep": sweep.name, "stem": sweep.stem, "reinit": sweep.reinit,
            "donor": sweep.donor, "prompt_mode": prompt_mode, "max_new_tokens": max_new_tokens,
            "baseline": {"level": dominant_level(baseline["levels"]), **baseline}, "cells": cells}


def _score(backend: Any, cfg: Any) -> dict[str, Any]:
    """Accuracy and average tokens on each task, through `surgeon eval`'s own loop and grading."""
    from weightsurgeon.recipes.eval.metrics import summarize
    from weightsurgeon.recipes.eval.runner import evaluate_task

    tasks, samples = {}, {}
    for task in cfg.tasks:
        records = evaluate_task(backend, task, cfg)
        tasks[task] = summarize(records)
        samples[task] = records
    return {"tasks": tasks, "samples": samples}


def table_header(result: dict[str, Any]) -> list[str]:
    tasks = list(result["baseline"].get("tasks", {}))
    return TABLE_HEADER + [h for t in tasks for h in (f"{t} acc %", f"{t} tokens")]


def table_rows(result: dict[str, Any], with_baseline: bool = False) -> list[list[str]]:
    cells = ([{"method": "none", "module": None, "layers": "-", **result["baseline"]}] if with_baseline else []) + result["cells"]
    rows = []
    for c in cells:
        row = [c["method"], c["module"] or "-", c["layers"]] + [str(c["levels"][lvl]) for lvl in LEVEL_NAMES] + [c["level"]]
        for m in c.get("tasks", {}).values():
            row += [f"{100 * m['accuracy']:.1f}", f"{m['avg_total_tokens']:.0f}"]
        rows.append(row)
    return rows


TABLE_HEADER = ["method", "module", "layers"] + [f"{lvl} {LEVEL_NAMES[lvl]}" for lvl in LEVEL_NAMES] + ["level"]


def write_sweep(result: dict[str, Any], out_dir: str | Path, force: bool = False) -> Path:
    """table3 (or table1, a merge table) .csv/.md/.png, probe.json and generations.jsonl (every answer), atomically."""
    from weightsurgeon.atomic import atomic_output_dir
    from weightsurgeon.recipes.eval.tables import to_csv

    out_dir = Path(out_dir)
    rows = table_rows(result)
    header = table_header(result)
    stem = result.get("stem", "table3")
    with atomic_output_dir(out_dir, [], force) as tmp:
        (tmp / f"{stem}.csv").write_text(to_csv(header, rows), encoding="utf-8")
        base = result["baseline"]
        md = [f"Output levels of `{result['model']}` under each destruction (sweep `{result['sweep']}`, "
              f"{len(base['rows'])} probe prompts, {result['prompt_mode']} prompts, {result['max_new_tokens']} new tokens).",
              "", f"Intact model: level {base['level']} ({', '.join(f'{k}: {v}' for k, v in base['levels'].items())}).", "",
              "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        if base.get("tasks"):
            md[2] = md[2][:-2] + "; " + ", ".join(f"{t} {100 * m['accuracy']:.1f}%" for t, m in base["tasks"].items()) + ")."
        (tmp / f"{stem}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
        (tmp / "probe.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(tmp / "generations.jsonl", "w", encoding="utf-8") as f:
            for cell in [{"method": "none", "module": None, "layers": None, **base}] + result["cells"]:
                for r in cell["rows"]:
                    f.write(json.dumps({"method": cell["method"], "module": cell["module"], "layers": cell["layers"],
                                        **r}, ensure_ascii=False) + "\n")
        _figure(result, tmp / f"{stem}.png")
    return out_dir


def _figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [{"label": "intact", **result["baseline"]}] + [
        {"label": Cell(c["method"], c["module"], c["layers"]).label, **c} for c in result["cells"]]
    colours = {"I": "#b2182b", "II": "#ef8a62", "III": "#67a9cf", "IV": "#2166ac"}
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(cells) + 1.4))
    y = list(range(len(cells)))[::-1]
    left = [0] * len(cells)
    for lvl, name in LEVEL_NAMES.items():
        counts = [c["levels"][lvl] for c in cells]
        ax.barh(y, counts, left=left, color=colours[lvl], label=f"{lvl} {name}")
        left = [a + b for a, b in zip(left, counts)]
    ax.set_yticks(y, [f"{c['label']}  [{c['level']}]" for c in cells], fontsize=8)
    ax.set_xlabel("probe prompts")
    ax.set_title(f"Output levels per destruction: {Path(str(result['model'])).name}", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(cells) > 8 else -0.2), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
