"""Names that differ only by a wrapper prefix (`_orig_mod.`, `module.`, a missing `model.`) pair with the base's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from weightsurgeon.synth import make_checkpoint, make_tuned

TINY = dict(num_layers=2, hidden_size=32, intermediate_size=48, num_heads=4, num_kv_heads=2, vocab_size=300)


def renamed_copy(src: Path, dst: Path, rename) -> Path:
    """The model of `src` in one file, every tensor name passed through `rename`."""
    dst.mkdir()
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    save_file({rename(k): v for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("prefix") / "base", arch="llama", dtype="f32", **TINY)


@pytest.mark.parametrize("rename, removed", [
    (lambda n: "_orig_mod." + n, "'_orig_mod.' removed"),
    (lambda n: "module._orig_mod." + n, "'module._orig_mod.' removed"),
    (lambda n: n[len("model."):] if n.startswith("model.") else n, "'model.' added"),
])
def test_prefix_renamed_copy_diffs_to_exactly_zero(base: Path, tmp_path: Path, surgeon, rename, removed: str) -> None:
    copy = renamed_copy(base, tmp_path / "copy", rename)
    res = surgeon("diff", base, copy, "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    notes = [n for n in data["notes"] if "paired with the base's by prefix" in n]
    assert len(notes) == 1 and removed in notes[0], data["notes"]
    names = {k for f in base.glob("*.safetensors") for k in load_file(f)}
    assert not data["missing"] and {t["name"] for t in data["tensors"]} == names
    assert data["tensors"] and all(t["l2_delta"] == 0.0 and t["max_abs_delta"] == 0.0 for t in data["tensors"])


def test_prefixed_fine_tune_is_measured_like_the_plain_one(base: Path, tmp_path: Path, surgeon) -> None:
    tuned = make_tuned(base, tmp_path / "tuned")
    wrapped = renamed_copy(tuned, tmp_path / "wrapped", lambda n: "module." + n)
    plain = json.loads(surgeon("diff", base, tuned, "--json").stdout)
    res = surgeon("diff", base, wrapped, "--json")
    assert res.code == 0, res.stderr
    got = json.loads(res.stdout)
    assert [(t["name"], t["l2_delta"]) for t in got["tensors"]] == [(t["name"], t["l2_delta"]) for t in plain["tensors"]]


def test_ambiguous_prefixes_are_refused_with_the_list(base: Path, tmp_path: Path, surgeon) -> None:
    # Both `model.X` and `_orig_mod.model.X` for the same tensor: two tuned names claim one base name.
    src = {}
    for f in sorted(base.glob("*.safetensors")):
        src.update(load_file(f))
    both = tmp_path / "both"
    both.mkdir()
    first = next(iter(src))
    save_file({**src, "_orig_mod." + first: src[first]}, both / "model.safetensors", metadata={"format": "pt"})
    res = surgeon("diff", base, both, "--json")
    assert res.code == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: both: ") and "ambiguously" in lines[0]
    assert f"_orig_mod.{first} and {first} -> {first}" in lines[0] or f"{first} and _orig_mod.{first} -> {first}" in lines[0]
