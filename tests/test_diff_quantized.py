"""`surgeon diff` of FP8- and MXFP4-quantized pairs written by torch + safetensors alone.

Pairs are quantized here, the way their publishers do it (DeepSeek-V3: F8_E4M3 weights
and an F32 ``weight_scale_inv`` per 128 x 128 block, amax / 448; compressed-tensors:
per-channel ``weight_scale``; GPT-OSS: MXFP4 ``_blocks``/``_scales``), including shapes
with partial edge blocks, NaN codes and the E4M3 maximum 448. Every per-tensor number of
the real CLI's report is compared with a reference computed here from torch's decoding:
L2 to 1e-9 relative against float64 sums of the float32 dequantized values, histograms
exactly np.histogram of the clipped float32 ratio, NaN counts. Mixed pairs (bf16 base
against an FP8 fine-tune and the reverse) compare dequantized values.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

BLOCK = 128
# (name, shape): MLA-style shapes with partial edge blocks (200 = 128 + 72, 300 = 2 * 128 + 44)
FP8_WEIGHTS = {
    "model.layers.0.self_attn.q_a_proj.weight": (200, 300),
    "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": (72, 300),
    "model.layers.0.self_attn.o_proj.weight": (300, 256),
    "model.layers.0.mlp.down_proj.weight": (300, 130),
}
PLAIN = {"model.layers.0.input_layernorm.weight": (300,), "model.layers.0.self_attn.q_a_layernorm.weight": (200,),
         "model.embed_tokens.weight": (50, 300), "model.norm.weight": (300,)}
PLANTED = {"o_proj": 0.2, "q_a_proj": 0.05, "kv_a_proj_with_mqa": 0.02, "down_proj": 0.0}


def _quantize_block(w: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    rows, cols = w.shape
    sr, sc = -(-rows // BLOCK), -(-cols // BLOCK)
    scale = torch.empty(sr, sc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def _dequant_block(q: "torch.Tensor", scale: "torch.Tensor") -> np.ndarray:
    rows, cols = q.shape
    full = scale.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]
    return (q.to(torch.float32) * full).numpy().ravel()


def _save(folder: Path, tensors: dict, config: dict) -> Path:
    folder.mkdir(parents=True)
    safetensors_torch.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


DS_CONFIG = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 1,
             "hidden_size": 300, "vocab_size": 50,
             "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [BLOCK, BLOCK]}}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """Base and tuned as FP8 block-scaled and as bf16, plus the float32 values each stands for."""
    root = tmp_path_factory.mktemp("fp8")
    gen = torch.Generator().manual_seed(7)
    fp8 = {"base": {}, "tuned": {}}
    bf16 = {"base": {}, "tuned": {}}
    values = {"base": {}, "tuned": {}}
    for name, shape in FP8_WEIGHTS.items():
        a = torch.randn(shape, generator=gen) * 0.02
        module = name.split(".")[-2]
        b = a * (1 + PLANTED[module] * torch.randn(shape, generator=gen))
        for side, w in (("base", a), ("tuned", b)):
            q, s = _quantize_block(w)
            if name.endswith("o_proj.weight"):
                codes = q.view(torch.uint8)
                codes.view(-1)[:4] = torch.tensor([0x7E, 0xFE, 0x01, 0x00], dtype=torch.uint8)  # 448, -448, denormal, 0
                if side == "tuned":
                    codes.view(-1)[10:13] = torch.tensor([0x7F, 0xFF, 0x7F], dtype=torch.uint8)  # NaN patterns
            fp8[side][name], fp8[side][name + "_scale_inv"] = q, s
            values[side][name] = _dequant_block(q, s)
            bf16[side][name] = torch.from_numpy(values[side][name].reshape(shape)).to(torch.bfloat16)
    for name, shape in PLAIN.items():
        a = (torch.randn(shape, generator=gen) * 0.02 + (1.0 if "norm" in name else 0.0)).to(torch.bfloat16)
        for side in ("base", "tuned"):
            fp8[side][name] = bf16[side][name] = a
            values[side][name] = a.float().numpy().ravel()
    plain_config = {k: v for k, v in DS_CONFIG.items() if k != "quantization_config"}
    paths = {}
    for side in ("base", "tuned"):
        paths["fp8-" + side] = _save(root / f"fp8-{side}", fp8[side], DS_CONFIG)
        paths["bf16-" + side] = _save(root / f"bf16-{side}", bf16[side], plain_config)
    bf16_values = {side: {n: t.float().numpy().ravel() for n, t in bf16[side].items()} for side in bf16}
    return {"paths": paths, "values": values, "bf16_values": bf16_values}


def _reference(a32: np.ndarray, b32: np.ndarray, bins: int = 200, clip: float = 1.0) -> dict:
    finite = np.isfinite(a32) & np.isfinite(b32)
    a32, b32 = a32[finite], b32[finite]
    d32 = b32 - a32
    nz = a32 != 0
    with np.errstate(all="ignore"):
        r = d32[nz] / a32[nz]
    d64, a64, b64 = d32.astype(np.float64), a32.astype(np.float64), b32.astype(np.float64)
    return {"l2_delta": math.sqrt(float(np.dot(d64, d64))), "l2_base": math.sqrt(float(np.dot(a64, a64))),
            "l2_tuned": math.sqrt(float(np.dot(b64, b64))), "n_nonfinite": int((~finite).sum()),
            "n_base_zero": int((~nz).sum()),
            "hist": np.histogram(np.clip(r, -clip, clip), bins=bins, range=(-clip, clip))[0].tolist()}


def _check(report: dict, base_values: dict, tuned_values: dict) -> dict:
    rows = {row["name"]: row for row in report["tensors"]}
    assert sorted(rows) == sorted(base_values), "scale tensors must not be reported as tensors of their own"
    for name, row in rows.items():
        want = _reference(base_values[name], tuned_values[name])
        for key in ("l2_delta", "l2_base", "l2_tuned"):
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=0.0), (name, key)
        for key in ("hist", "n_nonfinite", "n_base_zero"):
            assert row[key] == want[key], (name, key)
    return rows


@pytest.mark.parametrize("chunk", ["1", "64"])
def test_fp8_pair_matches_the_reference(pairs, surgeon, chunk: str) -> None:
    p, v = pairs["paths"], pairs["values"]
    result = surgeon("diff", p["fp8-base"], p["fp8-tuned"], "--json", "--chunk-mb", chunk)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    rows = _check(report, v["base"], v["tuned"])
    o_proj = rows["model.layers.0.self_attn.o_proj.weight"]
    assert o_proj["n_nonfinite"] == 3 and o_proj["dtype"].startswith("F8_E4M3 block 128x128")
    assert o_proj["shape"] == [300, 256]
    assert any("dequantized" in note for note in report["notes"])
    modules = {(m["layer"], m["module"]): m for m in report["modules"]}
    assert modules[(0, "o_proj")]["rel_l2"] > modules[(0, "q_a_proj")]["rel_l2"] > modules[(0, "kv_a_proj_with_mqa")]["rel_l2"]


@pytest.mark.parametrize("base,tuned", [("bf16-base", "fp8-tuned"), ("fp8-base", "bf16-tuned")])
def test_mixed_pairs_compare_dequantized_values(pairs, surgeon, base: str, tuned: str) -> None:
    p = pairs["paths"]
    values = {"fp8": pairs["values"], "bf16": pairs["bf16_values"]}
    result = surgeon("diff", p[base], p[tuned], "--json", "--chunk-mb", "1")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    kind_a, side_a = base.split("-")
    kind_b, side_b = tuned.split("-")
    _check(report, values[kind_a][side_a], values[kind_b][side_b])
    assert any("values compared after exact decoding" in note for note in report["notes"])


def test_mxfp4_pair_matches_the_reference(tmp_path: Path, surgeon) -> None:
    rng = np.random.default_rng(3)
    config = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": 1,
              "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["self_attn", "router"]}}
    sides, values = {}, {}
    blocks = rng.integers(0, 256, size=(4, 6, 3, 16), dtype=np.uint8)
    scales = rng.integers(118, 128, size=(4, 6, 3), dtype=np.uint8)
    for side in ("base", "tuned"):
        if side == "tuned":
            blocks = blocks.copy()
            flip = rng.random(blocks.shape) < 0.1
            blocks[flip] ^= 0x11
        t = {"model.layers.0.mlp.experts.gate_up_proj_blocks": torch.from_numpy(blocks),
             "model.layers.0.mlp.experts.gate_up_proj_scales": torch.from_numpy(scales),
             "model.layers.0.mlp.experts.gate_up_proj_bias": torch.zeros(4, 6, dtype=torch.bfloat16),
             "model.layers.0.self_attn.sinks": torch.ones(8, dtype=torch.bfloat16)}
        sides[side] = _save(tmp_path / side, t, config)
        mx = pytest.importorskip("transformers.integrations.mxfp4")
        ref = mx.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
        values[side] = {"model.layers.0.mlp.experts.gate_up_proj": ref.transpose(1, 2).contiguous().numpy().ravel(),
                        "model.layers.0.mlp.experts.gate_up_proj_bias": np.zeros(24, np.float32),
                        "model.layers.0.self_attn.sinks": np.ones(8, np.float32)}
    result = surgeon("diff", sides["base"], sides["tuned"], "--json", "--chunk-mb", "1")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    rows = _check(report, values["base"], values["tuned"])
    row = rows["model.layers.0.mlp.experts.gate_up_proj"]
    assert row["module"] == "expert_gate_up_proj" and row["dtype"] == "MXFP4" and row["shape"] == [4, 6, 96]
    assert rows["model.layers.0.self_attn.sinks"]["module"] == "sinks"
    assert "other" not in {r["module"] for r in report["tensors"]}


def test_per_channel_and_per_tensor_scales(tmp_path: Path, surgeon) -> None:
    """compressed-tensors style: F8_E4M3 weight with weight_scale [rows, 1] or a scalar, plus a static input_scale."""
    gen = torch.Generator().manual_seed(11)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1,
              "quantization_config": {"quant_method": "compressed-tensors", "format": "float-quantized"}}
    values = {}
    paths = {}
    for side, noise in (("base", 0.0), ("tuned", 0.05)):
        w = torch.randn(40, 24, generator=gen) * 0.02
        w2 = torch.randn(24, 40, generator=gen) * 0.02
        ch = (w.abs().amax(dim=1, keepdim=True) / 448).float()
        qc = (w / ch).to(torch.float8_e4m3fn)
        ts = (w2.abs().max() / 448).float().reshape(1)
        qt = (w2 * (1 + noise) / ts).to(torch.float8_e4m3fn)
        t = {"model.layers.0.self_attn.q_proj.weight": qc, "model.layers.0.self_attn.q_proj.weight_scale": ch,
             "model.layers.0.self_attn.q_proj.input_scale": torch.ones(1),
             "model.layers.0.mlp.down_proj.weight": qt, "model.layers.0.mlp.down_proj.weight_scale": ts}
        paths[side] = _save(tmp_path / side, t, config)
        values[side] = {"model.layers.0.self_attn.q_proj.weight": (qc.to(torch.float32) * ch).numpy().ravel(),
                        "model.layers.0.mlp.down_proj.weight": (qt.to(torch.float32) * ts).numpy().ravel(),
                        "model.layers.0.self_attn.q_proj.input_scale": np.ones(1, np.float32)}
    result = surgeon("diff", paths["base"], paths["tuned"], "--json")
    assert result.code == 0, result.stderr
    rows = _check(json.loads(result.stdout), values["base"], values["tuned"])
    assert "per-channel" in rows["model.layers.0.self_attn.q_proj.weight"]["dtype"]
    assert "per-tensor" in rows["model.layers.0.mlp.down_proj.weight"]["dtype"]


def test_a_scale_named_scalar_in_a_bf16_checkpoint_is_not_fp8(tmp_path: Path, surgeon) -> None:
    """The false refusal: a BF16 model that carries an F32 scalar named like a scale is a plain model."""
    t = {"model.embed_tokens.weight": torch.ones(8, 4, dtype=torch.bfloat16),
         "model.layers.0.self_attn.o_proj.weight": torch.ones(4, 4, dtype=torch.bfloat16),
         "model.layers.0.self_attn.o_proj.weight_scale": torch.tensor(0.5)}
    model = _save(tmp_path / "m", t, {"num_hidden_layers": 1})
    for args in (("verify", model), ("inspect", model), ("diff", model, model, "--json")):
        result = surgeon(*args)
        assert result.code == 0, (args, result.stderr)
    rows = json.loads(result.stdout)["tensors"]
    assert {r["name"] for r in rows} == set(t)


@pytest.mark.parametrize("case", ["misshaped_scale", "missing_scale", "unsupported_method"])
def test_broken_quantized_checkpoints_fail_cleanly(tmp_path: Path, surgeon, case: str) -> None:
    w = torch.zeros(200, 300, dtype=torch.float8_e4m3fn)
    t = {"model.layers.0.self_attn.o_proj.weight": w,
         "model.layers.0.self_attn.o_proj.weight_scale_inv": torch.ones(2, 2)}
    config = dict(DS_CONFIG)
    if case == "missing_scale":
        t.pop("model.layers.0.self_attn.o_proj.weight_scale_inv")
    if case == "unsupported_method":
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    model = _save(tmp_path / "m", t, config)
    result = surgeon("diff", model, model)
    assert result.code == 1 and result.err_lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    want = {"misshaped_scale": r"needs \[2, 3\]", "missing_scale": "has no scale", "unsupported_method": "gptq"}[case]
    assert __import__("re").search(want, result.stderr), result.stderr
