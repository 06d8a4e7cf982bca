"""The engine's remaining refusals, as a user meets them, and its checks of its own output.

Refused requests run the real CLI in process on tiny models built here and check the one
`error:` line (exit 1, what is wrong, what to do) and that nothing was written. Faults no
command line can cause (a shard deleted after its header was read, a read failing under the
FP8 kernel, a writer whose output comes out other than planned) are made by replacing one
function for the run, as an I/O error or a writer bug would.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from conftest import edit_json, one_error, rewrite_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.synth import make_checkpoint, make_tuned

O_PROJ = "model.layers.0.self_attn.o_proj.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors-engine")
    base = make_checkpoint(root / "base", arch="qwen2", num_layers=2, hidden_size=64, intermediate_size=128,
                           dtype="bf16")
    return {"base": base, "tuned": make_tuned(base, root / "tuned"), "root": root}


def _written(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _fp8(folder: Path, scale: float = 0.01, weight_dtype: str = "F8_E4M3") -> Path:
    """A 1-layer model whose o_proj is FP8 E4M3 (code 0x38 = 1.0) with one 128x128 block scale `scale`
    (with `weight_dtype` BF16: a plain o_proj beside a tensor named like its scale)."""
    h = 64
    specs = [("model.embed_tokens.weight", "F32", (300, h)), (O_PROJ, weight_dtype, (h, h)),
             (O_PROJ + "_scale_inv", "F32", (1, 1)), ("model.norm.weight", "F32", (h,))]
    prefix, sizes = build_header(specs, {"format": "pt"})
    folder.mkdir(parents=True)
    blob = b"".join(b"\x38" * size if d == "F8_E4M3" else b"\0" * size if d == "BF16" else
                    struct.pack(f"<{size // 4}f", *([scale if n.endswith("_scale_inv") else 0.01] * (size // 4)))
                    for (n, d, _), size in zip(specs, sizes))
    (folder / "model.safetensors").write_bytes(prefix + blob)
    config = {"model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": h, "vocab_size": 300,
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ---------------------------------------------------------------------------------------
# Requests refused before a byte is written
# ---------------------------------------------------------------------------------------

def test_cast_and_lora_requests_that_select_what_cannot_be_done(models, surgeon, tmp_path: Path) -> None:
    base, tuned, out = models["base"], models["tuned"], tmp_path / "out"
    one_error(surgeon("cast", base, "--dtype", "fp8", "--module", "emb", "-o", out),
              "1 selected weight(s) cannot be quantized, and nothing else was selected (select linear modules such as "
              "o_proj or mlp): model.embed_tokens.weight (module embed_tokens is not a linear layer")
    one_error(surgeon("extract", tuned, "--base", base, "--take", "emb", "--lora", 4, "-o", out),
              "1 selected tensor(s) cannot go into a LoRA adapter (only linear layers' weights can; vLLM refuses "
              "embeddings and the head): select linear modules, or drop --lora for a plain plugin: model.embed_tokens")
    one_error(surgeon("extract", tuned, "--base", base, "--take", "q_proj", "--lora", 4, "-o", out),
              "2 bias delta(s) that a LoRA adapter cannot carry for vLLM: pass --bias drop to leave them out",
              "or --bias lora to write them as PEFT's lora_B.bias", "model.layers.0.self_attn.q_proj.bias")
    assert not out.exists()


def test_a_model_with_a_scale_beside_a_plain_weight(surgeon, tmp_path: Path) -> None:
    model = _fp8(tmp_path / "half", weight_dtype="BF16")
    one_error(surgeon("cast", model, "--dtype", "fp8", "--module", "o_proj", "-o", tmp_path / "out"),
              f"1 scale tensor name(s) already taken in {model} (a plain weight beside an FP8 scale: the model is "
              f"half quantized); give the unquantized model: {O_PROJ}_scale_inv")
    assert _written(tmp_path) == ["half"]


def test_f16_overflow_names_the_element_and_what_to_pass(surgeon, tmp_path: Path) -> None:
    model = _fp8(tmp_path / "big", scale=1e5)  # 1.0 x 1e5 is past F16's 65504
    one_error(surgeon("cast", model, "--dtype", "f16", "-o", tmp_path / "out"),
              f"{O_PROJ}: element 0 is beyond F16's range (+-65504) and would become inf; cast to bf16 or f32, "
              "or pass --allow-overflow to write inf")
    assert _written(tmp_path) == ["big"]


def test_an_adapter_folder_given_as_a_model(models, surgeon, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    assert surgeon("extract", models["tuned"], "--base", models["base"], "--take", "o_proj", "--lora", 2,
                   "-o", adapter, "-q").code == 0
    for args in (("zero", adapter, "--module", "o_proj", "-o", tmp_path / "out"), ("inspect", adapter)):
        one_error(surgeon(*args), f"{adapter}: a LoRA/PEFT adapter (adapter_model.safetensors), not a full model; "
                                  "merge it into its base first (peft: merge_and_unload) and save with safetensors")
    assert _written(tmp_path) == ["adapter"]


def test_alpha_into_a_base_without_the_tensor_or_an_embedding(models, surgeon, tmp_path: Path) -> None:
    """A tied base that lost its embedding (a trunk of layers) has nothing to interpolate a donor's head with."""
    donor = make_checkpoint(tmp_path / "donor", arch="qwen2", num_layers=2, hidden_size=64, intermediate_size=128,
                            dtype="bf16", tied=False)
    base = rewrite_checkpoint(donor, tmp_path / "trunk", drop=lambda n: "embed_tokens" in n or "lm_head" in n)
    edit_json(base / "config.json", tie_word_embeddings=True)  # its head would be its (missing) embedding
    one_error(surgeon("splice", base, donor, "--take", "head", "--alpha", "0.5", "-o", tmp_path / "out"),
              "--alpha 0.5: BASE has no lm_head.weight nor an embedding to interpolate it with")
    assert _written(tmp_path) == ["donor", "trunk"]


