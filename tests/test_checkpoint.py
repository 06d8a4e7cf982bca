"""open_checkpoint: sources, index cross-checks, refusals (pickle, adapters, quantized), and reads.

The reader's metadata and bytes are compared with `safetensors.safe_open` on synthetic
models of every supported shape: qwen2 and llama, tied and untied, bf16/f16/f32,
sharded and single-file.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, hf_cache_entry, run_cli, tensor_entry, write_raw
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.kernels.decode import storage_dtype


def _index(path: Path) -> dict:
    return json.loads((path / "model.safetensors.index.json").read_text())


def _write_index(path: Path, index: dict | str) -> None:
    text = index if isinstance(index, str) else json.dumps(index)
    (path / "model.safetensors.index.json").write_text(text)


@pytest.fixture
def sharded(tiny_model) -> Path:
    path = tiny_model(name="sharded", shard_bytes=60_000)
    assert len(list(path.glob("model-*.safetensors"))) >= 3
    return path


# ---------------------------------------------------------------------------------------
# Reader vs safetensors
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype,shard_bytes", [("bf16", None), ("f16", 30_000), ("f32", 100_000)])
def test_reader_matches_safe_open(tiny_model, arch: str, tied: bool, dtype: str, shard_bytes: int | None) -> None:
    from safetensors import safe_open

    path = tiny_model(arch=arch, tied=tied, dtype=dtype, shard_bytes=shard_bytes)
    with open_checkpoint(path) as ckpt:
        assert ("lm_head.weight" in ckpt) is (not tied)
        assert (ckpt.index is None) is (shard_bytes is None)
        seen = set()
        for shard in ckpt.shards:
            with safe_open(str(shard.path), "np") as lib:
                assert lib.metadata() == shard.metadata == {"format": "pt"}
                assert sorted(lib.keys()) == sorted(t.name for t in shard.tensors)
                for name in lib.keys():
                    info = ckpt[name]
                    sl = lib.get_slice(name)
                    assert info.dtype == sl.get_dtype() and list(info.shape) == sl.get_shape()
                    assert info.file == shard.path
                    if dtype != "bf16":  # numpy has no bfloat16: compare bits through torch below
                        np.testing.assert_array_equal(ckpt.read_tensor(name), lib.get_tensor(name))
                    seen.add(name)
        assert seen == set(ckpt.tensors)
        if dtype == "bf16":
            import torch
            from safetensors.torch import load_file

            for shard in ckpt.shards:
                for name, tensor in load_file(str(shard.path)).items():
                    expected = tensor.view(torch.int16).numpy().view(np.uint16)
                    np.testing.assert_array_equal(ckpt.read_tensor(name), expected)


def test_on_disk_order_and_offsets(sharded: Path) -> None:
    with open_checkpoint(sharded) as ckpt:
        infos = list(ckpt)
        files = [i.file.name for i in infos]
        assert files == sorted(files)
        for a, b in zip(infos, infos[1:]):
            if a.file == b.file:
                assert a.end == b.begin
        assert ckpt.total_bytes == _index(sharded)["metadata"]["total_size"]
        assert not ckpt.warnings


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096 + 6, 10**9])
def test_chunked_reads_equal_whole_reads(tiny_model, chunk: int) -> None:
    path = tiny_model(dtype="bf16", vocab_size=300, hidden_size=48, num_heads=4)
    with open_checkpoint(path) as ckpt:
        for info in ckpt:
            whole = ckpt.read_tensor(info.name).reshape(-1)
            parts = [c.copy() for c in ckpt.iter_chunks(info, chunk_bytes=chunk)]
            assert all(p.dtype == storage_dtype(info.dtype) for p in parts)
            assert all(p.nbytes <= max(chunk, info.itemsize) for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_iter_chunks_reuses_one_buffer(tiny_model) -> None:
    path = tiny_model(dtype="f32")
    buffer = bytearray(1000)  # not a multiple of the item size: the step rounds down
    with open_checkpoint(path) as ckpt:
        info = ckpt["model.embed_tokens.weight"]
        whole = ckpt.read_tensor(info.name).reshape(-1)
        got = []
        for chunk in ckpt.iter_chunks(info, buffer=buffer):
            assert chunk.nbytes <= 1000 and chunk.nbytes % 4 == 0
            assert np.shares_memory(chunk, np.frombuffer(buffer, dtype=np.uint8))
            got.append(chunk.copy())
        np.testing.assert_array_equal(np.concatenate(got), whole)


def test_read_into_bounds(tiny_model) -> None:
    path = tiny_model()
    with open_checkpoint(path) as ckpt:
        info = ckpt["model.norm.weight"]
        out = bytearray(8)
        ckpt.read_into(info, info.nbytes - 8, out)
        assert bytes(out) == ckpt.read_tensor(info.name).tobytes()[-8:]
        with pytest.raises(SurgeonError):
            ckpt.read_into(info, info.nbytes - 4, out)


def test_single_file_source_and_index_file_source(sharded: Path, tiny_model) -> None:
    single = tiny_model(name="single")
    with open_checkpoint(single / "model.safetensors") as ckpt:
        assert ckpt.root is None and ckpt.config["model_type"] == "qwen2" and len(ckpt) == 27
    with open_checkpoint(sharded / "model.safetensors.index.json") as ckpt:
        assert ckpt.root == sharded and len(ckpt.shards) >= 3


def test_directory_of_shards_without_index(sharded: Path) -> None:
    (sharded / "model.safetensors.index.json").unlink()
    with open_checkpoint(sharded) as ckpt:
        assert ckpt.index is None and len(ckpt) == 27


def test_header_digest_is_stable(tiny_model) -> None:
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        assert ca.header_digest(ca.shards[0]) == cb.header_digest(cb.shards[0])  # same names/shapes


# ---------------------------------------------------------------------------------------
# Index cross-checks
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_name", ["sub/model.safetensors", "../model-00001-of-00004.safetensors", "/etc/passwd",
                                      "..\\x.safetensors", "a\x00.safetensors", 7, None, ["x"], "", "..",
                                      "model.bin", "pytorch_model-00001-of-00002.bin"])
def test_index_file_names_must_be_plain(sharded: Path, bad_name) -> None:
    index = _index(sharded)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = bad_name
    _write_index(sharded, index)
    with pytest.raises(SurgeonError, match="not a plain .safetensors file name"):
        open_checkpoint(sharded)


@pytest.mark.parametrize("weight_map", [{}, [], "x", None, 3])
def test_index_weight_map_empty_or_not_a_dict(sharded: Path, weight_map) -> None:
    _write_index(sharded, {"metadata": {}, "weight_map": weight_map})
    with pytest.raises(SurgeonError, match="weight_map"):
        open_checkpoint(sharded)


@pytest.mark.parametrize("text", ["{", "[]", "null", "\xff", '{"weight_map": NaN'])
def test_index_not_json_or_not_an_object(sharded: Path, text: str) -> None:
    _write_index(sharded, text)
    with pytest.raises(SurgeonError, match="model.safetensors.index.json"):
        open_checkpoint(sharded)


def test_index_names_a_missing_shard(sharded: Path) -> None:
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(SurgeonError, match=f"{victim.name}.*does not exist"):
        open_checkpoint(sharded)


def test_index_lists_a_tensor_in_the_wrong_shard(sharded: Path) -> None:
    index = _index(sharded)
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, f in index["weight_map"].items() if f == shards[1])
    index["weight_map"][name] = shards[2]
    _write_index(sharded, index)
    with pytest.raises(SurgeonError, match=f"{name}.*stored in {shards[1]}"):
        open_checkpoint(sharded)
    # The only tensor of a shard moved elsewhere: that shard is no longer listed, so no listed shard has it.
    index = _index(sharded)
    index["weight_map"]["model.embed_tokens.weight"] = shards[1]
    _write_index(sharded, index)
    with pytest.raises(SurgeonError, match="no shard listed in the index contains it"):
        open_checkpoint(sharded)


def test_index_lists_a_tensor_no_shard_has(sharded: Path) -> None:
    index = _index(sharded)
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = next(iter(index["weight_map"].values()))
    _write_index(sharded, index)
    with pytest.raises(SurgeonError, match="no shard listed in the index contains it"):
        open_checkpoint(sharded)


def test_tensor_stored_in_two_shards(sharded: Path) -> None:
    shards = sorted(sharded.glob("model-*.safetensors"))
    shutil.copy(shards[0], shards[1])  # shard 2 now repeats shard 1's tensors
    with pytest.raises(SurgeonError, match="is also stored in|stored in"):
        open_checkpoint(sharded)
    (sharded / "model.safetensors.index.json").unlink()  # without an index: found while merging shards
    with pytest.raises(SurgeonError, match=f"{shards[1].name}: tensor .* is also stored in {shards[0].name}; two files "
                                           "of the model hold it: remove the stray one"):
        open_checkpoint(sharded)


def test_unlisted_shard_is_a_warning(sharded: Path, surgeon) -> None:
    shutil.copy(sorted(sharded.glob("model-*.safetensors"))[0], sharded / "consolidated.safetensors")
    with open_checkpoint(sharded) as ckpt:
        assert any("consolidated.safetensors" in w and "not listed" in w for w in ckpt.warnings)
        assert "consolidated.safetensors" not in {f.name for f in ckpt.files}
    result = surgeon("verify", sharded)
    assert result.code == 0 and "warning:" in result.stderr and "consolidated" in result.stderr


def test_tensor_missing_from_weight_map_is_a_warning(sharded: Path) -> None:
    index = _index(sharded)
    index["weight_map"].pop("model.norm.weight")
    _write_index(sharded, index)
    with open_checkpoint(sharded) as ckpt:
        assert any("not in the weight_map" in w for w in ckpt.warnings)


def test_total_size_mismatch_is_a_warning(sharded: Path) -> None:
    index = _index(sharded)
    index["metadata"]["total_size"] += 1
    _write_index(sharded, index)
    with open_checkpoint(sharded) as ckpt:
        assert any("total_size" in w for w in ckpt.warnings)


def test_hf_cache_layout_symlinks_outside_the_folder(tmp_path: Path, tiny_model) -> None:
    """snapshots/<sha>/model-*.safetensors -> ../../blobs/<hash>: followed, accepted."""
    src = tiny_model(name="src", shard_bytes=60_000)
    snap = hf_cache_entry(tmp_path / "hub", src, repo="org/tiny")
    with open_checkpoint(snap) as ckpt:
        assert len(ckpt) == 27 and all(p.is_symlink() for p in ckpt.files)
        np.testing.assert_array_equal(ckpt.read_tensor("model.norm.weight"),
                                      open_checkpoint(src).read_tensor("model.norm.weight"))

    # ... and the same folder found by Hub id through HF_HOME, offline, in a fresh process.
    env = cli_env(HF_HOME=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "hub"))
    found = run_cli("verify", "org/tiny", env=env)
    assert found.returncode == 0, found.stderr
    missing = run_cli("inspect", "org/absent-model", env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "org/absent-model" in missing.stderr and "hf download" in missing.stderr


def test_broken_symlink_shard(tmp_path: Path, tiny_model) -> None:
    path = tiny_model(shard_bytes=60_000)
    victim = sorted(path.glob("model-*.safetensors"))[0]
    victim.unlink()
    victim.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SurgeonError, match="does not exist"):
        open_checkpoint(path)


# ---------------------------------------------------------------------------------------
# Refusals: pickle, adapters, quantized
# ---------------------------------------------------------------------------------------

class _Booby:
    """Unpickling this creates a marker file: proof that a pickle was (not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.00.pth"])
def test_pickle_only_directory_is_refused_and_never_opened(tmp_path: Path, name: str, surgeon) -> None:
    marker = tmp_path / "UNPICKLED"
    model = tmp_path / "model"
    model.mkdir()
    (model / name).write_bytes(pickle.dumps(_Booby(marker)))
    (model / "config.json").write_text('{"model_type": "llama"}')
    for target in (model, model / name):
        with pytest.raises(SurgeonError, match="pickle.*convert to safetensors"):
            open_checkpoint(target)
        for command in ("verify", "inspect"):
            result = surgeon(command, target)
            assert result.code == 1 and len(result.err_lines) == 1 and "safetensors" in result.stderr
    assert not marker.exists()


def test_bin_beside_safetensors_is_ignored(tmp_path: Path, tiny_model) -> None:
    marker = tmp_path / "UNPICKLED"
    path = tiny_model()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    with open_checkpoint(path) as ckpt:
        assert [f.name for f in ckpt.files] == ["model.safetensors"]
    assert not marker.exists()


def test_lora_adapter_folder_is_refused(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_raw(adapter / "adapter_model.safetensors",
              {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": tensor_entry("F32", [2, 4], 0, 32)},
              b"\0" * 32)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    with pytest.raises(SurgeonError, match="LoRA"):
        open_checkpoint(adapter)


@pytest.mark.parametrize("name,kind", [("model.layers.0.self_attn.q_proj.qweight", "GPTQ"),
                                       ("model.layers.0.mlp.down_proj.weight.absmax", "bitsandbytes")])
def test_quantized_tensors_are_refused(tmp_path: Path, name: str, kind: str) -> None:
    model = tmp_path / "q"
    model.mkdir()
    write_raw(model / "model.safetensors", {name: tensor_entry("I32", [2], 0, 8)}, b"\0" * 8)
    with pytest.raises(SurgeonError, match=kind):
        open_checkpoint(model)


def test_quantization_config_is_refused(tiny_model) -> None:
    path = tiny_model()
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (path / "config.json").write_text(json.dumps(config))
    for source in (path, path / "model.safetensors"):
        with pytest.raises(SurgeonError, match="quantized.*awq"):
            open_checkpoint(source)


# ---------------------------------------------------------------------------------------
# Sources that are not checkpoints
# ---------------------------------------------------------------------------------------

def test_missing_path_and_not_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(SurgeonError, match="no such file"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(SurgeonError, match="no such file"):
        open_checkpoint("./nope.safetensors")


@pytest.mark.parametrize("source", ["", "   ", "a\x00b", "x" * 5000])
def test_odd_sources(source: str) -> None:
    with pytest.raises(SurgeonError):
        open_checkpoint(source)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SurgeonError, match="no .safetensors files"):
        open_checkpoint(tmp_path)


def test_model_safetensors_that_is_a_directory_or_fifo(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").mkdir()
    with pytest.raises(SurgeonError, match="not a regular file"):
        open_checkpoint(tmp_path / "a")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "model.safetensors")
    with pytest.raises(SurgeonError, match="not a regular file"):
        open_checkpoint(tmp_path / "b")


def test_config_json_fifo_or_directory_does_not_hang(tiny_model) -> None:
    path = tiny_model()
    (path / "config.json").unlink()
    os.mkfifo(path / "config.json")
    with pytest.raises(SurgeonError, match="not a regular file"):
        open_checkpoint(path)
    (path / "config.json").unlink()
    (path / "config.json").mkdir()
    with pytest.raises(SurgeonError, match="not a regular file"):
        open_checkpoint(path)


@pytest.mark.parametrize("text", ["[1, 2]", "{", "\"x\"", "\xff\xfe"])
def test_bad_config_json(tiny_model, text: str) -> None:
    path = tiny_model()
    (path / "config.json").write_bytes(text.encode("latin-1"))
    for source in (path, path / "model.safetensors"):
        with pytest.raises(SurgeonError, match="config.json"):
            open_checkpoint(source)


def test_unreadable_shard(tiny_model) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = tiny_model()
    (path / "model.safetensors").chmod(0)
    with pytest.raises(SurgeonError, match="cannot read"):
        open_checkpoint(path)


@pytest.mark.parametrize("target", ["config.json", "model.safetensors.index.json"])
@pytest.mark.parametrize("unit", [b"[],", b"1000,", b'"ab",'])
def test_json_width_bombs_beside_the_weights(sharded: Path, target: str, unit: bytes) -> None:
    (sharded / target).write_bytes(b'{"x": [' + unit * (3_000_000 // len(unit)) + b"0]}")
    with pytest.raises(SurgeonError, match="JSON bomb"):
        open_checkpoint(sharded)


def test_large_legitimate_index_is_accepted(tmp_path: Path) -> None:
    model = tmp_path / "wide"
    model.mkdir()
    write_raw(model / "model-00001-of-00001.safetensors", {"w": tensor_entry("F32", [1], 0, 4)}, b"\0" * 4)
    weight_map = {"w": "model-00001-of-00001.safetensors"}
    index = {"metadata": {"total_size": 4}, "weight_map": weight_map}
    # a big but ordinary index: many listed tensors (all missing from the shard -> a clear error, not a bomb)
    weight_map.update({f"model.layers.{i}.mlp.up_proj.weight": "model-00001-of-00001.safetensors" for i in range(40_000)})
    _write_index(model, index)
    assert (model / "model.safetensors.index.json").stat().st_size > 1_000_000
    with pytest.raises(SurgeonError, match="no shard listed in the index contains it"):
        open_checkpoint(model)


def test_other_safetensors_beside_model_safetensors_are_ignored_with_a_warning(tiny_model) -> None:
    path = tiny_model()
    shutil.copy(path / "model.safetensors", path / "consolidated.safetensors")
    with open_checkpoint(path) as ckpt:
        assert [f.name for f in ckpt.files] == ["model.safetensors"]
        assert any("consolidated.safetensors: ignored" in w for w in ckpt.warnings)


# ---------------------------------------------------------------------------------------
# Fuzzing the index: whatever it says, opening either works or raises one SurgeonError line.
# ---------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FILE_NAMES = st.one_of(st.sampled_from(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                         "model-00003-of-00003.safetensors", "model.safetensors", "../x.safetensors",
                                         "a/b.safetensors", "/abs.safetensors", "x.bin", "", "."]),
                        st.text(max_size=8), st.integers(), st.none(), st.lists(st.integers(), max_size=2))
_TENSOR_NAMES = st.one_of(st.sampled_from(["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                                           "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"]),
                          st.text(max_size=8))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(weight_map=st.one_of(st.dictionaries(_TENSOR_NAMES, _FILE_NAMES, max_size=6), st.none(), st.integers()),
       keep_real=st.booleans(), metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)))
def test_fuzz_index(tmp_path_factory: pytest.TempPathFactory, weight_map, keep_real: bool, metadata) -> None:
    from weightsurgeon.synth import make_checkpoint
    from weightsurgeon.verify import verify_checkpoint

    path = tmp_path_factory.mktemp("ix")
    make_checkpoint(path, shard_bytes=80_000)
    index = _index(path)
    if isinstance(weight_map, dict) and keep_real:
        index["weight_map"].update(weight_map)
    else:
        index["weight_map"] = weight_map
    index["metadata"] = metadata
    _write_index(path, index)
    try:
        with open_checkpoint(path) as ckpt:
            verify_checkpoint(ckpt)
    except SurgeonError as e:
        assert str(e) and "\n" not in str(e) and len(str(e)) < 600
