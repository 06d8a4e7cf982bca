"""The checkout itself must not shadow installed packages when it is on sys.path.

`python -m pytest` (and `python -c`, `python -m weightsurgeon`) from the repository root
put the root first on sys.path. A top-level `kernels/` folder there once shadowed the
Hugging Face `kernels` package that transformers 5 imports, and every transformers test
failed with "cannot import name 'CUDAProperties' from 'kernels'".
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_only_package_at_the_root_is_weightsurgeon() -> None:
    packages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == ["weightsurgeon"]


def test_kernels_from_the_root_is_not_ours() -> None:
    probe = ("import importlib.util, sys\n"
             "spec = importlib.util.find_spec('kernels')\n"
             "print(spec.origin if spec is not None else 'absent')\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    origin = out.stdout.strip()
    assert origin == "absent" or Path(origin).resolve().parent != ROOT / "kernels", origin


def test_weightsurgeon_kernels_and_recipes_import_from_the_package() -> None:
    import weightsurgeon
    import weightsurgeon.kernels
    import weightsurgeon.recipes

    home = Path(weightsurgeon.__file__).resolve().parent
    assert Path(weightsurgeon.kernels.__file__).resolve().parent == home / "kernels"
    assert Path(weightsurgeon.recipes.__file__).resolve().parent == home / "recipes"


def _project_imports(path: Path, package: str) -> set[str]:
    """Every weightsurgeon module a file imports, at the top or inside a function."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("weightsurgeon.")}


def test_recipes_eval_modules_import_each_other_one_way() -> None:
    """backends <- parallel and runner -> lm_harness: a circle makes import order matter and hides who owns what."""
    folder = ROOT / "weightsurgeon" / "recipes" / "eval"
    names = {f"weightsurgeon.recipes.eval.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {name: _project_imports(path, "weightsurgeon.recipes.eval") & set(names) - {name}
             for name, path in names.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "weightsurgeon.recipes.eval.make_backend" not in graph  # sanity: module names, not attributes
    assert graph["weightsurgeon.recipes.eval.parallel"] >= {"weightsurgeon.recipes.eval.backends"}
