"""Peak memory of a diff does not grow with the tensor: a 1 GiB tensor pair in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PEAK_RSS
from weightsurgeon.format import build_header
from weightsurgeon.synth import float32_to_bf16_bits

ROWS, COLS = 16384, 16384  # one BF16 tensor of 512 MiB per side
BLOCK_ROWS = 512  # written from one reused 16 MiB block

CHILD = PEAK_RSS + r"""
import json, sys
from weightsurgeon.diff import diff_checkpoints
report = diff_checkpoints(sys.argv[1], [sys.argv[2]], bins=int(sys.argv[3]))
row = report.tensors[0]
print(json.dumps({"peak_bytes": peak_rss_bytes(), "numel": row.numel,
                  "n": row.stats.n, "rel_l2": row.stats.rel_l2, "bytes_read": report.timing["bytes_read"]}))
"""


def write_big(folder: Path, scale: float, seed: int) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    prefix, _ = build_header([("model.layers.0.mlp.down_proj.weight", "BF16", (ROWS, COLS))], {"format": "pt"})
    block = np.random.default_rng(0).standard_normal(BLOCK_ROWS * COLS, dtype=np.float32) * np.float32(0.02)
    if scale:
        block *= np.float32(1) + np.float32(scale) * np.random.default_rng(seed).standard_normal(block.size, dtype=np.float32)
    data = float32_to_bf16_bits(block).tobytes()
    with open(folder / "model.safetensors", "wb") as f:
        f.write(prefix)
        for _ in range(ROWS // BLOCK_ROWS):
            f.write(data)
    return folder


@pytest.mark.parametrize("bins", [200, 100_000])
def test_peak_rss_of_a_1gib_pair_stays_small(tmp_path: Path, bins: int) -> None:
    """Also with the most bins: the kernel's per-part histograms of one call are bounded too."""
    base = write_big(tmp_path / "a", 0.0, 0)
    tuned = write_big(tmp_path / "b", 0.1, 1)
    res = subprocess.run([sys.executable, "-c", CHILD, str(base), str(tuned), str(bins)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["numel"] == out["n"] == ROWS * COLS and out["bytes_read"] == 2 * ROWS * COLS * 2
    assert 0.09 < out["rel_l2"] < 0.11
    peak_mib = out["peak_bytes"] / 2**20
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB for a 1 GiB tensor pair with {bins} bins"


VOCAB, HIDDEN, RANK = 151_936, 512, 16  # Qwen2.5's vocabulary: embeddings of 148 MiB per side in BF16

ADAPTER_CHILD = PEAK_RSS + r"""
import json, sys
from weightsurgeon.diff import diff_checkpoints
report = diff_checkpoints(sys.argv[1], [sys.argv[2]])
rows = {r.name: r for r in report.tensors}
print(json.dumps({"peak_bytes": peak_rss_bytes(), "ranks": {n: r.lora_rank for n, r in rows.items()},
                  "l2": {n: r.stats.l2_delta for n, r in rows.items()}}))
"""


def _write_bf16(path: Path, specs: list[tuple[str, tuple[int, int], int]], metadata: dict) -> None:
    """One safetensors file of BF16 (or F32 for the LoRA factors) tensors, written a block of rows at a time."""
    entries = [(name, "F32" if "lora_" in name else "BF16", shape) for name, shape, _ in specs]
    prefix, _ = build_header(entries, metadata)
    with open(path, "wb") as f:
        f.write(prefix)
        for (name, dtype, (rows, cols)), (_, _, seed) in zip(entries, specs):
            rng = np.random.default_rng(seed)
            for r0 in range(0, rows, 8192):
                block = rng.standard_normal((min(rows, r0 + 8192) - r0) * cols, dtype=np.float32) * np.float32(0.02)
                f.write(block.tobytes() if dtype == "F32" else float32_to_bf16_bits(block).tobytes())


def test_peak_rss_of_an_adapter_diff_with_a_150k_vocabulary(tmp_path: Path) -> None:
    """LoRA on the 150k-row output head (B @ A a block of rows at a time) and a whole replaced embedding."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"num_hidden_layers": 0, "tie_word_embeddings": False}))
    _write_bf16(base / "model.safetensors", [("model.embed_tokens.weight", (VOCAB, HIDDEN), 1),
                                             ("lm_head.weight", (VOCAB, HIDDEN), 2)], {"format": "pt"})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 32, "target_modules": ["lm_head"],
        "modules_to_save": ["embed_tokens"], "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}))
    _write_bf16(adapter / "adapter_model.safetensors", [
        ("base_model.model.lm_head.lora_A.weight", (RANK, HIDDEN), 3),
        ("base_model.model.lm_head.lora_B.weight", (VOCAB, RANK), 4),
        ("base_model.model.model.embed_tokens.weight", (VOCAB, HIDDEN), 5)], {"format": "pt"})
    res = subprocess.run([sys.executable, "-c", ADAPTER_CHILD, str(base), str(adapter)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ranks"] == {"model.embed_tokens.weight": None, "lm_head.weight": RANK}
    assert all(v > 0 for v in out["l2"].values())
    peak_mib = out["peak_bytes"] / 2**20
    print(f"adapter diff, {VOCAB}-token vocabulary: peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB for an adapter diff with a {VOCAB}-token vocabulary"
