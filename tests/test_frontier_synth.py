"""Frontier-shaped synthetic pairs (DeepSeek-V3 FP8, GPT-OSS MXFP4, Qwen3-MoE) through every command.

The shapes keep the real structure (names, kinds, dtypes, quantization); the tests shrink
layers and experts so they run in seconds. The full tensor counts are checked from the
specs alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.synth_frontier import BUILDERS, make_frontier


@pytest.mark.parametrize("shape,count", [("deepseek-v3", 91_991), ("gpt-oss", 459), ("qwen3-moe", 18_867)])
def test_real_tensor_counts(shape: str, count: int) -> None:
    specs, config = BUILDERS[shape]()
    assert sum(len(s.stored()) for s in specs) == count
    assert config["num_hidden_layers"] in (61, 24, 48)


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ds")
    dims = dict(hidden=128, layers=5, experts=8)
    return make_frontier(root / "base", "deepseek-v3", **dims), make_frontier(root / "tuned", "deepseek-v3", tuned_seed=1, **dims)


def _json(result) -> dict:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_deepseek_pair_verify_inspect_diff(deepseek, surgeon) -> None:
    base, tuned = deepseek
    assert surgeon("verify", "--deep", base).code == 0
    info = _json(surgeon("inspect", "--json", base))
    assert info and "other" not in json.dumps(info.get("groups", {}))
    report = _json(surgeon("diff", base, tuned, "--json"))
    modules = {m["module"] for m in report["modules"]}
    assert {"q_a_proj", "kv_b_proj", "o_proj", "expert_gate_proj", "shared_expert_down_proj", "router", "mtp"} <= modules
    assert "other" not in modules
    assert not any(name.endswith("_scale_inv") for name in (t["name"] for t in report["tensors"]))
    layers = {m["layer"] for m in report["modules"] if m["layer"] is not None}
    assert layers == set(range(5))  # the MTP layer (5) is not a decoder layer
    median = {}
    for m in report["modules"]:
        if m["layer"] is not None:
            median.setdefault(m["module"], []).append(m["rel_l2"])
    median = {k: float(np.median(v)) for k, v in median.items()}
    assert max(median, key=median.get) == "o_proj"  # the planted ranking's top


def test_deepseek_splice_takes_weights_and_scales(deepseek, surgeon, tmp_path: Path) -> None:
    base, tuned = deepseek
    out = tmp_path / "spliced"
    assert surgeon("splice", base, tuned, "--take", "o_proj", "-o", out).code == 0
    with open_checkpoint(out) as o, open_checkpoint(base) as b, open_checkpoint(tuned) as t:
        assert {n: (i.dtype, i.shape) for n, i in o.tensors.items()} == {n: (i.dtype, i.shape) for n, i in b.tensors.items()}
        assert o.config["quantization_config"] == b.config["quantization_config"]
        for name in ("model.layers.2.self_attn.o_proj.weight", "model.layers.2.self_attn.o_proj.weight_scale_inv"):
            assert np.array_equal(o.read_tensor(name), t.read_tensor(name))
        mtp = "model.layers.5.self_attn.o_proj.weight"  # the MTP layer's attention is not a decoder layer's o_proj
        assert np.array_equal(o.read_tensor(mtp), b.read_tensor(mtp))
    report = _json(surgeon("diff", base, out, "--json"))
    changed = {m["module"] for m in report["modules"] if m["l2_delta"] > 0}
    assert changed == {"o_proj"}


def test_deepseek_remove_renumbers_the_mtp_layer(deepseek, surgeon, tmp_path: Path) -> None:
    base, _ = deepseek
    out = tmp_path / "removed"
    assert surgeon("remove", base, "--layers", "1-2", "-o", out).code == 0
    with open_checkpoint(out) as o:
        assert o.config["num_hidden_layers"] == 3 and o.config["first_k_dense_replace"] == 1
        layers = {int(n.split(".")[2]) for n in o.tensors if n.startswith("model.layers.")}
        assert layers == {0, 1, 2, 3} and "model.layers.3.eh_proj.weight" in o.tensors
        assert "model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv" in o.tensors
    assert surgeon("verify", out).code == 0


def test_deepseek_zero_keeps_scales_and_reinit_refuses(deepseek, surgeon, tmp_path: Path) -> None:
    base, tuned = deepseek
    out = tmp_path / "zeroed"
    assert surgeon("zero", base, "--module", "o_proj", "--layers", "3", "-o", out).code == 0
    with open_checkpoint(out) as o, open_checkpoint(base) as b:
        w = "model.layers.3.self_attn.o_proj.weight"
        assert not o.read_tensor(w).any()
        assert np.array_equal(o.read_tensor(w + "_scale_inv"), b.read_tensor(w + "_scale_inv"))
    row = _json(surgeon("diff", base, out, "--json", "--module", "o_proj", "--layers", "3"))["tensors"][0]
    assert row["l2_tuned"] == 0.0 and row["n_nonfinite"] == 0
    for args in (("reinit", base, "--module", "o_proj", "-o", tmp_path / "r"),
                 ("splice", base, tuned, "--take", "o_proj", "--cast", "-o", tmp_path / "c"),
                 ("splice", base, tuned, "--take", "o_proj", "--alpha", "0.5", "-o", tmp_path / "a")):
        result = surgeon(*args)
        assert result.code == 1 and len(result.err_lines) == 1 and result.err_lines[0].startswith("error: ")
        assert not Path(args[-1]).exists()


def test_bf16_donor_into_fp8_base_is_refused(deepseek, surgeon, tmp_path: Path) -> None:
    base, _ = deepseek
    donor = make_frontier(tmp_path / "bf16", "deepseek-v3", hidden=128, layers=5, experts=8)
    # a bf16 copy of the donor: rewrite its o_proj weights as BF16 and drop their scales
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    file = next(donor.glob("*.safetensors"))
    tensors = load_file(str(file))
    for name in [n for n in tensors if n.endswith("o_proj.weight")]:
        scale = tensors.pop(name + "_scale_inv")
        rows, cols = tensors[name].shape
        full = scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
        tensors[name] = (tensors[name].to(torch.float32) * full).to(torch.bfloat16)
    save_file(tensors, str(file), metadata={"format": "pt"})
    index = json.loads((donor / "model.safetensors.index.json").read_text())
    index["weight_map"] = {n: f for n, f in index["weight_map"].items() if n in tensors}
    (donor / "model.safetensors.index.json").write_text(json.dumps(index))
    result = surgeon("splice", base, donor, "--take", "o_proj", "-o", tmp_path / "out")
    assert result.code == 1 and not (tmp_path / "out").exists()
    assert "dtype mismatch" in result.stderr and "BASE F8_E4M3 block 128x128" in result.stderr and "DONOR BF16" in result.stderr
    # the diff compares a bf16 o_proj with an FP8 one by value
    report = _json(surgeon("diff", base, donor, "--json", "--module", "o_proj"))
    assert all(t["dtype_tuned"] == "BF16" and t["dtype"].startswith("F8_E4M3") for t in report["tensors"])
    assert max(t["rel_l2"] for t in report["tensors"]) < 0.01  # the same values, rounded to bf16


@pytest.mark.parametrize("shape,dims", [("gpt-oss", dict(layers=2, experts=4)), ("qwen3-moe", dict(layers=2, experts=8))])
def test_moe_pairs(tmp_path: Path, surgeon, shape: str, dims: dict) -> None:
    base = make_frontier(tmp_path / "base", shape, hidden=128, **dims)
    tuned = make_frontier(tmp_path / "tuned", shape, hidden=128, tuned_seed=1, **dims)
    assert surgeon("verify", "--deep", base).code == 0
    report = _json(surgeon("diff", base, tuned, "--json"))
    modules = {m["module"] for m in report["modules"]}
    assert "other" not in modules and "router" in modules
    assert ("expert_gate_up_proj" if shape == "gpt-oss" else "expert_gate_proj") in modules
    if shape == "gpt-oss":
        row = next(t for t in report["tensors"] if t["name"] == "model.layers.1.mlp.experts.down_proj")
        assert row["dtype"] == "MXFP4" and row["shape"] == [4, 128, 128] and row["rel_l2"] > 0
        out = tmp_path / "zeroed"
        assert surgeon("zero", base, "--module", "experts", "-o", out).code == 0
        with open_checkpoint(out) as o:
            assert not o.read_tensor("model.layers.0.mlp.experts.down_proj_blocks").any()
            assert o.read_tensor("model.layers.0.mlp.experts.down_proj_scales").any()


def test_experts_option(deepseek, surgeon, tmp_path: Path) -> None:
    base, tuned = deepseek
    report = _json(surgeon("diff", base, tuned, "--json", "--module", "experts", "--experts", "0-2"))
    experts = {int(t["name"].split(".")[5]) for t in report["tensors"]}
    assert experts == {0, 1, 2} and report["options"]["experts"] == "0-2"
    out = tmp_path / "zeroed"
    assert surgeon("zero", base, "--module", "experts", "--experts", "5", "--layers", "3", "-o", out).code == 0
    with open_checkpoint(out) as o:
        assert not o.read_tensor("model.layers.3.mlp.experts.5.up_proj.weight").any()
        assert o.read_tensor("model.layers.3.mlp.experts.4.up_proj.weight").any()
    out = tmp_path / "plugin"
    assert surgeon("extract", tuned, "--take", "experts", "--experts", "1", "-o", out).code == 0
    with open_checkpoint(out) as o:
        assert {n.split(".")[5] for n in o.tensors} == {"1"}
        assert "model.layers.4.mlp.experts.1.down_proj.weight_scale_inv" in o.tensors


def test_splice_of_some_experts(deepseek, surgeon, tmp_path: Path) -> None:
    """--experts in splice: the DONOR's other experts are not 'left out', BASE keeps its own; MTP is no extra layer."""
    base, tuned = deepseek
    out = tmp_path / "spliced"
    result = surgeon("splice", base, tuned, "--take", "experts", "--experts", "0-1", "-o", out)
    assert result.code == 0, result.stderr
    with open_checkpoint(out) as o, open_checkpoint(base) as b, open_checkpoint(tuned) as t:
        name = "model.layers.4.mlp.experts.1.down_proj.weight"
        assert np.array_equal(o.read_tensor(name), t.read_tensor(name))
        other = "model.layers.4.mlp.experts.2.down_proj.weight"
        assert np.array_equal(o.read_tensor(other), b.read_tensor(other))
