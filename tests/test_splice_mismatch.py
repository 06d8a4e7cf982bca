"""Splice between models that do not match: what the DONOR has in the taken modules and the output
would not hold (a bias BASE lacks, layers BASE lacks) is refused with one line naming it, unless the
user asks for it (--drop-donor-only, --layers naming layers both have), and then said in a warning."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

SHAPE = dict(arch="llama", hidden_size=64, intermediate_size=160, num_heads=4, num_kv_heads=2, vocab_size=300, dtype="f32")
BIAS = "model.layers.1.self_attn.o_proj.bias"


def with_extra_bias(model: Path, out: Path) -> Path:
    """A copy of `model` as one file, plus an o_proj bias in layer 1 (a fine-tune that added one)."""
    tensors = {}
    for f in sorted(model.glob("*.safetensors")):
        tensors.update(load_file(f))
    tensors[BIAS] = np.linspace(-1, 1, 64, dtype=np.float32)
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in model.glob("*.json"):
        if f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    return out


def test_a_donor_bias_the_base_lacks_is_refused_then_dropped_on_request(tiny_model, tmp_path, surgeon):
    base = tiny_model(name="base", num_layers=2, **SHAPE)
    donor = with_extra_bias(tiny_model(name="d0", num_layers=2, seed=4, **SHAPE), tmp_path / "donor")
    out = tmp_path / "out"
    r = surgeon("splice", base, donor, "--take", "o_proj", "-o", out, "-q")
    assert r.code == 1 and len(r.err_lines) == 1 and BIAS in r.stderr, r.stderr
    assert "BASE lacks" in r.stderr and "--drop-donor-only" in r.stderr and not out.exists()
    r = surgeon("splice", base, donor, "--take", "o_proj", "--drop-donor-only", "-o", out, "-q")
    assert r.code == 0, r.stderr
    assert [l for l in r.err_lines if l.startswith("warning:") and BIAS in l and "left out" in l], r.stderr
    written = load_file(out / "model-00001-of-00001.safetensors")
    assert BIAS not in written
    donor_w = load_file(donor / "model.safetensors")
    assert np.array_equal(written["model.layers.1.self_attn.o_proj.weight"], donor_w["model.layers.1.self_attn.o_proj.weight"])


def test_a_donor_with_more_layers_is_refused_unless_layers_both_have_are_named(tiny_model, tmp_path, surgeon):
    base = tiny_model(name="base", num_layers=2, **SHAPE)
    donor = tiny_model(name="donor", num_layers=3, seed=4, **SHAPE)
    out = tmp_path / "out"
    r = surgeon("splice", base, donor, "--take", "o_proj", "-o", out, "-q")
    assert r.code == 1 and len(r.err_lines) == 1, r.stderr
    assert "DONOR" in r.stderr and "has 3 layers and BASE 2" in r.stderr and "--layers 0-1" in r.stderr
    assert "model.layers.2.self_attn.o_proj.weight" in r.stderr and not out.exists()
    r = surgeon("splice", base, donor, "--take", "o_proj", "--layers", "0-1", "-o", out, "-q")
    assert r.code == 0, r.stderr
    assert [l for l in r.err_lines if l.startswith("warning:") and "layer 2" in l and "not taken" in l], r.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def test_another_vocabulary_size_with_matching_o_proj_stays_valid(tiny_model, tmp_path, surgeon):
    base = tiny_model(name="base", num_layers=2, **SHAPE)
    donor = tiny_model(name="donor", num_layers=2, seed=4, **{**SHAPE, "vocab_size": 320})
    r = surgeon("splice", base, donor, "--take", "o_proj", "-o", tmp_path / "out", "-q")
    assert r.code == 0 and not r.err_lines, r.stderr
