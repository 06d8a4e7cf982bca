"""NaN and Inf said out loud: a diff of a model holding NaN/Inf says, per model, which tensors hold them
and how they were treated (left out of L2, cosine, means and histograms, counted); the figures say it
too; --strict makes any of them an error, as `verify --deep` does, and writes no report."""
from __future__ import annotations

import json
import struct

from conftest import rewrite_checkpoint

SHAPE = dict(arch="llama", num_layers=2, hidden_size=64, intermediate_size=160, num_heads=4, num_kv_heads=2,
             vocab_size=300, dtype="f32")
VICTIM = "model.layers.1.mlp.down_proj.weight"  # 64 x 160 = 10240 elements


def plant(raw: bytearray) -> None:
    """A NaN, a +Inf and a -Inf in the first three elements (what a diverged run or an fp16 overflow leaves)."""
    raw[0:12] = struct.pack("<3f", float("nan"), float("inf"), float("-inf"))


def test_diff_names_the_tensors_holding_nan_or_inf(tiny_model, tmp_path, surgeon):
    base = tiny_model(name="base", **SHAPE)
    tuned = rewrite_checkpoint(base, tmp_path / "tuned", patch={VICTIM: plant})
    out = tmp_path / "report"
    r = surgeon("diff", base, tuned, "-o", out, "-q")
    assert r.code == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "no change: every compared tensor equals the base exactly" not in text
    assert f"tuned: 1 tensor(s) hold NaN/Inf: {VICTIM} (3 of 10240, 0.03%)" in text, r.stdout
    assert "left out of L2, cosine, means and histograms" in text
    assert "base: 1 tensor" not in text
    assert "Tensors holding NaN/Inf (1)" in (out / "report.html").read_text()
    doc = json.loads((out / "report.json").read_text())
    assert doc["nonfinite"] == [{"model": "tuned", "name": VICTIM, "count": 3, "numel": 10240,
                                 "file": str(tuned / "model.safetensors")}]


def test_nan_in_the_base_is_named_for_the_base(tiny_model, tmp_path, surgeon):
    base0 = tiny_model(name="b0", **SHAPE)
    base = rewrite_checkpoint(base0, tmp_path / "base", patch={VICTIM: plant})
    tuned = tiny_model(name="tuned", seed=3, **SHAPE)
    r = surgeon("diff", base, tuned, "-q")
    assert r.code == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert f"base: 1 tensor(s) hold NaN/Inf: {VICTIM} (3 of 10240, 0.03%)" in text, r.stdout
    assert "tuned: 1 tensor(s) hold NaN/Inf" not in text


def test_strict_makes_nan_an_error_like_verify_deep(tiny_model, tmp_path, surgeon):
    base = tiny_model(name="base", **SHAPE)
    tuned = rewrite_checkpoint(base, tmp_path / "tuned", patch={VICTIM: plant})
    out = tmp_path / "report"
    r = surgeon("diff", base, tuned, "--strict", "-o", out, "-q")
    expected = f"error: {tuned / 'model.safetensors'}: tensor {VICTIM!r} has 3 NaN/Inf value(s) of 10240"
    assert r.code == 1 and len(r.err_lines) == 1 and r.err_lines[0].startswith(expected), r.stderr
    assert not out.exists()
    v = surgeon("verify", tuned, "--deep")
    assert v.code == 1 and v.err_lines[0].startswith(expected), v.stderr
    assert surgeon("diff", base, base, "--strict", "-q").code == 0


def test_figures_say_nan_was_left_out(tiny_model, tmp_path):
    from weightsurgeon.diff import diff_checkpoints
    from weightsurgeon.report.figures import build_figures

    base = tiny_model(name="base", **SHAPE)
    tuned = rewrite_checkpoint(base, tmp_path / "tuned", patch={VICTIM: plant})
    report = diff_checkpoints(base, tuned)
    figures = build_figures(report, 1)
    assert figures
    for name, fig in figures:
        texts = [fig._suptitle.get_text() if fig._suptitle else ""] + [t.get_text() for t in fig.texts]
        assert any("3 NaN/Inf value(s) left out" in t for t in texts), (name, texts)
