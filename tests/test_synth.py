"""synth.py: models transformers accepts, a working tokenizer with thinking markers, deterministic
values independent of sharding, and a planted delta that matches its documented ground truth."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import classify
from weightsurgeon.synth import (DEFAULT_PATTERN, bf16_bits_to_float32, float32_to_bf16_bits, layer_profile,
                                 make_checkpoint, make_tuned)

os.environ["HF_HUB_OFFLINE"] = "1"


def _floats(ckpt, name: str) -> np.ndarray:
    raw = ckpt.read_tensor(name)
    info = ckpt[name]
    return bf16_bits_to_float32(raw) if info.dtype == "BF16" else raw.astype(np.float32)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_config_accepted_by_autoconfig(tiny_model, arch: str) -> None:
    transformers = pytest.importorskip("transformers")
    path = tiny_model(arch=arch, layer_types=True, tied=arch == "llama")
    config = transformers.AutoConfig.from_pretrained(str(path))
    assert config.model_type == arch and config.num_hidden_layers == 2 and config.hidden_size == 64
    assert config.tie_word_embeddings is (arch == "llama")
    assert list(config.layer_types) == ["full_attention"] * 2


def test_tokenizer_has_chat_template_and_single_thinking_tokens(tiny_model) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model()))
    think, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    ids = tok.encode("<think>héllo</think>", add_special_tokens=False)
    assert ids[0] == think and ids[-1] == end and len(ids) == 2 + len("héllo".encode())
    assert tok.decode(ids) == "<think>héllo</think>"
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_values_are_deterministic_and_independent_of_sharding(tiny_model) -> None:
    a = tiny_model(seed=3, dtype="bf16")
    b = tiny_model(seed=3, dtype="bf16", shard_bytes=20_000)
    c = tiny_model(seed=4, dtype="bf16")
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb, open_checkpoint(c) as cc:
        assert len(cb.shards) > 1 and list(ca.tensors) == sorted(ca.tensors)
        for name in ca.tensors:
            np.testing.assert_array_equal(ca.read_tensor(name), cb.read_tensor(name))
        assert not np.array_equal(ca.read_tensor("model.layers.0.self_attn.o_proj.weight"),
                                  cc.read_tensor("model.layers.0.self_attn.o_proj.weight"))
        norm = _floats(ca, "model.layers.0.input_layernorm.weight")
        weight = _floats(ca, "model.layers.0.mlp.down_proj.weight")
        assert abs(norm.mean() - 1.0) < 0.05 and 0.015 < weight.std() < 0.025


def test_moe_checkpoint_loads_in_transformers_with_every_weight(tmp_path) -> None:
    """qwen3_moe (the benchmarks' many-tensor shape): transformers finds every weight, none missing or unused."""
    transformers = pytest.importorskip("transformers")
    path = make_checkpoint(tmp_path / "moe", arch="qwen3_moe", num_layers=2, num_experts=4, intermediate_size=32)
    tuned = make_tuned(path, tmp_path / "tuned")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True)
    assert type(model).__name__ == "Qwen3MoeForCausalLM" and not any(info.values())
    with open_checkpoint(path) as a, open_checkpoint(tuned) as b:
        experts = [n for n in a.tensors if ".mlp.experts." in n]
        assert len(experts) == 2 * 4 * 3 and classify(experts[0]).module.startswith("expert_")
        name = "model.layers.1.mlp.experts.3.down_proj.weight"
        assert not np.array_equal(a.read_tensor(name), b.read_tensor(name))  # experts carry the planted change


@pytest.mark.parametrize("kw", [dict(arch="gpt2"), dict(dtype="f64"), dict(hidden_size=65), dict(vocab_size=100),
                                dict(arch="qwen3_moe"), dict(num_experts=4)])
def test_bad_arguments(tmp_path, kw: dict) -> None:
    with pytest.raises(SurgeonError):
        make_checkpoint(tmp_path / "x", **kw)


def test_bf16_rounding_is_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, np.inf, np.nan, 0.0], dtype=np.float32)
    bits = float32_to_bf16_bits(x)
    back = bf16_bits_to_float32(bits)
    assert back[0] == 1.0 and back[1] == 1.0 and back[2] == 1.0 + 2**-6 and back[3] == -2.5
    assert np.isinf(back[4]) and np.isnan(back[5]) and back[6] == 0.0


