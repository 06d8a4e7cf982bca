"""Synthetic Hugging Face checkpoints for the demo, the tests and the benchmarks.

`make_checkpoint` writes a real qwen2/llama/qwen3 checkpoint (config.json that
AutoConfig accepts, sharded safetensors, a tiny working tokenizer with a ChatML chat
template and ``<think>``/``</think>`` as single tokens) tensor by tensor and chunk by
chunk, so a multi-GB model costs a few MB of memory. `make_tuned` derives a "fine-tune"
with a documented planted per-module delta and writes the ground truth beside it, so
tests and the demo can check that `surgeon diff` recovers what was planted.

Values depend only on (seed, tensor name, element index), never on chunk size.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.kernels.decode import decode_to_float32, encode_from_float32
from weightsurgeon.kernels.dtypes import itemsize

ARCHS = ("qwen2", "llama", "qwen3", "qwen3_moe")
SYNTH_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32", "BF16": "BF16", "F16": "F16", "F32": "F32"}
_CHUNK_ELEMS = 1 << 20
INIT_STD = 0.02

# Tokenizer: ids 0-255 are bytes; specials follow.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class ModelShape:
    arch: str = "qwen2"
    num_layers: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 512
    num_experts: int = 0  # qwen3_moe: experts per layer, each of intermediate_size


    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def tensor_specs(shape: ModelShape, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the model, in the order transformers' state_dict lists them."""
    h, i, v, hd = shape.hidden_size, shape.intermediate_size, shape.vocab_size, shape.head_dim
    q, kv = shape.num_heads * hd, shape.num_kv_heads * hd
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(shape.num_layers):
        p = f"model.layers.{layer}."
        specs.append((p + "self_attn.q_proj.weight", (q, h)))
        if shape.arch == "qwen2":
            specs.append((p + "self_attn.q_proj.bias", (q,)))
        specs.append((p + "self_attn.k_proj.weight", (kv, h)))
        if shape.arch == "qwen2":
            specs.append((p + "self_attn.k_proj.bias", (kv,)))
        specs.append((p + "self_attn.v_proj.weight", (kv, h)))
        if shape.arch == "qwen2":
            specs.append((p + "self_attn.v_proj.bias", (kv,)))
        specs.append((p + "self_attn.o_proj.weight", (h, q)))
        if shape.arch in ("qwen3", "qwen3_moe"):
            specs.append((p + "self_attn.q_norm.weight", (hd,)))
            specs.append((p + "self_attn.k_norm.weight", (hd,)))
        if shape.arch == "qwen3_moe":  # a router and num_experts small MLPs, as Qwen3-30B-A3B
            specs.append((p + "mlp.gate.weight", (shape.num_experts, h)))
            for e in range(shape.num_experts):
                specs.append((p + f"mlp.experts.{e}.gate_proj.weight", (i, h)))
                specs.append((p + f"mlp.experts.{e}.up_proj.weight", (i, h)))
                specs.append((p + f"mlp.experts.{e}.down_proj.weight", (h, i)))
        else:
            specs.append((p + "mlp.gate_proj.weight", (i, h)))
            specs.append((p + "mlp.up_proj.weight", (i, h)))
            specs.append((p + "mlp.down_proj.weight", (h, i)))
        specs.append((p + "input_layernorm.weight", (h,)))
        specs.append((p + "post_attention_layernorm.weight", (h,)))
    specs.append(("model.norm.weight", (h,)))
    if not tied:
        specs.append(("lm_head.weight", (v, h)))
    return specs


def config_for(shape: ModelShape, tied: bool, dtype: str, layer_types: bool) -> dict:
    """A config.json transformers' AutoConfig accepts, as a real release would ship it."""
    torch_dtype = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype]
    arch_name = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM"}[shape.arch]
    cfg: dict = {
        "architectures": [arch_name],
        "model_type": shape.arch,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "initializer_range": INIT_STD,
        "attention_dropout": 0.0,
        "tie_word_embeddings": tied,
        "torch_dtype": torch_dtype,
        "use_cache": True,
        "bos_token_id": 0 + 256,
        "eos_token_id": 2 + 256,
        "pad_token_id": 0 + 256,
    }
    if shape.arch == "llama":
        cfg.update({"attention_bias": False, "mlp_bias": False})
    if shape.arch in ("qwen2", "qwen3", "qwen3_moe"):
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": shape.num_layers})
    if shape.arch in ("qwen3", "qwen3_moe"):
        cfg["attention_bias"] = False
    if shape.arch == "qwen3_moe":
        cfg.update({"num_experts": shape.num_experts, "num_experts_per_tok": min(8, shape.num_experts),
                    "moe_intermediate_size": shape.intermediate_size, "decoder_sparse_step": 1,
                    "mlp_only_layers": [], "norm_topk_prob": True, "output_router_logits": False})
    if layer_types:
        cfg["layer_types"] = ["full_attention"] * shape.num_layers
    return cfg


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------

