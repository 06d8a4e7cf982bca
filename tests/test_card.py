"""Model cards: every output of splice, zero, reinit, remove and extract (plugin and LoRA) has a
README.md that huggingface_hub parses back, with the front matter the Hub reads.

Inputs are given as Hub ids from a local Hugging Face cache built here (offline), so
``base_model`` has real ids to name; a plain folder is no Hub id and is never claimed as one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import cli_env, run_cli
from weightsurgeon.synth import make_checkpoint, make_tuned

REV = "0123456789abcdef0123456789abcdef01234567"


def _cache_model(cache: Path, repo: str, src: Path) -> None:
    """Put a model folder into a Hugging Face hub cache layout, as `hf download` leaves it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REV)
    shutil.copytree(src, folder / "snapshots" / REV)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cards")
    base = make_checkpoint(root / "src-base", arch="qwen2", num_layers=3, dtype="f32")
    tuned = make_tuned(base, root / "src-tuned")
    cache = root / "hub"
    _cache_model(cache, "acme/tiny-base", base)
    _cache_model(cache, "acme/tiny-tuned", tuned)
    return root, cli_env(HF_HUB_CACHE=str(cache), HF_HOME=str(root / "home"))


def _card(folder: Path) -> ModelCard:
    card = ModelCard.load(folder / "README.md")
    assert card.data.tags[0] == "weightsurgeon"
    return card


CASES = [
    # (args after the command, expected operation tag, base_model, relation, library)
    (["splice", "acme/tiny-base", "acme/tiny-tuned", "--take", "o_proj"], "splice",
     ["acme/tiny-base", "acme/tiny-tuned"], "merge", "transformers"),
    (["zero", "acme/tiny-base", "--module", "o_proj", "--layers", "1-2"], "zero", "acme/tiny-base", None, "transformers"),
    (["reinit", "acme/tiny-base", "--module", "mlp", "--seed", "3"], "reinit", "acme/tiny-base", None, "transformers"),
    (["remove", "acme/tiny-base", "--layers", "1"], "remove", "acme/tiny-base", None, "transformers"),
    (["extract", "acme/tiny-tuned", "--take", "o_proj"], "extract", "acme/tiny-tuned", None, "transformers"),
    (["extract", "acme/tiny-tuned", "--base", "acme/tiny-base", "--take", "o_proj", "--lora", "8"], "extract",
     "acme/tiny-base", "adapter", "peft"),
]


@pytest.mark.parametrize("args,op,base_model,relation,library", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_every_output_has_a_card_huggingface_hub_parses(hub, tmp_path, args, op, base_model, relation, library):
    root, env = hub
    out = tmp_path / "out"
    proc = run_cli(*args, "-o", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    card = _card(out)
    data = card.data.to_dict()
    assert data["tags"][:2] == ["weightsurgeon", op]
    assert data.get("base_model") == base_model
    assert data.get("base_model_relation") == relation
    assert data["library_name"] == library
    # the exact command and the inputs' header digests from surgeon.json
    assert "surgeon " + " ".join(args) in card.text
    doc = json.loads((out / "surgeon.json").read_text())
    for item in doc["inputs"]:
        for shard in item["shards"]:
            assert shard["header_sha256"][:16] in card.text


def test_plain_folders_are_not_claimed_as_hub_ids(tmp_path, tiny_model, surgeon):
    base = tiny_model("base")
    out = tmp_path / "z"
    assert surgeon("zero", base, "--module", "o_proj", "-o", out, "-q").code == 0
    data = _card(out).data.to_dict()
    assert "base_model" not in data and "base_model_relation" not in data
    assert data["tags"] == ["weightsurgeon", "zero"]


def test_card_of_an_adapter_merged_back(hub, tmp_path):
    root, env = hub
    assert run_cli("extract", "acme/tiny-tuned", "--base", "acme/tiny-base", "--take", "o_proj", "--lora", "4",
                   "-o", tmp_path / "ad", "-q", env=env).returncode == 0
    proc = run_cli("splice", "acme/tiny-base", tmp_path / "ad", "-o", tmp_path / "m", "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    data = _card(tmp_path / "m").data.to_dict()
    assert data["base_model"] == "acme/tiny-base" and data["base_model_relation"] == "finetune"
