"""Which parameters train: the engine's selectors applied to ``model.named_parameters()``.

HF parameter names of Llama/Qwen2 causal LMs equal the checkpoint's tensor names, so
``freeze.modules: o_proj,norm,emb,head`` picks exactly what ``surgeon splice --take
o_proj,norm,emb,head`` would. Counts use ``ds_numel`` because under ZeRO-3 a
parameter's local ``numel()`` is its (often empty) shard.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import classify, select_names

from .config import FreezeConfig, ModelConfig

EVERYTHING = ("all", "*", "everything")


@dataclass
class FreezePlan:
    """Trainable names and parameter counts, per module, for the report and --dry-run."""

    modules: str
    layers: str | None
    trainable: list[str]
    total_params: int
    trainable_params: int
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "modules": self.modules,
            "layers": self.layers,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "trainable_share": self.share,
            "trainable_tensors": len(self.trainable),
            "by_module": self.by_module,
        }


def numel(param: Any) -> int:
    """Full size of a parameter, also when ZeRO-3 has partitioned it away."""
    return int(getattr(param, "ds_numel", None) or param.numel())


def plan_freeze(sizes: Iterable[tuple[str, int]], cfg: FreezeConfig, num_layers: int) -> FreezePlan:
    """Decide trainable names from (name, numel) pairs; raises SurgeonError on a selector matching nothing."""
    sizes = list(sizes)
    names = [n for n, _ in sizes]
    if str(cfg.modules).strip().lower() in EVERYTHING:
        if cfg.layers not in (None, "all"):
            picked = select_names(names, "re:.", cfg.layers, num_layers, flag="freeze.modules")
        else:
            picked = names
    else:
        picked = select_names(names, cfg.modules, cfg.layers, num_layers, flag="freeze.modules")
    chosen = set(picked)
    by_module: dict[str, Counter] = {}
    for name, n in sizes:
        module = classify(name).module
        entry = by_module.setdefault(module, Counter())
        entry["total"] += n
        entry["trainable"] += n if name in chosen else 0
    return FreezePlan(
        modules=cfg.modules,
        layers=cfg.layers,
        trainable=picked,
        total_params=sum(n for _, n in sizes),
        trainable_params=sum(n for name, n in sizes if name in chosen),
        by_module={m: dict(c) for m, c in sorted(by_module.items())},
    )


def apply_freeze(model: Any, cfg: FreezeConfig) -> FreezePlan:
    """Set requires_grad on every parameter; call before the DeepSpeed engine is built."""
    params = dict(model.named_parameters())
    plan = plan_freeze(((n, numel(p)) for n, p in params.items()), cfg, _num_layers(model.config))
    chosen = set(plan.trainable)
    for name, param in params.items():
        param.requires_grad_(name in chosen)
    return plan


def _num_layers(config: Any) -> int:
    text = getattr(config, "get_text_config", lambda: config)()
    return int(getattr(text, "num_hidden_layers", 0) or 0)


def model_config(model: ModelConfig) -> Any:
    """The transformers config: from ``model.arch`` in the recipe, a local dir, or the local HF cache."""
    from transformers import AutoConfig

    if model.arch:
        arch = dict(model.arch)
        model_type = arch.pop("model_type", None)
        if not model_type:
            raise SurgeonError("config model.arch needs a model_type (e.g. qwen2)")
        return AutoConfig.for_model(model_type, **arch)
    path = Path(model.path).expanduser()
    try:
        return AutoConfig.from_pretrained(
            str(path) if path.exists() else model.path, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise SurgeonError(
            f"model {model.path!r}: no config.json found locally ({exc.__class__.__name__}); "
            "download it, or give the architecture under model.arch in the recipe"
        ) from None


def dry_run(model: ModelConfig, cfg: FreezeConfig) -> FreezePlan:
    """Count trainable parameters on the meta device: no weights are read or allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(model)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
    sizes = [(n, p.numel()) for n, p in meta.named_parameters()]
    return plan_freeze(sizes, cfg, _num_layers(config))


def format_plan(plan: FreezePlan) -> str:
    """A short table: module, trainable / total parameters."""
    lines = [f"{'module':<28}{'trainable':>16}{'total':>16}"]
    for module, c in plan.by_module.items():
        lines.append(f"{module:<28}{c['trainable']:>16,}{c['total']:>16,}")
    lines.append(
        f"trainable {plan.trainable_params:,} of {plan.total_params:,} parameters "
        f"({100 * plan.share:.2f}%, {plan.trainable_params / 1e9:.2f}B) in {len(plan.trainable)} tensors"
    )
    return "\n".join(lines)