def _seed_for(seed: int, name: str, salt: str = "") -> int:
    digest = hashlib.sha256(f"{seed}:{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _normal_chunks(seed: int, name: str, numel: int, salt: str = "", fast: bool = False) -> Iterator[np.ndarray]:
    """Standard normals for one tensor, in fixed-size blocks keyed by block index.

    fast: reinit's parallel counter-based generator instead of PCG64 (other values, same
    law), for benchmark models of many GB; the tests' and the demo's models keep PCG64.
    """
    base = _seed_for(seed, name, salt)
    if fast:
        from weightsurgeon.kernels.gaussian import gaussian_fill

        out = np.empty(min(numel, 16 * _CHUNK_ELEMS), np.float32)
        for start in range(0, numel, len(out)):
            yield gaussian_fill(out[:min(len(out), numel - start)], base, start, 0.0, 1.0)
        return
    for block, start in enumerate(range(0, numel, _CHUNK_ELEMS)):
        n = min(_CHUNK_ELEMS, numel - start)
        rng = np.random.Generator(np.random.PCG64([base, block]))
        yield rng.standard_normal(n, dtype=np.float32)


def _base_chunks(seed: int, name: str, numel: int, fast: bool = False) -> Iterator[np.ndarray]:
    is_norm = "norm" in name.rsplit(".", 2)[-2] if "." in name else False
    is_bias = name.endswith(".bias")
    for z in _normal_chunks(seed, name, numel, fast=fast):
        if is_norm:
            yield np.float32(1.0) + np.float32(0.05) * z
        elif is_bias:
            yield np.float32(0.01) * z
        else:
            yield np.float32(INIT_STD) * z


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) and return the uint16 bit patterns."""
    return encode_from_float32(np.ascontiguousarray(x, dtype=np.float32), "BF16")


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return decode_to_float32(bits, "BF16")


def _encode(x: np.ndarray, dtype: str) -> bytes:
    return encode_from_float32(np.ascontiguousarray(x, dtype=np.float32), dtype).tobytes()


def _decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    return decode_to_float32(raw, dtype)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

def _plan_shards(specs: list[tuple[str, tuple[int, ...]]], dtype: str, shard_bytes: int | None) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        n = int(np.prod(shape)) * itemsize(dtype)
        if shard_bytes and shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _write_shards(out: Path, shards: list[list[tuple[str, tuple[int, ...]]]], dtype: str,
                  chunks_for: "callable") -> None:
    """Write shards (header first, then each tensor's chunks), sorted by name inside a shard as safetensors does."""
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        ordered = sorted(shard)
        prefix, sizes = build_header([(name, dtype, shape) for name, shape in ordered], {"format": "pt"})
        with open(out / fname, "wb") as f:
            f.write(prefix)
            for (name, shape), size in zip(ordered, sizes):
                written = 0
                for chunk in chunks_for(name, int(np.prod(shape))):
                    data = _encode(chunk, dtype)
                    f.write(data)
                    written += len(data)
                if written != size:
                    # internal: the chunks are generated from the spec's numel, in the spec's dtype
                    raise SurgeonError(f"internal: synth wrote {written} bytes for {name}, expected {size}")
                weight_map[name] = fname
                total += size
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_weights(path: str | os.PathLike, specs: list[tuple[str, tuple[int, ...]]], dtype: str = "f32",
                  seed: int = 0, shard_bytes: int | None = None, fast: bool = False) -> Path:
    """Only the safetensors files (and the index when sharded) of the tensors `specs`, with synthetic values."""
    st_dtype = SYNTH_DTYPES[dtype]
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _write_shards(out, _plan_shards(specs, st_dtype, shard_bytes), st_dtype,
                  lambda name, numel: _base_chunks(seed, name, numel, fast))
    return out


def make_checkpoint(path: str | os.PathLike, arch: str = "qwen2", num_layers: int = 2, hidden_size: int = 64,
                    intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 512,
                    dtype: str = "f32", tied: bool = False, seed: int = 0, shard_bytes: int | None = None,
                    layer_types: bool = False, num_experts: int = 0, fast: bool = False) -> Path:
    """Write a synthetic checkpoint directory and return its path (qwen3_moe: num_experts >= 1 per layer)."""
    if arch not in ARCHS:
        raise SurgeonError(f"synth: unknown arch {arch!r} (one of {', '.join(ARCHS)})")
    if dtype not in SYNTH_DTYPES:
        raise SurgeonError(f"synth: dtype must be bf16, f16 or f32, not {dtype!r}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise SurgeonError("synth: hidden_size must divide by num_heads and num_heads by num_kv_heads")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise SurgeonError(f"synth: vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    if (arch == "qwen3_moe") != (num_experts > 0):
        raise SurgeonError("synth: num_experts >= 1 goes with arch qwen3_moe, and only with it")
    st_dtype = SYNTH_DTYPES[dtype]
    shape = ModelShape(arch, num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, vocab_size,
                       num_experts)
    out = write_weights(path, tensor_specs(shape, tied), dtype, seed, shard_bytes, fast)
    config = config_for(shape, tied, st_dtype, layer_types)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 256, "eos_token_id": [258, 256], "pad_token_id": 256, "do_sample": False}, indent=2) + "\n")
    write_tokenizer(out)
    return out


