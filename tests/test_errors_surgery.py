"""Every message of LoRA adapters (adapter*.py, extract.py) and of `surgeon cast` (cast*.py), as a user meets it.

A base, a fine-tune and an adapter extracted from them (by `surgeon extract --lora`) are built
once per module; each case copies what it damages, runs the real CLI in process and checks
the one `error:` line (exit 1, the file named, the distinctive words, what to do) and that
nothing was written. Options that click already restricts to a list are checked on the
engine function the CLI calls, the only way to reach them.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from conftest import one_error, rewrite_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.synth import make_checkpoint, make_tuned


def _cli(*args: object) -> None:
    from weightsurgeon.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert not e.code, f"surgeon {' '.join(map(str, args))} failed"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors-surgery")
    base = make_checkpoint(root / "base", arch="qwen2", num_layers=2, dtype="f32")
    tuned = make_tuned(base, root / "tuned")
    _cli("extract", tuned, "--base", base, "--take", "o_proj", "--lora", 4, "-o", root / "adapter", "-q")
    return {"base": base, "tuned": tuned, "adapter": root / "adapter", "root": root}


@pytest.fixture
def adapter(models, tmp_path: Path) -> Path:
    return Path(shutil.copytree(models["adapter"], tmp_path / "adapter"))


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _drop_tensor(folder: Path, which: str) -> None:
    """Rewrite adapter_model.safetensors without the first tensor whose name holds `which`."""
    from safetensors.numpy import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    del tensors[next(n for n in sorted(tensors) if which in n)]
    save_file(tensors, str(path), metadata={"format": "pt"})


def _add_tensor(folder: Path, name: str) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors[name] = np.zeros((2, 2), dtype=np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _empty_weights(folder: Path) -> None:
    from safetensors.numpy import save_file

    save_file({}, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def _pickle_only(folder: Path) -> None:
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")


ADAPTER_CASES = [
    ("config_not_json", lambda a: (a / "adapter_config.json").write_text("{"), "adapter_config.json",
     ("cannot read the adapter config", "config: Expecting")),
    ("config_not_object", lambda a: (a / "adapter_config.json").write_text("[]"), "adapter_config.json",
     "not a JSON object; save the adapter again"),
    ("no_weights", lambda a: (a / "adapter_model.safetensors").unlink(), "",
     ("an adapter folder needs both", "has adapter_config.json but no adapter_model.safetensors")),
    ("pickle_weights", _pickle_only, "adapter_model.bin",
     "pickle adapters are never opened; save the adapter with safetensors"),
    ("not_lora", lambda a: _edit_config(a, peft_type="PREFIX_TUNING"), "adapter_config.json",
     ("only LoRA adapters can be merged", "peft_type 'PREFIX_TUNING'")),
    ("dora", lambda a: _edit_config(a, use_dora=True), "adapter_config.json",
     ("merge with peft's merge_and_unload instead", "DoRA adapters are not supported by splice;")),
    ("rank_zero", lambda a: _edit_config(a, r=0), "adapter_config.json", ("must be a positive number, got", ": r must be a positive number, got 0")),
    ("rank_mismatch", lambda a: _edit_config(a, r=8), "adapter_model.safetensors",
     "do not match rank 8; the adapter's r (or rank_pattern) must be the rank its tensors have"),
    ("foreign_tensor", lambda a: _add_tensor(a, "base_model.model.model.norm.weight"), "adapter_model.safetensors",
     "tensor 'base_model.model.model.norm.weight' is not a LoRA tensor (.lora_A.weight, .lora_B.weight, .lora_B.bias)"),
    ("half_a_module", lambda a: _drop_tensor(a, "lora_B"), "adapter_model.safetensors",
     "needs exactly lora_A.weight and lora_B.weight (found ['A.weight'])"),
    ("no_tensors", _empty_weights, "adapter_model.safetensors", "holds no LoRA tensors (an empty adapter); save it again"),
]


@pytest.mark.parametrize("case_id,damage,named,words", ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_a_broken_adapter_is_one_line_naming_its_file(models, adapter: Path, surgeon, tmp_path: Path, case_id,
                                                       damage, named: str, words: str) -> None:
    damage(adapter)
    line = one_error(surgeon("splice", models["base"], adapter, "-o", tmp_path / "out"),
                      *((words,) if isinstance(words, str) else words))
    assert f"{adapter}/{named}".rstrip("/") + ":" in line, line
    assert not (tmp_path / "out").exists()


def test_adapter_merge_requests(models, surgeon, tmp_path: Path) -> None:
    base, adapter = models["base"], models["adapter"]
    one_error(surgeon("splice", base, adapter, "--alpha", 1.5, "-o", tmp_path / "out"),
               "--alpha must be between 0 and 1, got", "got 1.5")
    one_error(surgeon("splice", base, adapter, "--take", "q_proj", "-o", tmp_path / "out"),
               "--take/--layers select none of the adapter's modules (it adapts o_proj)")
    assert not (tmp_path / "out").exists() and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------
# FP8 checkpoints written by hand (header + raw codes): one o_proj per layer, block or per-tensor scaled
# ---------------------------------------------------------------------------------------

def _fp8_model(folder: Path, per_tensor: bool = False, plain: float | None = None) -> Path:
    """A 1-layer qwen2-shaped model whose o_proj is FP8 (E4M3 code 0x38 = 1.0), scaled per 128x128 block or per
    tensor; with `plain`, the same model unquantized, its o_proj all `plain`."""
    h = 64
    specs = [("model.embed_tokens.weight", "F32", (300, h)),
             ("model.layers.0.self_attn.o_proj.weight", "F8_E4M3" if plain is None else "F32", (h, h)),
             ("model.layers.0.self_attn.o_proj.weight_scale_inv", "F32", (1,) if per_tensor else (1, 1)),
             ("model.layers.0.self_attn.q_proj.weight", "F32", (h, h)),
             ("model.norm.weight", "F32", (h,))]
    if plain is not None:
        del specs[2]
    prefix, sizes = build_header(specs, {"format": "pt"})
    folder.mkdir(parents=True)
    blob = b"".join(b"\x38" * size if d == "F8_E4M3" else
                    struct.pack(f"<{size // 4}f", *([plain if plain is not None and "o_proj" in n else 0.01] * (size // 4)))
                    for (n, d, _), size in zip(specs, sizes))
    (folder / "model.safetensors").write_bytes(prefix + blob)
    config = {"model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": h, "vocab_size": 300}
    if plain is None:
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
        if not per_tensor:
            config["quantization_config"]["weight_block_size"] = [128, 128]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def fp8(models) -> dict[str, Path]:
    return {"block": _fp8_model(models["root"] / "fp8-block"),
            "tensor": _fp8_model(models["root"] / "fp8-tensor", per_tensor=True)}


def test_cast_requests_that_select_nothing(models, fp8, surgeon, tmp_path: Path) -> None:
    plain, out = models["base"], tmp_path / "out"
    cases = [
        (("cast", plain, "--dtype", "bf16"), f"{plain}: holds no FP8 or MXFP4-quantized weight, so there is nothing to dequantize"),
        (("cast", fp8["block"], "--dtype", "bf16", "--module", "q_proj"),
         "the selection (q_proj, layers all) holds no quantized weight: nothing to dequantize"),
        (("cast", fp8["block"], "--dtype", "bf16", "--like", fp8["block"]),
         "--like copies a quantization scheme: it goes with --dtype fp8"),
        (("cast", plain, "--dtype", "fp8"), "--dtype fp8 needs --module (which weights to quantize) or --like QUANTIZED"),
        (("cast", plain, "--dtype", "fp8", "--module", "norm"),
         "the selection holds no bf16/f16/f32 linear weight to quantize; select linear modules"),
        (("cast", plain, "--dtype", "fp8", "--like", models["tuned"]),
         f"--like {models['tuned']}: holds no FP8 block-scaled weight (its schemes: none); cast copies FP8 block schemes"),
        (("cast", fp8["tensor"], "--dtype", "fp8", "--module", "q_proj"),
         "is quantized in another scheme (F8_E4M3 per-tensor"),
    ]
    for args, words in cases:
        one_error(surgeon(*args, "-o", out), words)
        assert not out.exists()


def test_quantizing_a_nan_names_the_tensor_and_element(models, surgeon, tmp_path: Path) -> None:
    name = "model.layers.1.self_attn.o_proj.weight"
    model = rewrite_checkpoint(models["base"], tmp_path / "nan",
                               patch={name: lambda raw: raw.__setitem__(slice(12, 16), struct.pack("<f", float("nan")))})
    one_error(surgeon("cast", model, "--dtype", "fp8", "--module", "o_proj", "-o", tmp_path / "out"),
               "is not finite; FP8 block scales need finite values", f"{name}: element 3 is not finite")
    assert not (tmp_path / "out").exists()


def test_options_click_restricts_are_checked_by_the_engine_too(models) -> None:
    """The Python API (plan_cast, plan_lora) takes any string: the engine says what it accepts."""
    from weightsurgeon.cast import plan_cast
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.extract import plan_lora

    with open_checkpoint(models["base"]) as base, open_checkpoint(models["tuned"]) as tuned:
        with pytest.raises(SurgeonError, match="--dtype must be one of bf16, f16, f32, fp8, not 'int4'"):
            plan_cast(base, "int4")
        with pytest.raises(SurgeonError, match="--dtype must be one of .*, got 'int4'"):
            plan_lora(base, tuned, "o_proj", None, 4, dtype="int4")
        with pytest.raises(SurgeonError, match="--lora must be a rank of at least 1, got"):
            plan_lora(base, tuned, "o_proj", None, 0)


def test_extract_lora_requests(models, surgeon, tmp_path: Path) -> None:
    base, tuned = models["base"], models["tuned"]
    one_error(surgeon("extract", tuned, "--base", base, "--take", r"re:\.bias$", "--lora", 4, "-o", tmp_path / "a"),
               "selects no linear layer weights; select linear modules")
    assert not (tmp_path / "a").exists()


def test_an_adapter_against_a_quantized_base(models, fp8, surgeon, tmp_path: Path) -> None:
    one_error(surgeon("diff", fp8["block"], models["adapter"], "-o", tmp_path / "r"),
               "the base holds quantized tensors (FP8/MXFP4 with scales); diffing a LoRA adapter against a quantized base",
               "cast the base first (surgeon cast BASE --dtype bf16)")
    assert not (tmp_path / "r").exists()


def test_an_adapter_and_a_quantized_model_in_one_diff(models, fp8, surgeon, tmp_path: Path) -> None:
    plain = _fp8_model(tmp_path / "plain", plain=0.01)
    tuned = _fp8_model(tmp_path / "plain-tuned", plain=0.02)
    assert surgeon("extract", tuned, "--base", plain, "--take", "o_proj", "--lora", 1, "-o", tmp_path / "ad", "-q").code == 0
    one_error(surgeon("diff", plain, tmp_path / "ad", fp8["block"], "-o", tmp_path / "r"),
               "a LoRA adapter and a quantized (FP8/MXFP4) model cannot be diffed in one run: "
               "diff them against the base separately")
    assert not (tmp_path / "r").exists()
