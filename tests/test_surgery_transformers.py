"""Equivalence, not just loadability: each surgery's output, loaded by transformers, equals the
same surgery done in memory with torch on the loaded input model — every tensor bit for bit,
and the logits on a few prompts.

Synthetic qwen2 (q/k/v biases, bf16) and llama (f32) models, tied and untied.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from weightsurgeon.synth import make_checkpoint, make_tuned  # noqa: E402

CASES = [("qwen2", "bf16", True), ("qwen2", "bf16", False), ("llama", "f32", True), ("llama", "f32", False)]


def surgeon(*args: str) -> subprocess.CompletedProcess:
    """Run the real `surgeon` command line (python -m weightsurgeon) and insist on success."""
    proc = subprocess.run([sys.executable, "-m", "weightsurgeon", *map(str, args), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def load(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    return model


def bits(t):
    """A tensor's raw bits (so -0.0 != 0.0 and NaN payloads count)."""
    t = t.detach().contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same_model(got, expected) -> None:
    sd_got, sd_exp = got.state_dict(), expected.state_dict()
    assert sorted(sd_got) == sorted(sd_exp)
    for name in sd_exp:
        a, b = sd_got[name], sd_exp[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(bits(a), bits(b)), f"{name} differs"
    ids = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la = got(input_ids=ids, use_cache=False).logits
        lb = expected(input_ids=ids, use_cache=False).logits
    assert torch.equal(la, lb)
    assert torch.isfinite(la.float()).all()


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{d}-{'tied' if t else 'untied'}" for a, d, t in CASES])
def pair(request, tmp_path_factory):
    arch, dtype, tied = request.param
    root = tmp_path_factory.mktemp(f"{arch}{dtype}{tied}")
    base = make_checkpoint(root / "base", arch=arch, num_layers=4, dtype=dtype, tied=tied, shard_bytes=150_000,
                           layer_types=(arch == "qwen2"))
    donor = make_tuned(base, root / "donor")
    return root, base, donor, tied


def test_splice_equals_in_memory_transplant(pair):
    root, base, donor, _ = pair
    out = root / "splice"
    surgeon("splice", base, donor, "--take", "o_proj,qkv", "--layers", "1-2", "-o", out, "--max-shard-size", "100KB")
    expected, d = load(base), load(donor)
    for layer in (1, 2):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            src = getattr(d.model.layers[layer].self_attn, proj)
            dst = getattr(expected.model.layers[layer].self_attn, proj)
            with torch.no_grad():
                dst.weight.copy_(src.weight)
                if dst.bias is not None:  # qwen2: the module's bias comes along
                    dst.bias.copy_(src.bias)
    got = load(out)
    assert not torch.equal(bits(got.model.layers[1].self_attn.o_proj.weight), bits(load(base).model.layers[1].self_attn.o_proj.weight))
    assert_same_model(got, expected)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1


def test_zero_equals_in_memory_zeroing(pair):
    root, base, _, _ = pair
    out = root / "zero"
    surgeon("zero", base, "--module", "attn,post_attention_layernorm", "--layers", "0,3", "-o", out)
    expected = load(base)
    with torch.no_grad():
        for layer in (0, 3):
            block = expected.model.layers[layer]
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                for p in getattr(block.self_attn, proj).parameters():
                    p.zero_()
            block.post_attention_layernorm.weight.zero_()
    assert_same_model(load(out), expected)


def test_remove_equals_in_memory_layer_drop(pair):
    root, base, _, tied = pair
    out = root / "remove"
    surgeon("remove", base, "--layers", "1-2", "-o", out)
    src = load(base)
    kept = [0, 3]
    config = transformers.AutoConfig.from_pretrained(str(base))
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in kept]
    expected = transformers.AutoModelForCausalLM.from_config(config, dtype=src.dtype)
    state = {}
    for name, value in src.state_dict().items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old not in kept:
                continue
            parts[2] = str(kept.index(old))
        state[".".join(parts)] = value
    missing, unexpected = expected.load_state_dict(state, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing)
    if tied:
        expected.tie_weights()
    expected.eval()
    got = load(out)
    assert len(got.model.layers) == 2
    assert_same_model(got, expected)