# ---------------------------------------------------------------------------------------
# Faults during a run
# ---------------------------------------------------------------------------------------

def test_a_shard_deleted_after_its_header_was_read(models, tmp_path: Path) -> None:
    from weightsurgeon.checkpoint import open_checkpoint

    model = Path(shutil.copytree(models["base"], tmp_path / "m"))
    with open_checkpoint(model) as ckpt:
        shard = ckpt[O_PROJ].file
        os.unlink(shard)
        with pytest.raises(SurgeonError) as e:
            ckpt.read_tensor(O_PROJ)
    assert str(e.value) == (f"{shard}: cannot open: No such file or directory (its header was read when the run "
                            "started: was it moved, deleted or made unreadable since?)")


def _quant_batch(tmp_path: Path):
    """An FP8 pair whose o_proj is queued in the kernel's batch, and its tuned shard cut short under it."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import plan_diff
    from weightsurgeon.kernels.stats import DeltaStats
    from weightsurgeon.quant_diff import PartBatch

    base = open_checkpoint(_fp8(tmp_path / "a"))
    tuned = open_checkpoint(_fp8(tmp_path / "b"))
    plan = plan_diff(base, [tuned])
    batch = PartBatch(base, [tuned], 200, 1.0)
    pair = next(p for p in plan.pairs if p.name == O_PROJ)
    assert batch.accepts(pair)
    batch.add(pair, 0, pair.numel, DeltaStats.empty(), None)
    shard = tuned[O_PROJ].file
    with open(shard, "r+b") as f:
        f.truncate(tuned[O_PROJ].begin + 100)
    return batch, (base, tuned), shard


def test_a_read_failing_under_the_fp8_kernel_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """The kernel's read comes up short; read again in Python, it fails with EIO (a failing disk)."""
    batch, opened, _ = _quant_batch(tmp_path)
    shard = opened[0][O_PROJ].file  # read again first: the base's side of the part

    def eio(fd, n, pos):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pread", eio)
    try:
        with pytest.raises(SurgeonError) as e:
            batch.flush()
    finally:
        monkeypatch.undo()
        for c in opened:
            c.close()
    assert str(e.value) == (f"{shard}: read failed while diffing quantized tensors (Input/output error); check the "
                            "file's permissions and the disk")


def test_a_file_that_fails_the_fp8_kernel_twice(tmp_path: Path, monkeypatch) -> None:
    """The Python read finds the bytes (the file grew back), the kernel's second read fails again."""
    batch, opened, _ = _quant_batch(tmp_path)
    monkeypatch.setattr(os, "pread", lambda fd, n, pos: b"\0" * n)
    try:
        with pytest.raises(SurgeonError) as e:
            batch.flush()
    finally:
        monkeypatch.undo()
        for c in opened:
            c.close()
    files = " or ".join(str(c[O_PROJ].file) for c in opened)  # the part's two sides: the kernel does not say which
    assert str(e.value) == (f"{files}: a read failed twice while diffing quantized tensors (the file changed or went "
                            "away during the run); run again once nothing writes to the model")


# ---------------------------------------------------------------------------------------
# The writer's checks of its own output: each stands for a writer bug, made here by a wrong helper
# ---------------------------------------------------------------------------------------

