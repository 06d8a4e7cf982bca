"""The CLI contract of DESIGN.md, and a corpus of broken and valid checkpoints run through it.

Every broken checkpoint must make `surgeon verify` and `surgeon inspect` fail cleanly:
non-zero exit, at most three short stderr lines, no traceback, no hang, nothing unpickled,
nothing written. Every valid one must exit 0.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import cli_env, edit_json, rewrite_checkpoint, run_cli, tensor_entry, write_raw

HEAVY = ("torch", "transformers", "numba", "matplotlib", "trl", "deepspeed", "datasets", "vllm", "accelerate")


# ---------------------------------------------------------------------------------------
# --help: light and fast
# ---------------------------------------------------------------------------------------

_PROBE = """
import sys, time
t = time.perf_counter()
from weightsurgeon.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(repr(code), "%.3f" % (time.perf_counter() - t), ",".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _probe(*args: str) -> tuple[object, float, set[str]]:
    done = __import__("subprocess").run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                                         env=cli_env(), timeout=120)
    last = done.stdout.strip().splitlines()[-1]
    code, seconds, modules = last.split(" ", 2)
    return eval(code), float(seconds), set(modules.split(","))


@pytest.mark.parametrize("args", [("--help",), ("inspect", "--help"), ("verify", "--help"), ("--version",)])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    code, seconds, modules = _probe(*args)
    print(f"surgeon {' '.join(args)}: {seconds:.3f} s in-process")  # reported, not asserted (noisy machines)
    assert code in (0, None)
    assert not modules & set(HEAVY), f"--help imported {sorted(modules & set(HEAVY))}"
    assert "numpy" not in modules, "--help imported numpy: it loads where data is read (the dtype table is plain data)"


def test_every_registered_command_has_help_without_heavy_imports() -> None:
    from weightsurgeon.cli import COMMANDS

    for name in COMMANDS:
        code, _, modules = _probe(name, "--help")
        assert code in (0, None), name
        assert not modules & set(HEAVY), f"surgeon {name} --help imported {sorted(modules & set(HEAVY))}"


def test_help_startup_time_is_printed() -> None:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        done = run_cli("--help")
        times.append(time.perf_counter() - start)
        assert done.returncode == 0 and "Usage: surgeon" in done.stdout
    print(f"surgeon --help wall time over 3 runs: {', '.join(f'{t:.2f}' for t in times)} s")


# ---------------------------------------------------------------------------------------
# Exit codes, --debug, one-line errors
# ---------------------------------------------------------------------------------------

def test_exit_codes_and_usage_errors(surgeon, tiny_model) -> None:
    path = tiny_model()
    assert surgeon("verify", path).code == 0
    assert surgeon("--version").code == 0
    for args in (("nosuch",), ("verify",), ("verify", "--bogus", path), ("inspect", path, "extra")):
        result = surgeon(*args)
        assert result.code == 2 and "Usage:" in result.stderr and "Traceback" not in result.stderr
    bad = surgeon("verify", path / "nope")
    assert bad.code == 1 and bad.err_lines == [bad.stderr.strip()] and bad.stderr.startswith("error: ")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    target = tmp_path / "missing-model"
    plain = run_cli("verify", target)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    debug = run_cli("--debug", "verify", target)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "SurgeonError" in debug.stderr
    env = run_cli("verify", target, env=cli_env(SURGEON_DEBUG="1"))
    assert "Traceback" in env.stderr


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------

class _Booby:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _shards(path: Path) -> list[Path]:
    return sorted(path.glob("model-*.safetensors"))


def _single(path: Path) -> Path:
    return path / "model.safetensors"


def _with_header(path: Path, header, data: bytes = b"", **kw) -> None:
    write_raw(_single(path), header, data, **kw)


