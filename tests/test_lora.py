"""`surgeon extract --lora` and `surgeon splice BASE adapter/`, checked with the real clients:
PEFT's PeftModel.from_pretrained on the base must give the spliced model's logits at full rank
and come closer as the rank grows; the adapter must satisfy vLLM's LoRA rules; merging the
adapter back with splice must give the splice's tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402

from weightsurgeon.adapter import ADAPTER_WEIGHTS, VLLM_MAX_LORA_RANKS, vllm_problems  # noqa: E402
from weightsurgeon.lowrank import factor  # noqa: E402
from weightsurgeon.synth import make_checkpoint, make_tuned  # noqa: E402

# Logits of a 2-layer float32 model: what float32 rounding of W + B @ A against W' leaves.
FULL_RANK_ATOL = 2e-5
IDS = [[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 49, 50]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = make_checkpoint(root / "base", arch="qwen2", num_layers=2, hidden_size=64, dtype="f32")
    tuned = make_tuned(base, root / "tuned")
    return base, tuned


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float().numpy()


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _peft_logits(base: Path, adapter: Path) -> np.ndarray:
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(_load(base), str(adapter)).eval())


def test_peft_logits_equal_the_splice_at_full_rank_and_close_in_as_rank_grows(pair, surgeon, tmp_path):
    base, tuned = pair
    assert surgeon("splice", base, tuned, "--take", "o_proj", "-o", tmp_path / "merged", "-q").code == 0
    want = _logits(_load(tmp_path / "merged"))
    errors = {}
    for rank in (2, 8, 32, 64):  # hidden 64: rank 64 is full
        out = tmp_path / f"r{rank}"
        res = surgeon("extract", tuned, "--base", base, "--take", "o_proj", "--lora", rank, "-o", out, "-q")
        assert res.code == 0, res.stderr
        errors[rank] = float(np.abs(_peft_logits(base, out) - want).max())
        report = json.loads((out / "surgeon.json").read_text())["lora"]
        assert len(report["matrices"]) == 2
    assert errors[64] < FULL_RANK_ATOL, errors
    assert errors[2] > errors[8] > errors[32] > errors[64], errors
    assert _logits(_load(base)).shape == want.shape and np.abs(_logits(_load(base)) - want).max() > 100 * FULL_RANK_ATOL


def test_adapter_follows_peft_and_vllm_conventions(pair, surgeon, tmp_path):
    base, tuned = pair
    out = tmp_path / "a"
    assert surgeon("extract", tuned, "--base", base, "--take", "o_proj,mlp", "--layers", "1", "--lora", 16,
                   "-o", out, "-q").code == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    tensors = load_file(str(out / ADAPTER_WEIGHTS))
    assert vllm_problems(cfg, list(tensors)) == []
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 16 and cfg["bias"] == "none" and not cfg["modules_to_save"]
    assert 16 in VLLM_MAX_LORA_RANKS
    # only layer 1 is adapted, so target_modules names its modules in full (PEFT must not wrap layer 0)
    assert len(cfg["target_modules"]) == 4 and all(t.startswith("model.layers.1.") for t in cfg["target_modules"])
    assert sorted(tensors) == sorted(
        f"base_model.model.model.layers.1.{m}.lora_{w}.weight"
        for m in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj") for w in "AB")
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (16, 128)
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load(base), str(out))
    wrapped = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert all(".layers.1." in n for n in wrapped) and len(wrapped) == 4
    try:  # vLLM's own checks where vLLM is installed (its config parser needs no GPU)
        from vllm.config import LoRAConfig
        from vllm.lora.peft_helper import PEFTHelper
    except ImportError:
        return
    PEFTHelper.from_local_dir(str(out), max_position_embeddings=None).validate_legal(LoRAConfig(max_lora_rank=16))


def test_splice_of_the_adapter_reproduces_the_splice(pair, surgeon, tmp_path):
    base, tuned = pair
    adapter = tmp_path / "full"
    assert surgeon("extract", tuned, "--base", base, "--take", "o_proj", "--lora", 64, "-o", adapter, "-q").code == 0
    assert surgeon("splice", base, adapter, "-o", tmp_path / "back", "-q", "--verify").code == 0
    back = _tensors(tmp_path / "back")
    donor = _tensors(tuned)
    original = _tensors(base)
    for name, value in back.items():
        if ".o_proj." in name:
            np.testing.assert_allclose(value, donor[name], rtol=0, atol=1e-6)
            assert not np.array_equal(value, original[name])
        else:
            assert np.array_equal(value, original[name]), name
    doc = json.loads((tmp_path / "back" / "surgeon.json").read_text())
    assert [i["role"] for i in doc["inputs"]] == ["base", "adapter"] and doc["adapter"]["config"]["r"] == 64
    # PEFT's own merge gives the same weights
    from peft import PeftModel

    merged = PeftModel.from_pretrained(_load(base), str(adapter)).merge_and_unload().state_dict()
    np.testing.assert_allclose(merged["model.layers.1.self_attn.o_proj.weight"].numpy(),
                               back["model.layers.1.self_attn.o_proj.weight"], rtol=0, atol=1e-6)
    # --alpha 0.5 merges half the delta; --take selects among the adapter's modules
    assert surgeon("splice", base, adapter, "--alpha", "0.5", "--layers", "0", "-o", tmp_path / "half", "-q").code == 0
    half = _tensors(tmp_path / "half")
    name = "model.layers.0.self_attn.o_proj.weight"
    np.testing.assert_allclose(half[name], original[name] + 0.5 * (donor[name] - original[name]), atol=1e-6)
    assert np.array_equal(half["model.layers.1.self_attn.o_proj.weight"], original["model.layers.1.self_attn.o_proj.weight"])


def test_bias_deltas_are_refused_dropped_or_written_as_lora_bias(pair, surgeon, tmp_path):
    base, tuned = pair  # qwen2: q/k/v carry biases, and the fine-tune changed them
    res = surgeon("extract", tuned, "--base", base, "--take", "q_proj", "--lora", 64, "-o", tmp_path / "x")
    assert res.code == 1 and res.err_lines[-1].startswith("error: ") and "--bias" in res.stderr
    assert len(res.err_lines) == 1 and not (tmp_path / "x").exists()
    res = surgeon("extract", tuned, "--base", base, "--take", "q_proj", "--lora", 64, "--bias", "drop", "-o", tmp_path / "d", "-q")
    assert res.code == 0 and "bias delta(s) left out" in res.stderr
    res = surgeon("extract", tuned, "--base", base, "--take", "q_proj", "--lora", 64, "--bias", "lora", "-o", tmp_path / "l", "-q")
    assert res.code == 0 and "vLLM refuses" in res.stderr
    cfg = json.loads((tmp_path / "l" / "adapter_config.json").read_text())
    assert cfg["lora_bias"] is True and vllm_problems(cfg, []) != []
    assert surgeon("splice", base, tuned, "--take", "q_proj", "-o", tmp_path / "m", "-q").code == 0
    np.testing.assert_allclose(_peft_logits(base, tmp_path / "l"), _logits(_load(tmp_path / "m")), rtol=0, atol=FULL_RANK_ATOL)


def test_bad_lora_requests_are_one_line_errors(pair, surgeon, tmp_path):
    base, tuned = pair
    for args in (["--take", "norm"], ["--take", "emb"], ["--take", "o_proj", "--layers", "7"]):
        res = surgeon("extract", tuned, "--base", base, *args, "--lora", 4, "-o", tmp_path / "bad")
        assert res.code == 1 and len(res.err_lines) == 1 and res.err_lines[0].startswith("error: "), res.stderr
        assert not (tmp_path / "bad").exists()
    assert surgeon("extract", tuned, "--take", "o_proj", "--lora", 4, "-o", tmp_path / "bad").code == 2
    other = make_checkpoint(tmp_path / "wide", arch="qwen2", num_layers=2, hidden_size=128, dtype="f32")
    res = surgeon("extract", other, "--base", base, "--take", "o_proj", "--lora", 4, "-o", tmp_path / "bad")
    assert res.code == 1 and "BASE [64, 64] vs DONOR [128, 128]" in res.stderr
    # an adapter that does not fit the base it is merged into
    assert surgeon("extract", tuned, "--base", base, "--take", "o_proj", "--lora", 4, "-o", tmp_path / "ad", "-q").code == 0
    res = surgeon("splice", other, tmp_path / "ad", "-o", tmp_path / "bad")
    assert res.code == 1 and "do not fit BASE" in res.stderr and not (tmp_path / "bad").exists()
    res = surgeon("extract", tuned, "--base", base, "--take", "o_proj", "--lora", 4, "--dry-run")
    assert res.code == 0 and "lowrank" in res.stdout


def test_factor_kept_share_and_methods():
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((300, 20)) @ rng.standard_normal((20, 200))).astype(np.float32)
    d = low + 0.01 * rng.standard_normal((300, 200)).astype(np.float32)
    exact = factor(d, 20, "exact")
    rand = factor(d, 20, "randomized")
    assert exact.method == "exact" and rand.method == "randomized"
    assert 0.99 < exact.kept_share <= 1.0 and abs(rand.kept_share - exact.kept_share) < 1e-4
    # kept share is what the factors really hold
    for f in (exact, rand):
        np.testing.assert_allclose(np.sum((f.b.astype(np.float64) @ f.a) ** 2), f.kept, rtol=1e-4)
    full = factor(d, 500)
    assert full.method == "identity" and full.kept_share == 1.0 and full.b.shape == (300, 500)
    np.testing.assert_allclose(full.b @ full.a, d, rtol=0, atol=0)
    zero = factor(np.zeros((4, 3), np.float32), 2)
    assert zero.kept_share == 1.0 and not zero.b.any()
