"""layout.py: tensor names of every supported family -> (layer, module, param), and the selectors."""
from __future__ import annotations

import pytest

from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import (GROUPS, LINEAR_MODULES, MODULES, NORM_MODULES, Location, classify, layout_of,
                                  parse_layers, parse_modules, select_names)

# (tensor name, layer, module, param, expert)
TABLE = [
    # Llama / Mistral / Qwen2 / Qwen2.5
    ("model.embed_tokens.weight", None, "embed_tokens", "weight", None),
    ("model.layers.0.self_attn.q_proj.weight", 0, "q_proj", "weight", None),
    ("model.layers.12.self_attn.k_proj.weight", 12, "k_proj", "weight", None),
    ("model.layers.3.self_attn.v_proj.bias", 3, "v_proj", "bias", None),  # Qwen2 q/k/v biases
    ("model.layers.3.self_attn.q_proj.bias", 3, "q_proj", "bias", None),
    ("model.layers.31.self_attn.o_proj.weight", 31, "o_proj", "weight", None),
    ("model.layers.5.mlp.gate_proj.weight", 5, "gate_proj", "weight", None),
    ("model.layers.5.mlp.up_proj.weight", 5, "up_proj", "weight", None),
    ("model.layers.5.mlp.down_proj.weight", 5, "down_proj", "weight", None),
    ("model.layers.5.input_layernorm.weight", 5, "input_layernorm", "weight", None),
    ("model.layers.5.post_attention_layernorm.weight", 5, "post_attention_layernorm", "weight", None),
    ("model.norm.weight", None, "norm", "weight", None),
    ("lm_head.weight", None, "lm_head", "weight", None),
    ("model.layers.0.self_attn.rotary_emb.inv_freq", 0, "other", "inv_freq", None),
    # Qwen3
    ("model.layers.2.self_attn.q_norm.weight", 2, "q_norm", "weight", None),
    ("model.layers.2.self_attn.k_norm.weight", 2, "k_norm", "weight", None),
    # Mistral consolidated / original Llama names
    ("layers.4.attention.wq.weight", 4, "q_proj", "weight", None),
    ("layers.4.attention.wk.weight", 4, "k_proj", "weight", None),
    ("layers.4.attention.wv.weight", 4, "v_proj", "weight", None),
    ("layers.4.attention.wo.weight", 4, "o_proj", "weight", None),
    ("layers.4.feed_forward.w1.weight", 4, "gate_proj", "weight", None),
    ("layers.4.feed_forward.w2.weight", 4, "down_proj", "weight", None),
    ("layers.4.feed_forward.w3.weight", 4, "up_proj", "weight", None),
    ("layers.4.attention_norm.weight", 4, "input_layernorm", "weight", None),
    ("layers.4.ffn_norm.weight", 4, "post_attention_layernorm", "weight", None),
    ("tok_embeddings.weight", None, "embed_tokens", "weight", None),
    ("norm.weight", None, "norm", "weight", None),
    ("output.weight", None, "lm_head", "weight", None),
    # Gemma 2 / 3 (text) and Gemma 3 multimodal
    ("model.layers.7.pre_feedforward_layernorm.weight", 7, "pre_feedforward_layernorm", "weight", None),
    ("model.layers.7.post_feedforward_layernorm.weight", 7, "post_feedforward_layernorm", "weight", None),
    ("model.language_model.layers.4.self_attn.o_proj.weight", 4, "o_proj", "weight", None),
    ("model.language_model.layers.4.self_attn.q_norm.weight", 4, "q_norm", "weight", None),
    ("model.language_model.embed_tokens.weight", None, "embed_tokens", "weight", None),
    ("model.language_model.norm.weight", None, "norm", "weight", None),
    ("language_model.model.layers.2.mlp.down_proj.weight", 2, "down_proj", "weight", None),
    ("language_model.model.embed_tokens.weight", None, "embed_tokens", "weight", None),
    ("language_model.lm_head.weight", None, "lm_head", "weight", None),
    ("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight", None, "vision", "weight", None),
    ("vision_tower.vision_model.encoder.layers.3.mlp.fc1.bias", None, "vision", "bias", None),
    ("model.multi_modal_projector.mm_input_projection_weight", None, "vision", "mm_input_projection_weight", None),
    ("multi_modal_projector.mm_soft_emb_norm.weight", None, "vision", "weight", None),
    ("visual.blocks.0.attn.qkv.weight", None, "vision", "weight", None),  # Qwen2-VL
    # Phi-3: fused
    ("model.layers.1.self_attn.qkv_proj.weight", 1, "qkv_proj", "weight", None),
    ("model.layers.1.mlp.gate_up_proj.weight", 1, "gate_up_proj", "weight", None),
    # GPT-2
    ("transformer.h.0.attn.c_attn.weight", 0, "qkv_proj", "weight", None),
    ("transformer.h.0.attn.c_attn.bias", 0, "qkv_proj", "bias", None),
    ("transformer.h.0.attn.c_proj.weight", 0, "o_proj", "weight", None),
    ("transformer.h.0.mlp.c_fc.weight", 0, "up_proj", "weight", None),
    ("transformer.h.0.mlp.c_proj.weight", 0, "down_proj", "weight", None),
    ("transformer.h.11.ln_1.weight", 11, "input_layernorm", "weight", None),
    ("transformer.h.11.ln_2.bias", 11, "post_attention_layernorm", "bias", None),
    ("transformer.wte.weight", None, "embed_tokens", "weight", None),
    ("transformer.wpe.weight", None, "embed_positions", "weight", None),
    ("transformer.ln_f.weight", None, "norm", "weight", None),
    ("h.2.attn.c_attn.weight", 2, "qkv_proj", "weight", None),  # the hub's gpt2 has no "transformer." prefix
    ("wte.weight", None, "embed_tokens", "weight", None),
    ("ln_f.bias", None, "norm", "bias", None),
    # GPT-NeoX
    ("gpt_neox.layers.1.attention.query_key_value.weight", 1, "qkv_proj", "weight", None),
    ("gpt_neox.layers.1.attention.dense.weight", 1, "o_proj", "weight", None),
    ("gpt_neox.layers.1.mlp.dense_h_to_4h.weight", 1, "up_proj", "weight", None),
    ("gpt_neox.layers.1.mlp.dense_4h_to_h.bias", 1, "down_proj", "bias", None),
    ("gpt_neox.layers.1.input_layernorm.weight", 1, "input_layernorm", "weight", None),
    ("gpt_neox.embed_in.weight", None, "embed_tokens", "weight", None),
    ("gpt_neox.final_layer_norm.weight", None, "norm", "weight", None),
    ("embed_out.weight", None, "lm_head", "weight", None),
    # OPT
    ("model.decoder.layers.1.self_attn.out_proj.weight", 1, "o_proj", "weight", None),
    ("model.decoder.layers.1.fc1.weight", 1, "up_proj", "weight", None),
    ("model.decoder.layers.1.fc2.bias", 1, "down_proj", "bias", None),
    ("model.decoder.layers.1.self_attn_layer_norm.weight", 1, "input_layernorm", "weight", None),
    ("model.decoder.layers.1.final_layer_norm.weight", 1, "post_attention_layernorm", "weight", None),
    ("model.decoder.embed_tokens.weight", None, "embed_tokens", "weight", None),
    ("model.decoder.embed_positions.weight", None, "embed_positions", "weight", None),
    ("model.decoder.final_layer_norm.weight", None, "norm", "weight", None),
    # Falcon
    ("transformer.h.2.self_attention.query_key_value.weight", 2, "qkv_proj", "weight", None),
    ("transformer.h.2.self_attention.dense.weight", 2, "o_proj", "weight", None),
    ("transformer.word_embeddings.weight", None, "embed_tokens", "weight", None),
    # Mixtral
    ("model.layers.1.block_sparse_moe.experts.7.w1.weight", 1, "expert_gate_proj", "weight", 7),
    ("model.layers.1.block_sparse_moe.experts.7.w2.weight", 1, "expert_down_proj", "weight", 7),
    ("model.layers.1.block_sparse_moe.experts.0.w3.weight", 1, "expert_up_proj", "weight", 0),
    ("model.layers.1.block_sparse_moe.gate.weight", 1, "router", "weight", None),
    # Qwen2-MoE / Qwen3-MoE
    ("model.layers.3.mlp.experts.12.gate_proj.weight", 3, "expert_gate_proj", "weight", 12),
    ("model.layers.3.mlp.experts.12.up_proj.weight", 3, "expert_up_proj", "weight", 12),
    ("model.layers.3.mlp.experts.127.down_proj.weight", 3, "expert_down_proj", "weight", 127),
    ("model.layers.3.mlp.gate.weight", 3, "router", "weight", None),
    ("model.layers.3.mlp.shared_expert.gate_proj.weight", 3, "shared_expert_gate_proj", "weight", None),
    ("model.layers.3.mlp.shared_expert.up_proj.weight", 3, "shared_expert_up_proj", "weight", None),
    ("model.layers.3.mlp.shared_expert.down_proj.weight", 3, "shared_expert_down_proj", "weight", None),
    ("model.layers.3.mlp.shared_expert_gate.weight", 3, "shared_expert_router", "weight", None),
    # Stacked experts (GPT-OSS, transformers 5): one 3-D parameter, no ".weight"
    ("model.layers.3.mlp.experts.gate_up_proj", 3, "expert_gate_up_proj", "weight", None),
    ("model.layers.3.mlp.experts.down_proj_bias", 3, "expert_down_proj", "bias", None),
    ("model.layers.3.mlp.router.weight", 3, "router", "weight", None),
    # Qwen-1: mlp.w1/mlp.w2 are halves of the input projection, not gate/down
    ("transformer.h.0.mlp.w1.weight", 0, "other", "weight", None),
    ("transformer.h.0.mlp.c_proj.weight", 0, "down_proj", "weight", None),
    # Unknown
    ("foo", None, "other", "foo", None),
    ("", None, "other", "", None),
    ("model.layers.0.weird.weight", 0, "other", "weight", None),
    ("model.mtp.0.weight", None, "other", "weight", None),
    ("transformer.h.0.attn.masked_bias", 0, "other", "masked_bias", None),
]


