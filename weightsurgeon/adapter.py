"""PEFT LoRA adapters on disk: the one place that knows their file names, tensor names and rules.

`surgeon extract --lora` writes adapters and `surgeon splice BASE adapter/` reads them;
anything else that reads or writes adapters (diffs of adapters) should come here too, so
the conventions live once.

An adapter folder holds ``adapter_config.json`` (PEFT's ``LoraConfig``) and
``adapter_model.safetensors``. For a base tensor ``model.layers.3.self_attn.o_proj.weight``
of shape [out, in], PEFT stores ``base_model.model.model.layers.3.self_attn.o_proj.lora_A.weight``
[r, in] and ``...lora_B.weight`` [out, r]; the module's effective weight is
``W + scaling * B @ A`` with ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA).

What vLLM serves (vllm/lora/peft_helper.py and vllm/config/lora.py): ``r``, ``lora_alpha``
and ``target_modules`` present, ``bias`` "none", no ``modules_to_save``, no DoRA, ranks at
most the server's ``--max-lora-rank`` (one of `VLLM_MAX_LORA_RANKS`), and only
``.lora_A.weight`` / ``.lora_B.weight`` tensors (no embeddings, no ``lm_head``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from weightsurgeon.errors import SurgeonError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# The values vLLM accepts for --max-lora-rank (vllm/config/lora.py MaxLoRARanks); default 16.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_LORA_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<param>weight|bias)$")


def is_adapter_dir(path: str | Path) -> bool:
    """True for a folder holding a PEFT adapter (its config and its weights file)."""
    p = Path(str(path)).expanduser()
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


def module_of(tensor_name: str) -> str:
    """``model.layers.3.self_attn.o_proj.weight`` -> ``model.layers.3.self_attn.o_proj`` (the PEFT module key)."""
    if not tensor_name.endswith(".weight"):
        raise SurgeonError(f"internal: {tensor_name} is not a weight")  # internal: callers pass only .weight names
    return tensor_name[: -len(".weight")]


def lora_names(module: str) -> tuple[str, str]:
    """The adapter's A and B tensor names for a base module key."""
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def lora_bias_name(module: str) -> str:
    return f"{PEFT_PREFIX}{module}.lora_B.bias"


def parse_lora_name(name: str) -> tuple[str, str, str] | None:
    """``base_model.model.X.lora_A.weight`` -> (X, "A", "weight"); None for any other name."""
    m = _LORA_NAME.match(name)
    if not m:
        return None
    module = m.group("module")
    if module.startswith(PEFT_PREFIX):
        module = module[len(PEFT_PREFIX):]
    return module, m.group("which"), m.group("param")


def smallest_vllm_rank(r: int) -> int | None:
    """The smallest --max-lora-rank vLLM accepts that serves rank r (None: vLLM cannot)."""
    return next((v for v in VLLM_MAX_LORA_RANKS if v >= r), None)


def target_modules_for(selected: list[str], all_modules: list[str]) -> list[str]:
    """PEFT ``target_modules`` that wrap exactly the selected module keys.

    Leaf names (``o_proj``) where the selection holds every module of that leaf name in the
    model, as adapters on the Hub do; otherwise the full keys of the selected modules (PEFT
    matches a key equal to a target, or ending in ``.`` + target), so no other layer gets a
    LoRA wrapper.
    """
    leaf = lambda key: key.rsplit(".", 1)[-1]  # noqa: E731
    chosen = set(selected)
    out: list[str] = []
    for name in sorted({leaf(k) for k in selected}):
        everyone = [k for k in all_modules if leaf(k) == name]
        if all(k in chosen for k in everyone):
            out.append(name)
        else:
            out.extend(sorted(k for k in selected if leaf(k) == name))
    return out


def lora_config(base_model: str | None, r: int, lora_alpha: float, target_modules: list[str],
                lora_bias: bool = False) -> dict:
    """An ``adapter_config.json`` PEFT loads (LoraConfig fields) and vLLM accepts (unless lora_bias)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": int(r),
        "lora_alpha": lora_alpha,
        "target_modules": list(target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": bool(lora_bias),
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    }


def vllm_problems(config: dict, tensor_names: list[str]) -> list[str]:
    """What vLLM's LoRA loader would refuse in this adapter (its config and tensor naming rules)."""
    problems = [f"adapter_config.json lacks {k!r}" for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}, vLLM needs 'none'")
    if config.get("lora_bias"):
        problems.append("lora_bias is true (bias deltas as lora_B.bias): vLLM does not support adapter biases")
    if config.get("modules_to_save"):
        problems.append("modules_to_save is set: vLLM supports none")
    if config.get("use_dora"):
        problems.append("use_dora: vLLM does not support DoRA")
    ranks = [config.get("r", 0), *dict(config.get("rank_pattern") or {}).values()]
    if max(ranks) > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(f"rank {max(ranks)} exceeds the largest --max-lora-rank vLLM accepts ({VLLM_MAX_LORA_RANKS[-1]})")
    for name in tensor_names:
        parsed = parse_lora_name(name)
        if parsed is None or parsed[2] != "weight":
            problems.append(f"{name}: not a .lora_A.weight / .lora_B.weight tensor")
        elif any(part in parsed[0].split(".") for part in ("embed_tokens", "lm_head")):
            problems.append(f"{name}: LoRA on embeddings or the output head")
    return problems


