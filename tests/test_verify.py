"""`surgeon verify`: config against tensors, complete layers, tying, --deep NaN/Inf, partial checkpoints."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import edit_json, rewrite_checkpoint, tensor_entry, write_raw
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.verify import verify_checkpoint


def verify(path: Path, deep: bool = False):
    with open_checkpoint(path) as ckpt:
        return verify_checkpoint(ckpt, deep=deep)


@pytest.mark.parametrize("kw", [dict(arch="qwen2"), dict(arch="llama", tied=True, dtype="bf16"),
                                dict(arch="qwen3", dtype="f16", layer_types=True, shard_bytes=50_000),
                                dict(arch="llama", num_layers=1, dtype="bf16", shard_bytes=1)])
def test_valid_synthetic_models(tiny_model, surgeon, kw: dict) -> None:
    path = tiny_model(**kw)
    result = verify(path, deep=True)
    assert result.warnings == [] and result.scanned_bytes > 0
    out = surgeon("verify", "--deep", path)
    assert out.code == 0 and out.stderr == "" and out.stdout.startswith("ok: ") and "every value finite" in out.stdout
    data = json.loads(surgeon("verify", "--json", path).stdout)
    assert data["valid"] is True and data["partial"] is False and data["tensors"] == len(open_checkpoint(path))


@pytest.mark.parametrize("changes,match", [
    (dict(num_hidden_layers=1), "num_hidden_layers is 1 but tensors exist for layer 1"),
    (dict(num_hidden_layers=3), "num_hidden_layers is 3 but layer 2 has no tensors"),
    (dict(num_hidden_layers=10**12), "num_hidden_layers is 1000000000000 but layer 2 has no tensors"),
    (dict(hidden_size=65), "hidden_size is 65"),
    (dict(vocab_size=511), "vocab_size is 511"),
    (dict(layer_types=["full_attention"] * 3), "layer_types has 3 entries but num_hidden_layers is 2"),
    (dict(layer_types="full_attention"), "layer_types has str entries"),
    (dict(mlp_layer_types=["dense"] * 3), "mlp_layer_types has 3 entries but num_hidden_layers is 2"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings is false but there is no lm_head.weight"),
])
def test_config_inconsistencies(tiny_model, surgeon, changes: dict, match: str) -> None:
    path = tiny_model(tied=True)
    edit_json(path / "config.json", **changes)
    with pytest.raises(SurgeonError, match=match):
        verify(path)
    for command in ("verify", "inspect"):
        result = surgeon(command, path)
        assert result.code == 1 and len(result.err_lines) == 1 and result.stderr.startswith("error: ")
        assert "config.json" in result.stderr


def test_folder_without_config_is_an_error(tiny_model, surgeon) -> None:
    """transformers cannot load a folder without config.json; a single file needs none."""
    path = tiny_model()
    (path / "config.json").unlink()
    result = surgeon("verify", path)
    assert result.code == 1 and result.err_lines == [f"error: {path}: model folder has no config.json; transformers "
                                                     "and vLLM cannot load it (copy the model's config.json into the folder)"]
    single = surgeon("verify", path / "model.safetensors")
    assert single.code == 0 and "no config.json" in single.stderr
    assert surgeon("inspect", path).code == 0  # looking at it is fine


@pytest.mark.parametrize("key,value", [("num_hidden_layers", "2"), ("num_hidden_layers", 2.0), ("hidden_size", "64"),
                                       ("vocab_size", [512]), ("num_attention_heads", True)])
def test_config_value_of_wrong_type_names_the_key(tiny_model, surgeon, key: str, value: object) -> None:
    path = tiny_model()
    edit_json(path / "config.json", **{key: value})
    result = surgeon("verify", path)
    assert result.code == 1 and len(result.err_lines) == 1
    assert result.stderr.startswith(f"error: {path}/config.json: {key} must be an integer, not {type(value).__name__}")


def test_config_value_of_wrong_type_in_text_config(tiny_model) -> None:
    path = tiny_model()
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {**config, "hidden_size": "64"}}))
    with pytest.raises(SurgeonError, match="hidden_size must be an integer, not str"):
        verify(path)


@pytest.mark.parametrize("num_layers,layer", [(2, 0), (2, 1), (3, 1)])
def test_extra_tensor_in_one_layer_is_a_warning(tiny_model, num_layers: int, layer: int) -> None:
    """An extra (here zero-size) tensor in one layer: loaders ignore or accept it, the model is whole."""
    path = tiny_model(num_layers=num_layers)
    extra = f"model.layers.{layer}.self_attn.extra_scale"
    with open_checkpoint(path) as ckpt:
        tensors = {i.name: ckpt.read_tensor(i.name) for i in ckpt}
    tensors[extra] = np.zeros((0,), dtype=np.float32)
    from safetensors.numpy import save_file

    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    result = verify(path)
    assert any("layers differ" in w for w in result.warnings)


def test_missing_layer(tiny_model) -> None:
    path = tiny_model(num_layers=3)
    rewrite_checkpoint(path, drop=lambda n: ".layers.1." in n)
    with pytest.raises(SurgeonError, match="layer 1 has no tensors"):
        verify(path)
    # Without a config (a single file needs none), a gap in the layers is a warning only.
    (path / "config.json").unlink()
    warnings = verify(path / "model.safetensors").warnings
    assert any("layer 1 has no tensors" in w for w in warnings) and any("no config.json" in w for w in warnings)


def test_layer_missing_a_tensor_is_an_error(tiny_model) -> None:
    path = tiny_model(num_layers=3)
    rewrite_checkpoint(path, drop=lambda n: n == "model.layers.2.mlp.up_proj.weight")
    with pytest.raises(SurgeonError, match="layer 2 has no 'mlp.up_proj.weight' but model.layers.0.mlp.up_proj.weight exists"):
        verify(path)
    (path / "config.json").unlink()  # also without a config
    with pytest.raises(SurgeonError, match="a tensor is missing"):
        verify(path / "model.safetensors")


def test_kv_sharing_layer_families_are_a_warning(tiny_model) -> None:
    """Cross-layer attention (Hunyuan CLA): every other layer has no k/v projections, by design."""
    path = tiny_model(num_layers=4, arch="llama")
    rewrite_checkpoint(path, drop=lambda n: any(f".layers.{l}.self_attn.{m}_proj" in n for l in (1, 3) for m in "kv"))
    assert any("layers differ" in w for w in verify(path).warnings)


def test_layers_that_differ_without_loss_are_a_warning(tmp_path: Path) -> None:
    """Mixed dense/MoE (DeepSeek) or hybrid layers: different, neither a subset of the other."""
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
             "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.experts.0.gate_proj.weight",
             "model.layers.1.mlp.gate.weight", "model.layers.2.self_attn.o_proj.weight",
             "model.layers.2.mlp.experts.0.gate_proj.weight", "model.layers.2.mlp.gate.weight",
             # a multi-token-prediction layer after the decoder layers (DeepSeek-V3 style)
             "model.layers.3.self_attn.o_proj.weight", "model.layers.3.mlp.experts.0.gate_proj.weight",
             "model.layers.3.mlp.gate.weight", "model.layers.3.eh_proj.weight"]
    model = tmp_path / "mixed"
    model.mkdir()
    from weightsurgeon.format import build_header

    prefix, sizes = build_header([(n, "F32", (2, 2)) for n in names], {"format": "pt"})
    (model / "model.safetensors").write_bytes(prefix + bytes(sum(sizes)))
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 3, "num_nextn_predict_layers": 1,
                                                   "tie_word_embeddings": False}))
    warnings = verify(model).warnings
    assert any("layers differ" in w for w in warnings)


def test_tied_true_with_head_is_a_warning(tiny_model) -> None:
    path = tiny_model(tied=False)
    edit_json(path / "config.json", tie_word_embeddings=True)
    assert any("tie_word_embeddings is true" in w for w in verify(path).warnings)


def test_other_names_are_warnings(tiny_model, surgeon) -> None:
    path = tiny_model()
    # No index and no model.safetensors: every *.safetensors of the folder is a shard.
    (path / "model.safetensors").rename(path / "a.safetensors")
    write_raw(path / "b.safetensors", {"mystery.scale": tensor_entry("F32", [1], 0, 4)}, b"\0" * 4)
    assert any("'mystery.scale'" in w for w in verify(path).warnings)
    result = surgeon("verify", path)
    assert result.code == 0 and "mystery.scale" in result.stderr and "other" in result.stderr


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_deep_finds_nonfinite_and_names_the_tensor(tiny_model, surgeon, dtype: str, bad: str) -> None:
    path = tiny_model(dtype=dtype, shard_bytes=40_000)
    victim = "model.layers.1.mlp.down_proj.weight"
    value = float(bad)
    encoded = {"bf16": struct.pack("<f", value)[2:], "f16": np.float16(value).tobytes(),
               "f32": np.float32(value).tobytes()}[dtype]

    def poison(raw: bytearray) -> None:
        pos = (len(raw) // 2) // len(encoded) * len(encoded)
        raw[pos:pos + len(encoded)] = encoded

    rewrite_checkpoint(path, patch={victim: poison})
    assert verify(path).warnings == []  # structural checks do not read values
    with pytest.raises(SurgeonError, match=f"{victim}.*1 NaN/Inf value"):
        verify(path, deep=True)
    result = surgeon("verify", "--deep", path)
    assert result.code == 1 and len(result.err_lines) == 1 and victim in result.stderr


def test_nonfinite_count_follows_the_dtype_table() -> None:
    """Every float dtype's NaN/Inf count equals the count of non-finite decoded values."""
    from weightsurgeon.kernels.decode import decode_to_float64
    from weightsurgeon.kernels.delta import count_nonfinite
    from weightsurgeon.kernels.dtypes import TABLE

    rng = np.random.default_rng(0)
    for dtype, info in TABLE.items():
        bits = rng.integers(0, 256, 4096 * info.width, dtype=np.uint8)
        if info.width == 1:
            bits[:256] = np.arange(256, dtype=np.uint8)  # every 8-bit pattern
        if info.kind == "complex":
            want = int((~np.isfinite(bits.view(np.complex64))).sum())
        elif info.kind == "float":
            want = int((~np.isfinite(decode_to_float64(bits, dtype))).sum())
        else:
            want = 0
        assert count_nonfinite(bits, dtype) == want, dtype
    assert count_nonfinite(np.arange(256, dtype=np.uint8), "F8_E4M3FNUZ") == 1  # 0x80 only
    assert count_nonfinite(np.array([1, np.nan + 1j, np.inf], dtype=np.complex64), "C64") == 2