def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_output_that_cannot_be_read_back(models, surgeon, tmp_path: Path, monkeypatch) -> None:
    import builtins

    import weightsurgeon.writer as writer

    out = tmp_path / "out"

    def failing_open(path, mode="r", *args, **kw):
        if str(path).endswith(".safetensors") and mode == "rb" and ".surgeon-tmp" in str(path):
            raise OSError(errno.EIO, "Input/output error")
        return builtins.open(path, mode, *args, **kw)

    monkeypatch.setattr(writer, "open", failing_open, raising=False)
    line = one_error(surgeon("zero", models["base"], "--module", "o_proj", "-o", out),
                     ": cannot read back what was written: Input/output error")
    assert "model-00001-of-00001.safetensors" in line
    _no_output(tmp_path, out)


def test_a_stray_shard_in_the_output(models, surgeon, tmp_path: Path, monkeypatch) -> None:
    import weightsurgeon.writer as writer

    real, out = writer._write_shard, tmp_path / "out"

    def with_stray(path, *args, **kw):
        real(path, *args, **kw)
        (Path(path).parent / "model-00009-of-00009.safetensors").write_bytes(b"")

    monkeypatch.setattr(writer, "_write_shard", with_stray)
    one_error(surgeon("zero", models["base"], "--module", "o_proj", "-o", out),
              ": the shards written differ from the plan (unexpected ['model-00009-of-00009.safetensors'])")
    _no_output(tmp_path, out)


def _wrong_header(monkeypatch, edit) -> None:
    """The writer builds its headers with `edit` applied (tensors and metadata): the bytes on disk are those
    it built, so only --verify, which parses them again, sees the difference from the plan."""
    import weightsurgeon.writer as writer

    real = writer.build_header
    monkeypatch.setattr(writer, "build_header", lambda tensors, metadata=None: real(*edit(list(tensors), metadata)))


def _wrong_index(monkeypatch, edit) -> None:
    import weightsurgeon.writer as writer

    real = writer.index_json
    monkeypatch.setattr(writer, "index_json", lambda total, mapping: real(*edit(total, dict(mapping))))


VERIFY_CASES = [
    ("renamed", lambda mp: (_wrong_header(mp, lambda t, m: ([(n.replace("o_proj", "x_proj"), d, s) for n, d, s in t], m)),
                            _wrong_index(mp, lambda total, mapping: (total, {k.replace("o_proj", "x_proj"): v
                                                                             for k, v in mapping.items()}))),
     ": written tensors differ from the plan (unexpected ['model.layers.0.self_attn.x_proj.weight', "),
    ("dtype", lambda mp: _wrong_header(mp, lambda t, m: ([(n, "F16" if n == O_PROJ else d, s) for n, d, s in t], m)),
     f"{O_PROJ} is F16[64, 64] in model-00001-of-00001.safetensors, the plan says BF16[64, 64] in "
     "model-00001-of-00001.safetensors"),
    ("metadata", lambda mp: _wrong_header(mp, lambda t, m: (t, {})),
     "model-00001-of-00001.safetensors: __metadata__ lacks format: pt"),
    ("total_size", lambda mp: _wrong_index(mp, lambda total, mapping: (total + 2, mapping)),
     "model.safetensors.index.json: metadata.total_size does not match the plan"),
    ("unlisted", lambda mp: _wrong_index(mp, lambda total, mapping: (total, {k: v for k, v in mapping.items()
                                                                          if k != "model.norm.weight"})),
     ": output inconsistent: "),
]


@pytest.mark.parametrize("case_id,fault,words", VERIFY_CASES, ids=[c[0] for c in VERIFY_CASES])
def test_verify_finds_an_output_written_other_than_planned(models, surgeon, tmp_path: Path, monkeypatch,
                                                            case_id, fault, words) -> None:
    fault(monkeypatch)
    out = tmp_path / "out"
    line = one_error(surgeon("zero", models["base"], "--module", "o_proj", "--verify", "-o", out), words)
    if case_id == "unlisted":
        assert "1 tensor(s) in shards are not in the weight_map (e.g. 'model.norm.weight')" in line
    _no_output(tmp_path, out)


def test_verify_deep_finds_a_file_surgeon_json_lists_gone(models, surgeon, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert surgeon("zero", models["base"], "--module", "o_proj", "--checksums", "-o", out, "-q").code == 0
    (out / "generation_config.json").unlink()
    one_error(surgeon("verify", out, "--deep"), f"{out / 'generation_config.json'}: listed in surgeon.json but missing; "
                                                "the output is incomplete: rewrite it")