def test_head_from_untied_donor_unties_tied_base(tmp_path):
    base = make_checkpoint(tmp_path / "base", arch="qwen2", num_layers=2, dtype="bf16", tied=True)
    donor = make_checkpoint(tmp_path / "donor", arch="qwen2", num_layers=2, dtype="bf16", tied=False, seed=7)
    out = tmp_path / "out"
    surgeon("splice", base, donor, "--take", "head", "-o", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    src, d = load(base), load(donor)
    config = transformers.AutoConfig.from_pretrained(str(base))
    config.tie_word_embeddings = False
    expected = transformers.AutoModelForCausalLM.from_config(config, dtype=src.dtype)
    state = {k: v for k, v in src.state_dict().items() if k != "lm_head.weight"}
    state["lm_head.weight"] = d.state_dict()["lm_head.weight"]
    expected.load_state_dict(state)
    expected.eval()
    got = load(out)
    assert got.lm_head.weight.data_ptr() != got.model.embed_tokens.weight.data_ptr()
    assert_same_model(got, expected)


def test_remove_qwen2_sliding_window_layers_loads_in_transformers(tmp_path):
    """max_window_layers -> explicit layer_types of the kept layers; transformers 5 agrees."""
    base = make_checkpoint(tmp_path / "base", arch="qwen2", num_layers=6, dtype="bf16")
    cfg = json.loads((base / "config.json").read_text())
    cfg.update({"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 3})
    (base / "config.json").write_text(json.dumps(cfg, indent=2))
    original = transformers.AutoConfig.from_pretrained(str(base)).layer_types
    assert original == ["full_attention"] * 3 + ["sliding_attention"] * 3  # the rule we mirror
    out = tmp_path / "out"
    surgeon("remove", base, "--layers", "1,4", "-o", out)
    kept = [0, 2, 3, 5]
    new = json.loads((out / "config.json").read_text())
    assert new["num_hidden_layers"] == 4
    assert new["layer_types"] == [original[i] for i in kept]
    assert new["max_window_layers"] == 2
    got = load(out)
    assert got.config.layer_types == [original[i] for i in kept]
    assert [layer.self_attn.sliding_window for layer in got.model.layers] == [None, None, 4, 4]
    with torch.no_grad():
        logits = got(input_ids=torch.arange(12).unsqueeze(0), use_cache=False).logits
    assert torch.isfinite(logits.float()).all()


def test_reinit_rounds_like_torch(tmp_path):
    """bf16 reinit bytes == torch's own float32 -> bf16 rounding of the generator's float32 values."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.surgery import gaussian_values

    base = make_checkpoint(tmp_path / "base", arch="llama", num_layers=2, dtype="bf16")
    out = tmp_path / "out"
    surgeon("reinit", base, "--module", "mlp", "--std", "0.5", "--mean", "0.1", "--seed", "3", "-o", out)
    with open_checkpoint(out) as ckpt:
        info = ckpt["model.layers.1.mlp.down_proj.weight"]
        stored = ckpt.read_tensor(info.name).reshape(-1)
    values = torch.from_numpy(gaussian_values(3, info.name, 0.1, 0.5, 0, info.numel))
    assert torch.equal(torch.from_numpy(stored.view("int16")), values.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("model_type,extra", [("gemma3_text", {"sliding_window": 16}), ("gemma2", {}),
                                              ("smollm3", {"use_sliding_window": True, "sliding_window": 16})])
def test_remove_writes_lists_transformers_derives_from_the_layer_index(model_type, extra):
    """Gemma 2/3 and SmolLM3 derive layer_types / no_rope_layers from the index: removal spells them out."""
    from weightsurgeon.surgery import PER_LAYER_LISTS, remove_config

    cfg = {"model_type": model_type, "num_hidden_layers": 8, "hidden_size": 64, "vocab_size": 300, **extra}
    kept = [0, 1, 2, 4, 6, 7]
    before = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "model_type"})
    new, edits, _ = remove_config(cfg, kept, 8)
    after = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in new.items() if k != "model_type"})
    assert after.num_hidden_layers == 6 and ("layer_types" in edits or "no_rope_layers" in edits)
    for key in PER_LAYER_LISTS:
        if getattr(before, key, None) is not None:
            assert list(getattr(after, key)) == [getattr(before, key)[i] for i in kept], key
