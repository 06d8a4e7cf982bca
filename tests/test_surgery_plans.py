"""splice / zero / reinit / remove / extract as a user runs them: plans, bytes, configs, refusals.

Most tests call the real CLI entry point in-process (`weightsurgeon.cli.main`); a few run
it as a subprocess to check the exit-code and one-line-error contract end to end.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.surgery import format_layers, gaussian_values, parse_size, plan_reinit, plan_remove, plan_splice
from weightsurgeon.synth import bf16_bits_to_float32, float32_to_bf16_bits, make_checkpoint, make_tuned
from weightsurgeon.verify import verify_checkpoint
from weightsurgeon.writer import WriteOptions, compare_written, write_plan


def cli(capsys, *args: object) -> tuple[int, str, str]:
    """Run `surgeon ARGS` in-process through the real entry point; return (exit code, stdout, stderr)."""
    from weightsurgeon.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def ok(capsys, *args: object) -> str:
    code, out, err = cli(capsys, *args, "-q")
    assert code == 0, err
    return out


def fails(capsys, *args: object) -> str:
    code, _, err = cli(capsys, *args, "-q")
    assert code == 1, err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def tensor(path: Path, name: str) -> np.ndarray:
    with open_checkpoint(path) as ckpt:
        return ckpt.read_tensor(name)


def raw(path: Path, name: str) -> bytes:
    return tensor(path, name).tobytes()


def patch_tensor(model: Path, name: str, values: np.ndarray) -> None:
    """Overwrite a stored tensor's bytes in place (same dtype and size)."""
    with open_checkpoint(model) as ckpt:
        info = ckpt[name]
    data = np.ascontiguousarray(values).tobytes()
    assert len(data) == info.nbytes
    with open(info.file, "r+b") as f:
        f.seek(info.begin)
        f.write(data)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    base = make_checkpoint(root / "base", arch="qwen2", num_layers=4, dtype="bf16", shard_bytes=120_000, layer_types=True)
    donor = make_tuned(base, root / "donor")
    # Special values in the donor: -0.0, +0.0, NaN, inf must come through --alpha 1 bit for bit.
    name = "model.layers.2.self_attn.o_proj.weight"
    v = tensor(donor, name).reshape(-1).copy()
    v[:4] = np.array([0x8000, 0x0000, 0x7FC1, 0xFF80], dtype=np.uint16)
    patch_tensor(donor, name, v)
    return root, base, donor


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    root = tmp_path_factory.mktemp("f32")
    base = make_checkpoint(root / "base", arch="llama", num_layers=3, dtype="f32", tied=True)
    donor = make_tuned(base, root / "donor")
    return root, base, donor


# ---------------------------------------------------------------------------------------
# splice
# ---------------------------------------------------------------------------------------

def test_splice_alpha_one_is_the_donors_bytes_exactly(capsys, bf16, tmp_path):
    _, base, donor, = bf16
    out = tmp_path / "out"
    ok(capsys, "splice", base, donor, "--take", "o_proj", "-o", out, "--verify")
    with open_checkpoint(out) as o, open_checkpoint(base) as b, open_checkpoint(donor) as d:
        assert list(o.tensors) == list(b.tensors)  # BASE's order and names
        for name in o.tensors:
            expected = d if ".o_proj." in name else b
            assert o.read_tensor(name).tobytes() == expected.read_tensor(name).tobytes(), name
    first = tensor(out, "model.layers.2.self_attn.o_proj.weight").reshape(-1)[:4]
    assert first.tolist() == [0x8000, 0x0000, 0x7FC1, 0xFF80]  # -0.0 stays -0.0, NaN payload kept


def test_splice_interpolation_is_float32_rounded_to_nearest_even(capsys, bf16, tmp_path):
    _, base, donor = bf16
    out = tmp_path / "out"
    ok(capsys, "splice", base, donor, "--take", "o_proj,qkv", "--layers", "1", "--alpha", "0.3", "-o", out)
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.q_proj.bias"):
        a = bf16_bits_to_float32(tensor(base, name).reshape(-1))
        b = bf16_bits_to_float32(tensor(donor, name).reshape(-1))
        expected = float32_to_bf16_bits(a * np.float32(0.7) + b * np.float32(0.3))
        assert tensor(out, name).reshape(-1).tobytes() == expected.tobytes()
    # Layers not selected, and modules not taken, are BASE's bytes.
    assert raw(out, "model.layers.0.self_attn.o_proj.weight") == raw(base, "model.layers.0.self_attn.o_proj.weight")
    assert raw(out, "model.layers.1.mlp.up_proj.weight") == raw(base, "model.layers.1.mlp.up_proj.weight")


