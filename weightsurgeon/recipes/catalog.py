"""The shipped recipe configs: list them, resolve a name to a file, copy one out to edit.

As in torchtune (``tune ls`` / ``tune cp``), users do not edit installed files: they copy
a config, change it, and pass their copy to ``surgeon train``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from weightsurgeon.errors import SurgeonError

PACKAGE = "weightsurgeon.recipes.configs"


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    path: Path
    kind: str  # "train" or "eval", from the config's sections
    description: str


def _configs_dir() -> Path:
    return Path(str(resources.files(PACKAGE)))


def list_recipes() -> list[RecipeEntry]:
    """Every shipped YAML config, by file stem."""
    import yaml

    entries = []
    for path in sorted(_configs_dir().glob("*.yaml")):
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
        raise SurgeonError(f"{dest.parent}: no such directory")
    shutil.copyfile(src, dest)
    return dest
