"""Per head and per expert: a change planted in chosen heads of chosen layers is found there and nowhere else,
and every per-unit number equals numpy's on the same elements."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from weightsurgeon.kernels.delta import Groups, accumulate_delta
from weightsurgeon.kernels.stats import DeltaStats
from weightsurgeon.layout import classify
from weightsurgeon.units import Units, units_of

HD = 16  # head_dim of the test model: hidden 64, 4 heads, 2 key/value heads


def plant(base, out, changes: dict[str, tuple]) -> None:
    """Copy `base` to `out`, adding 0.1 * A to the rows/columns each change names (tensor name -> index)."""
    out.mkdir()
    for f in base.iterdir():
        if f.suffix == ".safetensors":
            tensors = load_file(f)
            for name, index in changes.items():
                if name in tensors:
                    t = tensors[name].copy()
                    t[index] = t[index] * np.float32(1.1)
                    tensors[name] = t
            save_file(tensors, out / f.name, metadata={"format": "pt"})
        else:
            (out / f.name).write_bytes(f.read_bytes())


def test_units_follow_the_config() -> None:
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}
    assert units_of(classify("model.layers.0.self_attn.q_proj.weight"), (64, 64), config) == Units("head", 16 * 64, 4)
    assert units_of(classify("model.layers.0.self_attn.q_proj.bias"), (64,), config) == Units("head", 16, 4)
    assert units_of(classify("model.layers.0.self_attn.k_proj.weight"), (32, 64), config) == Units("head", 16 * 64, 2)
    assert units_of(classify("model.layers.0.self_attn.o_proj.weight"), (64, 64), config) == Units("head", 16, 4)
    assert units_of(classify("model.layers.0.self_attn.qkv_proj.weight"), (128, 64), config) == Units("head", 16 * 64, 8)
    assert units_of(classify("model.layers.0.mlp.experts.gate_up_proj"), (8, 64, 256), config) == Units("expert", 64 * 256, 8)
    assert units_of(classify("model.layers.0.mlp.down_proj.weight"), (64, 128), config) is None
    assert units_of(classify("model.layers.0.self_attn.q_proj.weight"), (60, 64), {"num_attention_heads": 7}) is None
    assert units_of(classify("model.layers.0.self_attn.q_proj.weight"), (64, 64), None) is None


@pytest.mark.parametrize("columns", [False, True])
def test_grouped_sums_equal_numpy_across_chunks(columns) -> None:
    rng = np.random.default_rng(0)
    rows, cols, heads = 48, 40, 4  # o_proj-like: heads of 10 columns; q-like: heads of 12 rows
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    ramp = np.linspace(0.1, 1, cols if columns else rows, dtype=np.float32)  # each head changes by another amount
    b = a + rng.standard_normal((rows, cols)).astype(np.float32) * (ramp[None, :] if columns else ramp[:, None])
    run = cols // heads if columns else (rows // heads) * cols
    groups, stats = Groups(run, heads, "head"), DeltaStats.empty()
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.size, 333):  # chunks that cut runs anywhere
        accumulate_delta(stats, flat_a[start:start + 333].view(np.uint32), flat_b[start:start + 333].view(np.uint32),
                         "F32", "F32", groups, start)
    d = (b - a).astype(np.float64)
    for h in range(heads):
        part = np.s_[:, h * 10:(h + 1) * 10] if columns else np.s_[h * 12:(h + 1) * 12, :]
        assert groups.sums[h, 0] == pytest.approx(np.sum(d[part] ** 2), rel=1e-12)
        assert groups.sums[h, 1] == pytest.approx(np.sum(a[part].astype(np.float64) ** 2), rel=1e-12)
    assert groups.sums[:, 0].sum() == pytest.approx(stats.sum_sq_delta, rel=1e-12)


def test_planted_heads_are_found_exactly(tiny_model, tmp_path) -> None:
    from weightsurgeon.diff import diff_checkpoints

    base = tiny_model(arch="qwen2", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2, dtype="f32",
                      shard_bytes=20_000)
    p = "model.layers.{}.self_attn.{}"
    changes = {
        p.format(1, "q_proj.weight"): np.s_[2 * HD:3 * HD, :], p.format(1, "q_proj.bias"): np.s_[2 * HD:3 * HD],
        p.format(2, "k_proj.weight"): np.s_[1 * HD:2 * HD, :],
        p.format(0, "o_proj.weight"): np.s_[:, 3 * HD:4 * HD],
        p.format(2, "v_proj.weight"): np.s_[0:HD, :],
    }
    plant(base, tmp_path / "tuned", changes)
    report = diff_checkpoints(base, tmp_path / "tuned", chunk_bytes=4096)
    changed = {(u.layer, u.module, u.index) for u in report.units if u.sum_sq_delta > 0}
    assert changed == {(1, "q_proj", 2), (2, "k_proj", 1), (0, "o_proj", 3), (2, "v_proj", 0)}
    counts = {}
    for u in report.units:
        counts[(u.layer, u.module)] = counts.get((u.layer, u.module), 0) + 1
        assert u.kind == "head"
    assert all(counts[(layer, m)] == (2 if m in ("k_proj", "v_proj") else 4) for layer, m in counts)
    assert set(counts) == {(layer, m) for layer in range(3) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    # q's head 2 holds its weight rows and bias entries: rel_l2 exactly 0.1 up to float32 rounding
    q = next(u for u in report.units if (u.layer, u.module, u.index) == (1, "q_proj", 2))
    assert q.rel_l2 == pytest.approx(0.1, rel=1e-5)
    # the heads of a module add up to the module's row
    for m in report.modules:
        mine = [u for u in report.units if (u.layer, u.module) == (m.layer, m.module)]
        if m.module == "o_proj" or not mine:
            continue
        assert sum(u.sum_sq_delta for u in mine) == pytest.approx(m.stats.sum_sq_delta, rel=1e-12, abs=1e-30)
    round_trip = json.loads(report.to_json())
    assert len(round_trip["units"]) == len(report.units)


def test_planted_experts_are_found_exactly(tiny_model, tmp_path) -> None:
    """MoE: experts stored one tensor each (Qwen3-MoE): a change in experts 1 and 6 of layer 0 only."""
    from weightsurgeon.diff import diff_checkpoints

    base = tiny_model(arch="qwen3_moe", num_layers=2, hidden_size=32, intermediate_size=16, num_experts=8,
                      dtype="f32")
    p = "model.layers.0.mlp.experts.{}.{}.weight"
    plant(base, tmp_path / "tuned", {p.format(1, "down_proj"): np.s_[:, :], p.format(6, "gate_proj"): np.s_[2:5, :]})
    report = diff_checkpoints(base, tmp_path / "tuned")
    experts = [u for u in report.units if u.kind == "expert"]
    assert len(experts) == 2 * 3 * 8
    assert {(u.layer, u.module, u.index) for u in experts if u.sum_sq_delta > 0} == {
        (0, "expert_down_proj", 1), (0, "expert_gate_proj", 6)}
    down = next(u for u in experts if (u.layer, u.module, u.index) == (0, "expert_down_proj", 1))
    assert down.rel_l2 == pytest.approx(0.1, rel=1e-5)
