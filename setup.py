"""Packaging for weightsurgeon.

Everything lives under ``weightsurgeon/``: the kernels and recipes are the subpackages
``weightsurgeon.kernels`` and ``weightsurgeon.recipes``. The repository has no top-level
``kernels`` folder on purpose: with the checkout on sys.path (``python -m pytest`` from
the root) it would shadow the Hugging Face ``kernels`` package, which transformers 5
depends on and imports.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    """Single source of truth: weightsurgeon/_version.py (no hard-coded copies)."""
    namespace: dict[str, str] = {}
    exec((HERE / "weightsurgeon" / "_version.py").read_text(), namespace)
    return namespace["__version__"]


CORE = [
    "safetensors>=0.4",
    "numpy>=1.24",
    "numba>=0.59",
    "click>=8.1",
    "rich>=13",
    "huggingface_hub>=0.23",
    "matplotlib>=3.7",
    "pyyaml>=6",
]
TORCH = "torch>=2.4"
TRAIN = [TORCH, "transformers>=4.56", "accelerate>=1.0", "trl>=0.24", "datasets>=3.0", "deepspeed>=0.19.3"]
EVAL = [TORCH, "transformers>=4.56", "datasets>=3.0", "lm-eval>=0.4.8", "math-verify>=0.8"]
TEST = sorted(set(["pytest>=8", "hypothesis>=6", "psutil>=5", "peft>=0.14", "scipy>=1.10"] + TRAIN + EVAL))

setup(
    name="weightsurgeon",
    version=read_version(),
    description="Streaming weight surgery for LLM checkpoints: diff, splice, zero, reinit, remove; freeze-SFT and eval recipes",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["weightsurgeon", "weightsurgeon.*"]),
    package_data={
        "weightsurgeon.recipes.configs": ["*.yaml"],
        "weightsurgeon.recipes.eval": ["lm_eval_tasks/*.yaml", "data/*.jsonl"],
    },
    install_requires=CORE,
    extras_require={
        "train": TRAIN,
        "eval": EVAL,
        # vLLM pins its own torch and transformers: never part of `all` or `test`.
        "vllm": ["vllm"],
        "test": TEST,
        "all": sorted(set(TRAIN + EVAL)),
    },
    entry_points={"console_scripts": ["surgeon=weightsurgeon.cli:main"]},
)