@dataclass(frozen=True)
class AdapterModule:
    """One adapted module: its base key, rank and scaling, and its tensors' names in the adapter file."""

    module: str
    rank: int
    scaling: float
    a_name: str
    b_name: str
    bias_name: str | None = None


@dataclass
class Adapter:
    """A validated adapter folder: its config, its weights file, and each adapted module."""

    root: Path
    config: dict
    weights: Path
    modules: dict[str, AdapterModule] = field(default_factory=dict)  # base module key -> record
    # modules_to_save: base tensor name -> its whole replacement's name in the adapter file
    # (PEFT saves ``<module>.modules_to_save.default.weight`` as ``base_model.model.<module>.weight``)
    whole: dict[str, str] = field(default_factory=dict)

    @property
    def base_model(self) -> str | None:
        value = self.config.get("base_model_name_or_path")
        return value if isinstance(value, str) and value else None


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the module key's end at a dot."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def open_adapter(path: str | Path, whole_modules: bool = False) -> Adapter:
    """Read and check an adapter folder; every problem is a SurgeonError naming it.

    For merging (splice) `modules_to_save` is refused; a diff (`whole_modules=True`) reads
    those tensors as whole replacements of the base's (`Adapter.whole`).
    """
    from weightsurgeon.format import parse_header

    root = Path(str(path)).expanduser()
    cfg_path = root / ADAPTER_CONFIG
    weights = root / ADAPTER_WEIGHTS
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SurgeonError(f"{cfg_path}: cannot read the adapter config: {e}; save the adapter again") from e
    if not isinstance(config, dict):
        raise SurgeonError(f"{cfg_path}: not a JSON object; save the adapter again (PeftModel.save_pretrained)")
    if not weights.is_file():
        if (root / "adapter_model.bin").exists():
            raise SurgeonError(f"{root / 'adapter_model.bin'}: pickle adapters are never opened; save the adapter "
                               "with safetensors (PeftModel.save_pretrained(..., safe_serialization=True))")
        raise SurgeonError(f"{root}: has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; an adapter folder needs both: "
                           "save the adapter again")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise SurgeonError(f"{cfg_path}: peft_type {config.get('peft_type')!r}; only LoRA adapters can be merged")
    refused = [("use_dora", "DoRA adapters"), ("fan_in_fan_out", "fan_in_fan_out (GPT-2 Conv1D) adapters")]
    if not whole_modules:
        refused.append(("modules_to_save", "adapters with modules_to_save (whole saved modules)"))
    for key, why in refused:
        if config.get(key):
            what = "diff" if whole_modules else "splice"
            raise SurgeonError(f"{cfg_path}: {why} are not supported by {what}; merge with peft's merge_and_unload instead")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise SurgeonError(f"{cfg_path}: {key} must be a positive number, got {config.get(key)!r}")
    header = parse_header(weights)
    found: dict[str, dict[str, str]] = {}
    whole: dict[str, str] = {}
    for entry in header.tensors:
        parsed = parse_lora_name(entry.name)
        if parsed is None and whole_modules and config.get("modules_to_save") and entry.name.startswith(PEFT_PREFIX):
            whole[entry.name[len(PEFT_PREFIX):]] = entry.name
            continue
        if parsed is None:
            raise SurgeonError(f"{weights}: tensor {entry.name!r} is not a LoRA tensor (.lora_A.weight, .lora_B.weight, .lora_B.bias)")
        module, which, param = parsed
        found.setdefault(module, {})[f"{which}.{param}"] = entry.name
    if not found and not whole:
        raise SurgeonError(f"{weights}: holds no LoRA tensors (an empty adapter); save it again")
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    modules: dict[str, AdapterModule] = {}
    shapes = {e.name: tuple(e.shape) for e in header.tensors}
    for module, parts in sorted(found.items()):
        if "A.weight" not in parts or "B.weight" not in parts or "A.bias" in parts:
            raise SurgeonError(f"{weights}: module {module} needs exactly lora_A.weight and lora_B.weight (found {sorted(parts)})")
        a, b = shapes[parts["A.weight"]], shapes[parts["B.weight"]]
        rank = int(_pattern_value(rank_pattern, module, config["r"]))
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            raise SurgeonError(f"{weights}: {module}: lora_A {list(a)} and lora_B {list(b)} do not match rank {rank}; "
                               "the adapter's r (or rank_pattern) must be the rank its tensors have")
        alpha = float(_pattern_value(alpha_pattern, module, config["lora_alpha"]))
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules[module] = AdapterModule(module, rank, scaling, parts["A.weight"], parts["B.weight"], parts.get("B.bias"))
    return Adapter(root=root, config=config, weights=weights, modules=modules, whole=whole)