def _replace_header(path: Path, edit: Callable[[dict], None]) -> None:
    """Re-serialise model.safetensors' header through ``edit`` and keep the data bytes."""
    raw = _single(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    write_raw(_single(path), header, raw[8 + n:])


def _index(path: Path, edit: Callable[[dict], None]) -> None:
    f = path / "model.safetensors.index.json"
    data = json.loads(f.read_text())
    edit(data)
    f.write_text(json.dumps(data))


# name -> (synth kwargs, breaker)
BROKEN: dict[str, tuple[dict, Callable[[Path], None]]] = {
    "header_length_huge": ({}, lambda p: _with_header(p, b"{}", length=2**63)),
    "header_length_past_eof": ({}, lambda p: _with_header(p, b"{}", length=1000)),
    "header_length_zero": ({}, lambda p: _with_header(p, b"", b"\0" * 16)),
    "three_byte_file": ({}, lambda p: _single(p).write_bytes(b"abc")),
    "empty_file": ({}, lambda p: _single(p).write_bytes(b"")),
    "zip_pretending": ({}, lambda p: _single(p).write_bytes(b"PK\x03\x04" + b"\0" * 100)),
    "json_array": ({}, lambda p: _with_header(p, "[1, 2]")),
    "not_utf8": ({}, lambda p: _with_header(p, b'{"\xc3\x28": 1}')),
    "depth_bomb": ({}, lambda p: _with_header(p, "[" * 200_000)),
    "nan_in_header": ({}, lambda p: _with_header(p, '{"a": NaN}')),
    "lone_surrogate": ({}, lambda p: _with_header(p, '{"\\udc00": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                                  b"\0" * 4)),
    "duplicate_names": ({}, lambda p: _with_header(
        p, '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
        b"\0" * 4)),
    "metadata_not_strings": ({}, lambda p: _replace_header(p, lambda h: h.update(__metadata__={"format": 1}))),
    "unknown_dtype": ({}, lambda p: _replace_header(p, lambda h: h["model.norm.weight"].update(dtype="F33"))),
    "negative_shape": ({}, lambda p: _replace_header(p, lambda h: h["model.norm.weight"].update(shape=[-64]))),
    "overflow_shape": ({}, lambda p: _replace_header(p, lambda h: h["model.norm.weight"].update(shape=[2**62, 4]))),
    "shape_size_mismatch": ({}, lambda p: _replace_header(p, lambda h: h["model.norm.weight"].update(shape=[63]))),
    "offsets_overlap": ({}, lambda p: _replace_header(
        p, lambda h: h["model.norm.weight"].update(data_offsets=[0, 256]))),
    "offsets_not_ints": ({}, lambda p: _replace_header(
        p, lambda h: h["model.norm.weight"].update(data_offsets=["0", "256"]))),
    "trailing_bytes": ({}, lambda p: _single(p).open("ab").write(b"\0" * 8)),
    "truncated_data": ({}, lambda p: os.truncate(_single(p), _single(p).stat().st_size - 3)),
    "index_missing_shard": (dict(shard_bytes=60_000), lambda p: _shards(p)[1].unlink()),
    "index_path_escape": (dict(shard_bytes=60_000), lambda p: _index(
        p, lambda d: d["weight_map"].update({"model.norm.weight": "../model-00001-of-00001.safetensors"}))),
    "index_absolute": (dict(shard_bytes=60_000), lambda p: _index(
        p, lambda d: d["weight_map"].update({"model.norm.weight": str(_shards(p)[0].resolve())}))),
    "index_not_json": (dict(shard_bytes=60_000), lambda p: (p / "model.safetensors.index.json").write_text("{oops")),
    "index_weight_map_list": (dict(shard_bytes=60_000), lambda p: _index(p, lambda d: d.update(weight_map=[]))),
    "index_wrong_shard": (dict(shard_bytes=60_000), lambda p: _index(
        p, lambda d: d["weight_map"].update({"model.norm.weight": _shards(p)[0].name}))),
    "index_ghost_tensor": (dict(shard_bytes=60_000), lambda p: _index(
        p, lambda d: d["weight_map"].update({"ghost.weight": _shards(p)[0].name}))),
    "tensor_in_two_shards": (dict(shard_bytes=60_000), lambda p: (
        (p / "model.safetensors.index.json").unlink(), shutil.copy(_shards(p)[0], _shards(p)[1]))),
    "shard_is_a_directory": ({}, lambda p: (_single(p).unlink(), _single(p).mkdir())),
    "shard_is_a_fifo": ({}, lambda p: (_single(p).unlink(), os.mkfifo(_single(p)))),
    "shard_symlink_loop": ({}, lambda p: (_single(p).unlink(), _single(p).symlink_to("model.safetensors"))),
    "empty_directory": ({}, lambda p: [f.unlink() for f in list(p.iterdir())]),
    "pickle_only": ({}, lambda p: (_single(p).unlink(), (p / "pytorch_model.bin").write_bytes(
        pickle.dumps(_Booby(str(p.parent / "UNPICKLED")))))),
    "lora_adapter": ({}, lambda p: (_single(p).rename(p / "adapter_model.safetensors"),
                                    (p / "adapter_config.json").write_text('{"peft_type": "LORA"}'))),
    "gptq": ({}, lambda p: _replace_header(
        p, lambda h: h.update({"model.layers.0.mlp.up_proj.qweight": h.pop("model.layers.0.mlp.up_proj.weight")}))),
    "fp8_weight_without_scale": ({}, lambda p: (edit_json(p / "config.json", quantization_config={"quant_method": "fp8"}),
                                                 _replace_header(p, lambda h: h["model.layers.0.mlp.up_proj.weight"].update(
                                                     dtype="F8_E4M3", shape=[4 * h["model.layers.0.mlp.up_proj.weight"]["shape"][0],
                                                                             h["model.layers.0.mlp.up_proj.weight"]["shape"][1]])))),
    "quantization_config": ({}, lambda p: edit_json(p / "config.json", quantization_config={"quant_method": "gptq"})),
    "config_not_json": ({}, lambda p: (p / "config.json").write_text("{'a': 1}")),
    "config_not_object": ({}, lambda p: (p / "config.json").write_text("[]")),
    "config_fifo": ({}, lambda p: ((p / "config.json").unlink(), os.mkfifo(p / "config.json"))),
    "missing_one_tensor": (dict(num_layers=3), lambda p: rewrite_checkpoint(
        p, drop=lambda n: n == "model.layers.1.self_attn.k_proj.bias")),
    "missing_embedding": ({}, lambda p: rewrite_checkpoint(p, drop=lambda n: n == "model.embed_tokens.weight")),
    "projection_wrong_width": ({}, lambda p: _replace_header(
        p, lambda h: h["model.layers.1.self_attn.o_proj.weight"].update(shape=[32, 128]))),
    "head_wrong_rows": ({}, lambda p: _replace_header(p, lambda h: h["lm_head.weight"].update(shape=[256, 128]))),
    "missing_layer": (dict(num_layers=3), lambda p: rewrite_checkpoint(p, drop=lambda n: ".layers.2." in n)),
    "layers_beyond_config": ({}, lambda p: edit_json(p / "config.json", num_hidden_layers=1)),
    "absurd_layer_count": ({}, lambda p: edit_json(p / "config.json", num_hidden_layers=10**15)),
    "hidden_size_mismatch": ({}, lambda p: edit_json(p / "config.json", hidden_size=128)),
    "vocab_mismatch": ({}, lambda p: edit_json(p / "config.json", vocab_size=1000)),
    "layer_types_short": (dict(layer_types=True), lambda p: edit_json(p / "config.json", layer_types=["full_attention"])),
    "untied_without_head": (dict(tied=True), lambda p: edit_json(p / "config.json", tie_word_embeddings=False)),
}


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _assert_clean_failure(result, command: str, case: str) -> None:
    assert result.code != 0, f"{command} accepted broken case {case}"
    lines = result.err_lines
    assert 1 <= len(lines) <= 3, f"{case}: {lines}"
    assert all(len(line) <= 400 for line in lines), f"{case}: {lines}"
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert "internal error" not in result.stderr, f"{case}: {result.stderr}"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_corpus_fails_cleanly(tmp_path: Path, tiny_model, surgeon, case: str) -> None:
    kw, breaker = BROKEN[case]
    path = tiny_model(name="m", **kw)
    breaker(path)
    before = _snapshot(tmp_path)
    for args in (("verify", path), ("verify", "--deep", "--json", path), ("inspect", path), ("inspect", "--json", "-v", path)):
        result = surgeon(*args)
        _assert_clean_failure(result, args[0], case)
        assert result.stdout == "", f"{case}: {args} printed {result.stdout[:200]!r}"
    assert _snapshot(tmp_path) == before, "verify/inspect wrote or changed files"
    assert not (tmp_path / "UNPICKLED").exists()


@pytest.mark.parametrize("case", ["pickle_only", "depth_bomb", "shard_is_a_fifo", "index_path_escape"])
def test_broken_corpus_in_a_real_process(tmp_path: Path, tiny_model, case: str) -> None:
    kw, breaker = BROKEN[case]
    path = tiny_model(name="m", **kw)
    breaker(path)
    for command in ("verify", "inspect"):
        done = run_cli(command, path, timeout=60)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert 1 <= len(lines) <= 3 and lines[-1].startswith("error: ")
    assert not (tmp_path / "UNPICKLED").exists()


def _valid_library_file(tmp: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"model.embed_tokens.weight": np.ones((8, 4), np.float32), "model.norm.weight": np.ones(4, np.float16),
               "model.layers.0.self_attn.o_proj.weight": np.zeros((4, 4), np.float32),
               "counts": np.arange(3, dtype=np.int64), "mask": np.array([True, False])}, str(tmp / "lib.safetensors"))
    return tmp / "lib.safetensors"


def _valid_empty_tensors(tmp: Path) -> Path:
    return write_raw(tmp / "e.safetensors", {"__metadata__": {"format": "pt"},
                                             "a": tensor_entry("F32", [0, 4], 0, 0), "b": tensor_entry("BF16", [0], 0, 0),
                                             "c": tensor_entry("F32", [1], 0, 4)}, b"\0" * 4)


VALID: dict[str, Callable] = {
    "qwen2_f32": lambda make, tmp: make(arch="qwen2"),
    "llama_bf16_tied_sharded": lambda make, tmp: make(arch="llama", dtype="bf16", tied=True, shard_bytes=30_000),
    "qwen3_f16_layer_types": lambda make, tmp: make(arch="qwen3", dtype="f16", layer_types=True),
    "single_file_path": lambda make, tmp: make() / "model.safetensors",
    "index_json_path": lambda make, tmp: make(shard_bytes=60_000) / "model.safetensors.index.json",
    "no_config_single_file": lambda make, tmp: ((make(name="nc") / "config.json").unlink(), tmp / "nc" / "model.safetensors")[1],
    "shards_without_index": lambda make, tmp: ((make(name="ni", shard_bytes=60_000) / "model.safetensors.index.json").unlink(),
                                               tmp / "ni")[1],
    "bin_beside_safetensors": lambda make, tmp: ((make(name="b") / "pytorch_model.bin").write_bytes(
        pickle.dumps(_Booby(str(tmp / "UNPICKLED")))), tmp / "b")[1],
    "unlisted_extra_shard": lambda make, tmp: (shutil.copy(_single(make(name="u")), tmp / "u" / "consolidated.safetensors"),
                                               tmp / "u")[1],
    "library_written_file": lambda make, tmp: _valid_library_file(tmp),
    "empty_tensors": lambda make, tmp: _valid_empty_tensors(tmp),
    "empty_header": lambda make, tmp: write_raw(tmp / "z.safetensors", b"{}      "),
    "extra_entry_fields": lambda make, tmp: write_raw(tmp / "x.safetensors", {"a": {**tensor_entry("F32", [1], 0, 4), "note": 1}},
                                                      b"\0" * 4),
    "symlinked_shards": lambda make, tmp: _symlinked(make(name="real", shard_bytes=60_000), tmp / "linked"),
}


def _symlinked(real: Path, linked: Path) -> Path:
    linked.mkdir()
    for f in real.iterdir():
        (linked / f.name).symlink_to(f.resolve())
    return linked


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_corpus_exits_zero(tmp_path: Path, tiny_model, surgeon, case: str) -> None:
    source = VALID[case](tiny_model, tmp_path)
    before = _snapshot(tmp_path)
    for args in (("verify", source), ("verify", "--deep", source), ("inspect", source), ("inspect", "--json", "-v", source)):
        result = surgeon(*args)
        assert result.code == 0, f"{case} {args}: {result.stderr}"
        assert "error" not in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "UNPICKLED").exists()


# ---------------------------------------------------------------------------------------
# Fuzzing the whole command: valid headers with odd names, shapes and configs never crash
# verify or inspect (an "internal error" is a bug), and refusals stay one clean line.
# ---------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NAME_PARTS = st.sampled_from([
    "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "transformer.wte.weight",
    "model.layers.{l}.self_attn.q_proj.weight", "model.layers.{l}.self_attn.qkv_proj.weight",
    "model.layers.{l}.mlp.experts.{l}.w1.weight", "model.layers.{l}.mlp.experts.gate_up_proj",
    "model.language_model.layers.{l}.input_layernorm.weight", "h.{l}.attn.c_attn.bias",
    "vision_tower.blocks.{l}.x.weight", "odd[/red]", "", "model.layers.{l}", "weight",
])
_JSON_ANY = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20), st.floats(allow_nan=False),
                                   st.text(max_size=4)),
                         lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                         max_leaves=6)