@pytest.mark.parametrize("name,layer,module,param,expert", TABLE, ids=[t[0] or "<empty>" for t in TABLE])
def test_classify(name: str, layer, module: str, param: str, expert) -> None:
    assert classify(name) == Location(layer, module, param, expert)


def test_groups() -> None:
    assert classify("model.layers.0.self_attn.o_proj.weight").group == "attn"
    assert classify("model.layers.0.mlp.experts.3.up_proj.weight").group == "mlp"
    assert classify("model.layers.0.mlp.shared_expert_gate.weight").group == "mlp"
    assert classify("model.layers.0.mlp.gate.weight").group == "mlp"
    assert classify("model.layers.0.self_attn.q_norm.weight").group == "norm"
    assert classify("lm_head.weight").group == "head"
    assert classify("transformer.wpe.weight").group == "emb"
    assert classify("vision_tower.x.weight").group == "vision"
    assert classify("foo.bar").group == "other"
    assert set(LINEAR_MODULES) <= set(MODULES) and NORM_MODULES == GROUPS["norm"]


# ---------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------

def test_parse_modules_names_groups_and_regex() -> None:
    sel = parse_modules("o_proj")
    assert sel.modules == {"o_proj"} and sel.explicit == {"o_proj"}
    sel = parse_modules("attn, norm")
    assert sel.modules == GROUPS["attn"] | GROUPS["norm"] and not sel.explicit
    assert parse_modules("qkv").modules == {"q_proj", "k_proj", "v_proj", "qkv_proj"}
    assert parse_modules("emb,head").modules == {"embed_tokens", "embed_positions", "lm_head"}
    sel = parse_modules(r"o_proj,re:experts\.(0|1)\.w[13]{1,2}\.")  # a trailing regex may hold commas
    assert sel.modules == {"o_proj"} and len(sel.patterns) == 1
    assert sel.matches("model.layers.0.mlp.experts.1.w1.weight", classify("model.layers.0.mlp.experts.1.w1.weight"))
    assert not sel.matches("model.layers.0.mlp.experts.2.w2.weight", classify("model.layers.0.mlp.experts.2.w2.weight"))


