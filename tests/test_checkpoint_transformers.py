"""The reader against transformers: every tensor transformers loads from a synthetic model has
exactly the bytes `Checkpoint.read_tensor` returns (qwen2 and llama, tied and untied, bf16/f16/f32)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _bits(t) -> np.ndarray:
    """A torch tensor's stored bits as the reader returns them (bf16 as uint16)."""
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.contiguous().numpy()


@pytest.mark.parametrize("arch,tied,dtype,shard_bytes", [
    ("qwen2", False, "bf16", None),
    ("qwen2", True, "f32", 60_000),
    ("llama", False, "f16", 60_000),
    ("llama", True, "bf16", None),
])
def test_reader_matches_transformers(tiny_model, arch: str, tied: bool, dtype: str, shard_bytes) -> None:
    path = tiny_model(arch=arch, tied=tied, dtype=dtype, shard_bytes=shard_bytes)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    state = model.state_dict()
    expected_dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    with open_checkpoint(path) as ckpt:
        assert set(ckpt.tensors) == set(state) - ({"lm_head.weight"} if tied else set())
        for name, info in ckpt.tensors.items():
            assert state[name].dtype == expected_dtype and tuple(state[name].shape) == info.shape
            np.testing.assert_array_equal(ckpt.read_tensor(name), _bits(state[name]), err_msg=name)
        if tied:
            assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
            from weightsurgeon.layout import layout_of

            assert layout_of(ckpt.tensors, ckpt.config).tied_embeddings


def test_transformers_saved_checkpoint_is_valid(tiny_model, tmp_path, surgeon) -> None:
    """A folder written by save_pretrained (sharded, its own index and metadata) passes verify --deep."""
    path = tiny_model(arch="llama", dtype="f32")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    out = tmp_path / "saved"
    model.save_pretrained(str(out), max_shard_size="100KB")
    result = surgeon("verify", "--deep", out)
    assert result.code == 0, result.stderr
    with open_checkpoint(out) as saved, open_checkpoint(path) as original:
        assert len(saved.shards) > 1
        for name in original.tensors:
            np.testing.assert_array_equal(saved.read_tensor(name), original.read_tensor(name))


_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=64)
# model_type -> (config overrides, tensor names layout.py is expected to leave as "other")
ARCHS = {
    "gpt2": (dict(n_embd=32, n_layer=3, n_head=4, vocab_size=128, n_positions=64), ()),
    "gpt_neox": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=128), ()),
    "falcon": (dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, vocab_size=128), ()),
    "opt": (dict(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=128,
                 word_embed_proj_dim=32), ()),
    "bloom": (dict(hidden_size=32, n_layer=3, n_head=4, vocab_size=128), ("word_embeddings_layernorm",)),
    "mistral": (_SMALL, ()),
    "gemma2": (dict(_SMALL, head_dim=8), ()),
    "gemma3_text": (dict(_SMALL, head_dim=8), ()),
    "phi3": (dict(_SMALL, pad_token_id=0), ()),
    "qwen3": (_SMALL, ()),
    "mixtral": (dict(_SMALL, num_local_experts=4, num_experts_per_tok=2), ()),
    "qwen2_moe": (dict(_SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                       shared_expert_intermediate_size=32), ()),
    "qwen3_moe": (dict(_SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16), ()),
    # first layer dense, the rest MoE; MLA attention names are not canonical modules
    "deepseek_v3": (dict(_SMALL, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1,
                         kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_group=1,
                         topk_group=1), ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "q_a_layernorm",
                                         "kv_a_layernorm")),
}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_transformers_architectures_verify_and_map(tmp_path, surgeon, model_type: str) -> None:
    """Tiny random models of many families, saved by transformers: valid, and every name mapped."""
    from weightsurgeon.layout import layout_of

    overrides, allowed_other = ARCHS[model_type]
    config = transformers.AutoConfig.for_model(model_type, **overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out = tmp_path / model_type
    model.save_pretrained(str(out), max_shard_size="200KB")
    for args in (("verify", "--deep", out), ("inspect", "--json", out)):
        result = surgeon(*args)
        assert result.code == 0, (args, result.stderr)
    with open_checkpoint(out) as ckpt:
        layout = layout_of(ckpt.tensors, ckpt.config)
        assert layout.num_layers == 3
        assert {loc.layer for loc in layout.locations.values() if loc.layer is not None} == {0, 1, 2}
        unexpected = [n for n in layout.other if not any(part in n for part in allowed_other)]
        assert unexpected == []
        groups = {loc.group for loc in layout.locations.values()}
        assert {"attn", "mlp", "norm", "emb"} <= groups or model_type == "deepseek_v3"


@pytest.mark.parametrize("model_type", ["gemma3", "llava"])
def test_multimodal_checkpoints(tmp_path, surgeon, model_type: str) -> None:
    """model.language_model.layers.N..., a vision tower and a projector: text layers counted, vision kept whole."""
    import json

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=300, head_dim=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                  patch_size=14)
    if model_type == "gemma3":
        kw = dict(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                  boi_token_index=297, eoi_token_index=298)
    else:
        kw = dict(text_config=dict(text, model_type="llama"),
                  vision_config=dict(vision, model_type="clip_vision_model", projection_dim=16), image_token_index=299)
    config = transformers.AutoConfig.for_model(model_type, **kw)
    model = transformers.AutoModelForImageTextToText.from_config(config)
    out = tmp_path / model_type
    model.save_pretrained(str(out))
    assert surgeon("verify", "--deep", out).code == 0
    result = surgeon("inspect", "--json", out)
    info = json.loads(result.stdout)
    assert result.code == 0 and info["num_layers"] == 3 and info["other"] == []
    assert {"vision", "attn", "mlp", "emb", "norm"} <= set(info["parameters_by_group"])


def test_encoder_models_are_valid_checkpoints_too(tmp_path, surgeon) -> None:
    """Not a decoder layout (BERT's encoder.layer.N): valid, with warnings, and no layer checks."""
    config = transformers.AutoConfig.for_model("bert", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                               num_attention_heads=4, vocab_size=128)
    out = tmp_path / "bert"
    transformers.AutoModel.from_config(config).save_pretrained(str(out))
    result = surgeon("verify", "--deep", out)
    assert result.code == 0 and "layer checks skipped" in result.stderr