def test_splice_exclude_takes_everything_else_from_donor(capsys, bf16, tmp_path):
    _, base, donor = bf16
    out = tmp_path / "out"
    ok(capsys, "splice", base, donor, "--exclude", "o_proj,norm", "-o", out)
    with open_checkpoint(out) as o:
        for name in o.tensors:
            keep_base = ".o_proj." in name or "norm" in name
            assert raw(out, name) == raw(base if keep_base else donor, name), name


def test_splice_lists_every_mismatch_and_casts_only_when_asked(capsys, tmp_path):
    base = make_checkpoint(tmp_path / "base", arch="llama", num_layers=3, dtype="bf16")
    wide = make_checkpoint(tmp_path / "wide", arch="llama", num_layers=3, dtype="bf16", intermediate_size=96)
    f32 = make_checkpoint(tmp_path / "f32", arch="llama", num_layers=3, dtype="f32", seed=9)
    line = fails(capsys, "splice", base, wide, "--take", "mlp", "-o", tmp_path / "x")
    assert "9 shape mismatch(es)" in line and "layers.0.mlp.gate_proj.weight" in line and "[128, 64]" in line
    line = fails(capsys, "splice", base, f32, "--take", "o_proj", "-o", tmp_path / "x")
    assert "3 dtype mismatch(es)" in line and "--cast" in line
    ok(capsys, "splice", base, f32, "--take", "o_proj", "--cast", "-o", tmp_path / "cast")
    name = "model.layers.1.self_attn.o_proj.weight"
    expected = float32_to_bf16_bits(tensor(f32, name).reshape(-1))
    assert tensor(tmp_path / "cast", name).reshape(-1).tobytes() == expected.tobytes()
    assert not (tmp_path / "x").exists()


def test_tied_heads(capsys, tmp_path):
    tied = make_checkpoint(tmp_path / "tied", arch="qwen2", num_layers=2, dtype="f32", tied=True)
    tied2 = make_checkpoint(tmp_path / "tied2", arch="qwen2", num_layers=2, dtype="f32", tied=True, seed=2)
    untied = make_checkpoint(tmp_path / "untied", arch="qwen2", num_layers=2, dtype="f32", tied=False, seed=3)
    assert "both tie lm_head" in fails(capsys, "splice", tied, tied2, "--take", "head", "-o", tmp_path / "x")
    line = fails(capsys, "splice", untied, tied, "--take", "head", "-o", tmp_path / "x")
    assert "--head-from-embeddings" in line and not (tmp_path / "x").exists()
    out = tmp_path / "head"
    ok(capsys, "splice", untied, tied, "--take", "head", "--head-from-embeddings", "-o", out)
    assert raw(out, "lm_head.weight") == raw(tied, "model.embed_tokens.weight")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert "IS the embedding" in fails(capsys, "zero", tied, "--module", "head", "-o", tmp_path / "x")
    # Interpolating a head into a tied BASE mixes in BASE's effective head: its embeddings.
    half = tmp_path / "half"
    ok(capsys, "splice", tied, untied, "--take", "head", "--alpha", "0.5", "-o", half)
    a, b = tensor(tied, "model.embed_tokens.weight"), tensor(untied, "lm_head.weight")
    np.testing.assert_array_equal(tensor(half, "lm_head.weight"), a * np.float32(0.5) + b * np.float32(0.5))


