"""The streaming diff against an independent float64 numpy reference, on synthetic pairs.

Every statistic of every tensor is recomputed here from the raw bytes with plain numpy
(decode, d = B - A in float32, sums in float64, np.histogram of the clipped relative
change) and must match: L2 to 1e-9 relative, counts and histograms exactly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.diff import diff_checkpoints
from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.report.model import CSV_COLUMNS, DiffReport
from weightsurgeon.synth import bf16_bits_to_float32, float32_to_bf16_bits, make_checkpoint, make_tuned

TINY = dict(num_layers=3, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, vocab_size=300)


# ---------------------------------------------------------------------------------------
# The reference: the definitions, written independently of the kernels
# ---------------------------------------------------------------------------------------

def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    raw = raw.ravel()
    if dtype == "BF16":
        return bf16_bits_to_float32(raw.view(np.uint16))
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    return raw.view(np.float32).astype(np.float32)


def reference(a_raw: np.ndarray, b_raw: np.ndarray, dtype_a: str, dtype_b: str, bins: int = 200, clip: float = 1.0) -> dict:
    a, b = decode(a_raw, dtype_a), decode(b_raw, dtype_b)[: a_raw.size]
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    with np.errstate(all="ignore"):
        d32 = b - a
        nz = a != 0
        r = d32[nz] / a[nz]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d64 = d32.astype(np.float64)  # d is float32 by definition; everything after it is float64
    hist = np.histogram(np.clip(r, -clip, clip), bins=bins, range=(-clip, clip))[0]
    return {"l2_delta": math.sqrt(float(np.sum(d64 * d64))), "l2_base": math.sqrt(float(np.sum(a64 * a64))),
            "l2_tuned": math.sqrt(float(np.sum(b64 * b64))), "dot": float(np.sum(a64 * b64)),
            "max_abs_delta": float(np.max(np.abs(d64))) if d64.size else 0.0,
            "sum_delta": float(np.sum(d64)), "n": int(finite.sum()), "n_nonfinite": int((~finite).sum()),
            "n_base_zero": int((~nz).sum()), "hist": hist}


def close(x: float, y: float, rel: float = 1e-9) -> bool:
    return x == y or abs(x - y) <= rel * max(abs(x), abs(y))


def assert_matches(row, ref: dict) -> None:
    s = row.stats
    assert close(s.l2_delta, ref["l2_delta"]), (row.name, s.l2_delta, ref["l2_delta"])
    assert close(s.l2_a, ref["l2_base"]) and close(s.l2_b, ref["l2_tuned"]), row.name
    assert close(s.dot_ab, ref["dot"]), row.name
    assert s.max_abs_delta == ref["max_abs_delta"], row.name
    assert abs(s.sum_delta - ref["sum_delta"]) <= 1e-9 * max(1.0, ref["l2_delta"] * math.sqrt(max(ref["n"], 1))), row.name
    assert (s.n, s.n_nonfinite, s.n_base_zero) == (ref["n"], ref["n_nonfinite"], ref["n_base_zero"]), row.name
    np.testing.assert_array_equal(s.hist, ref["hist"], err_msg=row.name)


def check_against_reference(report: DiffReport, base: Path, tuned: Path, label: str | None = None) -> int:
    """Every tensor row of one tuned model equals the reference computed from the files."""
    label = label or report.labels[0]
    checked = 0
    with open_checkpoint(base) as A, open_checkpoint(tuned) as B:
        for row in report.tensors:
            if row.tuned != label:
                continue
            a_name = row.name if row.name in A.tensors else "model.embed_tokens.weight"
            b_name = row.name if row.name in B.tensors else "model.embed_tokens.weight"
            a, b = A.read_tensor(a_name).ravel(), B.read_tensor(b_name).ravel()
            assert_matches(row, reference(a, b[: a.size], row.dtype, row.dtype_tuned, report.bins, report.clip))
            checked += 1
    return checked


# ---------------------------------------------------------------------------------------
# Hand-made checkpoints (arbitrary names, shapes, values)
# ---------------------------------------------------------------------------------------

def encode(x: np.ndarray, dtype: str) -> bytes:
    x = np.asarray(x, dtype=np.float32)
    if dtype == "BF16":
        return float32_to_bf16_bits(x).tobytes()
    if dtype == "F16":
        return x.astype(np.float16).tobytes()
    return x.tobytes()


def write_model(folder: Path, tensors: dict[str, np.ndarray], dtype: str = "F32", config: dict | None = None) -> Path:
    """One shard with the given float32 values stored as `dtype`, plus a config.json."""
    folder.mkdir(parents=True)
    prefix, _ = build_header([(n, dtype, tuple(v.shape)) for n, v in tensors.items()], {"format": "pt"})
    with open(folder / "model.safetensors", "wb") as f:
        f.write(prefix)
        for v in tensors.values():
            f.write(encode(v, dtype))
    (folder / "config.json").write_text(json.dumps(config or {"num_hidden_layers": 1}))
    return folder


def small_llm(rng: np.random.Generator, vocab: int = 40, hidden: int = 8, head: bool = True) -> dict[str, np.ndarray]:
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
         "model.layers.0.self_attn.o_proj.weight": rng.standard_normal((hidden, hidden)).astype(np.float32),
         "model.layers.0.input_layernorm.weight": np.ones(hidden, np.float32),
         "model.norm.weight": np.ones(hidden, np.float32)}
    if head:
        t["lm_head.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float32)
    return t


# ---------------------------------------------------------------------------------------
# Synthetic pairs: architectures, tying, dtypes, shardings
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,tied,dtype", [("qwen2", False, "bf16"), ("llama", True, "f16"),
                                             ("qwen2", True, "f32"), ("llama", False, "bf16")])
def test_every_statistic_matches_the_reference(tmp_path: Path, arch: str, tied: bool, dtype: str) -> None:
    # The base is one file; the tuned model derives from an identically seeded but sharded copy,
    # so A and B have different shard layouts (synth values do not depend on sharding).
    base = make_checkpoint(tmp_path / "base", arch=arch, tied=tied, dtype=dtype, **TINY)
    sharded = make_checkpoint(tmp_path / "sharded", arch=arch, tied=tied, dtype=dtype, shard_bytes=20_000, **TINY)
    tuned = make_tuned(sharded, tmp_path / "tuned")
    with open_checkpoint(base) as A, open_checkpoint(tuned) as B:
        assert len(A.shards) == 1 and len(B.shards) > 2
        names = list(A.tensors)
    report = diff_checkpoints(base, [tuned], chunk_bytes=4096)  # many chunks per tensor
    assert [r.name for r in report.tensors] != [] and sorted(r.name for r in report.tensors) == sorted(names)
    assert check_against_reference(report, base, tuned) == len(names)
    assert not report.missing and not report.notes
    emb = report.tensor("model.embed_tokens.weight")
    assert emb.stats.sum_sq_delta == 0.0 and emb.stats.max_abs_delta == 0.0  # planted exactly unchanged
    assert report.timing["bytes_read"] == 2 * sum(r.stats.numel * {"bf16": 2, "f16": 2, "f32": 4}[dtype]
                                                  for r in report.tensors)


def test_modules_are_the_exact_merge_of_their_tensors(tmp_path: Path) -> None:
    base = make_checkpoint(tmp_path / "base", arch="qwen2", dtype="bf16", **TINY)
    tuned = make_tuned(base, tmp_path / "tuned")
    report = diff_checkpoints(base, tuned)
    q = [m for m in report.modules if m.layer == 1 and m.module == "q_proj"]
    assert len(q) == 1 and q[0].num_tensors == 2  # weight + bias
    w = report.tensor("model.layers.1.self_attn.q_proj.weight").stats
    b = report.tensor("model.layers.1.self_attn.q_proj.bias").stats
    assert q[0].stats.sum_sq_delta == w.sum_sq_delta + b.sum_sq_delta
    assert q[0].stats.l2_delta == math.sqrt(w.sum_sq_delta + b.sum_sq_delta)
    np.testing.assert_array_equal(q[0].stats.hist, w.hist + b.hist)
    assert q[0].numel == w.numel + b.numel
    cells = {(m.layer, m.module) for m in report.modules}
    assert (None, "embed_tokens") in cells and (None, "lm_head") in cells and (2, "o_proj") in cells


def test_planted_ranking_is_recovered(tmp_path: Path) -> None:
    from weightsurgeon.commands.demo import check_planted

    base = make_checkpoint(tmp_path / "base", arch="qwen2", dtype="bf16", num_layers=5, hidden_size=128,
                           intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=400)
    tuned = make_tuned(base, tmp_path / "tuned")
    report = diff_checkpoints(base, tuned)
    planted = json.loads((tuned / "planted.json").read_text())
    result = check_planted(report, planted)
    assert result["recovered"], result
    assert result["ranking_measured"][0] == "o_proj"
    kinds = {k["module"]: k for k in report.module_kinds()}
    assert kinds["embed_tokens"]["unchanged"] and kinds["embed_tokens"]["l2_delta"] == 0.0
    for module, scale in planted["scale"].items():
        if scale > 0 and module in kinds:
            assert kinds[module]["median_rel_l2"] == pytest.approx(scale, rel=0.1), module


def test_check_planted_detects_a_wrong_ranking(tmp_path: Path) -> None:
    from weightsurgeon.commands.demo import check_planted

    base = make_checkpoint(tmp_path / "base", dtype="f32", **TINY)
    tuned = make_tuned(base, tmp_path / "tuned", pattern={"o_proj": 0.05, "q_proj": 0.2, "embed_tokens": 0.0})
    report = diff_checkpoints(base, tuned)
    claimed = {"scale": {"o_proj": 0.2, "q_proj": 0.05, "embed_tokens": 0.0}, "unchanged": ["embed_tokens"]}
    result = check_planted(report, claimed)
    assert not result["recovered"] and ("o_proj", "q_proj") in result["inversions"]


# ---------------------------------------------------------------------------------------
# Pairs that do not line up one to one
# ---------------------------------------------------------------------------------------

def test_dtype_mismatch_compares_values(tmp_path: Path) -> None:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    tuned = make_tuned(base, tmp_path / "tuned", dtype="f32")
    report = diff_checkpoints(base, tuned, chunk_bytes=4096)
    assert {(r.dtype, r.dtype_tuned) for r in report.tensors} == {("BF16", "F32")}
    assert check_against_reference(report, base, tuned) == len(report.tensors)
    assert any("BF16 in the base and F32" in n for n in report.notes)
    # A bf16 model widened to f32 without a change compares as exactly equal.
    same = make_tuned(base, tmp_path / "same", pattern={}, dtype="f32")
    zero = diff_checkpoints(base, same)
    assert all(r.stats.sum_sq_delta == 0.0 for r in zero.tensors)


@pytest.mark.parametrize("tied_side", ["base", "tuned"])
def test_tied_on_one_side_compares_the_effective_head(tmp_path: Path, tied_side: str) -> None:
    tied = make_checkpoint(tmp_path / "tied", tied=True, dtype="bf16", **TINY)
    untied = make_checkpoint(tmp_path / "untied", tied=False, dtype="bf16", **TINY)
    if tied_side == "base":
        base, tuned = tied, make_tuned(untied, tmp_path / "tuned")
    else:
        base, tuned = untied, make_tuned(tied, tmp_path / "tuned")
    report = diff_checkpoints(base, tuned, chunk_bytes=4096)
    assert not report.missing
    head = report.tensor("lm_head.weight")
    assert head.module == "lm_head"
    assert any(f"tied embeddings on the {'base' if tied_side == 'base' else 'tuned model'} only" in n for n in report.notes)
    with open_checkpoint(base) as A, open_checkpoint(tuned) as B:
        a = A.read_tensor("model.embed_tokens.weight" if tied_side == "base" else "lm_head.weight")
        b = B.read_tensor("lm_head.weight" if tied_side == "base" else "model.embed_tokens.weight")
    assert_matches(head, reference(a.ravel(), b.ravel(), "BF16", "BF16"))
    assert head.stats.sum_sq_delta > 0  # two different random matrices
    assert check_against_reference(report, base, tuned) == len(report.tensors)


def test_added_tokens_compare_shared_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = small_llm(rng, vocab=40)
    b = {k: v * np.float32(1.01) for k, v in a.items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        b[name] = np.concatenate([b[name], rng.standard_normal((3, 8)).astype(np.float32) * 100])
    base = write_model(tmp_path / "base", a, "BF16")
    tuned = write_model(tmp_path / "tuned", b, "BF16")
    report = diff_checkpoints(base, tuned, chunk_bytes=4096)
    emb = report.tensor("model.embed_tokens.weight")
    assert emb.added_rows == 3 and emb.numel == 40 * 8 and emb.stats.numel == 40 * 8
    assert emb.stats.rel_l2 < 0.05  # the huge added rows are not in the statistics
    assert report.tensor("lm_head.weight").added_rows == 3
    assert sum("3 added row(s)" in n for n in report.notes) == 2
    assert check_against_reference(report, base, tuned) == len(a)
    assert json.loads(report.to_json())["tensors"][0]["added_rows"] == 3


def test_mismatches_fail_with_the_first_names_or_are_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = small_llm(rng)
    b = dict(a)
    del b["model.norm.weight"]
    b["model.layers.0.self_attn.o_proj.weight"] = np.zeros((8, 9), np.float32)
    b["model.layers.0.extra.weight"] = np.ones(3, np.float32)
    base, tuned = write_model(tmp_path / "base", a), write_model(tmp_path / "tuned", b)
    with pytest.raises(SurgeonError) as err:
        diff_checkpoints(base, tuned)
    msg = str(err.value)
    assert "3 tensor(s) do not pair" in msg and "--allow-missing" in msg and "\n" not in msg
    assert "model.norm.weight (only in the base)" in msg
    assert "model.layers.0.self_attn.o_proj.weight (base [8, 8] vs tuned [8, 9])" in msg
    assert "model.layers.0.extra.weight (only in the tuned model)" in msg
    report = diff_checkpoints(base, tuned, allow_missing=True)
    where = {m["name"]: m["where"] for m in report.missing}
    assert where == {"model.norm.weight": "base_only", "model.layers.0.self_attn.o_proj.weight": "shape",
                     "model.layers.0.extra.weight": "tuned_only"}
    assert {r.name for r in report.tensors} == {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                               "lm_head.weight"}


def test_special_values_are_counted_and_left_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(5000).astype(np.float32)
    x[:100] = 0.0
    x[100:110] = np.float32(1e-40)  # denormal
    x[110:115] = np.inf
    x[115:120] = np.nan
    y = x * np.float32(1.3)
    y[120:130] = -np.inf
    y[130:140] = 0.0  # relative change exactly -1: the left edge
    y[140:150] = x[140:150] * 5  # beyond the clip range: the right edge bin
    for dtype in ("F32", "BF16", "F16"):
        folder = tmp_path / dtype
        base = write_model(folder / "a", {"model.layers.0.mlp.down_proj.weight": x.reshape(50, 100)}, dtype)
        tuned = write_model(folder / "b", {"model.layers.0.mlp.down_proj.weight": y.reshape(50, 100)}, dtype)
        report = diff_checkpoints(base, tuned, chunk_bytes=4096, bins=37, clip=2.5)
        row = report.tensors[0]
        assert row.stats.n_nonfinite >= 20 and row.stats.n_base_zero >= 100
        assert row.stats.hist.sum() == row.stats.n - row.stats.n_base_zero
        assert check_against_reference(report, base, tuned) == 1


def test_several_tuned_models_read_the_base_once(tmp_path: Path) -> None:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    t1 = make_tuned(base, tmp_path / "run" / "ft", seed=1)
    t2 = make_tuned(base, tmp_path / "other" / "ft", seed=2, pattern={"q_proj": 0.3})
    report = diff_checkpoints(base, [t1, t2], chunk_bytes=4096)
    assert report.labels == ["ft", "ft-2"]
    with open_checkpoint(base) as A:
        size = A.total_bytes
    assert report.timing["bytes_read"] == 3 * size
    single = diff_checkpoints(base, t2, labels=["x"])
    for row in single.tensors:
        other = report.tensor(row.name, "ft-2")
        assert other.stats.sum_sq_delta == row.stats.sum_sq_delta
        np.testing.assert_array_equal(other.stats.hist, row.stats.hist)
    assert check_against_reference(report, base, t1, "ft") == check_against_reference(report, base, t2, "ft-2")
    kinds = {k["module"]: k for k in report.module_kinds("ft-2")}
    assert kinds["o_proj"]["unchanged"] and not kinds["q_proj"]["unchanged"]


def test_selection_by_module_and_layers(tmp_path: Path) -> None:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    tuned = make_tuned(base, tmp_path / "tuned")
    report = diff_checkpoints(base, tuned, modules="attn", layers="1-2")
    assert {(r.layer, r.module) for r in report.modules} == {(l, m) for l in (1, 2)
                                                              for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert report.options["modules"] == "attn" and report.options["layers"] == "1-2"
    head = diff_checkpoints(base, tuned, modules="head,emb")
    assert {r.module for r in head.tensors} == {"lm_head", "embed_tokens"}
    with pytest.raises(SurgeonError, match="out of range"):
        diff_checkpoints(base, tuned, layers="7")
    with pytest.raises(SurgeonError, match="unknown module"):
        diff_checkpoints(base, tuned, modules="o_prj")
    with pytest.raises(SurgeonError, match="bins"):
        diff_checkpoints(base, tuned, bins=0)


# ---------------------------------------------------------------------------------------
# The report as data
# ---------------------------------------------------------------------------------------

def test_report_round_trips_and_writes_null_for_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = small_llm(rng, head=False)
    a["model.layers.0.self_attn.q_proj.bias"] = np.zeros(8, np.float32)  # rel_l2 undefined: null
    b = {k: v + np.float32(0.01) for k, v in a.items()}
    base, tuned = write_model(tmp_path / "base", a), write_model(tmp_path / "tuned", b)
    report = diff_checkpoints(base, tuned)
    text = report.to_json()
    data = json.loads(text)
    assert data["schema"] == "weightsurgeon.diff/4" and len(data["bin_edges"]) == 201
    assert set(data) >= {"version", "created", "base", "tuned", "options", "notes", "missing", "tensors", "modules", "timing"}
    bias = next(t for t in data["tensors"] if t["name"].endswith("q_proj.bias"))
    assert bias["rel_l2"] is None and bias["n_base_zero"] == 8 and sum(bias["hist"]) == 0
    assert data["tuned"][0]["label"] == "tuned" and len(data["base"]["layout_digest"]) == 64
    again = DiffReport.from_json(text)
    assert again.to_json() == text
    path = report.write_json(tmp_path / "r.json")
    assert DiffReport.from_json(path).to_dict() == data
    with pytest.raises(SurgeonError, match="schema"):
        DiffReport.from_dict({"schema": "other/1"})


def test_csv_has_the_documented_columns(tmp_path: Path) -> None:
    import csv

    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    tuned = make_tuned(base, tmp_path / "tuned")
    report = diff_checkpoints(base, tuned)
    with open(report.write_csv(tmp_path / "r.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[: len(CSV_COLUMNS)] == ["tuned", "name", "layer", "module", "param", "dtype", "numel", "l2_delta",
                                          "l2_base", "l2_tuned", "rel_l2", "cosine", "max_abs_delta", "mean_delta",
                                          "n_base_zero", "n_nonfinite"]
    assert len(rows) == len(report.tensors)
    o = next(r for r in rows if r["name"] == "model.layers.2.self_attn.o_proj.weight")
    assert float(o["l2_delta"]) == report.tensor(o["name"]).stats.l2_delta and o["layer"] == "2"
    assert next(r for r in rows if r["module"] == "embed_tokens")["layer"] == ""


def test_default_labels(tmp_path: Path) -> None:
    from weightsurgeon.diff import default_label, unique_labels

    base = make_checkpoint(tmp_path / "Qwen-base", **TINY)
    with open_checkpoint(base) as ckpt:
        assert default_label(ckpt) == "Qwen-base"
        ckpt.source = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # as resolved from the Hub cache
        assert default_label(ckpt) == "DeepSeek-R1-Distill-Qwen-1.5B"
    assert unique_labels(["a", "a", "a-2", "b"]) == ["a", "a-2", "a-2-2", "b"]


def test_kernel_reads_and_python_reads_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same-width pairs are read by the kernel itself; the Python-read path (mixed widths,
    F8, a failed read) must give the same report."""
    import weightsurgeon.kernels.delta as kernels

    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    tuned = make_tuned(base, tmp_path / "ft")
    fast = diff_checkpoints(base, tuned, chunk_bytes=4096)
    monkeypatch.setattr(kernels, "reads_files", lambda dtype_a, dtype_b: False)
    slow = diff_checkpoints(base, tuned, chunk_bytes=4096)
    assert [r.name for r in fast.tensors] == [r.name for r in slow.tensors]
    for f, s in zip(fast.tensors, slow.tensors):
        assert (f.stats.n, f.stats.n_base_zero, f.stats.max_abs_delta) == (s.stats.n, s.stats.n_base_zero, s.stats.max_abs_delta)
        np.testing.assert_array_equal(f.stats.hist, s.stats.hist)
        assert close(f.stats.sum_sq_delta, s.stats.sum_sq_delta, 1e-12)
    assert check_against_reference(fast, base, tuned) > 0


def test_a_shard_cut_short_during_the_diff_is_a_clear_error(tmp_path: Path) -> None:
    """The headers were fine when opened; the file shrinks before its bytes are read."""
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **TINY)
    tuned = make_tuned(base, tmp_path / "ft")
    shard = sorted(tuned.glob("*.safetensors"))[-1]
    with open_checkpoint(base) as A, open_checkpoint(tuned) as B:
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size - 10)
        # Caught by the file's identity (its size changed since it was opened) before its bytes are read.
        with pytest.raises(SurgeonError, match=r"changed size \(\d+ -> \d+ bytes\) while this run was reading it"):
            diff_checkpoints(A, B)
