"""Reading a 2 GiB tensor costs a few chunks of memory, not 2 GiB.

The tensor lives in a sparse file (a header, then ``truncate``), so the test writes nothing
and runs in seconds. Peak RSS is measured with VmHWM (see conftest.PEAK_RSS) in a fresh interpreter: it is
a lifetime high-water mark, so the baseline is taken after imports and warm-up.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PEAK_RSS, cli_env
from weightsurgeon.checkpoint import DEFAULT_CHUNK_BYTES
from weightsurgeon.format import build_header

TENSOR_BYTES = 2 * 1024**3
NAME = "model.embed_tokens.weight"
LIMIT = 4 * DEFAULT_CHUNK_BYTES  # "a few chunks"


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    prefix, sizes = build_header([(NAME, "BF16", (2**15, 2**15))], {"format": "pt"})
    assert sizes == [TENSOR_BYTES]
    with open(root / "model.safetensors", "wb") as f:
        f.write(prefix)
        f.truncate(len(prefix) + TENSOR_BYTES)
    return root


def _run(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=cli_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


READ = PEAK_RSS + """
import resource, sys
from weightsurgeon.checkpoint import open_checkpoint
ckpt = open_checkpoint(sys.argv[1])
info = ckpt[sys.argv[2]]
small = next(iter(ckpt.iter_chunks(info, chunk_bytes=4096)))  # warm up numpy and the read path
base = peak_rss_bytes()
total = 0
nonzero = 0
for chunk in ckpt.iter_chunks(info):
    total += chunk.nbytes
    nonzero += int(chunk[::4096].any())
peak = peak_rss_bytes()
print(base, peak, total, nonzero)
"""

DEEP = PEAK_RSS + """
import resource, sys
import numpy as np
from weightsurgeon.kernels.delta import count_nonfinite
count_nonfinite(np.zeros(8, np.uint16), "BF16")  # numba compiles or loads its cache: a one-off cost
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.verify import verify_checkpoint
ckpt = open_checkpoint(sys.argv[1])
base = peak_rss_bytes()
result = verify_checkpoint(ckpt, deep=True)
peak = peak_rss_bytes()
print(base, peak, result.scanned_bytes, 0)
"""


def test_chunked_read_of_2gb_tensor_is_bounded(big_checkpoint: Path) -> None:
    base, peak, total, nonzero = map(int, _run(READ, str(big_checkpoint), NAME))
    print(f"read 2 GiB: peak RSS +{(peak - base) / 2**20:.1f} MiB (chunk {DEFAULT_CHUNK_BYTES / 2**20:.0f} MiB)")
    assert total == TENSOR_BYTES and nonzero == 0
    assert peak - base <= LIMIT


def test_verify_deep_of_2gb_tensor_is_bounded(big_checkpoint: Path) -> None:
    base, peak, scanned, _ = map(int, _run(DEEP, str(big_checkpoint / "model.safetensors")))  # a file needs no config
    print(f"verify --deep 2 GiB: peak RSS +{(peak - base) / 2**20:.1f} MiB")
    assert scanned == TENSOR_BYTES
    assert peak - base <= LIMIT
