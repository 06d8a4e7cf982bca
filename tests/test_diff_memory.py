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
