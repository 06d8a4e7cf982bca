"""The settings of one evaluation run, from a YAML recipe, ``key=value`` overrides and CLI options.

A recipe (see ``recipes/configs/eval_*.yaml``) holds the same keys as `EvalConfig`;
overrides (as for ``surgeon train``) and options given explicitly override it. Unknown keys are an error so a typo never
silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.catalog import configs_dir
from weightsurgeon.recipes.eval.budget import FORMATS, ThinkingFormat
from weightsurgeon.recipes.tasks import get_task, parse_task_list


@dataclass
class EvalConfig:
    model: str = ""
    tasks: list[str] = field(default_factory=lambda: ["aime24", "math500", "gpqa_diamond"])
    harness: str = "surgeon"  # "surgeon" (our loop) or "lm-eval" (lm_eval.simple_evaluate)
    backend: str = "hf"
    backend_options: dict[str, Any] = field(default_factory=dict)
    prompt: str = "chat"  # "chat": the model's chat template; "plain": the bare problem text
    budget_forcing: int | None = None  # None: plain generation; N: s1 budget forcing with N "Wait"s
    thinking: str = "think-tags"  # a preset of budget.FORMATS
    think_start: str | None = None
    think_end: str | None = None
    answer_marker: str | None = None
    wait: str | None = None
    max_tokens: int = 32768  # cap of plain generation
    max_thinking_tokens: int = 32000
    max_answer_tokens: int = 2048
    limit: int | None = None
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    data: dict[str, str] = field(default_factory=dict)  # task -> local file or Hub id
    output: str | None = None

    def thinking_format(self) -> ThinkingFormat:
        if self.thinking not in FORMATS:
            raise SurgeonError(f"unknown thinking preset {self.thinking!r}; one of {', '.join(FORMATS)}")
        base = FORMATS[self.thinking]
        overrides = {k: getattr(self, k) for k in ("think_start", "think_end", "answer_marker", "wait")
                     if getattr(self, k) is not None}
        return dataclasses.replace(base, **overrides)

    def validate(self) -> "EvalConfig":
        if not self.model:
            raise SurgeonError("no model given (argument MODEL or `model:` in the recipe)")
        if isinstance(self.tasks, str):
            self.tasks = parse_task_list(self.tasks)
        else:
            self.tasks = parse_task_list(",".join(self.tasks))
        # the type first: `samples=abc` on the command line must not reach int()
        for name in ("samples", "max_tokens", "max_thinking_tokens", "max_answer_tokens", "budget_forcing", "limit", "seed"):
            value = getattr(self, name)
            nullable = name in ("budget_forcing", "limit")
            if isinstance(value, bool) or not ((nullable and value is None) or isinstance(value, int)):
                raise SurgeonError(f"{name} must be a whole number{' or null' if nullable else ''}, not {value!r}")
        for name in ("samples", "max_tokens", "max_thinking_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise SurgeonError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.limit is not None and int(self.limit) < 1:
            raise SurgeonError(f"limit must be at least 1, not {self.limit}")
        if self.budget_forcing is not None and int(self.budget_forcing) < 0:
            raise SurgeonError(f"budget_forcing must be 0 or more, not {self.budget_forcing}")
        if self.prompt not in ("chat", "plain"):
            raise SurgeonError(f"prompt must be chat or plain, not {self.prompt!r}")
        if self.harness not in ("surgeon", "lm-eval"):
            raise SurgeonError(f"harness must be surgeon or lm-eval, not {self.harness!r}")
        if self.harness == "lm-eval" and self.budget_forcing is not None:
            raise SurgeonError("--budget-forcing runs in our harness only; drop it or use --harness surgeon")
        for task in self.data:
            get_task(task)  # a typo in a data key must not silently leave the Hub default in place
        self.thinking_format()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(EvalConfig)]


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """An eval recipe (or none) with ``key=value`` overrides; a mapping of checked keys, not yet merged."""
    from weightsurgeon.recipes.catalog import apply_overrides, read_recipe

    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_recipe(path)
        data = raw.get("data") or {}
        if not isinstance(data, dict):
            raise SurgeonError(f"{path}: `data:` maps task names to files or Hub ids")
        # local files in a recipe are relative to the recipe, so shipped recipes find shipped data
        raw["data"] = {task: _resolve_data(path, src) for task, src in data.items()}
    apply_overrides(raw, overrides)  # files named on the command line stay relative to the working folder
    _check_keys(raw, " with ".join(w for w in (str(path) if path else "", "overrides" if overrides else "") if w))
    return raw


def _check_keys(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise SurgeonError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(config_keys())}")


def _resolve_data(recipe: Path, source: str) -> str:
    """Relative data files are looked up next to the recipe, then next to the shipped recipes
    (so a copied shipped recipe still finds the shipped data)."""
    if not _is_relative_file(source):
        return source
    for base in (recipe.parent, configs_dir()):
        if (base / source).is_file():
            return str((base / source).resolve())
    return str((recipe.parent / source).resolve())  # reported as missing when loaded


def _is_relative_file(source: str) -> bool:
    return Path(source).suffix.lower() in (".jsonl", ".json", ".parquet") and not Path(source).is_absolute()


def build_config(recipe: dict[str, Any] | None, overrides: dict[str, Any]) -> EvalConfig:
    """Recipe values, then the options the user actually gave on the command line."""
    values: dict[str, Any] = dict(recipe or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("backend_options", "data") and isinstance(value, dict):
            merged = dict(values.get(key) or {})
            merged.update(value)
            values[key] = merged
        else:
            values[key] = value
    _check_keys(values, "eval config")
    return EvalConfig(**values).validate()