# ---------------------------------------------------------------------------------------
# Planted deltas
# ---------------------------------------------------------------------------------------

# Relative scale s of the planted change per canonical module: B = A * (1 + s * p[l] * z),
# z ~ N(0, 1), p[l] a layer profile ramping from 0.5 to 1.5. Hence rel_l2 = ||B-A||/||A||
# is close to s * p[l], and the relative change (B-A)/A has standard deviation s * p[l].
# o_proj is planted largest, as the paper finds; embeddings are left exactly unchanged.
DEFAULT_PATTERN: dict[str, float] = {
    "o_proj": 0.20, "q_proj": 0.06, "k_proj": 0.05, "v_proj": 0.08,
    "gate_proj": 0.03, "up_proj": 0.035, "down_proj": 0.04,
    "input_layernorm": 0.02, "post_attention_layernorm": 0.015, "q_norm": 0.02, "k_norm": 0.02,
    "norm": 0.01, "lm_head": 0.01, "embed_tokens": 0.0,
    "router": 0.02, "expert_gate_proj": 0.03, "expert_up_proj": 0.035, "expert_down_proj": 0.04,
}


# Shape of z per module: "normal" (the default), or "bimodal": z = m * sign + BIMODAL_SPREAD * z'
# with a fair random sign and m = sqrt(1 - BIMODAL_SPREAD^2), so z keeps unit variance (rel_l2
# is unchanged) but the relative change has two modes at +-m * s * p[l] and none at 0: the
# paper's finding that o_proj alone changes bimodally.
DEFAULT_SHAPES: dict[str, str] = {"o_proj": "bimodal"}
BIMODAL_SPREAD = 0.3


def layer_profile(num_layers: int) -> list[float]:
    if num_layers <= 1:
        return [1.0] * num_layers
    return [0.5 + l / (num_layers - 1) for l in range(num_layers)]


def _bimodal(z: np.ndarray, sign_source: np.ndarray) -> np.ndarray:
    m = np.float32(np.sqrt(1.0 - BIMODAL_SPREAD ** 2))
    return np.where(sign_source >= 0, m, -m) + np.float32(BIMODAL_SPREAD) * z


