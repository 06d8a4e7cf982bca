"""A freeze-SFT recipe as typed data: a YAML file plus ``key=value`` overrides.

A config is read once, checked here (unknown keys, wrong types, impossible batch
arithmetic) and passed inward as frozen dataclasses, so the runner never meets a
half-validated value. Overrides use dotted paths (``train.learning_rate=2e-5``) and
YAML scalars, as in torchtune.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightsurgeon.errors import SurgeonError


@dataclass(frozen=True)
class ModelConfig:
    """What to start from. ``arch`` (config.json keys) lets ``--dry-run`` work offline."""

    path: str
    arch: dict[str, Any] | None = None
    synth: dict[str, Any] | None = None  # make_checkpoint(path, **synth) when path does not exist yet
    trust_remote_code: bool = False


@dataclass(frozen=True)
class FreezeConfig:
    """Which parameters train; the same selector grammar as ``surgeon splice --take``."""

    modules: str = "all"
    layers: str | None = None


@dataclass(frozen=True)
class DecontamConfig:
    """Drop training rows sharing an n-gram with an evaluation set (the seed uses 8-grams).

    ``tasks``: names from weightsurgeon.recipes.tasks, optionally ``NAME=FILE_OR_HUB_ID``;
    ``files``: JSONL (question/problem/prompt/text key) or plain text, one item a line.
    """

    tasks: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    ngram: int = 8


@dataclass(frozen=True)
class DataConfig:
    """Where the rows come from and how they become prompt/completion text.

    ``format``: ``s1k`` (question, thinking trace, answer columns), ``prompt_completion``
    (plain strings) or ``messages`` (chat list; the last assistant turn is the completion).
    ``source: synth:N`` makes N synthetic s1K-style rows (the CPU demo and tests).
    """

    source: str
    split: str = "train"
    format: str = "s1k"
    question_field: str = "question"
    thinking_field: str = "thinking_trajectories"
    answer_field: str = "attempt"
    system_prompt: str | None = None
    think_start: str = "<think>\n"
    think_end: str = "\n</think>\n\n"
    answer_prefix: str = "Answer: "
    max_samples: int | None = None
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters; ``global_batch_size`` fixes the effective batch."""

    max_length: int = 1024
    num_epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_ratio: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 1
    global_batch_size: int = 16
    loss: str = "completion_only"
    precision: str = "bf16"
    gradient_checkpointing: bool = True
    seed: int = 0
    logging_steps: int = 1


@dataclass(frozen=True)
class DistributedConfig:
    """How many devices a launch spans and how DeepSpeed shards across them."""

    backend: str = "deepspeed"
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    nproc_per_node: int = 1
    nnodes: int = 1
    launcher: str = "torchrun"
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"


@dataclass(frozen=True)
class OutputConfig:
    """Where the checkpoint and the report go; ``diff`` runs the closing weight diff."""

    dir: str
    overwrite: bool = False
    diff: bool = True


@dataclass(frozen=True)
class RecipeConfig:
    model: ModelConfig
    data: DataConfig
    output: OutputConfig
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    name: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @property
    def world_size(self) -> int:
        return self.distributed.nproc_per_node * self.distributed.nnodes


CHOICES = {
    ("data", "format"): ("s1k", "prompt_completion", "messages"),
    ("train", "loss"): ("completion_only", "assistant_only", "full"),
    ("train", "precision"): ("bf16", "fp16", "fp32"),
    ("distributed", "backend"): ("deepspeed",),
    ("distributed", "zero_stage"): (0, 1, 2, 3),
    ("distributed", "launcher"): ("torchrun", "accelerate", "deepspeed"),
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(cls_name: str, name: str, hint: Any, value: Any) -> Any:
    where = f"{cls_name}.{name}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(cls_name, name, inner[0], value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SurgeonError(f"config {where}: expected a section, got {value!r}")
        return _build(hint, value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise SurgeonError(f"config {where}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise SurgeonError(f"config {where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SurgeonError(f"config {where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SurgeonError(f"config {where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-5 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SurgeonError(f"config {where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `layers: 5` or `split: 2024`
        if not isinstance(value, str):
            raise SurgeonError(f"config {where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, tree: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise SurgeonError(f"config {where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in tree:
            kwargs[name] = _coerce(where, name, hints[name], tree[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SurgeonError(f"config {where}: missing required key {name!r}")
    for (section, key), allowed in CHOICES.items():
        if where.endswith(section) and key in kwargs and kwargs[key] not in allowed:
            raise SurgeonError(
                f"config {where}.{key}: {kwargs[key]!r} is not one of {', '.join(map(str, allowed))}"
            )
    return cls(**kwargs)


def config_from_dict(tree: dict[str, Any]) -> RecipeConfig:
    """Validate a plain mapping (the parsed YAML) into a RecipeConfig."""
    if not isinstance(tree, dict):
        raise SurgeonError("config: the top level must be a mapping of sections")
    cfg = _build(RecipeConfig, tree, "recipe")
    t = cfg.train
    if t.per_device_batch_size < 1 or t.global_batch_size < 1:
        raise SurgeonError("config train: batch sizes must be >= 1")
    if cfg.data.decontaminate.ngram < 1:
        raise SurgeonError("config data.decontaminate.ngram must be >= 1")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise SurgeonError("config train.warmup_ratio must be in [0, 1)")
    if t.max_steps <= 0 and t.num_epochs <= 0:
        raise SurgeonError("config train: set num_epochs > 0 or max_steps > 0")
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Read a YAML recipe, apply ``key=value`` overrides, validate."""
    from weightsurgeon.recipes.catalog import read_recipe

    path = Path(path)
    if not path.is_file():
        raise SurgeonError(f"{path}: no such config file (see `surgeon recipe ls`)")
    tree = read_recipe(path, overrides)
    try:
        return config_from_dict(tree)
    except SurgeonError as e:  # name the file the setting came from
        # values: config_from_dict's messages (each a row of its own) with the recipe file in front
        raise SurgeonError(f"{path}: {e}") from None


def gradient_accumulation(cfg: RecipeConfig, world_size: int) -> int:
    """Steps to accumulate so the effective batch equals ``global_batch_size``."""
    per_step = cfg.train.per_device_batch_size * world_size
    if cfg.train.global_batch_size % per_step:
        raise SurgeonError(
            f"config train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
            f"per_device_batch_size x devices = {cfg.train.per_device_batch_size} x {world_size}"
        )
    return cfg.train.global_batch_size // per_step
