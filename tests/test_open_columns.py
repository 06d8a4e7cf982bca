"""Opening and planning work on columns: names classified once per template, quantized tensors found
by dtype codes, a header's byte counts and contiguity checked over whole columns (issue 19 item 4:
the cost per tensor of a 100k-tensor checkpoint, before a byte of it is read)."""
from __future__ import annotations

import random

import pytest

from test_layout import TABLE
from weightsurgeon import format as fmt
from weightsurgeon import layout, quant
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.layout import Locations, classify, layout_of
from weightsurgeon.synth import ARCHS, ModelShape, tensor_specs
from weightsurgeon.synth_frontier import deepseek_v3, gpt_oss, qwen3_moe

# Names the per-template path must get right, or hand to the rules one by one.
ODD = [
    "model.layers.007.mlp.experts.03.up_proj.weight",  # leading zeros
    "model.layers.7.mlp.experts.3.up_proj.weight",
    "model.layers.99999999999999999999.mlp.up_proj.weight",  # beyond 64 bits
    "model.layers.123456789012345678.mlp.experts.999999999999999999.down_proj.weight",  # 18 digits
    "model.layers.1234567890123456789.mlp.up_proj.weight",  # 19 digits
    "model.layers.\u0663.mlp.up_proj.weight",  # an Arabic-Indic digit: \d matches it, int() reads it
    "model.layers.3.mlp.up_proj.weight\nmodel.layers.4.mlp.up_proj.weight",  # a line break inside a name
    "model.layers.3.7", "model.layers.3.mlp.7", "7", "7.7", "3.weight", ".3.", "..", ".", "",
    "model.layers.3a.mlp.up_proj.weight", "model.layers.a3.mlp.up_proj.weight",
    "model.layers.3.mlp.experts.12a.up_proj.weight", "model.layers.3.mlp.experts.-1.up_proj.weight",
    "model.layers.1.block_sparse_moe.experts.7.w1.weight", "model.layers.1.block_sparse_moe.experts.70.w3.weight",
    "transformer.h.10.ln_1.weight", "transformer.h.1.ln_2.weight", "model.decoder.layers.12.fc2.weight",
    "model.layers.61.enorm.weight", "model.layers.61.shared_head.head.weight",
    "h.0.h.1.attn.c_attn.weight", "layers.1.layers.2.mlp.up_proj.weight",
    "model.layers.2.mlp.experts.5.gate_proj.weight_scale_inv", "model.layers.2.mlp.experts.gate_up_proj_blocks",
    "vision_tower.blocks.3.attn.qkv.weight", "model.layers.0.self_attn.rotary_emb.inv_freq",
]


def _synth_names() -> list[str]:
    names = []
    for arch in ARCHS:
        shape = ModelShape(arch=arch, num_layers=3, num_experts=4 if arch == "qwen3_moe" else 0)
        names += [n for n, _ in tensor_specs(shape, tied=False)]
    for make in (deepseek_v3, gpt_oss, qwen3_moe):
        logical, _ = make(hidden=256, layers=4, experts=4)
        names += [stored for spec in logical for stored, _, _ in spec.stored()]
    return names


def _every_name() -> list[str]:
    names = [t[0] for t in TABLE] + ODD + _synth_names()
    return list(dict.fromkeys(names))  # each once: Locations takes a checkpoint's (unique) names


def _columns(locs: Locations) -> tuple:
    return (locs.module_ids, locs.layers, locs.experts, [locs.params[p] for p in locs.param_ids])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classifying_by_template_gives_each_name_the_rules_location(seed):
    names = _every_name()
    random.Random(seed).shuffle(names)
    locs = Locations.classify_all(names)
    assert [locs.location(i) for i in range(len(names))] == [classify(n) for n in names]
    by_rules = Locations.classify_all(names, known={})  # every name through the rules, one by one
    assert _columns(locs) == _columns(by_rules)
    assert type(locs.layers) is type(by_rules.layers)  # Python ints once a number is beyond 64 bits


def test_names_all_of_one_kind_and_a_single_name():
    for names in (["model.layers.3.mlp.up_proj.weight"], ["lm_head.weight"], ["7"], [""],
                  [f"model.layers.{i}.mlp.experts.{e}.up_proj.weight" for i in range(3) for e in range(11)]):
        locs = Locations.classify_all(names)
        assert [locs.location(i) for i in range(len(names))] == [classify(n) for n in names]
    assert len(Locations.classify_all([])) == 0


def test_a_moe_checkpoints_names_are_classified_once_per_template(monkeypatch):
    names = [f"model.layers.{i}.mlp.experts.{e}.{m}.weight" for i in range(64) for e in range(160)
             for m in ("gate_proj", "up_proj", "down_proj")]
    names += [f"model.layers.{i}.self_attn.{p}.weight" for i in range(64) for p in ("q_proj", "k_proj", "o_proj")]
    expected = [classify(n) for n in names]
    calls = []
    rules = layout._fields
    monkeypatch.setattr(layout, "_fields", lambda name: calls.append(name) or rules(name))
    locs = Locations.classify_all(names)
    assert [locs.location(i) for i in range(len(names))] == expected
    # Two calls per template (its canonical form and its checked name); every name went through the rules before.
    assert len(calls) < 100, f"{len(calls)} names through the rules for {len(names)} names"


def test_a_digit_inside_a_word_still_tells_modules_apart():
    names = [f"model.layers.{i}.block_sparse_moe.experts.{e}.w{w}.weight" for i in range(4) for e in range(8)
             for w in (1, 2, 3)] + [f"model.decoder.layers.{i}.fc{k}.weight" for i in range(4) for k in (1, 2)]
    lay = layout_of(names, None)
    assert [lay.locations[n] for n in names] == [classify(n) for n in names]
    assert {lay.locations[n].module for n in names} == {"expert_gate_proj", "expert_down_proj", "expert_up_proj",
                                                         "up_proj", "down_proj"}


def test_a_plain_checkpoint_is_scanned_for_quantized_tensors_without_a_record(tmp_path, monkeypatch):
    from weightsurgeon.synth import make_checkpoint

    folder = make_checkpoint(tmp_path / "m", arch="qwen3_moe", num_layers=2, hidden_size=16, num_experts=8)
    ckpt = open_checkpoint(folder)
    made = []
    record = fmt._record
    monkeypatch.setattr(fmt, "_record", lambda *a: made.append(a[0]) or record(*a))
    assert quant.scan(ckpt.tensors, ckpt.config, "m") is quant.NONE
    assert made == []


def test_bytes_by_dtype_counts_each_dtype_in_order_of_first_appearance(tmp_path):
    from weightsurgeon.synth_frontier import make_frontier

    folder = make_frontier(tmp_path / "fp8", shape="deepseek-v3", hidden=256, layers=2, experts=2)
    ckpt = open_checkpoint(folder)
    for shard in ckpt.shards:
        by_hand: dict[str, int] = {}
        for info in shard.tensors:
            by_hand[info.dtype] = by_hand.get(info.dtype, 0) + info.nbytes
        assert list(shard.tensors.bytes_by_dtype().items()) == list(by_hand.items())
    assert len({d for s in ckpt.shards for d in s.tensors.bytes_by_dtype()}) > 1