def test_extract_plugin_then_splice_it(capsys, bf16, tmp_path):
    _, base, donor = bf16
    plugin = tmp_path / "plugin"
    ok(capsys, "extract", donor, "--take", "o_proj", "--layers", "1-2", "-o", plugin)
    with open_checkpoint(plugin) as p:
        assert p.is_partial and sorted(p.tensors) == [f"model.layers.{l}.self_attn.o_proj.weight" for l in (1, 2)]
        verify_checkpoint(p)
    doc = json.loads((plugin / "surgeon.json").read_text())
    assert doc["partial"] is True and doc["modules"] == "o_proj" and doc["source_model"] == str(donor)
    code, out, _ = cli(capsys, "verify", plugin)
    assert code == 0 and "partial" in out
    line = fails(capsys, "splice", base, plugin, "--take", "o_proj", "-o", tmp_path / "x")
    assert "2 taken tensor(s) missing" in line and "plugin" in line
    via_plugin, direct = tmp_path / "via_plugin", tmp_path / "direct"
    ok(capsys, "splice", base, plugin, "--take", "o_proj", "--layers", "1-2", "-o", via_plugin)
    ok(capsys, "splice", base, donor, "--take", "o_proj", "--layers", "1-2", "-o", direct)
    skip = {"surgeon.json", "README.md"}  # both name the inputs
    for f in sorted(direct.iterdir()):
        if f.name not in skip:
            assert f.read_bytes() == (via_plugin / f.name).read_bytes(), f.name


# ---------------------------------------------------------------------------------------
# zero / reinit
# ---------------------------------------------------------------------------------------

def test_zero_sets_weights_and_biases_to_zero(capsys, bf16, tmp_path):
    _, base, _ = bf16
    out = tmp_path / "out"
    ok(capsys, "zero", base, "--module", "qkv", "--layers", "2-3", "-o", out, "--verify")
    with open_checkpoint(out) as o:
        for name in o.tensors:
            zeroed = any(f"layers.{l}.self_attn.{p}_proj." in name for l in (2, 3) for p in "qkv")
            if zeroed:
                assert not o.read_tensor(name).any(), name
            else:
                assert o.read_tensor(name).tobytes() == tensor(base, name).tobytes(), name
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()


def test_reinit_is_reproducible_whatever_the_chunk_size(bf16, tmp_path):
    _, base, _ = bf16
    outputs = []
    for chunk in (1 << 20, 1000, 77_777):
        with open_checkpoint(base) as ckpt:
            plan = plan_reinit(ckpt, "mlp,o_proj", "1-3", std=0.05, mean=0.01, seed=11)
            write_plan(plan, tmp_path / f"c{chunk}", WriteOptions(chunk_elems=chunk, quiet=True, fsync=False))
        outputs.append(tmp_path / f"c{chunk}")
    shard = "model-00001-of-00001.safetensors"
    digests = {hashlib.sha256((o / shard).read_bytes()).hexdigest() for o in outputs}
    assert len(digests) == 1
    name = "model.layers.2.mlp.up_proj.weight"
    values = bf16_bits_to_float32(tensor(outputs[0], name).reshape(-1))
    assert abs(values.mean() - 0.01) < 0.002 and abs(values.std() - 0.05) < 0.002
    assert values.tobytes() != bf16_bits_to_float32(tensor(outputs[0], "model.layers.3.mlp.up_proj.weight").reshape(-1)).tobytes()
    assert raw(outputs[0], "model.layers.0.mlp.up_proj.weight") == raw(base, "model.layers.0.mlp.up_proj.weight")
    # The generator itself: any window of a tensor equals the same slice of the whole.
    whole = gaussian_values(5, "t", 0.0, 1.0, 0, 3_000_000)
    np.testing.assert_array_equal(gaussian_values(5, "t", 0.0, 1.0, 1_048_000, 5_000), whole[1_048_000:1_053_000])
    assert not np.array_equal(gaussian_values(6, "t", 0.0, 1.0, 0, 100), whole[:100])


# ---------------------------------------------------------------------------------------
# remove
# ---------------------------------------------------------------------------------------