@pytest.mark.parametrize("spec,match", [("", "empty"), ("   ", "empty"), ("o_prj", "unknown module 'o_prj'"),
                                        ("attn,bogus", "unknown module 'bogus'"), ("re:(", "bad regex")])
def test_parse_modules_errors(spec: str, match: str) -> None:
    with pytest.raises(SurgeonError, match=match):
        parse_modules(spec)


@pytest.mark.parametrize("spec,expected", [
    ("5-30", set(range(5, 31))),
    ("0,2,5-9", {0, 2, 5, 6, 7, 8, 9}),
    ("3", {3}),
    (" 1 - 2 , 4 ", {1, 2, 4}),
    ("31", {31}),
    ("0-31", set(range(32))),
])
def test_parse_layers(spec: str, expected: set[int]) -> None:
    assert parse_layers(spec, 32) == expected


def test_parse_layers_all() -> None:
    assert parse_layers("all", 32) is None and parse_layers("ALL", 32) is None and parse_layers(None, 32) is None


@pytest.mark.parametrize("spec,match", [
    ("32", "out of range"), ("30-40", "out of range"), ("9-5", "end is before the start"),
    ("", "empty item"), ("1,,2", "empty item"), ("a", "not N or N-M"), ("-1", "not N or N-M"),
    ("1-2-3", "not N or N-M"), ("1.5", "not N or N-M"), ("5-", "not N or N-M"),
])
def test_parse_layers_errors(spec: str, match: str) -> None:
    with pytest.raises(SurgeonError, match=match):
        parse_layers(spec, 32)


