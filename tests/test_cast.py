"""surgeon cast: FP8 and MXFP4 to bf16/f16/f32 and bf16 to FP8, against torch references written here.

The references are independent of the engine: FP8 values are torch's float8_e4m3fn decode
times the scale expanded over its 128 x 128 blocks (repeat_interleave), rounded by torch's
own casts; MXFP4 follows the OCP MX spec (E2M1 x 2^(scale - 127), even elements in the low
nibble) and transformers' convert_moe_packed_tensors; the quantizer is amax / 448 per block
and torch's float8 cast.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

BLOCK = 128


def _expand(scale: "torch.Tensor", rows: int, cols: int, br: int = BLOCK, bc: int = BLOCK) -> "torch.Tensor":
    return scale.float().repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]


def _ref_quantize(w: "torch.Tensor", scale_dtype=torch.float32) -> tuple["torch.Tensor", "torch.Tensor"]:
    """amax / 448 per block (1 for an all-zero block), rounded to the scale dtype, then torch's float8 cast."""
    rows, cols = w.shape
    w = w.float()
    sr, sc = -(-rows // BLOCK), -(-cols // BLOCK)
    padded = torch.zeros(sr * BLOCK, sc * BLOCK)
    padded[:rows, :cols] = w.abs()
    amax = padded.reshape(sr, BLOCK, sc, BLOCK).amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax)).to(scale_dtype)
    q = (w / _expand(scale, rows, cols)).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, scale


def _ref_dequantize(q: "torch.Tensor", scale: "torch.Tensor", br: int = BLOCK, bc: int = BLOCK) -> "torch.Tensor":
    rows, cols = q.shape
    return q.float() * _expand(scale, rows, cols, br, bc)


def _save(folder: Path, tensors: dict, config: dict, shards: int = 1) -> Path:
    """Tensors in `shards` files (names split in order) with an index, and config.json."""
    folder.mkdir(parents=True)
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        part = {n: tensors[n].contiguous() for n in names[i * per:(i + 1) * per]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        safetensors_torch.save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _load(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(str(f)))
    return out


def _same_bits(ours: "torch.Tensor", ref: "torch.Tensor") -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    a, b = ours.float(), ref.float()
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    keep = ~torch.isnan(a)
    width = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[ours.dtype]
    assert torch.equal(ours.view(width)[keep], ref.view(width)[keep])


DS_QC = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]}
# Shapes with partial edge blocks (200 = 128 + 72, 300 = 2 x 128 + 44), as DeepSeek's kv_a_proj_with_mqa has.
FP8_SHAPES = {"model.layers.0.self_attn.q_proj.weight": (200, 300),
              "model.layers.0.self_attn.o_proj.weight": (300, 256),
              "model.layers.0.mlp.down_proj.weight": (300, 130),
              "model.layers.1.self_attn.kv_a_proj_with_mqa.weight": (72, 300)}


EXTRA = ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight",
         "model.layers.0.post_attention_layernorm.weight", "model.layers.1.self_attn.kv_a_layernorm.weight")


def _fp8_model(root: Path, scale_dtype=torch.float32, shards: int = 2, big: float = 1.0) -> tuple[Path, dict]:
    """An FP8 block-scaled checkpoint (DeepSeek F32 scales, or Qwen3's BF16) with corner codes, and its tensors."""
    gen = torch.Generator().manual_seed(3)
    tensors: dict = {"model.embed_tokens.weight": torch.randn(50, 300, generator=gen).to(torch.bfloat16)}
    for i, (name, shape) in enumerate(FP8_SHAPES.items()):
        q, s = _ref_quantize(torch.randn(shape, generator=gen) * 0.02, scale_dtype)
        codes = q.view(torch.uint8).reshape(-1)
        if i == 0:  # 448, -448, the smallest denormal, 0, -0, NaN, -NaN
            codes[:7] = torch.tensor([0x7E, 0xFE, 0x01, 0x00, 0x80, 0x7F, 0xFF], dtype=torch.uint8)
        if big != 1.0 and "o_proj" in name:
            s = (s.float() * big).to(scale_dtype)
        tensors[name], tensors[name + "_scale_inv"] = q, s
        tensors[EXTRA[i]] = torch.randn(shape[0], generator=gen).to(torch.bfloat16)
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 2,
              "hidden_size": 300, "vocab_size": 50, "quantization_config": dict(DS_QC)}
    return _save(root, tensors, config, shards), tensors