def test_remove_renumbers_and_edits_only_the_keys_it_must(capsys, tmp_path):
    base = make_checkpoint(tmp_path / "base", arch="qwen2", num_layers=5, dtype="f32", layer_types=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    cfg["no_rope_layers"] = [1, 0, 1, 1, 0]
    cfg["mlp_only_layers"] = [0, 2, 3]
    cfg["rope_theta"] = 1000000.0
    (base / "config.json").write_text(json.dumps(cfg, indent=2))
    out = tmp_path / "out"
    stdout = ok(capsys, "remove", base, "--layers", "1,3", "-o", out)
    assert "num_hidden_layers: 5 -> 3" in stdout
    new = json.loads((out / "config.json").read_text())
    assert new["num_hidden_layers"] == 3
    assert new["layer_types"] == ["full_attention"] * 3
    assert new["no_rope_layers"] == [1, 1, 0]
    assert new["mlp_only_layers"] == [0, 1]
    assert new["max_window_layers"] == 3  # layers 0, 2, 4 were all below 5
    changed = {k for k in set(cfg) | set(new) if cfg.get(k) != new.get(k)}
    assert changed == {"num_hidden_layers", "layer_types", "no_rope_layers", "mlp_only_layers", "max_window_layers"}
    assert list(new) == list(cfg)  # key order kept
    for new_layer, old_layer in enumerate([0, 2, 4]):
        for suffix in ("self_attn.q_proj.bias", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert raw(out, f"model.layers.{new_layer}.{suffix}") == raw(base, f"model.layers.{old_layer}.{suffix}")
    with open_checkpoint(out) as o:
        assert not [n for n in o.tensors if "layers.3." in n or "layers.4." in n]
        verify_checkpoint(o)
    assert json.loads((out / "surgeon.json").read_text())["removed_layers"] == [1, 3]


def test_remove_refuses_all_layers_and_missing_layers(capsys, f32, tmp_path):
    _, base, _ = f32
    assert "keep at least one" in fails(capsys, "remove", base, "--layers", "0-2", "-o", tmp_path / "x")
    assert "keep at least one" in fails(capsys, "remove", base, "--layers", "all", "-o", tmp_path / "x")
    assert "out of range" in fails(capsys, "remove", base, "--layers", "3", "-o", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_remove_sliding_window_rule_for_unknown_model_type_is_refused(tmp_path):
    base = make_checkpoint(tmp_path / "base", arch="llama", num_layers=3, dtype="f32")
    cfg = json.loads((base / "config.json").read_text())
    cfg.update({"model_type": "mystery", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1})
    (base / "config.json").write_text(json.dumps(cfg))
    with open_checkpoint(base) as ckpt, pytest.raises(SurgeonError, match="explicit layer_types"):
        plan_remove(ckpt, "1")


# ---------------------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------------------

def test_output_folder_is_a_complete_hugging_face_checkpoint(capsys, bf16, tmp_path):
    _, base, donor = bf16
    out = tmp_path / "out"
    ok(capsys, "splice", base, donor, "--take", "o_proj", "--max-shard-size", "100KB", "-o", out)
    shards = sorted(out.glob("*.safetensors"))
    n = len(shards)
    assert n >= 3 and [s.name for s in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    with open_checkpoint(out) as o:
        assert index["metadata"]["total_size"] == o.total_bytes == sum(t.nbytes for t in o)
        assert all(s.metadata == {"format": "pt"} for s in o.shards)
        assert all(s.file_size - s.data_start <= 100_000 for s in o.shards)
        assert {t.name: t.file.name for t in o} == index["weight_map"]
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / f).read_bytes() == (base / f).read_bytes(), f
    doc = json.loads((out / "surgeon.json").read_text())
    assert doc["operation"] == "splice" and doc["arguments"]["take"] == "o_proj"
    assert [i["role"] for i in doc["inputs"]] == ["base", "donor"]
    first = doc["inputs"][0]["shards"][0]
    header = (base / first["file"]).read_bytes()
    length = int.from_bytes(header[:8], "little")
    assert first["header_sha256"] == hashlib.sha256(header[:8 + length]).hexdigest()
    assert doc["plan"]["changed_tensors"] == 4 and doc["version"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)


def test_tokenizer_from_donor(capsys, f32, tmp_path):
    _, base, donor = f32
    (donor / "tokenizer_config.json").write_text(json.dumps({"marker": "donor"}))
    out = tmp_path / "out"
    ok(capsys, "splice", base, donor, "--take", "o_proj", "--tokenizer-from", "donor", "-o", out)
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"marker": "donor"}


def test_buffered_fallback_writes_the_same_bytes(bf16, tmp_path, monkeypatch):
    _, base, donor = bf16
    outs = []
    for mode in ("copy_file_range", "buffer", "exdev"):
        if mode == "exdev":
            def refuse(*a, **k):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            monkeypatch.setattr(os, "copy_file_range", refuse)
        with open_checkpoint(base) as b, open_checkpoint(donor) as d:
            plan = plan_splice(b, d, take="o_proj")
            write_plan(plan, tmp_path / mode, WriteOptions(use_copy_file_range=(mode != "buffer"), quiet=True, fsync=False))
        outs.append((tmp_path / mode / "model-00001-of-00001.safetensors").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_verify_catches_a_corrupted_output(bf16, tmp_path):
    from weightsurgeon.writer import SourceReader

    _, base, donor = bf16
    out = tmp_path / "out"
    with open_checkpoint(base) as b, open_checkpoint(donor) as d:
        plan = plan_splice(b, d, take="o_proj", alpha=0.5)
        write_plan(plan, out, WriteOptions(quiet=True, fsync=False))
        compare_written(plan, out, SourceReader(plan.inputs))
        with open_checkpoint(out) as o:
            info = o["model.layers.3.self_attn.o_proj.weight"]
        with open(info.file, "r+b") as f:
            f.seek(info.begin + 10)
            byte = f.read(1)
            f.seek(info.begin + 10)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(SurgeonError, match="o_proj.weight.*differs from its source.*byte 10"):
            compare_written(plan, out, SourceReader(plan.inputs))


def _no_output(out: Path) -> None:
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".surgeon-tmp-")]


def test_a_written_file_that_differs_from_the_plan_fails_the_run(capsys, bf16, tmp_path, monkeypatch):
    """The check before the rename compares each shard's header on disk with the one built from the
    plan, and each file's size with the plan's: a header, a shard or the index that came out other
    than meant is one error line and no output."""
    import weightsurgeon.writer as writer

    _, base, donor = bf16
    real_pwrite, real_shard = writer.pwrite_all, writer._write_shard

    def header_changed(fd, data, pos):  # the header lands with one dtype changed (same length, valid JSON)
        view = bytes(memoryview(data).cast("B"))
        return real_pwrite(fd, view.replace(b'"BF16"', b'"F16" ', 1) if pos == 0 else view, pos)

    monkeypatch.setattr(writer, "pwrite_all", header_changed)
    out = tmp_path / "hdr"
    assert "(the header) differ from those written" in fails(capsys, "splice", base, donor, "--take", "o_proj", "-o", out)
    _no_output(out)
    monkeypatch.setattr(writer, "pwrite_all", real_pwrite)

    def short_shard(path, *args, **kw):  # a shard that ends one byte early
        real_shard(path, *args, **kw)
        os.truncate(path, path.stat().st_size - 1)

    monkeypatch.setattr(writer, "_write_shard", short_shard)
    out = tmp_path / "short"
    line = fails(capsys, "zero", base, "--module", "o_proj", "--max-shard-size", "200KB", "-o", out)
    assert "bytes after writing, the plan says" in line and "model-00001-of-" in line, line
    _no_output(out)
    monkeypatch.setattr(writer, "_write_shard", real_shard)

    real_side = writer._write_side_files

    def index_changed(plan, tmp, mapping, expected=None):  # the index rewritten after the writer wrote it
        doc = real_side(plan, tmp, mapping, expected)
        index = tmp / "model.safetensors.index.json"
        index.write_text(index.read_text().replace('"total_size": ', '"total_size": 1'))
        return doc

    monkeypatch.setattr(writer, "_write_side_files", index_changed)
    out = tmp_path / "index"
    assert "model.safetensors.index.json: holds" in fails(capsys, "remove", base, "--layers", "1", "-o", out)
    _no_output(out)


def test_verify_parses_the_written_headers_again(bf16, tmp_path, monkeypatch):
    """A header built wrong from the plan would pass the byte comparison with itself; --verify parses
    the output again and compares every tensor's dtype, shape and shard with the plan."""
    import weightsurgeon.writer as writer
    from weightsurgeon.format import build_header

    _, base, donor = bf16

    def wrong_header(tensors, metadata=None):
        return build_header([(n, "F16" if n.endswith("o_proj.weight") else d, s) for n, d, s in tensors], metadata)

    monkeypatch.setattr(writer, "build_header", wrong_header)
    with open_checkpoint(base) as b, open_checkpoint(donor) as d:
        plan = plan_splice(b, d, take="o_proj")
        write_plan(plan, tmp_path / "unchecked", WriteOptions(quiet=True, fsync=False))  # same bytes: not seen
        with pytest.raises(SurgeonError, match=r"o_proj.weight is F16\[.*the plan says BF16"):
            write_plan(plan, tmp_path / "checked", WriteOptions(quiet=True, fsync=False, verify=True))
    _no_output(tmp_path / "checked")


def test_refusals_before_any_byte_is_written(capsys, f32, tmp_path, monkeypatch):
    _, base, donor = f32
    out = tmp_path / "out"
    ok(capsys, "zero", base, "--module", "o_proj", "-o", out)
    before = (out / "model-00001-of-00001.safetensors").read_bytes()
    assert "already exists" in fails(capsys, "zero", base, "--module", "q_proj", "-o", out)
    assert (out / "model-00001-of-00001.safetensors").read_bytes() == before
    ok(capsys, "zero", base, "--module", "q_proj", "-o", out, "--force", "--no-fsync")
    assert (out / "model-00001-of-00001.safetensors").read_bytes() != before
    assert "inside the input" in fails(capsys, "zero", base, "--module", "o_proj", "-o", base / "sub")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    assert "not enough free space" in fails(capsys, "splice", base, donor, "--take", "o_proj", "-o", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, bf16, tmp_path):
    _, base, donor = bf16
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "splice", base, donor, "--take", "o_proj,head", "--layers", "0-1", "--dry-run", "-o", out)
    assert code == 0, err
    assert "o_proj" in stdout and "0-1" in stdout and "unchanged" in stdout
    assert not out.exists() and not list(tmp_path.iterdir())
    code, stdout, _ = cli(capsys, "remove", base, "--layers", "2", "--dry-run", "--json")
    doc = json.loads(stdout)
    assert doc["summary"]["config_edits"]["num_hidden_layers"] == {"old": 4, "new": 3}
    assert not [t for t in doc["tensors"] if "layers.3." in t["name"]]