def test_planted_delta_matches_ground_truth(tiny_model, tmp_path) -> None:
    base = tiny_model(num_layers=3, hidden_size=64, intermediate_size=128, vocab_size=300, dtype="f32")
    tuned = make_tuned(base, tmp_path / "tuned")
    truth = json.loads((tuned / "planted.json").read_text())
    assert truth["scale"] == DEFAULT_PATTERN and truth["layer_profile"] == layer_profile(3) == [0.5, 1.0, 1.5]
    assert truth["ranking"][0] == "o_proj" and "embed_tokens" in truth["unchanged"]
    with open_checkpoint(base) as a, open_checkpoint(tuned) as b:
        assert list(a.tensors) == list(b.tensors) and b.config == a.config
        np.testing.assert_array_equal(a.read_tensor("model.embed_tokens.weight"), b.read_tensor("model.embed_tokens.weight"))
        for name in a.tensors:
            loc = classify(name)
            if loc.module == "embed_tokens":
                continue
            x, y = _floats(a, name), _floats(b, name)
            rel = np.linalg.norm(y - x) / np.linalg.norm(x)
            expected = truth["scale"][loc.module] * (truth["layer_profile"][loc.layer] if loc.layer is not None else 1.0)
            tolerance = 0.5 if x.size < 1000 else 0.15  # small tensors: few samples of z
            assert abs(rel - expected) <= tolerance * expected, (name, rel, expected)


def test_make_tuned_can_cast(tiny_model, tmp_path) -> None:
    base = tiny_model(dtype="f32")
    tuned = make_tuned(base, tmp_path / "t", dtype="bf16", pattern={"o_proj": 0.1})
    with open_checkpoint(tuned) as ckpt:
        assert {t.dtype for t in ckpt} == {"BF16"} and ckpt.config["torch_dtype"] == "bfloat16"
    assert json.loads((tuned / "planted.json").read_text())["ranking"] == ["o_proj"]


def test_synth_streams_large_tensors(tmp_path) -> None:
    """A 128 MiB embedding is written chunk by chunk: peak memory grows by a few chunks, not the tensor."""
    import subprocess
    import sys

    from conftest import PEAK_RSS, cli_env

    script = PEAK_RSS + """
import resource, sys
from weightsurgeon.synth import make_checkpoint
make_checkpoint(sys.argv[1] + "/warm", num_layers=1, hidden_size=64, vocab_size=512)
base = peak_rss_bytes() // 1024
make_checkpoint(sys.argv[1] + "/big", num_layers=1, hidden_size=1024, intermediate_size=64, num_heads=8, num_kv_heads=8,
                vocab_size=32768, dtype="f32", tied=True)
print((peak_rss_bytes() // 1024 - base) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=cli_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr
    grew_mib = int(done.stdout.split()[-1])
    assert (tmp_path / "big" / "model.safetensors").stat().st_size > 128 * 2**20
    assert grew_mib < 64, f"peak RSS grew {grew_mib} MiB writing a 128 MiB tensor"


def test_fast_values_follow_the_same_law(tmp_path) -> None:
    """fast=True (benchmark models of many GB): reinit's generator, other values, the same scales and planted delta."""
    slow = make_checkpoint(tmp_path / "slow", dtype="bf16", hidden_size=128, intermediate_size=256)
    fast = make_checkpoint(tmp_path / "fast", dtype="bf16", hidden_size=128, intermediate_size=256, fast=True)
    tuned = make_tuned(fast, tmp_path / "tuned", fast=True)
    name = "model.layers.1.mlp.down_proj.weight"
    with open_checkpoint(slow) as s, open_checkpoint(fast) as f, open_checkpoint(tuned) as t:
        a, b = _floats(s, name), _floats(f, name)
        assert not np.array_equal(a, b) and 0.018 < b.std() < 0.022
        assert abs(_floats(f, "model.layers.0.input_layernorm.weight").mean() - 1.0) < 0.05
        o = "model.layers.1.self_attn.o_proj.weight"
        rel = np.linalg.norm(_floats(t, o) - _floats(f, o)) / np.linalg.norm(_floats(f, o))
        assert 0.15 < rel < 0.4  # o_proj's planted scale 0.2 x the layer profile (1.5 in the last of 2 layers)