@pytest.mark.parametrize("target,torch_dtype", [("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", ["file", "file-slices", "batched", "streamed", "row-parts"])
def test_fp8_cast_equals_torch_bit_for_bit(tmp_path, surgeon, monkeypatch, target, torch_dtype, scale_dtype, path):
    """Every path of the writer: the compiled file-to-file writer (the default; with parts of a row or
    less and a compiled call every few parts), and the Python paths --checksums takes (batched runs,
    row slices, one-row parts)."""
    from weightsurgeon import cast_values
    from weightsurgeon.kernels import quant

    if path == "row-parts":  # every tensor cut into parts of a row or two that the threads share
        monkeypatch.setattr(quant, "CAST_PART_ELEMS", 300)
    if path == "file-slices":  # one row (or less) per part, each small tensor a part of its own, many calls
        monkeypatch.setattr(cast_values, "PART_OUT_BYTES", 1000)
        monkeypatch.setattr(cast_values, "CALL_OUT_BYTES", 5000)

    model, tensors = _fp8_model(tmp_path / "fp8", scale_dtype)
    out = tmp_path / "out"
    if path == "streamed":  # every tensor by row slices of a few rows, not in one batched call
        from weightsurgeon.cast import plan_cast
        from weightsurgeon.checkpoint import open_checkpoint
        from weightsurgeon.writer import WriteOptions, write_plan

        monkeypatch.setattr(cast_values, "RUN_TENSOR_BYTES", 0)
        monkeypatch.setattr(cast_values, "file_castable", lambda reader, t: False)
        with open_checkpoint(model) as ckpt:
            write_plan(plan_cast(ckpt, target), out, WriteOptions(chunk_elems=1000, quiet=True, fsync=False, verify=True))
    else:
        hashed = ["--checksums"] if path in ("batched", "row-parts") else []  # hashing takes the Python paths
        result = surgeon("cast", model, "--dtype", target, "-o", out, "--verify", *hashed)
        assert result.code == 0, result.stderr
    got = _load(out)
    assert not any(n.endswith("_scale_inv") for n in got)
    for name in FP8_SHAPES:
        _same_bits(got[name], _ref_dequantize(tensors[name], tensors[name + "_scale_inv"]).to(torch_dtype))
    for name, t in tensors.items():  # the rest: the same bytes
        if name not in FP8_SHAPES and not name.endswith("_scale_inv"):
            assert torch.equal(got[name].view(torch.uint8), t.view(torch.uint8))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["hidden_size"] == 300
    # sharded like the input: each tensor in the shard its source was in
    index_in = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    index_out = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert index_out == {n: f for n, f in index_in.items() if not n.endswith("_scale_inv")}
    if path != "streamed":
        doc = json.loads((out / "surgeon.json").read_text())
        assert doc["operation"] == "cast" and doc["cast"]["dequantized"] == len(FP8_SHAPES)


def test_parallel_parts_give_the_serial_bytes_and_the_first_overflow():
    """fp8_cast's parts (entry, rows) share the threads: cut into one-row parts or left whole, the bytes and
    the reported first F16 overflow (in entry, then element order) are the same."""
    from weightsurgeon.kernels.quant import OUT_KINDS, SCALE_KINDS, cast_fp8, cast_parts

    rng = np.random.default_rng(3)
    shapes = [(300, 260), (7, 5), (129, 1000)]
    window, entries, out_at = bytearray(), [], 0
    for i, (rows, cols) in enumerate(shapes):
        codes = rng.integers(0, 0x7E, rows * cols, dtype=np.uint8)
        scales = np.full((-(-rows // 128), -(-cols // 128)), 1e3 if i else 1e-3, dtype=np.float32)  # 448e3 > 65504
        entries.append([len(window), len(window) + codes.size, SCALE_KINDS["F32"], rows, cols, 128, 128, 0, out_at,
                        OUT_KINDS["F16"], 0])
        window += codes.tobytes() + scales.tobytes()
        out_at += rows * cols * 2
    table, src = np.array(entries), np.frombuffer(bytes(window), np.uint8)
    assert len(cast_parts(table, 300)) == 300 + 1 + 129 and len(cast_parts(table)) == 3
    whole, cut = np.zeros(out_at, np.uint8), np.zeros(out_at, np.uint8)
    bad = cast_fp8(src, table, whole)
    from weightsurgeon.kernels import quant

    saved, quant.CAST_PART_ELEMS = quant.CAST_PART_ELEMS, 300
    try:
        assert cast_fp8(src, table, cut) == bad
    finally:
        quant.CAST_PART_ELEMS = saved
    assert np.array_equal(whole, cut) and whole.any()
    first = np.flatnonzero(np.isinf(whole[shapes[0][0] * shapes[0][1] * 2:shapes[0][0] * shapes[0][1] * 2 + 70]
                                    .view(np.float16)))
    assert bad == (1, int(first[0]))


@pytest.mark.parametrize("target", ["BF16", "F16", "F32"])
def test_decoded_tables_give_the_bytes_of_the_per_element_loop(target):
    """fp8_cast looks each element up in its block's 256 decoded values where a block serves enough
    elements, and computes each element where it serves few (one-row parts): every code of both FP8
    formats under scales from tiny to F16-overflowing, NaN and zero scales, F32/BF16/F16 scales,
    comes out the same both ways, and so does the first F16 overflow, in the middle of a block."""
    from weightsurgeon.kernels import quant
    from weightsurgeon.kernels.quant import FP8_TABLES, OUT_KINDS, SCALE_KINDS, cast_fp8

    rng = np.random.default_rng(7)
    rows, cols = 260, 300
    scales_f32 = rng.choice(np.array([1e-3, 2.0 ** -130, 1.0, 300.0, np.nan, 0.0, -2.5], np.float32), (3, 3))
    scales_f32[2, 2] = 1.0
    window, entries = bytearray(), []
    for s_kind, scales in (("F32", scales_f32), ("BF16", (scales_f32.view(np.uint32) >> 16).astype(np.uint16)),
                           ("F16", scales_f32.astype(np.float16))):
        for table in FP8_TABLES:
            codes = rng.integers(0, 256, rows * cols, dtype=np.uint8)
            codes[:256] = np.arange(256)
            stored = scales
            if not entries:  # small values and one 448 x 300, beyond F16, in the last block column
                codes[:] = 0x30
                codes[200 * cols + 280] = 0x7E
                stored = np.ones_like(scales_f32)
                stored[1, 2] = 300.0
            entries.append([len(window), len(window) + codes.size, SCALE_KINDS[s_kind], rows, cols, 128, 128,
                            FP8_TABLES.index(table), len(entries) * rows * cols * 4, OUT_KINDS[target], 0])
            window += codes.tobytes() + stored.tobytes()
    table_rows, src = np.array(entries), np.frombuffer(bytes(window), np.uint8)
    tables, direct = np.zeros(len(entries) * rows * cols * 4, np.uint8), np.zeros(len(entries) * rows * cols * 4, np.uint8)
    bad = cast_fp8(src, table_rows, tables)
    saved, quant.CAST_PART_ELEMS = quant.CAST_PART_ELEMS, 300  # one-row parts: too few elements for a table
    try:
        assert cast_fp8(src, table_rows, direct) == bad
    finally:
        quant.CAST_PART_ELEMS = saved
    assert np.array_equal(tables, direct) and tables.any()
    assert bad == ((0, 200 * cols + 280) if target == "F16" else None)


@pytest.mark.parametrize("parts", ["default", "one-row"])
def test_compiled_writer_writes_the_files_of_the_python_path(tmp_path, surgeon, monkeypatch, parts):
    """The file-to-file writer (FP8 weights and the small unchanged tensors between them read, cast and
    written by compiled code, part by part) gives every output file byte for byte as the Python path
    (--checksums) does, headers included, and the same first F16 overflow, named the same way."""
    from weightsurgeon import cast_values

    if parts == "one-row":
        monkeypatch.setattr(cast_values, "PART_OUT_BYTES", 600)
        monkeypatch.setattr(cast_values, "CALL_OUT_BYTES", 2000)
    model, _ = _fp8_model(tmp_path / "fp8", big=1e6, shards=1)
    calls = []
    real = cast_values.write_cast_file_run
    monkeypatch.setattr(cast_values, "write_cast_file_run", lambda *a: calls.append(1) or real(*a))
    for target in ("bf16", "f32"):
        fast, slow = tmp_path / f"fast-{target}", tmp_path / f"slow-{target}"
        assert surgeon("cast", model, "--dtype", target, "-o", fast, "-q").code == 0
        assert surgeon("cast", model, "--dtype", target, "-o", slow, "-q", "--checksums").code == 0
        for f in sorted(slow.glob("*.safetensors")) + [slow / "model.safetensors.index.json"]:
            assert (fast / f.name).read_bytes() == f.read_bytes(), f.name
    assert len(calls) == 2  # the default runs took the compiled writer, the --checksums ones not
    refused = [surgeon("cast", model, "--dtype", "f16", "-o", tmp_path / "f16", *extra) for extra in ([], ["--checksums"])]
    assert refused[0].code == refused[1].code == 1 and refused[0].stderr == refused[1].stderr
    assert "element" in refused[0].stderr and not (tmp_path / "f16").exists()


def test_partial_cast_keeps_the_rest_quantized(tmp_path, surgeon):
    model, tensors = _fp8_model(tmp_path / "fp8")
    out = tmp_path / "out"
    plan = json.loads(surgeon("cast", model, "--dtype", "bf16", "--module", "o_proj", "--layers", "0", "--dry-run",
                              "--json").stdout)
    sources = {t["name"]: t["source"]["kind"] for t in plan["tensors"]}
    assert sources["model.layers.0.self_attn.o_proj.weight"] == "dequantize" and plan["shards"] == 2
    assert "model.layers.0.self_attn.o_proj.weight_scale_inv" not in sources and not out.exists()
    assert surgeon("cast", model, "--dtype", "bf16", "--module", "o_proj", "--layers", "0", "--checksums",
                   "-o", out).code == 0
    import hashlib

    files = json.loads((out / "surgeon.json").read_text())["files"]  # taken while writing (batched runs too)
    for name in [p.name for p in out.glob("*.safetensors")]:
        assert files[name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    got = _load(out)
    name = "model.layers.0.self_attn.o_proj.weight"
    _same_bits(got[name], _ref_dequantize(tensors[name], tensors[name + "_scale_inv"]).to(torch.bfloat16))
    assert name + "_scale_inv" not in got
    kept = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    assert got[kept].dtype == torch.float8_e4m3fn and kept + "_scale_inv" in got
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["modules_to_not_convert"] == ["model.layers.0.self_attn.o_proj"] and qc["quant_method"] == "fp8"


def test_f16_overflow_is_refused_unless_asked(tmp_path, surgeon):
    model, tensors = _fp8_model(tmp_path / "fp8", big=1e6)  # o_proj values up to ~1e4 x 448 / 448 ... beyond 65504
    out = tmp_path / "out"
    result = surgeon("cast", model, "--dtype", "f16", "-o", out)
    assert result.code == 1 and len(result.err_lines) == 1 and "F16" in result.stderr and "o_proj" in result.stderr
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir() if p.name != "fp8")
    assert surgeon("cast", model, "--dtype", "f16", "--allow-overflow", "-o", out).code == 0
    name = "model.layers.0.self_attn.o_proj.weight"
    ref = _ref_dequantize(tensors[name], tensors[name + "_scale_inv"]).to(torch.float16)
    assert torch.isinf(ref).any()
    _same_bits(_load(out)[name], ref)
    assert surgeon("cast", model, "--dtype", "bf16", "-o", tmp_path / "bf").code == 0  # bf16 holds them


def test_bad_requests_are_one_error_line(tmp_path, surgeon, tiny_model):
    plain = tiny_model(arch="qwen2", dtype="bf16")
    model, _ = _fp8_model(tmp_path / "fp8")
    for args in (("cast", plain, "--dtype", "bf16", "-o", tmp_path / "a"),  # nothing quantized
                 ("cast", model, "--dtype", "bf16", "--module", "embed_tokens", "-o", tmp_path / "b"),
                 ("cast", plain, "--dtype", "fp8", "-o", tmp_path / "c"),  # what to quantize?
                 ("cast", model, "--dtype", "bf16", "--like", model, "-o", tmp_path / "d")):
        result = surgeon(*args)
        assert result.code == 1 and len(result.err_lines) == 1 and result.err_lines[0].startswith("error: "), result.stderr
        assert not Path(args[-1]).exists()


# ---------------------------------------------------------------------------------------
# bf16 -> FP8
# ---------------------------------------------------------------------------------------

def _bf16_model(root: Path) -> tuple[Path, dict]:
    gen = torch.Generator().manual_seed(5)
    tensors = {"model.embed_tokens.weight": torch.randn(50, 300, generator=gen).to(torch.bfloat16)}
    for name, shape in FP8_SHAPES.items():
        w = torch.randn(shape, generator=gen) * 0.02
        w[:3, :3] = torch.tensor([[0.0, 1e-9, -1e-9], [448.0, -3.0, 2e-3], [1e-30, 0.0, 5.0]])  # tiny, large, 0
        tensors[name] = w.to(torch.bfloat16)
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.randn(200, generator=gen).to(torch.bfloat16)
    tensors["lm_head.weight"] = torch.randn(50, 300, generator=gen).to(torch.bfloat16)
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 2,
              "hidden_size": 300, "vocab_size": 50}
    return _save(root, tensors, config, shards=2), tensors


def test_quantizer_equals_torch_bit_for_bit_and_round_trips(tmp_path, surgeon):
    model, tensors = _bf16_model(tmp_path / "bf16")
    out = tmp_path / "fp8"
    result = surgeon("cast", model, "--dtype", "fp8", "--module", "o_proj,kv_a_proj_with_mqa", "-o", out, "--verify")
    assert result.code == 0, result.stderr
    got = _load(out)
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"):
        q, s = _ref_quantize(tensors[name])
        assert got[name].dtype == torch.float8_e4m3fn and got[name + "_scale_inv"].dtype == torch.float32
        assert torch.equal(got[name].view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(got[name + "_scale_inv"], s)
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16  # not selected
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["weight_block_size"] == [128, 128] and qc["quant_method"] == "fp8"
    # every linear layer left in bf16 is named, so that an FP8 loader does not look for its scales
    assert set(qc["modules_to_not_convert"]) == {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"}
    # round trip: back to bf16 within E4M3's bound (half a unit in the last of 3 mantissa bits, or of the
    # denormal spacing 2^-9 x scale) plus bf16's own rounding
    back = tmp_path / "back"
    assert surgeon("cast", out, "--dtype", "bf16", "-o", back).code == 0
    again = _load(back)
    assert "quantization_config" not in json.loads((back / "config.json").read_text())
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"):
        x = tensors[name].float()
        y = again[name].float()
        s = _expand(got[name + "_scale_inv"], *x.shape)
        bound = torch.maximum(x.abs() * 2.0 ** -4, s * 2.0 ** -10) * (1 + 2.0 ** -8) + y.abs() * 2.0 ** -9
        assert bool(((x - y).abs() <= bound).all())


def test_like_copies_a_bf16_scale_scheme(tmp_path, surgeon):
    """--like a Qwen3-FP8-style checkpoint (BF16 scales): the scale is rounded to bf16 before it divides."""
    model, tensors = _bf16_model(tmp_path / "bf16")
    like, _ = _fp8_model(tmp_path / "qwen-fp8", torch.bfloat16)
    qc = json.loads((like / "config.json").read_text())["quantization_config"]
    qc["modules_to_not_convert"] = ["lm_head", "model.layers.*.mlp"]
    (like / "config.json").write_text(json.dumps({**json.loads((like / "config.json").read_text()),
                                                  "quantization_config": qc}))
    out = tmp_path / "out"
    result = surgeon("cast", model, "--dtype", "fp8", "--like", like, "-o", out)
    assert result.code == 0, result.stderr
    got = _load(out)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                 "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"):
        q, s = _ref_quantize(tensors[name], torch.bfloat16)
        assert got[name + "_scale_inv"].dtype == torch.bfloat16 and torch.equal(got[name + "_scale_inv"], s)
        assert torch.equal(got[name].view(torch.uint8), q.view(torch.uint8))
    # the scheme's modules_to_not_convert is respected: its mlp stays bf16, and is said to
    assert got["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert "modules_to_not_convert" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["modules_to_not_convert"] == ["lm_head", "model.layers.*.mlp"]


def test_splice_cast_quantizes_a_bf16_donor_into_an_fp8_base(tmp_path, surgeon):
    base, fp8 = _fp8_model(tmp_path / "base")
    donor, bf16 = _bf16_model(tmp_path / "tuned")
    donor_cfg = json.loads((base / "config.json").read_text())
    donor_cfg.pop("quantization_config")
    (donor / "config.json").write_text(json.dumps(donor_cfg))
    refused = surgeon("splice", base, donor, "--take", "o_proj", "-o", tmp_path / "no")
    assert refused.code == 1 and "dtype mismatch" in refused.stderr and "--cast" in refused.stderr
    out = tmp_path / "out"
    result = surgeon("splice", base, donor, "--take", "o_proj", "--cast", "-o", out, "--verify")
    assert result.code == 0, result.stderr
    got = _load(out)
    for name in ("model.layers.0.self_attn.o_proj.weight",):  # its scale lies before it on disk: computed first
        q, s = _ref_quantize(bf16[name])
        assert torch.equal(got[name].view(torch.uint8), q.view(torch.uint8)) and torch.equal(got[name + "_scale_inv"], s)
    for name, t in fp8.items():
        if "o_proj" not in name:
            assert torch.equal(got[name].view(torch.uint8), t.view(torch.uint8))
    assert json.loads((out / "config.json").read_text())["quantization_config"] == DS_QC
    # and the reverse: an FP8 DONOR's o_proj dequantized into the bf16 base
    back = tmp_path / "back"
    assert surgeon("splice", donor, base, "--take", "o_proj", "--cast", "-o", back).code == 0
    got = _load(back)
    name = "model.layers.0.self_attn.o_proj.weight"
    _same_bits(got[name], _ref_dequantize(fp8[name], fp8[name + "_scale_inv"]).to(torch.bfloat16))
    assert name + "_scale_inv" not in got


# ---------------------------------------------------------------------------------------
# transformers loads the outputs
# ---------------------------------------------------------------------------------------

def _tiny_qwen3(folder: Path, hidden: int = 160, intermediate: int = 300):
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3Config(vocab_size=96, hidden_size=hidden, intermediate_size=intermediate,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=hidden // 4,
                                      tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return transformers, model


def _logits(model, ids) -> "torch.Tensor":
    with torch.no_grad():
        return model(ids).logits


def test_cast_output_loads_in_transformers_with_the_reference_logits(tmp_path, surgeon):
    """A Qwen3-FP8-style checkpoint (BF16 block scales) cast to bf16 is a plain Qwen3 model whose weights and
    logits equal the torch-dequantized reference's; and our FP8 quantization loads through transformers' FP8
    loader (on CPU it dequantizes) to the same weights as our own bf16 cast of it."""
    transformers, model = _tiny_qwen3(tmp_path / "bf16")
    state = {k: v for k, v in model.state_dict().items()}
    linear = [k for k in state if k.endswith("proj.weight")]
    fp8 = dict(state)
    reference = dict(state)
    for k in linear:
        q, s = _ref_quantize(state[k], torch.bfloat16)
        fp8[k], fp8[k + "_scale_inv"] = q, s
        reference[k] = _ref_dequantize(q, s).to(torch.bfloat16)
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    config["quantization_config"] = dict(DS_QC)
    folder = _save(tmp_path / "fp8", fp8, config, shards=2)
    out = tmp_path / "cast"
    assert surgeon("cast", folder, "--dtype", "bf16", "-o", out).code == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert getattr(loaded.config, "quantization_config", None) is None
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, reference[k]), k
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    ref_model.load_state_dict(reference)  # loaded the same way, so that only the weights differ
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(loaded, ids), _logits(ref_model, ids))

    # bf16 -> FP8 (o_proj only) -> transformers' FP8 loader dequantizes it as our cast does. Its loader takes a
    # block as rows // scale rows, so this part uses dims that are multiples of 128 (no partial edge blocks).
    transformers, model = _tiny_qwen3(tmp_path / "aligned", hidden=256, intermediate=384)
    quantized = tmp_path / "oproj-fp8"
    assert surgeon("cast", tmp_path / "aligned", "--dtype", "fp8", "--module", "o_proj", "-o", quantized).code == 0
    ours = tmp_path / "oproj-back"
    assert surgeon("cast", quantized, "--dtype", "bf16", "-o", ours).code == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(quantized, dtype=torch.bfloat16)
    mine = transformers.AutoModelForCausalLM.from_pretrained(ours, dtype=torch.bfloat16)
    for k, v in mine.state_dict().items():
        assert torch.equal(theirs.state_dict()[k].to(v.dtype), v), k
    assert not torch.equal(mine.state_dict()["model.layers.0.self_attn.o_proj.weight"],
                           model.state_dict()["model.layers.0.self_attn.o_proj.weight"])  # it was quantized


def _ocp_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 values per the OCP MX v1.0 spec: E2M1 (sign, 2-bit exponent bias 1, 1 mantissa bit) x 2^(E8M0 - 127);
    element 2k of a 32-value block is byte k's low nibble."""
    def e2m1(code: int) -> float:
        sign = -1.0 if code & 8 else 1.0
        exp, man = (code >> 1) & 3, code & 1
        return sign * (man * 0.5 if exp == 0 else (1 + man / 2) * 2.0 ** (exp - 1))

    table = np.array([e2m1(c) for c in range(16)])
    low, high = table[blocks & 15], table[blocks >> 4]
    vals = np.stack([low, high], axis=-1).reshape(*blocks.shape[:-1], 32)
    return (vals * np.exp2(scales.astype(np.float64) - 127)[..., None]).reshape(*blocks.shape[:-2], -1)


def test_gpt_oss_mxfp4_cast_loads_as_transformers_bf16_gpt_oss(tmp_path, surgeon):
    """MXFP4 expert stacks become transformers' bf16 GptOssExperts parameters: [E, hidden, 2 x intermediate] and
    [E, intermediate, hidden], equal to convert_moe_packed_tensors and to the OCP spec; logits equal the reference."""
    transformers = pytest.importorskip("transformers")
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    config = transformers.GptOssConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                       num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"],
                                       sliding_window=8, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    state = dict(model.state_dict())
    gen = np.random.default_rng(4)
    stored = {k: v for k, v in state.items() if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    reference = dict(state)
    for k in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, n_in, n_out = state[k].shape
        blocks = gen.integers(0, 256, size=(experts, n_out, n_in // 32, 16), dtype=np.uint8)
        scales = gen.integers(118, 128, size=(experts, n_out, n_in // 32), dtype=np.uint8)
        scales[0, 0, 0] = 0  # 2^-127: float32 denormals
        stored[k + "_blocks"], stored[k + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
        theirs = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.bfloat16)
        ocp = torch.from_numpy(_ocp_mxfp4(blocks, scales)).float().transpose(1, 2).to(torch.bfloat16)
        assert theirs.shape == state[k].shape and torch.equal(theirs, ocp)
        reference[k] = theirs
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert":
                                  ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    mx = _save(tmp_path / "mxfp4", stored, cfg, shards=2)
    out = tmp_path / "cast"
    result = surgeon("cast", mx, "--dtype", "bf16", "-o", out, "--verify")
    assert result.code == 0, result.stderr
    assert "[experts, in, out]" in result.stderr
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, reference[k]), k
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    ref_model.load_state_dict(reference)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(loaded, ids), _logits(ref_model, ids))
    # f32 keeps every value exactly (E2M1 x a power of two)
    assert surgeon("cast", mx, "--dtype", "f32", "--module", "experts", "--layers", "1", "-o", tmp_path / "f32").code == 0
    got = _load(tmp_path / "f32")
    name = "model.layers.1.mlp.experts.down_proj"
    blocks, scales = stored[name + "_blocks"].numpy(), stored[name + "_scales"].numpy()
    assert torch.equal(got[name], torch.from_numpy(_ocp_mxfp4(blocks, scales)).float().transpose(1, 2))
    assert "model.layers.0.mlp.experts.down_proj_blocks" in got


def test_compiled_writer_reports_failed_reads_and_writes(tmp_path, surgeon, monkeypatch):
    """cast_fp8_file says which part failed and why: a read past the end of the input (-1), a write to a
    descriptor that cannot be written (its errno); through the CLI, a full disk in the compiled writer is
    one line naming the shard, the tensor and the reason, and nothing is left behind."""
    import errno
    import os

    from weightsurgeon import cast_values
    from weightsurgeon.kernels import quant
    from weightsurgeon.kernels.quant import ENTRY_WIDTH

    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 4)
    entry = np.zeros((1, ENTRY_WIDTH), dtype=np.int64)
    entry[0, quant.E_RAW] = 100
    fd_in = os.open(src, os.O_RDONLY)
    try:
        parts = np.array([[0, 1, fd_in, 0, 100, 0, 0, 0, 100],  # fine, but written to a read-only descriptor
                          [0, 1, fd_in, 2000, 100, 0, 0, 100, 100]], dtype=np.int64)  # past the end of the input
        _, status = quant.cast_fp8_file(fd_in, entry, parts)
    finally:
        os.close(fd_in)
    assert list(status) == [errno.EBADF, -1]

    real = quant.cast_fp8_file

    def full(fd, entries, parts):
        bad, status = real(fd, entries, parts)
        status[-1] = errno.ENOSPC
        return bad, status

    monkeypatch.setattr(quant, "cast_fp8_file", full)
    model, _ = _fp8_model(tmp_path / "fp8", shards=1)
    out = tmp_path / "out"
    r = surgeon("cast", model, "--dtype", "bf16", "-o", out)
    assert r.code == 1 and len(r.err_lines) == 1, r.stderr
    assert "model-00001-of-00001.safetensors: writing failed in " in r.stderr and "No space left on device" in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fp8", "in.bin"]