def test_cli_contract_end_to_end(tmp_path):
    """The real console entry point: exit 1 with one `error:` line, usage errors exit 2."""
    base = make_checkpoint(tmp_path / "base", arch="llama", num_layers=2, dtype="f32")
    run = lambda *a: subprocess.run([sys.executable, "-m", "weightsurgeon", *map(str, a)], capture_output=True, text=True)
    proc = run("zero", base, "--module", "nonsense", "-o", tmp_path / "x")
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown module 'nonsense'") and proc.stderr.count("\n") == 1
    proc = run("splice", base, base, "-o", tmp_path / "x")
    assert proc.returncode == 2
    proc = run("remove", base, "--layers", "1", "-o", tmp_path / "ok")
    assert proc.returncode == 0 and "wrote" in proc.stdout
    assert run("verify", tmp_path / "ok").returncode == 0


def test_helpers():
    assert format_layers([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_size("5GB") == 5_000_000_000 and parse_size("2GiB") == 2 << 30 and parse_size("100") == 100
    with pytest.raises(SurgeonError):
        parse_size("five")
    from weightsurgeon.writer import index_json

    for mapping in ({}, {"a.weight": "model-00001-of-00001.safetensors"},
                    {'q"uote\\back.weight': "f\u00e9.safetensors", "tab\t\n.weight": "x", "\u2028.w": "\U0001f600"}):
        doc = {"metadata": {"total_size": 123}, "weight_map": mapping}  # the index as json.dumps(indent=2) writes it
        assert index_json(123, mapping) == (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def test_cast_refuses_non_float_tensors_with_one_line(capsys, tmp_path):
    """--cast rounds floats only: an integer DONOR tensor is a listed mismatch, not an internal error."""
    import struct

    base = make_checkpoint(tmp_path / "base", arch="llama", num_layers=2, dtype="bf16")
    donor = make_checkpoint(tmp_path / "donor", arch="llama", num_layers=2, dtype="f32", seed=4)
    shard = donor / "model.safetensors"
    blob = shard.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    for name, entry in header.items():
        if ".o_proj." in name:
            entry["dtype"] = "I32"  # same width as F32: only the label changes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    line = fails(capsys, "splice", base, donor, "--take", "o_proj", "--cast", "-o", tmp_path / "x")
    assert "dtype mismatch" in line and "I32" in line and "floating-point values only" in line
    assert "internal error" not in line and not (tmp_path / "x").exists()