def test_partial_checkpoint(tiny_model, tmp_path: Path, surgeon) -> None:
    path = tiny_model(num_layers=3)
    part = rewrite_checkpoint(path, tmp_path / "part", drop=lambda n: ".layers.1." not in n)
    with pytest.raises(SurgeonError, match="layer 0 has no tensors"):
        verify(part)
    (part / "surgeon.json").write_text(json.dumps({"operation": "extract", "partial": True}))
    assert verify(part, deep=True).warnings == []
    result = surgeon("verify", part)
    assert result.code == 0 and "partial checkpoint" in result.stdout
    assert json.loads(surgeon("inspect", "--json", part).stdout)["partial"] is True
    # a layer beyond num_hidden_layers is still an error in a partial checkpoint
    edit_json(part / "config.json", num_hidden_layers=1)
    assert surgeon("verify", part).code == 1


def test_surgeon_json_not_an_object_is_ignored(tiny_model) -> None:
    path = tiny_model()
    (path / "surgeon.json").write_text("[1]")
    with open_checkpoint(path) as ckpt:
        assert ckpt.surgeon is None and not ckpt.is_partial


def test_no_tensors_at_all(tmp_path: Path, surgeon) -> None:
    """Decision: an empty safetensors file (header {}) is a valid *file*; as a model it is valid only if
    nothing contradicts it (no config claiming layers), with a warning."""
    model = tmp_path / "empty"
    model.mkdir()
    write_raw(model / "model.safetensors", b"{}      ")
    result = surgeon("verify", model / "model.safetensors")
    assert result.code == 0 and "no config.json" in result.stderr
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    assert surgeon("verify", model).code == 1


