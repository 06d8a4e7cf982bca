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
