"""The one recipe catalogue: list the shipped configs, resolve a name or path, copy one out,
read a recipe file and apply ``key=value`` overrides.

As in torchtune (``tune ls`` / ``tune cp``), users do not edit installed files: they copy
a config (each shipped file names every key, so the copy is whole), change it, and pass
their copy to ``surgeon train`` or ``surgeon eval``. Both commands take the same
overrides: dotted paths and YAML values (``train.learning_rate=2e-5``, ``samples=4``).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from weightsurgeon.errors import SurgeonError

PACKAGE = "weightsurgeon.recipes.configs"


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    path: Path
    kind: str  # "train" or "eval", from the config's sections
    description: str


def configs_dir() -> Path:
    return Path(str(resources.files(PACKAGE)))


def list_recipes() -> list[RecipeEntry]:
    """Every shipped YAML config, by file stem."""
    import yaml

    entries = []
    for path in sorted(configs_dir().glob("*.yaml")):
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            tree = {}
        kind = "train" if isinstance(tree, dict) and ("freeze" in tree or "train" in tree) else "eval"
        description = str(tree.get("description", "")) if isinstance(tree, dict) else ""
        entries.append(RecipeEntry(path.stem, path, kind, description))
    return entries


def find_recipe(name: str) -> Path:
    """A shipped config by name (with or without .yaml)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    for entry in list_recipes():
        if entry.name == stem:
            return entry.path
    known = ", ".join(e.name for e in list_recipes())
    raise SurgeonError(f"no recipe named {name!r} (known: {known})")


def resolve_config(arg: str) -> Path:
    """A path if the file exists, else a shipped recipe name."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".yaml" and (len(path.parts) > 1 or path.exists()):
        raise SurgeonError(f"{path}: no such config file (see `surgeon recipe ls`)")
    return find_recipe(arg)


def copy_recipe(name: str, dest: str | Path, force: bool = False) -> Path:
    """Copy a shipped config to ``dest`` (a file, or a directory to put NAME.yaml in)."""
    src = find_recipe(name)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise SurgeonError(f"{dest}: exists; pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise SurgeonError(f"{dest.parent}: no such directory; create it first, or copy into an existing folder")
    shutil.copyfile(src, dest)
    return dest


def read_recipe(path: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A recipe file as a plain mapping, with ``key=value`` overrides applied (not yet validated)."""
    import yaml

    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SurgeonError(f"{path}: cannot read recipe: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SurgeonError(f"{path}: not a recipe (the file is not UTF-8 text); give a YAML file") from None
    except yaml.YAMLError as exc:
        raise SurgeonError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise SurgeonError(f"{path}: a recipe is a mapping of settings")
    return apply_overrides(tree, overrides)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], yaml-parsed value)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SurgeonError(f"override {text!r} is not key=value (e.g. train.learning_rate=2e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise SurgeonError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted key in ``tree`` (in place; sections are created as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SurgeonError(f"override {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return tree
