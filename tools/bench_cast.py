"""`surgeon cast --dtype bf16` of a DeepSeek-V3-shaped FP8 model, side by side with `cp` writing the same bytes.

It writes (or reuses) the base of ``python -m weightsurgeon.synth --shape deepseek-v3``
(91,991 tensors, 45,808 of them FP8 weights with F32 128 x 128 block scales; dims shrunk by
--hidden, and with --layers/--experts fewer of them: ``--hidden 7168 --layers 4 --experts 8``
is a byte-bound case, 1.9 GB of real-sized tensors, where the ratio to cp reflects bytes, not
tensor count), casts it once (which also warms the page cache), then times, in rounds of a
shuffled order:

- ``cp -r OUT COPY``: a copy of the cast's own output, so that cp writes exactly the bytes
  the cast writes (about twice the input), and ``cp -r`` followed by ``sync``;
- ``surgeon cast BASE --dtype bf16`` (it flushes the output before the rename, as every
  surgeon output) and with ``--no-fsync`` (no flush, as cp).

Each command's own peak RSS (GNU time) and the load average are printed beside the medians.
The in-memory speed of the FP8 -> bf16 loop on a DeepSeek o_proj-sized tensor (7168 x 16384)
and the per-tensor cost over cp give the extrapolation for the real 689 GB model.

    python tools/bench_cast.py --workdir /tmp/cast [--hidden 256] [--layers 61] [--experts 256] [--repeat 3]
                               [--disk-gbps 1.6]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_frontier import R1_BYTES, R1_QUANTIZED  # noqa: E402  (the published model's size and FP8 weight count)
from bench_surgery import run  # noqa: E402  (wall, peak RSS MiB, CPU seconds, GB read from disk, exit status, stderr tail)

SURGEON = [sys.executable, "-m", "weightsurgeon"]
# About: the 688.6 GB stored less about 5.6 GB of bf16 tensors (two embeddings and heads, routers, norms,
# eh_proj) and 0.2 GB of F32 scales (one per 16,384 elements) leaves about 683 GB of FP8 bytes.
R1_FP8_PARAMS = 683e9


def loop_throughput(rows: int = 7168, cols: int = 16384, repeat: int = 3) -> float:
    """GB/s of bf16 output bytes of the compiled FP8 -> bf16 loop (all numba threads), in memory, on one
    o_proj-sized tensor."""
    import numpy as np

    from weightsurgeon.kernels.quant import OUT_KINDS, SCALE_KINDS, cast_fp8

    rng = np.random.default_rng(0)
    sr, sc = -(-rows // 128), -(-cols // 128)
    window = np.concatenate([rng.integers(0, 0x7E, rows * cols, dtype=np.uint8),
                             (rng.random(sr * sc, dtype=np.float32) * 1e-3).view(np.uint8)])
    entry = np.array([[0, rows * cols, SCALE_KINDS["F32"], rows, cols, 128, 128, 0, 0, OUT_KINDS["BF16"], 0]])
    out = np.empty(rows * cols * 2, dtype=np.uint8)
    cast_fp8(window, entry[:, :] * [1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], out)  # zero rows: loads the compiled loop
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        cast_fp8(window, entry, out)
        best = min(best, time.perf_counter() - t0)
    return out.nbytes / best / 1e9


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=61)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--disk-gbps", type=float, default=1.6, help="disk speed (read and write) for the extrapolation")
    args = parser.parse_args()
    base = args.workdir / f"deepseek-v3-h{args.hidden}-l{args.layers}-e{args.experts}" / "base"
    out, copy = args.workdir / "cast-out", args.workdir / "cp-out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not (base / "model.safetensors.index.json").exists():
        from weightsurgeon.synth_frontier import make_frontier

        t0 = time.perf_counter()
        make_frontier(base, "deepseek-v3", hidden=args.hidden, layers=args.layers, experts=args.experts)
        print(f"wrote the model in {time.perf_counter() - t0:.0f} s")
    print(f"load average before: {os.getloadavg()}")
    first = run([*SURGEON, "cast", str(base), "--dtype", "bf16", "-q", "-o", str(out), "--force"], env=env)
    if first[4] != 0:
        print(f"cast failed: {first[5]}")
        return 1
    in_bytes, out_bytes = _tree_bytes(base), _tree_bytes(out)
    print(f"input {in_bytes / 1e9:.2f} GB in {len(list(base.glob('*.safetensors')))} shards; "
          f"output {out_bytes / 1e9:.2f} GB; first cast (cold numba cache possible) {first[0]:.2f} s")
    cases = {
        "cp -r OUT (same bytes)": lambda: run(["cp", "-r", str(out), str(copy)]),
        "cp -r OUT + sync": lambda: run(["sh", "-c", f"cp -r '{out}' '{copy}' && sync"]),
        "surgeon cast --dtype bf16": lambda: run([*SURGEON, "cast", str(base), "--dtype", "bf16", "-q", "-o",
                                                  str(args.workdir / "cast-2"), "--force"], env=env),
        "surgeon cast --no-fsync": lambda: run([*SURGEON, "cast", str(base), "--dtype", "bf16", "-q", "--no-fsync",
                                                "-o", str(args.workdir / "cast-2"), "--force"], env=env),
    }
    results: dict[str, list] = {k: [] for k in cases}
    for _ in range(args.repeat):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            for old in (copy, args.workdir / "cast-2"):  # every command writes into a fresh folder, none times a removal
                shutil.rmtree(old, ignore_errors=True)
            subprocess.run(["sync"])
            results[name].append(cases[name]())
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(args.workdir / "cast-2", ignore_errors=True)
    med = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    cp, cp_sync = med["cp -r OUT (same bytes)"], med["cp -r OUT + sync"]
    print(f"{'command':28} {'median s':>9} {'runs':>22} {'x cp':>6} {'x cp+sync':>9} {'CPU s':>7} {'peak RSS MiB':>13}")
    for name, runs in results.items():
        walls = ", ".join(f"{r[0]:.2f}" for r in runs)
        bad = [r for r in runs if r[4] != 0]
        note = f"  (exit {bad[0][4]}: {bad[0][5].strip()[-200:]})" if bad else ""
        print(f"{name:28} {med[name]:9.2f} {walls:>22} {med[name] / cp:6.2f} {med[name] / cp_sync:9.2f} "
              f"{statistics.median(r[2] for r in runs):7.2f} {max(r[1] for r in runs):13.0f}{note}")
    import numba

    gbps = loop_throughput()
    cast = med["surgeon cast --no-fsync"]
    per_tensor = max(0.0, cast - cp) / R1_QUANTIZED
    real_out = R1_BYTES + R1_FP8_PARAMS  # each FP8 byte becomes two bf16 bytes; scales leave
    io = (R1_BYTES + real_out) / (args.disk_gbps * 1e9)
    loop = real_out / (gbps * 1e9)
    print(f"FP8 -> bf16 loop in memory: {gbps:.2f} GB/s of bf16 output ({numba.get_num_threads()} threads, 7168 x 16384)")
    print(f"cast over cp here: {cast - cp:+.2f} s; if all of it were per-tensor cost, {per_tensor * 1e3:.3f} ms "
          f"for each of the real model's {R1_QUANTIZED} FP8 weights (meaningful for the 92k-tensor default only)")
    print(f"extrapolated DeepSeek-V3/R1 ({R1_BYTES / 1e9:.0f} GB in, about {real_out / 1e9:.0f} GB out) on one disk "
          f"at {args.disk_gbps} GB/s: reading and writing {io / 60:.1f} min, the loop {loop / 60:.1f} min of CPU; "
          f"about {max(io, loop) / 60:.0f} min if they overlap, {(io + loop) / 60:.0f} min if not")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
