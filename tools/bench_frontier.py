"""Frontier-model benchmark: a DeepSeek-V3-shaped FP8 pair at its real tensor count, side by side with cat and cp.

It writes (or reuses) the synthetic pair of ``python -m weightsurgeon.synth --shape
deepseek-v3`` (91,991 tensors per model, FP8 block-scaled, dims shrunk by --hidden), then
times, in one run:

- ``cat`` of both models' shards (the read bound of a warm cache),
- ``surgeon diff BASE TUNED --no-plots`` (its per-tensor overhead: (diff - cat) / pairs),
- ``surgeon inspect`` and ``surgeon verify --deep`` of BASE,
- ``cp -r BASE`` (the copy bound), ``surgeon splice BASE TUNED --take o_proj``, ``surgeon remove BASE --layers 10-40``,
- the decoding throughput on large tensors (FP8 block 7168 x 16384, DeepSeek's o_proj, in
  memory: dequantize both sides and run the delta kernel), which with the disk speed and the
  per-tensor overhead extrapolates to the real 685 GB models.

Each command's own peak RSS (GNU time) and the load average are printed beside the times.

    python tools/bench_frontier.py --workdir /tmp/frontier [--hidden 256]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_surgery import run  # noqa: E402  (wall, peak RSS MiB, CPU seconds, exit status, stderr tail)

SURGEON = [sys.executable, "-m", "weightsurgeon"]
R1_BYTES = 688.6e9  # one DeepSeek-R1 / V3 checkpoint, every shard (163 of them)
R1_TENSORS = 91_991
R1_QUANTIZED = 45_808  # FP8 weights among them (each with its weight_scale_inv)


def decode_throughput(elements: int = 7168 * 16384, repeat: int = 3) -> float:
    """GB/s of FP8 bytes (both sides counted) dequantized and folded into the statistics, in memory."""
    import numpy as np

    from weightsurgeon.kernels.delta import accumulate_delta
    from weightsurgeon.kernels.stats import DeltaStats
    from weightsurgeon.kernels.quant import dequantize_fp8

    rows, cols = 7168, elements // 7168
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 0x7E, rows * cols, dtype=np.uint8) for _ in range(2)]
    scales = [rng.random((rows // 128, cols // 128), dtype=np.float32) * 1e-3 for _ in range(2)]
    step = 4 * 1024 * 1024 // cols * cols  # the diff's slice: whole rows, about 4M elements
    best = float("inf")
    for _ in range(repeat):
        stats = DeltaStats.empty()
        t0 = time.perf_counter()
        for start in range(0, rows * cols, step):
            stop = min(rows * cols, start + step)
            r0 = start // cols
            sides = [dequantize_fp8(c[start:stop], "F8_E4M3", s[r0 // 128:], (128, 128), r0, cols)
                     for c, s in zip(codes, scales)]
            accumulate_delta(stats, sides[0], sides[1], "F32", "F32")
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * cols / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--disk-gbps", type=float, default=1.6, help="disk speed for the extrapolation")
    args = parser.parse_args()
    pair = args.workdir / "deepseek-v3"
    base, tuned = pair / "base", pair / "tuned"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not (tuned / "model.safetensors.index.json").exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "weightsurgeon.synth", "--shape", "deepseek-v3", "--hidden",
                        str(args.hidden), str(pair)], check=True, env=env)
        print(f"wrote the pair in {time.perf_counter() - t0:.0f} s")
    shards = sorted(base.glob("*.safetensors")) + sorted(tuned.glob("*.safetensors"))
    nbytes = sum(p.stat().st_size for p in shards)
    print(f"pair: {len(shards)} shards, {nbytes / 1e9:.2f} GB; load average {os.getloadavg()}")
    rows = []
    cat = run(["cat", *map(str, shards)])  # warms the cache too
    cat = run(["cat", *map(str, shards)])
    rows.append(("cat both models", cat))
    diff = run([*SURGEON, "diff", str(base), str(tuned), "--no-plots", "-q", "-o", str(args.workdir / "report"),
                "--force"], env=env)
    rows.append(("surgeon diff --no-plots", diff))
    rows.append(("surgeon inspect BASE", run([*SURGEON, "inspect", str(base)], env=env)))
    rows.append(("surgeon verify --deep BASE", run([*SURGEON, "verify", "--deep", str(base)], env=env)))
    cp = run(["cp", "-r", str(base), str(args.workdir / "copy")])
    rows.append(("cp -r BASE", cp))
    rows.append(("surgeon splice --take o_proj", run([*SURGEON, "splice", str(base), str(tuned), "--take", "o_proj",
                                                      "-q", "-o", str(args.workdir / "spliced"), "--force"], env=env)))
    rows.append(("surgeon remove --layers 10-40", run([*SURGEON, "remove", str(base), "--layers", "10-40", "-q", "-o",
                                                       str(args.workdir / "removed"), "--force"], env=env)))
    for name in ("copy", "spliced", "removed"):
        subprocess.run(["rm", "-rf", str(args.workdir / name)])
    print(f"{'command':34} {'wall s':>8} {'CPU s':>8} {'x cat':>7} {'x cp':>7} {'peak RSS MiB':>13}")
    for label, (wall, rss, cpu, rc, err) in rows:
        flag = "" if rc == 0 else f"  (exit {rc}: {err.strip()[-200:]})"
        print(f"{label:34} {wall:8.2f} {cpu:8.2f} {wall / cat[0]:7.2f} {wall / cp[0]:7.2f} {rss:13.0f}{flag}")
    pairs = R1_QUANTIZED + (R1_TENSORS - 2 * R1_QUANTIZED)  # logical tensors: a weight and its scale are one
    overhead = max(0.0, diff[0] - cat[0]) / pairs
    gbps = decode_throughput()
    read = 2 * R1_BYTES / (args.disk_gbps * 1e9)
    compute = 2 * R1_BYTES / (gbps * 1e9)
    print(f"per-tensor overhead of diff: {overhead * 1e3:.2f} ms ({pairs} logical tensors per model)")
    print(f"FP8 decode + delta kernel, in memory: {gbps:.2f} GB/s of stored bytes")
    print(f"extrapolated DeepSeek-V3-Base vs R1 (2 x {R1_BYTES / 1e9:.0f} GB) at {args.disk_gbps} GB/s: "
          f"read {read / 60:.1f} min, decode {compute / 60:.1f} min, per-tensor {pairs * overhead / 60:.1f} min; "
          f"about {(max(read, compute) + pairs * overhead) / 60:.0f} min if read and decode overlap, "
          f"{(read + compute + pairs * overhead) / 60:.0f} min if not")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
