"""Every refusal of surgery planning (surgery.py), the writer, verify, quantized headers (quant.py),
lineage and the synthetic-model makers, as a user meets it.

Tiny llama checkpoints are built once per module; each case runs the real CLI in process
(exit 1, one ``error:`` line with the message's distinctive words, no output folder left),
or calls the engine function where click refuses first or no command reaches it.
"""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from conftest import write_raw
from weightsurgeon.errors import SurgeonError
from weightsurgeon.synth import make_checkpoint

SMALL = dict(arch="llama", dtype="f32", hidden_size=32, intermediate_size=48, num_heads=2, num_kv_heads=1, vocab_size=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors-output")
    from safetensors.numpy import load_file, save_file

    out = {
        "base": make_checkpoint(root / "base", num_layers=2, **SMALL),
        "donor": make_checkpoint(root / "donor", num_layers=2, seed=3, **SMALL),
        "donor3": make_checkpoint(root / "donor3", num_layers=3, seed=3, **SMALL),
        "tied": make_checkpoint(root / "tied", num_layers=2, seed=3, tied=True, **SMALL),
        "wide": make_checkpoint(root / "wide", num_layers=2, seed=3, **{**SMALL, "intermediate_size": 64}),
    }
    # a checkpoint with a config and no tensor
    out["empty"] = root / "empty"
    out["empty"].mkdir()
    write_raw(out["empty"] / "model.safetensors", {"__metadata__": {"format": "pt"}})
    shutil.copyfile(out["base"] / "config.json", out["empty"] / "config.json")
    # a 3-layer model whose config says 2 layers
    out["short_config"] = Path(shutil.copytree(out["donor3"], root / "short_config"))
    cfg = json.loads((out["short_config"] / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (out["short_config"] / "config.json").write_text(json.dumps(cfg))
    # decoder layers and no embedding; the embedding and head and no layers
    tensors = load_file(str(out["base"] / "model.safetensors"))
    for name, keep in (("no_embedding", lambda n: "embed_tokens" not in n), ("no_layers", lambda n: ".layers." not in n)):
        folder = out[name] = Path(shutil.copytree(out["base"], root / name))
        save_file({k: v for k, v in tensors.items() if keep(k)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out["no_layers"] / "config.json").read_text())
    cfg["num_hidden_layers"] = 0
    (out["no_layers"] / "config.json").write_text(json.dumps(cfg))
    # a donor whose layer-0 o_proj has a bias the base lacks
    biased = load_file(str(out["donor"] / "model.safetensors"))
    biased["model.layers.0.self_attn.o_proj.bias"] = biased["model.layers.0.input_layernorm.weight"].copy()
    out["biased"] = Path(shutil.copytree(out["donor"], root / "biased"))
    save_file(biased, str(out["biased"] / "model.safetensors"), metadata={"format": "pt"})
    # one layer's norm of another width than the other two layers'
    three = load_file(str(out["donor3"] / "model.safetensors"))
    three["model.layers.1.input_layernorm.weight"] = three["model.layers.1.input_layernorm.weight"][:16]
    out["odd_layer"] = Path(shutil.copytree(out["donor3"], root / "odd_layer"))
    save_file(three, str(out["odd_layer"] / "model.safetensors"), metadata={"format": "pt"})
    # o_proj stored as I32 (same width as F32) in a base and a donor: nothing to interpolate
    for name in ("int_base", "int_donor"):
        src = out["base" if name == "int_base" else "donor"]
        folder = Path(shutil.copytree(src, root / name))
        _retype(folder / "model.safetensors", ".o_proj.", "I32")
        out[name] = folder
    return out


def _retype(shard: Path, part: str, dtype: str) -> None:
    """Rewrite the dtype of the header entries whose name holds `part` (same item width; data kept)."""
    import struct

    blob = shard.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    for name, entry in header.items():
        if part in name:
            entry["dtype"] = dtype
    text = json.dumps(header)
    text += " " * (n - len(text))  # same header length: the data offsets stay valid
    write_raw(shard, text, blob[8 + n:])


def _one_error(r, *words: str) -> None:
    assert r.code == 1 and len(r.err_lines) == 1 and r.err_lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


# (id, argv with {base}/{donor}/... and {out}, words)
CLI_CASES = [
    ("alpha", ["splice", "{base}", "{donor}", "--take", "o_proj", "--alpha", "2", "-o", "{out}"],
     ["--alpha must be between 0 and 1, got 2"]),
    ("exclude-everything", ["splice", "{base}", "{donor}", "--exclude", "attn,mlp,norm,emb,head", "-o", "{out}"],
     ["--exclude 'attn,mlp,norm,emb,head' leaves nothing to take from the DONOR"]),
    ("donor-more-layers", ["splice", "{base}", "{donor3}", "--take", "o_proj", "-o", "{out}"],
     ["has 3 layers and BASE", "layers and BASE", "would be left out", "pass --layers 0-1 to take only the layers both have"]),
    ("donor-tied", ["splice", "{base}", "{tied}", "--take", "head", "-o", "{out}"],
     ["ties lm_head to embed_tokens (no lm_head.weight) while BASE stores its own head: pass --head-from-embeddings"]),
    ("donor-only-bias", ["splice", "{base}", "{biased}", "--take", "o_proj", "-o", "{out}"],
     ["1 DONOR tensor(s) in the taken modules that BASE lacks: the output would not hold them",
      "(pass --drop-donor-only to leave them out): model.layers.0.self_attn.o_proj.bias"]),
    ("tokenizer-single-file", ["splice", "{base}", "{donor}/model.safetensors", "--take", "o_proj", "--tokenizer-from", "donor",
                               "-o", "{out}"],
     ["--tokenizer-from donor: the DONOR is a single file with no folder of tokenizer files"]),
    ("interpolate-int", ["splice", "{int_base}", "{int_donor}", "--take", "o_proj", "--alpha", "0.5", "-o", "{out}"],
     ["--alpha 0.5: cannot interpolate", "BASE dtype I32); use --alpha 1"]),
    ("donor-lacks", ["splice", "{base}", "{no_embedding}", "--take", "emb", "-o", "{out}"],
     ["1 taken tensor(s) missing: the DONOR lacks them: model.embed_tokens.weight"]),
    ("donor-shapes", ["splice", "{base}", "{wide}", "--take", "mlp", "-o", "{out}"],
     ["shape mismatch(es) between BASE and DONOR: model.layers.0.mlp.down_proj.weight: BASE [32, 48] vs DONOR [32, 64]"]),
    ("reinit-int", ["reinit", "{int_base}", "--module", "o_proj", "-o", "{out}"],
     ["2 selected tensor(s) are not floating point and cannot be re-initialised: model.layers.0.self_attn.o_proj.weight"]),
    ("std-nan", ["reinit", "{base}", "--module", "o_proj", "--std", "nan", "-o", "{out}"],
     ["--std must be a finite number >= 0 and --mean finite (got std=nan"]),
    ("std-negative", ["reinit", "{base}", "--module", "o_proj", "--std", "-1", "-o", "{out}"],
     ["--std must be a finite number >= 0 and --mean finite"]),
    ("size-words", ["zero", "{base}", "--module", "o_proj", "--max-shard-size", "five", "-o", "{out}"],
     ["bad size 'five': use e.g. 5GB, 500MB, 2GiB or a number of bytes"]),
    ("size-zero", ["zero", "{base}", "--module", "o_proj", "--max-shard-size", "0", "-o", "{out}"], ["bad size '0': must be positive"]),
    ("remove-no-layers", ["remove", "{no_layers}", "--layers", "0", "-o", "{out}"], ["no_layers: has no decoder layers to remove"]),
    ("remove-beyond-config", ["remove", "{short_config}", "--layers", "0", "-o", "{out}"],
     ["short_config: config.json says num_hidden_layers is 2 but model.layers.2.input_layernorm.weight is in layer 2",
      "which cannot be renumbered: correct num_hidden_layers in config.json"]),
    ("remove-from-empty", ["remove", "{empty}", "--layers", "0", "-o", "{out}"],
     ["nothing to write: the plan holds no tensor (the input(s) hold 0); check the inputs and the selection"]),
    ("verify-no-embedding", ["verify", "{no_embedding}"], ["decoder layers but no input embedding (embed_tokens) tensor"]),
    ("verify-odd-layer", ["verify", "{odd_layer}"],
     ["tensor 'model.layers.1.input_layernorm.weight' has shape [16] but the same tensor of the other layers has [32]"]),
    ("lineage-no-layers", ["lineage", "{no_layers}", "{base}"], ["no layers found to sample; name tensors with --sample re:PATTERN"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_a_refused_operation_is_one_line_and_writes_nothing(models: dict[str, Path], tmp_path: Path, surgeon,
                                                          argv: list[str], words: list[str]) -> None:
    out = tmp_path / "out"
    r = surgeon(*(a.format(out=out, **models) for a in argv))
    _one_error(r, *words)
    assert list(tmp_path.iterdir()) == []


def test_engine_checks_behind_click(models: dict[str, Path]) -> None:
    """click refuses these first (exit 2); the planner says the same to Python callers."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.surgery import plan_splice

    with open_checkpoint(models["base"]) as base, open_checkpoint(models["donor"]) as donor:
        with pytest.raises(SurgeonError, match="splice needs exactly one of --take MODULES or --exclude MODULES"):
            plan_splice(base, donor)
        with pytest.raises(SurgeonError, match="--tokenizer-from must be base or donor, not 'both'"):
            plan_splice(base, donor, take="o_proj", tokenizer_from="both")


def test_lineage_elements_behind_click(models: dict[str, Path]) -> None:
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.lineage import rank_candidates

    with open_checkpoint(models["base"]) as model, open_checkpoint(models["donor"]) as cand:
        with pytest.raises(SurgeonError, match="--elements must be at least 1, got 0"):
            rank_candidates(model, [cand], ["donor"], elements=0)


@pytest.mark.parametrize("argv,words", [
    (["zero", "{base}", "--module", "head", "-o", "{out}"], "writing failed in lm_head.weight: No space left on device"),
    (["zero", "{base}", "--module", "o_proj", "--checksums", "-o", "{out}"],
     "writing failed while copying lm_head.weight: No space left on device"),
], ids=["computed", "copied"])
def test_a_full_disk_names_the_shard_and_tensor(models: dict[str, Path], tmp_path: Path, surgeon,
                                              monkeypatch: pytest.MonkeyPatch, argv: list[str], words: str) -> None:
    """ENOSPC on the first data write after the header (the header itself went through)."""
    import weightsurgeon.writer as writer

    real = writer.pwrite_all

    def full(fd: int, data: object, pos: int) -> int:
        if pos > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, pos)

    monkeypatch.setattr(writer, "pwrite_all", full)
    out = tmp_path / "out"
    r = surgeon(*(a.format(out=out, **models) for a in argv))
    _one_error(r, "model-00001-of-00001.safetensors: " + words)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


# ---------------------------------------------------------------------------------------
# quantized headers: `surgeon inspect` opens them, and the pairing of weights and scales is checked there
# ---------------------------------------------------------------------------------------

def _quantized(folder: Path, tensors: list[tuple[str, str, list[int]]], method: str | None) -> Path:
    from weightsurgeon.kernels.dtypes import itemsize

    folder.mkdir()
    header, pos = {}, 0
    for name, dtype, shape in tensors:
        n = itemsize(dtype)
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    header["__metadata__"] = {"format": "pt"}
    write_raw(folder / "model.safetensors", header, b"\0" * pos)
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    if method:
        cfg["quantization_config"] = {"quant_method": method, "weight_block_size": [128, 128]} if method == "fp8" \
            else {"quant_method": method}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


W = "model.layers.0.mlp.down_proj.weight"
E = "model.layers.0.mlp.experts.down_proj"
QUANT_CASES = [
    ("scale-dtype", [(W, "F8_E4M3", [256, 256]), (W + "_scale_inv", "I32", [2, 2])], "fp8",
     f"scale '{W}_scale_inv' of FP8 weight '{W}' is I32; expected one of"),
    ("scale-3d", [(W, "F8_E4M3", [2, 256, 256]), (W + "_scale_inv", "F32", [2, 2, 2])], "fp8",
     "block and channel scales are read for 2-D weights only"),
    ("scale-shape", [(W, "F8_E4M3", [256, 256]), (W + "_scale_inv", "F32", [3, 2])], "fp8",
     "in blocks of 128x128 needs [2, 2]"),
    ("no-scale", [(W, "F8_E4M3", [256, 256])], "fp8", f"FP8 weight '{W}' has no scale ({W}_scale_inv or {W}_scale) in a fp8-quantized"),
    ("mxfp4-misfit", [(E + "_blocks", "U8", [4, 2, 16]), (E + "_scales", "U8", [4, 3])], "mxfp4",
     "do not fit: expected U8 [..., g, 16] blocks and U8 [..., g] scales"),
    ("mxfp4-no-scales", [(E + "_blocks", "U8", [4, 2, 16])], "mxfp4", f"have no scales ({E}_scales)"),
    ("mxfp4-twice", [(E, "BF16", [4, 64]), (E + "_blocks", "U8", [4, 2, 16]), (E + "_scales", "U8", [4, 2])], "mxfp4",
     f"'{E}' is stored both plain and as MXFP4 blocks"),
]


@pytest.mark.parametrize("tensors,method,words", [c[1:] for c in QUANT_CASES], ids=[c[0] for c in QUANT_CASES])
def test_a_broken_quantized_header_is_named(tmp_path: Path, surgeon, tensors: list, method: str, words: str) -> None:
    folder = _quantized(tmp_path / "q", tensors, method)
    _one_error(surgeon("inspect", folder), str(folder), words)


# ---------------------------------------------------------------------------------------
# synthetic models (the demo, tests and benchmarks build them; a wrong request is one line)
# ---------------------------------------------------------------------------------------

SYNTH_CASES = [
    ({"arch": "gpt2"}, "synth: unknown arch 'gpt2' (one of"),
    ({"dtype": "f64"}, "synth: dtype must be bf16, f16 or f32, not 'f64'"),
    ({"hidden_size": 33}, "synth: hidden_size must divide by num_heads and num_heads by num_kv_heads"),
    ({"vocab_size": 10}, "synth: vocab_size must be at least"),
    ({"num_experts": 2}, "synth: num_experts >= 1 goes with arch qwen3_moe, and only with it"),
]


@pytest.mark.parametrize("kw,words", SYNTH_CASES, ids=[c[1].split(":")[1][:20] for c in SYNTH_CASES])
def test_synth_refuses_a_model_it_cannot_make(tmp_path: Path, kw: dict, words: str) -> None:
    with pytest.raises(SurgeonError) as e:
        make_checkpoint(tmp_path / "m", **{**dict(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1), **kw})
    assert words in str(e.value)
    assert not (tmp_path / "m").exists()


def test_synth_tuned_and_frontier_refusals(models: dict[str, Path], tmp_path: Path) -> None:
    from weightsurgeon.synth import make_tuned
    from weightsurgeon.synth_frontier import make_frontier

    with pytest.raises(SurgeonError, match="unknown delta shape"):
        make_tuned(models["base"], tmp_path / "t", shapes={"o_proj": "square"})
    with pytest.raises(SurgeonError, match=r"synth: unknown shape 'gpt5' \(one of"):
        make_frontier(tmp_path / "f", shape="gpt5")
    with pytest.raises(SurgeonError, match=r"synth: --hidden must be a multiple of 64, at least 64 \(got 100\)"):
        make_frontier(tmp_path / "f", hidden=100)


O = "model.layers.0.self_attn.o_proj.weight"
STORED_CASES = [
    ("reinit-fp8", [(O, "F8_E4M3", [128, 128]), (O + "_scale_inv", "F32", [1, 1])], "fp8",
     ["reinit", "{m}", "--module", "o_proj", "-o", "{out}"],
     "1 selected tensor(s) are quantized: re-initialising them would need fresh scales, which reinit does not write"),
    ("splice-alpha-fp8", [(O, "F8_E4M3", [128, 128]), (O + "_scale_inv", "F32", [1, 1])], "fp8",
     ["splice", "{m}", "{m}", "--take", "o_proj", "--alpha", "0.5", "-o", "{out}"],
     "--alpha 0.5: BASE holds FP8/MXFP4-quantized weights (weight x scale); splicing them copies weight and scale bytes"),
    ("zero-e8m0", [(O, "F8_E8M0", [4, 4])], None, ["zero", "{m}", "--module", "o_proj", "-o", "{out}"],
     f"1 selected tensor(s) have no zero value (a scale format) and cannot be zeroed: {O} (F8_E8M0)"),
]


@pytest.mark.parametrize("tensors,method,argv,words", [c[1:] for c in STORED_CASES], ids=[c[0] for c in STORED_CASES])
def test_values_that_cannot_be_computed_are_refused(tmp_path: Path, surgeon, tensors: list, method: str | None,
                                                     argv: list[str], words: str) -> None:
    """Quantized weights need their scales to be values; a scale format has no zero: refused before writing."""
    m = _quantized(tmp_path / "m", tensors, method)
    out = tmp_path / "out"
    _one_error(surgeon(*(a.format(m=m, out=out) for a in argv)), words)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
