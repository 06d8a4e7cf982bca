"""`surgeon diff` on a pair built without any of this project's code, checked without it too.

The way the issue is judged: a base/fine-tune pair with planted per-module deltas,
written by torch and safetensors alone (a Qwen2-style sharded bf16 checkpoint with an
index, and a tuned copy in another shard layout), diffed by the real CLI, and every
per-tensor number compared with a reference computed here from torch's own tensors:
L2 norms to 1e-9 relative against float64, histograms exactly equal to
np.histogram(np.clip(r, -c, c), bins, range=(-c, c)) with r = (B - A) / A in float32,
and the planted ranking of modules recovered.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

LAYERS, HIDDEN, INTER, KV, VOCAB = 4, 96, 160, 32, 700
PLANTED = {"o_proj": 0.30, "v_proj": 0.12, "q_proj": 0.06, "down_proj": 0.03, "gate_proj": 0.015,
           "up_proj": 0.008, "k_proj": 0.004, "input_layernorm": 0.002}
UNCHANGED = ("embed_tokens", "post_attention_layernorm", "norm")


def shapes() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.q_proj.bias": (HIDDEN,),
            p + "self_attn.k_proj.weight": (KV, HIDDEN), p + "self_attn.k_proj.bias": (KV,),
            p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.v_proj.bias": (KV,),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    out["model.norm.weight"] = (HIDDEN,)
    out["lm_head.weight"] = (VOCAB, HIDDEN)
    return out


def module_of(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if parts[-1] in ("weight", "bias") else parts[-1]


def save_sharded(folder: Path, tensors: dict[str, "torch.Tensor"], per_shard: int) -> None:
    """A Hugging Face style sharded checkpoint: model-0000i-of-0000n.safetensors + index."""
    folder.mkdir()
    names = list(tensors)
    groups = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for k, group in enumerate(groups, 1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        safetensors_torch.save_file({n: tensors[n] for n in group}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": LAYERS,
              "hidden_size": HIDDEN, "intermediate_size": INTER, "num_attention_heads": 3, "num_key_value_heads": 1,
              "vocab_size": VOCAB, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("independent")
    gen = torch.Generator().manual_seed(1234)
    base, tuned = {}, {}
    for name, shape in shapes().items():
        a = (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02)
        if "layernorm" in name or name == "model.norm.weight":
            a = a + 1.0
        a = a.to(torch.bfloat16)
        a.view(-1)[:7] = 0  # exact zeros in the base: left out of the histogram
        scale = PLANTED.get(module_of(name), 0.0)
        if name == "lm_head.weight":
            scale = 0.01
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        b = (a.float() * (1 + scale * noise)).to(torch.bfloat16) if scale else a.clone()
        base[name], tuned[name] = a, b
    save_sharded(root / "base", base, per_shard=11)
    save_sharded(root / "tuned", {n: tuned[n] for n in reversed(list(tuned))}, per_shard=17)  # other order, other shards
    return root / "base", root / "tuned", base, tuned


def reference(a: "torch.Tensor", b: "torch.Tensor", bins: int, clip: float) -> dict:
    a32, b32 = a.float().numpy().ravel(), b.float().numpy().ravel()  # bf16 -> float32 is exact
    d32 = b32 - a32
    nz = a32 != 0
    with np.errstate(all="ignore"):
        r = d32[nz] / a32[nz]
    d64 = d32.astype(np.float64)
    return {"l2_delta": math.sqrt(float(np.dot(d64, d64))),
            "l2_base": math.sqrt(float(np.dot(a32.astype(np.float64), a32.astype(np.float64)))),
            "l2_tuned": math.sqrt(float(np.dot(b32.astype(np.float64), b32.astype(np.float64)))),
            "n_base_zero": int((~nz).sum()),
            "hist": np.histogram(np.clip(r, -clip, clip), bins=bins, range=(-clip, clip))[0].tolist()}


def run_diff_json(base: Path, tuned: Path, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "weightsurgeon", "diff", str(base), str(tuned), "--json", *extra],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("bins,clip", [(200, 1.0), (64, 0.25)])
def test_every_tensor_matches_an_independent_reference(pair, bins, clip) -> None:
    base, tuned, a, b = pair
    report = run_diff_json(base, tuned, "--bins", str(bins), "--clip", str(clip), "--chunk-mb", "1")
    rows = {row["name"]: row for row in report["tensors"]}
    assert sorted(rows) == sorted(a)
    for name, row in rows.items():
        want = reference(a[name], b[name], bins, clip)
        for key in ("l2_delta", "l2_base", "l2_tuned"):
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=0.0), (name, key)
        assert row["hist"] == want["hist"], name
        assert row["n_base_zero"] == want["n_base_zero"], name


def test_the_planted_ranking_is_recovered(pair) -> None:
    base, tuned, _, _ = pair
    report = run_diff_json(base, tuned)
    by_module: dict[str, list[float]] = {}
    for row in report["modules"]:
        if row["layer"] is not None and row["module"] in PLANTED:
            by_module.setdefault(row["module"], []).append(row["rel_l2"])
    medians = {m: float(np.median(v)) for m, v in by_module.items()}
    assert sorted(medians, key=medians.get, reverse=True) == sorted(PLANTED, key=PLANTED.get, reverse=True)
    unchanged = [row for row in report["modules"] if row["module"] in UNCHANGED]
    assert unchanged and all(row["l2_delta"] == 0.0 for row in unchanged)
