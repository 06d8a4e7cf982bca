"""Names of frontier checkpoints (DeepSeek-V3/R1, GPT-OSS, Qwen3-MoE, Mixtral) map to modules, groups and selectors.

Names as published in each model's model.safetensors.index.json.
"""
from __future__ import annotations

import pytest

from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import classify, layout_of, parse_experts, select_names

DS = "model.layers.5."
DEEPSEEK = {
    DS + "self_attn.q_a_proj.weight": "q_a_proj", DS + "self_attn.q_a_proj.weight_scale_inv": "q_a_proj",
    DS + "self_attn.q_a_layernorm.weight": "q_a_layernorm", DS + "self_attn.q_b_proj.weight": "q_b_proj",
    DS + "self_attn.kv_a_proj_with_mqa.weight": "kv_a_proj_with_mqa",
    DS + "self_attn.kv_a_layernorm.weight": "kv_a_layernorm", DS + "self_attn.kv_b_proj.weight": "kv_b_proj",
    DS + "self_attn.o_proj.weight": "o_proj", DS + "self_attn.o_proj.weight_scale_inv": "o_proj",
    DS + "mlp.gate.weight": "router", DS + "mlp.gate.e_score_correction_bias": "router",
    DS + "mlp.experts.17.gate_proj.weight": "expert_gate_proj", DS + "mlp.experts.255.down_proj.weight": "expert_down_proj",
    DS + "mlp.shared_experts.up_proj.weight": "shared_expert_up_proj",
    "model.layers.0.mlp.gate_proj.weight": "gate_proj",  # the dense first layers
}
GPT_OSS = {
    "model.layers.3.self_attn.sinks": "sinks", "model.layers.3.self_attn.q_proj.bias": "q_proj",
    "model.layers.3.mlp.router.weight": "router", "model.layers.3.mlp.router.bias": "router",
    "model.layers.3.mlp.experts.gate_up_proj_blocks": "expert_gate_up_proj",
    "model.layers.3.mlp.experts.gate_up_proj_scales": "expert_gate_up_proj",
    "model.layers.3.mlp.experts.gate_up_proj_bias": "expert_gate_up_proj",
    "model.layers.3.mlp.experts.down_proj_blocks": "expert_down_proj",
}
QWEN3_MOE_MIXTRAL = {
    "model.layers.1.mlp.gate.weight": "router", "model.layers.1.mlp.experts.127.up_proj.weight": "expert_up_proj",
    "model.layers.1.self_attn.q_norm.weight": "q_norm",
    "model.layers.1.block_sparse_moe.gate.weight": "router",
    "model.layers.1.block_sparse_moe.experts.7.w1.weight": "expert_gate_proj",
    "model.layers.1.block_sparse_moe.experts.7.w3.weight": "expert_up_proj",
    "model.layers.1.block_sparse_moe.experts.7.w2.weight": "expert_down_proj",
}


@pytest.mark.parametrize("table", [DEEPSEEK, GPT_OSS, QWEN3_MOE_MIXTRAL])
def test_names_map_to_modules(table: dict[str, str]) -> None:
    for name, module in table.items():
        assert classify(name).module == module, name


def test_mla_groups_and_o_proj() -> None:
    names = list(DEEPSEEK)
    assert select_names(names, "o_proj", None, 61) == [DS + "self_attn.o_proj.weight", DS + "self_attn.o_proj.weight_scale_inv"]
    attn = set(select_names(names, "attn", None, 61))
    assert {DS + "self_attn.q_a_proj.weight", DS + "self_attn.kv_b_proj.weight", DS + "self_attn.o_proj.weight"} <= attn
    assert DS + "self_attn.q_a_layernorm.weight" not in attn
    assert DS + "self_attn.kv_a_layernorm.weight" in select_names(names, "norm", None, 61)
    assert set(select_names(names, "router", None, 61)) == {DS + "mlp.gate.weight", DS + "mlp.gate.e_score_correction_bias"}
    assert select_names(names, "shared_experts", None, 61) == [DS + "mlp.shared_experts.up_proj.weight"]
    assert set(select_names(names, "experts", None, 61)) == {DS + "mlp.experts.17.gate_proj.weight",
                                                             DS + "mlp.experts.255.down_proj.weight"}


def test_experts_selector() -> None:
    names = list(DEEPSEEK)
    picked = select_names(names, "mlp", None, 61, experts=parse_experts("0-20"))
    assert DS + "mlp.experts.17.gate_proj.weight" in picked and DS + "mlp.experts.255.down_proj.weight" not in picked
    assert DS + "mlp.gate.weight" in picked  # not an expert: unaffected
    assert parse_experts("all") is None and parse_experts("3,5-6") == frozenset({3, 5, 6})
    with pytest.raises(SurgeonError, match="every expert in one tensor"):
        select_names(list(GPT_OSS), "experts", None, 24, experts=parse_experts("0-7"))


def test_mtp_layer_is_not_a_decoder_layer() -> None:
    names = ["model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight",
             "model.layers.2.self_attn.o_proj.weight", "model.layers.2.enorm.weight", "model.layers.2.eh_proj.weight",
             "model.layers.2.shared_head.head.weight", "model.layers.2.embed_tokens.weight", "model.embed_tokens.weight"]
    layout = layout_of(names, {"num_hidden_layers": 2, "num_nextn_predict_layers": 1})
    mtp = [n for n, loc in layout.locations.items() if loc.module == "mtp"]
    assert mtp == [n for n in names if n.startswith("model.layers.2.")]
    assert all(layout.locations[n].layer is None for n in mtp) and not layout.other
    assert select_names(names, "o_proj", None, 2, layout=layout) == names[:2]
    # without the config key, a layer past num_hidden_layers stays what its name says
    assert layout_of(names, {"num_hidden_layers": 2}).locations[names[2]].layer == 2