_CONFIG_VALUE = st.one_of(st.integers(-2, 6), _JSON_ANY)
_CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "vocab_size", "tie_word_embeddings", "layer_types", "architectures",
                "model_type", "text_config", "n_layer", "no_rope_layers", "quantization_config"]


@st.composite
def _models(draw):
    tensors = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(_NAME_PARTS).format(l=draw(st.sampled_from([0, 1, 2, 7, 10**12])))
        dtype = draw(st.sampled_from(["F32", "BF16", "F16", "I64", "BOOL", "F8_E4M3", "C64", "F64"]))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        tensors.append((name, dtype, shape))
    config = draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(_CONFIG_KEYS), _CONFIG_VALUE, max_size=5)))
    surgeon_json = draw(st.one_of(st.none(), st.just({"partial": True}), _JSON_ANY))
    return tensors, config, surgeon_json


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=_models())
def test_fuzz_commands_never_crash(tmp_path_factory: pytest.TempPathFactory, surgeon, model) -> None:
    from weightsurgeon.format import build_header

    tensors, config, surgeon_json = model
    tensors = list({t[0]: t for t in tensors}.values())  # one entry per name
    folder = tmp_path_factory.mktemp("fz")
    prefix, sizes = build_header(tensors, {"format": "pt"})
    rng = np.random.default_rng(0)
    (folder / "model.safetensors").write_bytes(prefix + rng.integers(0, 256, sum(sizes), dtype=np.uint8).tobytes())
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if surgeon_json is not None:
        (folder / "surgeon.json").write_text(json.dumps(surgeon_json))
    for args in (("verify", "--deep", folder), ("inspect", "-v", folder), ("inspect", "--json", folder)):
        result = surgeon(*args)
        assert result.code in (0, 1), result
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        if result.code == 1:
            lines = result.err_lines
            assert lines and lines[-1].startswith("error: ") and len(lines) <= 3, lines
        elif args[1] == "--json":
            json.loads(result.stdout)