def _reshape(path: Path, name: str, shape: list[int]) -> None:
    """Change one tensor's declared shape in model.safetensors, keeping its byte size."""
    raw = (path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[name]["shape"] = shape
    write_raw(path / "model.safetensors", header, raw[8 + n:])


def test_projection_width_against_hidden_size(tiny_model) -> None:
    path = tiny_model()
    _reshape(path, "model.layers.1.self_attn.o_proj.weight", [32, 128])  # same bytes, wrong shape
    with pytest.raises(SurgeonError, match=r"hidden_size is 64 but model.layers.1.self_attn.o_proj.weight has shape \[32, 128\]"):
        verify(path)


def test_one_layer_with_a_different_shape_is_an_error(tiny_model) -> None:
    path = tiny_model(num_layers=3)
    edit_json(path / "config.json", hidden_size=...)  # the shape check alone, without the config's width
    _reshape(path, "model.layers.1.self_attn.o_proj.weight", [32, 128])  # same bytes, wrong shape
    with pytest.raises(SurgeonError, match=r"'model.layers.1.self_attn.o_proj.weight' has shape \[32, 128\]"):
        verify(path)


def test_layers_varying_by_design_pass(tiny_model) -> None:
    path = tiny_model(num_layers=4)
    edit_json(path / "config.json", hidden_size=...)
    for layer, shape in enumerate(([64, 64], [32, 128], [128, 32], [16, 256])):  # every layer its own shape
        _reshape(path, f"model.layers.{layer}.self_attn.o_proj.weight", shape)
    verify(path)


def test_head_shape_against_config(tiny_model) -> None:
    path = tiny_model()
    _reshape(path, "lm_head.weight", [256, 128])
    with pytest.raises(SurgeonError, match="vocab_size is 512 but lm_head.weight has 256 rows"):
        verify(path)