LLAMA_NAMES = ["model.embed_tokens.weight"] + [
    f"model.layers.{l}.{m}.weight" for l in range(4)
    for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
] + ["model.norm.weight", "lm_head.weight"]
PHI3_NAMES = ["model.embed_tokens.weight"] + [
    f"model.layers.{l}.{m}.weight" for l in range(2)
    for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj", "input_layernorm",
              "post_attention_layernorm")
] + ["model.norm.weight", "lm_head.weight"]


def test_select_names_keeps_order_and_layers() -> None:
    picked = select_names(LLAMA_NAMES, "o_proj", "1-2", 4)
    assert picked == ["model.layers.1.self_attn.o_proj.weight", "model.layers.2.self_attn.o_proj.weight"]
    assert len(select_names(LLAMA_NAMES, "attn", None, 4)) == 16
    assert select_names(LLAMA_NAMES, "emb,head", None, 4) == ["model.embed_tokens.weight", "lm_head.weight"]
    # With a layer selection, layer-less tensors (embeddings, head, final norm) are not picked.
    assert all(".layers.0." in n for n in select_names(LLAMA_NAMES, "norm", "0", 4))
    assert "model.norm.weight" in select_names(LLAMA_NAMES, "final_norm", None, 4)


def test_select_names_fused_part_is_an_error() -> None:
    for part, fused in (("q_proj", "qkv_proj"), ("v_proj", "qkv_proj"), ("gate_proj", "gate_up_proj"), ("up_proj", "gate_up_proj")):
        with pytest.raises(SurgeonError, match=f"--take {part}: .*fused into {fused}.*select {fused}"):
            select_names(PHI3_NAMES, part, None, 2)
    # groups and the fused names themselves work on the fused model
    assert len(select_names(PHI3_NAMES, "qkv", None, 2)) == 2
    assert len(select_names(PHI3_NAMES, "attn", "1", 2)) == 2
    assert len(select_names(PHI3_NAMES, "gate_up_proj", "all", 2)) == 2


def test_select_names_matching_nothing_is_an_error() -> None:
    with pytest.raises(SurgeonError, match="matched no tensor.*modules present"):
        select_names(LLAMA_NAMES, "q_norm", None, 4, flag="--module")
    with pytest.raises(SurgeonError, match="--module 'emb' matched no tensor in layers 0-1"):
        select_names(LLAMA_NAMES, "emb", "0-1", 4, flag="--module")
    with pytest.raises(SurgeonError, match="out of range"):
        select_names(LLAMA_NAMES, "o_proj", "4", 4)


def test_layout_of_tied_and_layers() -> None:
    untied = layout_of(LLAMA_NAMES, {"num_hidden_layers": 4, "tie_word_embeddings": False})
    assert untied.num_layers == 4 and not untied.tied_embeddings and untied.other == ()
    no_head = [n for n in LLAMA_NAMES if n != "lm_head.weight"]
    assert layout_of(no_head, {"tie_word_embeddings": True}).tied_embeddings
    assert layout_of(no_head, None).tied_embeddings  # no config: no head + embeddings means tied
    assert layout_of(no_head, None).num_layers == 4
    multimodal = layout_of(["model.language_model.layers.0.self_attn.o_proj.weight"],
                           {"text_config": {"num_hidden_layers": 7}})
    assert multimodal.num_layers == 7
    gpt2 = layout_of(["h.0.attn.c_attn.weight", "junk"], {"n_layer": 12})
    assert gpt2.num_layers == 12 and gpt2.other == ("junk",)
