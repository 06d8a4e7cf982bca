"""`surgeon lineage MODEL CANDIDATE...`: the parent among siblings, from the sample's bytes only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from weightsurgeon.checkpoint import Checkpoint
from weightsurgeon.synth import make_checkpoint, make_tuned

TINY = dict(arch="qwen2", num_layers=3, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
            vocab_size=300, dtype="bf16")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three siblings (same shapes, different seeds), a fine-tune of the second, an unrelated model, another shape."""
    root = tmp_path_factory.mktemp("lineage")
    out = {f"sib{s}": make_checkpoint(root / f"sib{s}", seed=s, **TINY) for s in (1, 2, 3)}
    out["child"] = make_tuned(out["sib2"], root / "child")
    out["stranger"] = make_checkpoint(root / "stranger", seed=99, **TINY)
    out["other-shape"] = make_checkpoint(root / "other-shape", **{**TINY, "intermediate_size": 64})
    return out


def test_the_fine_tune_finds_its_parent_and_reads_only_the_sample(family, surgeon, monkeypatch) -> None:
    read: list[int] = []
    real = Checkpoint.read_into

    def counting(self, info, offset, out):
        read.append(len(memoryview(out).cast("B")))
        return real(self, info, offset, out)

    monkeypatch.setattr(Checkpoint, "read_into", counting)
    res = surgeon("lineage", family["child"], family["sib1"], family["sib2"], family["other-shape"], family["sib3"],
                  "--json", "--elements", "1000")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["parent"] == "sib2" and data["verdict"].startswith("parent: sib2")
    ranked = [c["label"] for c in data["candidates"]]
    assert ranked[0] == "sib2" and ranked[-1] == "other-shape"
    assert "shapes differ" in data["candidates"][-1]["dropped"]
    assert data["candidates"][0]["distance"] * 10 < data["candidates"][1]["distance"]
    # The sample: first and last layers' attention, MLP and norms, 1,000 leading elements each (BF16).
    assert all(".layers.0." in n or ".layers.2." in n for n in data["sample"]) and len(data["sample"]) == 2 * 12
    sample_bytes = sum(min(1000, n) * 2 for n in _numels(family["child"], data["sample"]))
    assert sum(read) == data["bytes_read"] == sample_bytes * (1 + 3)  # the model once, each kept candidate once


def _numels(folder: Path, names: list[str]) -> list[int]:
    from weightsurgeon.checkpoint import open_checkpoint

    with open_checkpoint(folder) as ckpt:
        return [ckpt[n].numel for n in names]


def test_an_unrelated_model_gets_no_parent(family, surgeon) -> None:
    res = surgeon("lineage", family["stranger"], family["sib1"], family["sib2"], family["sib3"])
    assert res.code == 0, res.stderr
    assert "rule: parent: median relative L2 of the sampled tensors < 0.2" in res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("no parent:")


def test_a_prefix_renamed_copy_is_its_own_parent_at_distance_zero(family, surgeon, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch = pytest.importorskip("torch")
    tensors = {}
    for f in sorted(family["sib1"].glob("*.safetensors")):
        with safe_open(str(f), "pt") as g:
            tensors.update({"_orig_mod." + k: g.get_tensor(k) for k in g.keys()})
    copy = tmp_path / "compiled"
    copy.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(copy / "model.safetensors"), metadata={"format": "pt"})
    (copy / "config.json").write_text((family["sib1"] / "config.json").read_text())
    assert torch is not None
    data = json.loads(surgeon("lineage", family["sib1"], copy, family["sib2"], "--json").stdout)
    assert data["parent"] == "compiled" and data["candidates"][0]["distance"] == 0.0
    assert "paired with the base's by prefix" in data["candidates"][0]["note"]
