"""The kernel decodes quantized pairs itself, many tensors per launch (quant_diff.PartBatch).

Checkpoints are written with torch + safetensors alone, values decoded here with torch's
float8 types and transformers' MXFP4 conversion: per tensor, L2 to 1e-9 of float64 sums
of those float32 values and histograms exactly np.histogram's. Covered beyond
test_diff_quantized: E5M2 codes with BF16 block scales, hundreds of small expert matrices
over two shards cut into many launches (--bins 100000 leaves room for 20 parts a launch),
tensors longer than one part, per-expert rows and the experts heatmap for experts stored
one tensor each and stacked in MXFP4, GPT-OSS MXFP4 against its transposed bf16 release,
and a file truncated under the kernel.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from conftest import report_rows, report_units  # noqa: E402
from test_diff_quantized import _check, _quantize_block  # noqa: E402

BLOCK = 128


def _save_sharded(folder: Path, shards: list[dict], config: dict) -> Path:
    """Shards as the Hub names them, with their index."""
    folder.mkdir(parents=True)
    weight_map = {}
    total = len(shards)
    for i, tensors in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{total:05d}.safetensors"
        safetensors_torch.save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _ds_config(experts: int) -> dict:
    return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 2,
            "first_k_dense_replace": 0, "n_routed_experts": experts, "hidden_size": 160,
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": [BLOCK, BLOCK]}}


@pytest.fixture(scope="module")
def moe_pair(tmp_path_factory) -> dict:
    """Two layers of 24 FP8 experts (3 matrices each) over two shards, plus a tensor of several
    parts (600 x 300 > 65,536 elements); expert 5 of layer 1 changed 10x more than the others."""
    root = tmp_path_factory.mktemp("moe")
    gen = torch.Generator().manual_seed(5)
    experts = 24
    values: dict = {"base": {}, "tuned": {}}
    shards: dict = {"base": [{}, {}], "tuned": [{}, {}]}
    for layer in range(2):
        specs = [(f"model.layers.{layer}.mlp.experts.{e}.{m}.weight", shape)
                 for e in range(experts) for m, shape in (("gate_proj", (40, 160)), ("up_proj", (40, 160)),
                                                          ("down_proj", (160, 40)))]
        specs.append((f"model.layers.{layer}.self_attn.o_proj.weight", (600, 300)))
        for name, shape in specs:
            a = torch.randn(shape, generator=gen) * 0.02
            scale = 0.5 if f"layers.{layer}.mlp.experts.5." in name and layer == 1 else 0.05
            b = a * (1 + scale * torch.randn(shape, generator=gen))
            for side, w in (("base", a), ("tuned", b)):
                q, s = _quantize_block(w)
                shards[side][layer][name], shards[side][layer][name + "_scale_inv"] = q, s
                full = s.repeat_interleave(BLOCK, 0)[:shape[0]].repeat_interleave(BLOCK, 1)[:, :shape[1]]
                values[side][name] = (q.to(torch.float32) * full).numpy().ravel()
    paths = {side: _save_sharded(root / side, shards[side], _ds_config(experts)) for side in ("base", "tuned")}
    return {"paths": paths, "values": values}


def test_many_small_fp8_tensors_over_many_launches(moe_pair, surgeon, tmp_path: Path) -> None:
    p, v = moe_pair["paths"], moe_pair["values"]
    bins = 100_000
    result = surgeon("diff", p["base"], p["tuned"], "--json", "--bins", str(bins))
    assert result.code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["tensors"]}
    assert len(rows) == len(v["base"]) == 146
    for name, row in rows.items():
        a, b = v["base"][name], v["tuned"][name]
        d = (b - a).astype(np.float64)
        assert row["l2_delta"] == pytest.approx(math.sqrt(float(d @ d)), rel=1e-9, abs=0.0), name
        with np.errstate(all="ignore"):
            r = np.clip((b - a)[a != 0] / a[a != 0], -1.0, 1.0)
        assert np.array_equal(np.flatnonzero(row["hist"]), np.flatnonzero(np.histogram(r, bins=bins, range=(-1, 1))[0]))
    # the default histogram: every count exact
    result = surgeon("diff", p["base"], p["tuned"], "--json")
    assert result.code == 0, result.stderr
    _check(json.loads(result.stdout), v["base"], v["tuned"])


def test_experts_stored_one_tensor_each_get_expert_rows_and_a_heatmap(moe_pair, surgeon, tmp_path: Path) -> None:
    p = moe_pair["paths"]
    out = tmp_path / "report"
    result = surgeon("diff", p["base"], p["tuned"], "-o", out, "-q")
    assert result.code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    units = [u for u in report_units(out) if u["kind"] == "expert" and u["module"] == "expert_down_proj"]
    assert {(u["layer"], u["index"]) for u in units} == {(layer, e) for layer in range(2) for e in range(24)}
    top = max(units, key=lambda u: u["rel_l2"])
    assert (top["layer"], top["index"]) == (1, 5)
    assert (out / "experts.png").stat().st_size > 0  # one figure, each expert's three matrices pooled
    assert not list(out.glob("experts_*"))


def test_e5m2_codes_with_bf16_block_scales(tmp_path: Path, surgeon) -> None:
    gen = torch.Generator().manual_seed(2)
    config = _ds_config(1)
    values, paths = {}, {}
    for side, noise in (("base", 0.0), ("tuned", 0.1)):
        w = torch.randn(130, 260, generator=gen) * 0.02
        if noise:
            w = w * (1 + noise * torch.randn(130, 260, generator=gen))
        scale = torch.full((2, 3), 1e-4).to(torch.bfloat16)
        q = (w / scale.float().repeat_interleave(BLOCK, 0)[:130].repeat_interleave(BLOCK, 1)[:, :260]).to(torch.float8_e5m2)
        codes = q.view(torch.uint8).view(-1)
        codes[:5] = torch.tensor([0x7C, 0xFC, 0x7D, 0x01, 0x80], dtype=torch.uint8)  # +inf, -inf, NaN, denormal, -0
        name = "model.layers.0.self_attn.o_proj.weight"
        paths[side] = _save_sharded(tmp_path / side, [{name: q, name + "_scale_inv": scale}], config)
        full = scale.float().repeat_interleave(BLOCK, 0)[:130].repeat_interleave(BLOCK, 1)[:, :260]
        values[side] = {name: (q.to(torch.float32) * full).numpy().ravel()}
    result = surgeon("diff", paths["base"], paths["tuned"], "--json")
    assert result.code == 0, result.stderr
    rows = _check(json.loads(result.stdout), values["base"], values["tuned"])
    assert rows[name]["n_nonfinite"] == 3 and rows[name]["dtype"].startswith("F8_E5M2 block 128x128 (BF16")


GPT_OSS = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": 1,
           "num_local_experts": 4, "hidden_size": 64, "intermediate_size": 64}


def _mxfp4_model(rng: np.random.Generator) -> tuple[dict, dict]:
    """GPT-OSS expert tensors as MXFP4 blocks/scales, and their values as transformers' dequantization gives them."""
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    stored, values = {}, {}
    for name, rows, cols in (("gate_up_proj", 128, 64), ("down_proj", 64, 64)):
        blocks = rng.integers(0, 256, size=(4, rows, cols // 32, 16), dtype=np.uint8)
        scales = rng.integers(118, 128, size=(4, rows, cols // 32), dtype=np.uint8)
        key = f"model.layers.0.mlp.experts.{name}"
        stored[key + "_blocks"], stored[key + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
        # [experts, in, out], exactly as GptOssExperts holds the dequantized weights
        values[key] = mx.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                    dtype=torch.bfloat16)
    return stored, values


def test_gpt_oss_mxfp4_against_its_transposed_bf16_release(tmp_path: Path, surgeon) -> None:
    """The bf16 release holds experts as [experts, in, out]; values agree exactly across the transposition
    (down_proj is square, so shapes alone cannot tell), and a change planted in one expert is found there."""
    rng = np.random.default_rng(4)
    stored, values = _mxfp4_model(rng)
    config = dict(GPT_OSS, quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": ["self_attn"]})
    mxfp4 = _save_sharded(tmp_path / "mxfp4", [stored], config)
    bf16 = _save_sharded(tmp_path / "bf16", [values], GPT_OSS)
    changed = {k: v.clone() for k, v in values.items()}
    changed["model.layers.0.mlp.experts.down_proj"][2, 5, 7] += 1.0  # expert 2, input 5, output 7
    tuned = _save_sharded(tmp_path / "bf16-tuned", [changed], GPT_OSS)
    for base, other in ((mxfp4, bf16), (bf16, mxfp4)):
        result = surgeon("diff", base, other, "--json")
        assert result.code == 0, result.stderr
        report = json.loads(result.stdout)
        assert not report["missing"]
        assert all(r["l2_delta"] == 0.0 and r["l2_base"] > 0 for r in report["tensors"]), report["tensors"]
        assert any("transposition" in n for n in report["notes"])
    out = tmp_path / "report"
    result = surgeon("diff", mxfp4, tuned, "-o", out, "-q", "--no-plots")
    assert result.code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report_rows(out)}
    down = rows["model.layers.0.mlp.experts.down_proj"]
    assert down["shape"] == [4, 64, 64] and down["l2_delta"] == pytest.approx(1.0, rel=1e-6)
    assert rows["model.layers.0.mlp.experts.gate_up_proj"]["l2_delta"] == 0.0
    units = {u["index"]: u for u in report_units(out) if u["module"] == "expert_down_proj"}
    assert sorted(units) == [0, 1, 2, 3]
    assert [i for i, u in units.items() if u["l2_delta"] > 0] == [2]


def test_mxfp4_stacked_experts_get_expert_rows(tmp_path: Path, surgeon) -> None:
    rng = np.random.default_rng(6)
    stored, _ = _mxfp4_model(rng)
    config = dict(GPT_OSS, quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": ["self_attn"]})
    base = _save_sharded(tmp_path / "base", [stored], config)
    tuned_t = {k: v.clone() for k, v in stored.items()}
    tuned_t["model.layers.0.mlp.experts.gate_up_proj_blocks"][3, 10, 0, 0] ^= 0x11  # expert 3 only
    tuned = _save_sharded(tmp_path / "tuned", [tuned_t], config)
    out = tmp_path / "report"
    result = surgeon("diff", base, tuned, "-o", out, "-q")
    assert result.code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    units = {u["index"]: u for u in report_units(out) if u["module"] == "expert_gate_up_proj"}
    assert [i for i, u in units.items() if u["l2_delta"] > 0] == [3]
    assert (out / "experts.png").stat().st_size > 0


def test_a_file_truncated_under_the_kernel_is_an_error_naming_it(moe_pair, tmp_path: Path) -> None:
    """A read the kernel cannot complete is read again in Python, whose failure names the problem."""
    import shutil

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import plan_diff
    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.kernels.stats import DeltaStats
    from weightsurgeon.quant_diff import PartBatch

    tuned_dir = tmp_path / "tuned"
    shutil.copytree(moe_pair["paths"]["tuned"], tuned_dir)
    base, tuned = open_checkpoint(moe_pair["paths"]["base"]), open_checkpoint(tuned_dir)
    try:
        plan = plan_diff(base, [tuned])
        batch = PartBatch(base, [tuned], 200, 1.0)
        pair = next(p for p in plan.pairs if p.name.endswith("layers.1.self_attn.o_proj.weight"))
        assert batch.accepts(pair)
        stats = DeltaStats.empty()
        batch.add(pair, 0, pair.numel, stats, None)
        shard = tuned.tensors[pair.other.name].file
        with open(shard, "r+b") as f:
            f.truncate(pair.other.begin + 1000)
        with pytest.raises(SurgeonError, match="shorter than its header"):
            batch.flush()
    finally:
        base.close()
        tuned.close()


def test_statistics_are_handed_on_only_once_folded(moe_pair) -> None:
    """A tensor's statistics are incomplete until the batch holding its parts is flushed: `then`
    defers whatever reads them (a streamed report row) until that flush, and runs at once when
    nothing is queued."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import plan_diff
    from weightsurgeon.kernels.stats import DeltaStats
    from weightsurgeon.quant_diff import PartBatch

    base, tuned = open_checkpoint(moe_pair["paths"]["base"]), open_checkpoint(moe_pair["paths"]["tuned"])
    try:
        pair = plan_diff(base, [tuned]).pairs[0]
        batch = PartBatch(base, [tuned], 200, 1.0)
        seen = []
        batch.then(seen.append, "idle")
        assert seen == ["idle"]
        stats = DeltaStats.empty()
        batch.add(pair, 0, pair.numel, stats, None)
        batch.then(lambda: seen.append(stats.n + stats.n_nonfinite))
        assert seen == ["idle"] and stats.n == 0
        batch.flush()
        assert seen == ["idle", pair.numel]
    finally:
        base.close()
        tuned.close()
