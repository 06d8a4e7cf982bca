"""Synthetic frontier-model checkpoints: DeepSeek-V3, GPT-OSS and Qwen3-MoE shapes at their real tensor counts.

The tensor names, their order of kinds, the dtypes and the quantization are those of the
published checkpoints (DeepSeek-V3/R1: 61 decoder layers of which the first 3 dense, 256
routed experts and 1 shared expert per MoE layer, FP8 E4M3 weights with F32
``weight_scale_inv`` per 128 x 128 block, the multi-token-prediction layer 61: 91,991
tensors; GPT-OSS-20B: 24 layers of 32 MXFP4 experts: 459 tensors; Qwen3-30B-A3B: 48 layers of
128 bf16 experts: 18,867 tensors). Only the dimensions are shrunk (``--hidden``), so a pair
fits on a laptop disk while the per-tensor work of every command is the real one.

Values depend only on (seed, tensor name): the base is N(0, 0.02) weights (norms 1 + 0.05 z),
and a "tuned" copy is B = A * (1 + s[module] * z') with the planted scales below, quantized
again with its own scales, as a real fine-tune's release would be.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.kernels.decode import encode_from_float32
from weightsurgeon.kernels.quant import quantize_fp8_blocks, quantize_mxfp4
from weightsurgeon.layout import classify
from weightsurgeon.synth import _seed_for, write_tokenizer

SHAPES = ("deepseek-v3", "gpt-oss", "qwen3-moe")
SHARD_BYTES = 256 * 1024 * 1024
BLOCK = (128, 128)
# Planted relative change per module kind of the tuned copy (o_proj largest, as the paper finds).
PATTERN = {"o_proj": 0.20, "q_b_proj": 0.08, "kv_b_proj": 0.06, "q_a_proj": 0.05, "kv_a_proj_with_mqa": 0.04,
           "q_proj": 0.06, "k_proj": 0.05, "v_proj": 0.08, "gate_proj": 0.03, "up_proj": 0.035, "down_proj": 0.04,
           "expert_gate_proj": 0.01, "expert_up_proj": 0.01, "expert_down_proj": 0.015, "expert_gate_up_proj": 0.01,
           "shared_expert_gate_proj": 0.02, "shared_expert_up_proj": 0.02, "shared_expert_down_proj": 0.025,
           "router": 0.03, "input_layernorm": 0.02, "post_attention_layernorm": 0.015, "sinks": 0.05}


@dataclass(frozen=True)
class Logical:
    """One logical tensor and how it is stored: 'fp8' (+ weight_scale_inv), 'mxfp4' (_blocks + _scales), 'BF16', 'F32'."""

    name: str
    shape: tuple[int, ...]
    encoding: str

    def stored(self) -> list[tuple[str, str, tuple[int, ...]]]:
        if self.encoding == "fp8":
            rows, cols = self.shape
            return [(self.name, "F8_E4M3", self.shape),
                    (self.name + "_scale_inv", "F32", (-(-rows // BLOCK[0]), -(-cols // BLOCK[1])))]
        if self.encoding == "mxfp4":
            *lead, cols = self.shape
            return [(self.name + "_blocks", "U8", (*lead, cols // 32, 16)), (self.name + "_scales", "U8", (*lead, cols // 32))]
        return [(self.name, self.encoding, self.shape)]


# ---------------------------------------------------------------------------------------
# Shapes: (logical tensors, config.json)
# ---------------------------------------------------------------------------------------

def deepseek_v3(hidden: int = 256, layers: int = 61, experts: int = 256) -> tuple[list[Logical], dict]:
    """DeepSeek-V3/R1: MLA attention, 3 dense layers, MoE layers, the MTP layer. Real dims: hidden 7168."""
    h = hidden
    heads, nope, rope, vdim = 4, 32, 16, 32
    q_rank, kv_rank = 3 * h // 4, h // 4
    inter, moe_inter, vocab, dense = 3 * h // 2, h // 4, 4 * h, 3
    specs: list[Logical] = [Logical("model.embed_tokens.weight", (vocab, h), "BF16")]

    def block(p: str, moe: bool) -> list[Logical]:
        out = [Logical(p + "input_layernorm.weight", (h,), "BF16"),
               Logical(p + "self_attn.q_a_proj.weight", (q_rank, h), "fp8"),
               Logical(p + "self_attn.q_a_layernorm.weight", (q_rank,), "BF16"),
               Logical(p + "self_attn.q_b_proj.weight", (heads * (nope + rope), q_rank), "fp8"),
               Logical(p + "self_attn.kv_a_proj_with_mqa.weight", (kv_rank + rope, h), "fp8"),
               Logical(p + "self_attn.kv_a_layernorm.weight", (kv_rank,), "BF16"),
               Logical(p + "self_attn.kv_b_proj.weight", (heads * (nope + vdim), kv_rank), "fp8"),
               Logical(p + "self_attn.o_proj.weight", (h, heads * vdim), "fp8"),
               Logical(p + "post_attention_layernorm.weight", (h,), "BF16")]
        if not moe:
            return out + [Logical(p + "mlp.gate_proj.weight", (inter, h), "fp8"),
                          Logical(p + "mlp.up_proj.weight", (inter, h), "fp8"),
                          Logical(p + "mlp.down_proj.weight", (h, inter), "fp8")]
        out += [Logical(p + "mlp.gate.weight", (experts, h), "BF16"),
                Logical(p + "mlp.gate.e_score_correction_bias", (experts,), "F32")]
        for e in range(experts):
            out += [Logical(p + f"mlp.experts.{e}.gate_proj.weight", (moe_inter, h), "fp8"),
                    Logical(p + f"mlp.experts.{e}.up_proj.weight", (moe_inter, h), "fp8"),
                    Logical(p + f"mlp.experts.{e}.down_proj.weight", (h, moe_inter), "fp8")]
        return out + [Logical(p + f"mlp.shared_experts.{k}.weight", shape, "fp8")
                      for k, shape in (("gate_proj", (moe_inter, h)), ("up_proj", (moe_inter, h)), ("down_proj", (h, moe_inter)))]

    for layer in range(layers):
        specs += block(f"model.layers.{layer}.", layer >= dense)
    mtp = f"model.layers.{layers}."
    specs += block(mtp, True) + [Logical(mtp + "enorm.weight", (h,), "BF16"), Logical(mtp + "hnorm.weight", (h,), "BF16"),
                                 Logical(mtp + "eh_proj.weight", (h, 2 * h), "BF16"),
                                 Logical(mtp + "embed_tokens.weight", (vocab, h), "BF16"),
                                 Logical(mtp + "shared_head.norm.weight", (h,), "BF16"),
                                 Logical(mtp + "shared_head.head.weight", (vocab, h), "BF16")]
    specs += [Logical("model.norm.weight", (h,), "BF16"), Logical("lm_head.weight", (vocab, h), "BF16")]
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": h,
              "intermediate_size": inter, "moe_intermediate_size": moe_inter, "num_hidden_layers": layers,
              "num_nextn_predict_layers": 1, "first_k_dense_replace": dense, "n_routed_experts": experts,
              "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "moe_layer_freq": 1,
              "num_attention_heads": heads, "num_key_value_heads": heads, "q_lora_rank": q_rank,
              "kv_lora_rank": kv_rank, "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": vdim,
              "vocab_size": vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu",
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "topk_method": "noaux_tc",
              "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
              "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": list(BLOCK)}}
    return specs, config


def gpt_oss(hidden: int = 256, layers: int = 24, experts: int = 32) -> tuple[list[Logical], dict]:
    """GPT-OSS-20B (120B: 36 layers, 128 experts): MXFP4 experts, attention sinks, biases. Real dims: hidden 2880."""
    h, heads, kv, hd, inter, vocab = hidden, 8, 2, 32, hidden, 4 * hidden
    specs: list[Logical] = [Logical("model.embed_tokens.weight", (vocab, h), "BF16")]
    for layer in range(layers):
        p = f"model.layers.{layer}."
        specs += [Logical(p + "input_layernorm.weight", (h,), "BF16"),
                  Logical(p + "self_attn.q_proj.weight", (heads * hd, h), "BF16"),
                  Logical(p + "self_attn.q_proj.bias", (heads * hd,), "BF16"),
                  Logical(p + "self_attn.k_proj.weight", (kv * hd, h), "BF16"),
                  Logical(p + "self_attn.k_proj.bias", (kv * hd,), "BF16"),
                  Logical(p + "self_attn.v_proj.weight", (kv * hd, h), "BF16"),
                  Logical(p + "self_attn.v_proj.bias", (kv * hd,), "BF16"),
                  Logical(p + "self_attn.o_proj.weight", (h, heads * hd), "BF16"),
                  Logical(p + "self_attn.o_proj.bias", (h,), "BF16"),
                  Logical(p + "self_attn.sinks", (heads,), "BF16"),
                  Logical(p + "post_attention_layernorm.weight", (h,), "BF16"),
                  Logical(p + "mlp.router.weight", (experts, h), "BF16"),
                  Logical(p + "mlp.router.bias", (experts,), "BF16"),
                  Logical(p + "mlp.experts.gate_up_proj", (experts, 2 * inter, h), "mxfp4"),
                  Logical(p + "mlp.experts.gate_up_proj_bias", (experts, 2 * inter), "BF16"),
                  Logical(p + "mlp.experts.down_proj", (experts, h, inter), "mxfp4"),
                  Logical(p + "mlp.experts.down_proj_bias", (experts, h), "BF16")]
    specs += [Logical("model.norm.weight", (h,), "BF16"), Logical("lm_head.weight", (vocab, h), "BF16")]
    config = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": h,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_local_experts": experts,
              "num_experts_per_tok": 4, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
              "vocab_size": vocab, "sliding_window": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "layer_types": ["sliding_attention", "full_attention"] * (layers // 2)
              + ["sliding_attention"] * (layers % 2),
              "quantization_config": {"quant_method": "mxfp4",
                                      "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                                 "model.embed_tokens", "lm_head"]}}
    return specs, config


def qwen3_moe(hidden: int = 256, layers: int = 48, experts: int = 128) -> tuple[list[Logical], dict]:
    """Qwen3-30B-A3B: bf16, q/k norms, 128 experts per layer, no shared expert. Real dims: hidden 2048."""
    h, heads, kv, hd, moe_inter, vocab = hidden, 8, 2, 32, hidden // 4, 4 * hidden
    specs: list[Logical] = [Logical("model.embed_tokens.weight", (vocab, h), "BF16")]
    for layer in range(layers):
        p = f"model.layers.{layer}."
        specs += [Logical(p + "input_layernorm.weight", (h,), "BF16"),
                  Logical(p + "self_attn.q_proj.weight", (heads * hd, h), "BF16"),
                  Logical(p + "self_attn.k_proj.weight", (kv * hd, h), "BF16"),
                  Logical(p + "self_attn.v_proj.weight", (kv * hd, h), "BF16"),
                  Logical(p + "self_attn.o_proj.weight", (h, heads * hd), "BF16"),
                  Logical(p + "self_attn.q_norm.weight", (hd,), "BF16"),
                  Logical(p + "self_attn.k_norm.weight", (hd,), "BF16"),
                  Logical(p + "post_attention_layernorm.weight", (h,), "BF16"),
                  Logical(p + "mlp.gate.weight", (experts, h), "BF16")]
        for e in range(experts):
            specs += [Logical(p + f"mlp.experts.{e}.gate_proj.weight", (moe_inter, h), "BF16"),
                      Logical(p + f"mlp.experts.{e}.up_proj.weight", (moe_inter, h), "BF16"),
                      Logical(p + f"mlp.experts.{e}.down_proj.weight", (h, moe_inter), "BF16")]
    specs += [Logical("model.norm.weight", (h,), "BF16"), Logical("lm_head.weight", (vocab, h), "BF16")]
    config = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": h,
              "moe_intermediate_size": moe_inter, "intermediate_size": 3 * h, "num_hidden_layers": layers,
              "num_experts": experts, "num_experts_per_tok": 8, "num_attention_heads": heads,
              "num_key_value_heads": kv, "head_dim": hd, "vocab_size": vocab, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "decoder_sparse_step": 1, "mlp_only_layers": []}
    return specs, config


BUILDERS: dict[str, Callable[..., tuple[list[Logical], dict]]] = {
    "deepseek-v3": deepseek_v3, "gpt-oss": gpt_oss, "qwen3-moe": qwen3_moe}


# ---------------------------------------------------------------------------------------
# Values and encoding
# ---------------------------------------------------------------------------------------

def _values(spec: Logical, seed: int, tuned_seed: int | None) -> np.ndarray:
    n = int(np.prod(spec.shape))
    z = np.random.Generator(np.random.PCG64(_seed_for(seed, spec.name))).standard_normal(n, dtype=np.float32)
    leaf = spec.name.rsplit(".", 1)[-1]
    stem = spec.name.rsplit(".", 2)[-2] if spec.name.count(".") >= 2 else ""
    if "norm" in stem:
        a = np.float32(1.0) + np.float32(0.05) * z
    elif leaf in ("bias", "e_score_correction_bias") or spec.name.endswith("_bias"):
        a = np.float32(0.01) * z
    else:
        a = np.float32(0.02) * z
    if tuned_seed is None:
        return a
    scale = PATTERN.get(classify(spec.name).module, 0.0)
    if scale == 0.0:
        return a
    dz = np.random.Generator(np.random.PCG64(_seed_for(tuned_seed, spec.name, "delta"))).standard_normal(n, dtype=np.float32)
    return a * (np.float32(1.0) + np.float32(scale) * dz)


def _encoded(spec: Logical, values: np.ndarray) -> dict[str, bytes]:
    if spec.encoding == "fp8":
        codes, scales = quantize_fp8_blocks(values.reshape(spec.shape), BLOCK)
        return {spec.name: codes.tobytes(), spec.name + "_scale_inv": scales.tobytes()}
    if spec.encoding == "mxfp4":
        blocks, scales = quantize_mxfp4(values)
        return {spec.name + "_blocks": blocks.tobytes(), spec.name + "_scales": scales.tobytes()}
    return {spec.name: encode_from_float32(values, spec.encoding).tobytes()}


def make_frontier(path: str | Path, shape: str = "deepseek-v3", hidden: int = 256, seed: int = 0,
                  tuned_seed: int | None = None, shard_bytes: int = SHARD_BYTES, **dims: int) -> Path:
    """Write a base (tuned_seed None) or a planted fine-tune of a frontier-shaped checkpoint; returns its folder."""
    if shape not in BUILDERS:
        raise SurgeonError(f"synth: unknown shape {shape!r} (one of {', '.join(SHAPES)})")
    if hidden < 64 or hidden % 64:
        raise SurgeonError(f"synth: --hidden must be a multiple of 64, at least 64 (got {hidden})")
    specs, config = BUILDERS[shape](hidden=hidden, **dims)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[list[Logical]] = [[]]
    size = 0
    for spec in specs:
        n = sum(int(np.prod(s)) * (1 if d in ("F8_E4M3", "U8") else 2 if d == "BF16" else 4) for _, d, s in spec.stored())
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += n
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        stored = sorted(t for spec in shard for t in spec.stored())
        prefix, sizes = build_header(stored, {"format": "pt"})
        data: dict[str, bytes] = {}
        for spec in shard:
            data.update(_encoded(spec, _values(spec, seed, tuned_seed)))
        with open(out / fname, "wb") as f:
            f.write(prefix)
            for (name, _, _), want in zip(stored, sizes):
                if len(data[name]) != want:
                    # internal: the encoders return numel x itemsize bytes of the planned shapes
                    raise SurgeonError(f"internal: synth encoded {len(data[name])} bytes for {name}, expected {want}")
                f.write(data[name])
                weight_map[name] = fname
                total += want
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(out)
    if tuned_seed is not None:
        (out / "planted.json").write_text(json.dumps({"definition": "B = A * (1 + s[module] * z), z ~ N(0,1) seeded, "
                                                      "then quantized again as the base is", "seed": tuned_seed,
                                                      "scale": PATTERN}, indent=2) + "\n")
    return out