def make_tuned(base: str | os.PathLike, path: str | os.PathLike, pattern: dict[str, float] | None = None,
               seed: int = 1, dtype: str | None = None, fast: bool = False,
               shapes: dict[str, str] | None = None) -> Path:
    """Write a 'fine-tune' of a synthetic base with a planted delta, plus planted.json (the ground truth).

    `shapes` maps modules to the shape of their relative change (DEFAULT_SHAPES: o_proj bimodal)."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.layout import classify, layout_of

    pattern = dict(DEFAULT_PATTERN if pattern is None else pattern)
    shapes = dict(DEFAULT_SHAPES if shapes is None else shapes)
    unknown = sorted(set(shapes.values()) - {"normal", "bimodal"})
    if unknown:
        raise SurgeonError(f"unknown delta shape(s) {unknown}: use normal or bimodal")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with open_checkpoint(base) as ckpt:
        layout = layout_of(ckpt.tensors, ckpt.config)
        profile = layer_profile(layout.num_layers)
        src_dtype = next(iter(ckpt)).dtype
        st_dtype = SYNTH_DTYPES[dtype] if dtype else src_dtype
        infos = {t.name: t for t in ckpt}

        def chunks_for(name: str, numel: int) -> Iterator[np.ndarray]:
            loc = classify(name)
            scale = pattern.get(loc.module, 0.0) * (profile[loc.layer] if loc.layer is not None else 1.0)
            info = infos[name]
            noise = _normal_chunks(seed, name, numel, salt="delta", fast=fast)
            signs = (_normal_chunks(seed, name, numel, salt="sign", fast=fast)
                     if shapes.get(loc.module) == "bimodal" else None)
            buf = bytearray((16 if fast else 1) * _CHUNK_ELEMS * info.itemsize)
            for raw, z in zip(ckpt.iter_chunks(info, chunk_bytes=len(buf), buffer=buf), noise):
                a = _decode(raw, info.dtype)
                if signs is not None:
                    z = _bimodal(z, next(signs))
                yield a if scale == 0.0 else a * (np.float32(1.0) + np.float32(scale) * z)

        specs = [(t.name, t.shape) for t in ckpt]
        shard_of: dict[str, int] = {}
        for i, f in enumerate(ckpt.files):
            for t in ckpt:
                if t.file == f:
                    shard_of[t.name] = i
        shards = [[(n, s) for n, s in specs if shard_of[n] == i] for i in range(len(ckpt.files))]
        _write_shards(out, [s for s in shards if s], st_dtype, chunks_for)
        config = dict(ckpt.config or {})
        if dtype:
            config["torch_dtype"] = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[st_dtype]
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if ckpt.root is not None:
            for extra in ("generation_config.json",):
                if (ckpt.root / extra).exists():
                    (out / extra).write_bytes((ckpt.root / extra).read_bytes())
    write_tokenizer(out)
    ranking = sorted((m for m, s in pattern.items() if s > 0), key=lambda m: -pattern[m])
    truth = {
        "definition": "B = A * (1 + s[module] * profile[layer] * z), z ~ N(0,1) per element (seeded), or for a "
                      "'bimodal' module z = +-sqrt(1 - w^2) (fair sign) + w * N(0,1), w = bimodal_spread; "
                      "so rel_l2 = ||B-A||/||A|| ~= s * profile[layer] and (B-A)/A has std s * profile[layer]; "
                      "tensors without a layer use profile 1; modules with s = 0 are bitwise unchanged",
        "seed": seed,
        "scale": pattern,
        "shapes": {m: shapes.get(m, "normal") for m in pattern},
        "bimodal_spread": BIMODAL_SPREAD,
        "layer_profile": profile,
        "ranking": ranking,
        "unchanged": sorted(m for m, s in pattern.items() if s == 0),
    }
    (out / "planted.json").write_text(json.dumps(truth, indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------

def _byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map of byte-level BPE tokenizers."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def write_tokenizer(path: str | os.PathLike) -> Path:
    """A tiny byte-level tokenizer (one token per byte, no merges) with ChatML and thinking markers."""
    out = Path(path)
    mapping = _byte_to_unicode()
    vocab = {mapping[b]: b for b in range(256)}
    added = [{"id": 256 + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": tok not in ("<think>", "</think>")} for i, tok in enumerate(SPECIAL_TOKENS)]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
               "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------------
# Command line: python -m weightsurgeon.synth --shape deepseek-v3 OUT
# ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Write a synthetic base/tuned pair: OUT/base and OUT/tuned (planted.json says what changed)."""
    import argparse

    from weightsurgeon.synth_frontier import SHAPES, make_frontier

    parser = argparse.ArgumentParser(prog="python -m weightsurgeon.synth", description=main.__doc__)
    parser.add_argument("out", help="folder for base/ and tuned/")
    parser.add_argument("--shape", default="qwen2", choices=ARCHS + SHAPES,
                        help="a small dense model (qwen2, llama, qwen3) or a frontier shape at its real tensor count")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of frontier shapes (multiple of 64)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real model's)")
    parser.add_argument("--experts", type=int, default=None, help="routed experts per layer (default: the real model's)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.shape in ARCHS:
        make_checkpoint(out / "base", arch=args.shape, num_layers=args.layers or 2, hidden_size=args.hidden,
                        intermediate_size=2 * args.hidden, dtype="bf16")
        make_tuned(out / "base", out / "tuned")
    else:
        dims = {k: v for k, v in (("layers", args.layers), ("experts", args.experts)) if v is not None}
        make_frontier(out / "base", args.shape, hidden=args.hidden, **dims)
        make_frontier(out / "tuned", args.shape, hidden=args.hidden, tuned_seed=1, **dims)
    print(f"wrote {out / 'base'} and {out / 'tuned'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
