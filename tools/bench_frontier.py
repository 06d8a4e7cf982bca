"""Frontier-model benchmark: a DeepSeek-V3-shaped FP8 pair at its real tensor count, side by side with cat and cp.

It writes (or reuses) the synthetic pair of ``python -m weightsurgeon.synth --shape
deepseek-v3`` (91,991 tensors per model, FP8 block-scaled, dims shrunk by --hidden), then
times, in one run:

- ``cat`` of both models' shards (the read bound of a warm cache),
- ``surgeon diff BASE TUNED --no-plots`` (its per-tensor overhead: (diff - cat) / pairs),
- ``mixed``: ``surgeon diff`` of BASE cast to bf16 (``surgeon cast --dtype bf16``, written once)
  against the FP8 TUNED, every pair a bf16 side against an FP8 one, beside ``cat`` of those files,
- ``surgeon inspect`` and ``surgeon verify --deep`` of BASE,
- ``cp -r BASE`` (the copy bound), ``surgeon splice BASE TUNED --take o_proj``, ``surgeon remove BASE --layers 10-40``,
- the decoding throughput on large tensors: ``surgeon diff`` of a one-tensor FP8 pair of
  DeepSeek's o_proj shape (7168 x 16384, 128 x 128 block scales) against ``cat`` of the same
  files, which with the disk speed and the per-tensor overhead extrapolates to the real
  685 GB models.

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


def decode_pair(workdir: Path, rows: int = 7168, cols: int = 16384) -> tuple[Path, Path]:
    """Two one-tensor FP8 checkpoints of DeepSeek's o_proj shape (F32 128 x 128 block scales), written once."""
    import json

    import numpy as np

    from weightsurgeon.format import build_header

    out = []
    rng = np.random.default_rng(0)
    for side in ("base", "tuned"):
        folder = workdir / f"fp8-{rows}x{cols}" / side
        out.append(folder)
        if (folder / "config.json").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        name = "model.layers.0.self_attn.o_proj.weight"
        scale_shape = (-(-rows // 128), -(-cols // 128))
        prefix, _ = build_header([(name, "F8_E4M3", (rows, cols)), (name + "_scale_inv", "F32", scale_shape)],
                                 {"format": "pt"})
        with open(folder / "model.safetensors", "wb") as f:
            f.write(prefix)
            for r0 in range(0, rows, 512):  # codes 0..0x7D: finite E4M3 values of both signs
                f.write(rng.integers(0, 0x7E, (min(512, rows - r0), cols), dtype=np.uint8).tobytes())
            f.write((rng.random(scale_shape, dtype=np.float32) * 1e-3).tobytes())
        (folder / "config.json").write_text(json.dumps({
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 1,
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}))
    return out[0], out[1]


def decode_throughput(workdir: Path, env: dict) -> tuple[float, float, tuple]:
    """(diff GB/s, cat GB/s, diff's run row) of one FP8 7168 x 16384 pair read from warm files, both sides counted.

    The diff's rate is its report's own (timing.gb_per_s: reading, decoding and statistics, without
    the interpreter's start and numba's loading, which a 0.23 GB pair would otherwise be mostly).
    """
    import json

    base, tuned = decode_pair(workdir)
    files = [str(base / "model.safetensors"), str(tuned / "model.safetensors")]
    nbytes = sum(os.path.getsize(f) for f in files)
    run(["cat", *files])
    cat = min(run(["cat", *files])[0] for _ in range(3))
    best, row = 0.0, None
    for _ in range(3):
        one = run([*SURGEON, "diff", str(base), str(tuned), "--no-plots", "-q", "-o", str(workdir / "report-fp8"),
                   "--force"], env=env)
        gbps = json.loads((workdir / "report-fp8" / "report.json").read_text())["timing"]["gb_per_s"]
        if gbps > best:
            best, row = gbps, one
    return best, nbytes / cat / 1e9, row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--disk-gbps", type=float, default=1.6, help="disk speed for the extrapolation")
    parser.add_argument("--only", default="diff,mixed,inspect,verify,splice,remove,decode",
                        help="comma-separated subset of: diff, mixed, inspect, verify, splice, remove, decode")
    args = parser.parse_args()
    only = set(args.only.split(","))
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
    diff = None
    if "diff" in only:
        diff = run([*SURGEON, "diff", str(base), str(tuned), "--no-plots", "-q", "-o", str(args.workdir / "report"),
                    "--force"], env=env)
        rows.append(("surgeon diff --no-plots", diff))
    if "mixed" in only:
        bf16 = pair / "base-bf16"
        if not (bf16 / "model.safetensors.index.json").exists():
            subprocess.run([*SURGEON, "cast", str(base), "--dtype", "bf16", "-q", "-o", str(bf16)], check=True, env=env)
        files = [str(p) for p in sorted(bf16.glob("*.safetensors")) + sorted(tuned.glob("*.safetensors"))]
        run(["cat", *files])
        mixed_cat = run(["cat", *files])
        rows.append((f"cat BF16 base + FP8 tuned ({sum(os.path.getsize(f) for f in files) / 1e9:.2f} GB)", mixed_cat))
        rows.append(("surgeon diff BF16 base vs FP8", run([*SURGEON, "diff", str(bf16), str(tuned), "--no-plots", "-q", "-o",
                                                             str(args.workdir / "report-mixed"), "--force"], env=env)))
    if "inspect" in only:
        rows.append(("surgeon inspect BASE", run([*SURGEON, "inspect", str(base)], env=env)))
    if "verify" in only:
        rows.append(("surgeon verify --deep BASE", run([*SURGEON, "verify", "--deep", str(base)], env=env)))
    cp = run(["cp", "-r", str(base), str(args.workdir / "copy")])
    rows.append(("cp -r BASE", cp))
    if "splice" in only:
        rows.append(("surgeon splice --take o_proj", run([*SURGEON, "splice", str(base), str(tuned), "--take", "o_proj",
                                                          "-q", "-o", str(args.workdir / "spliced"), "--force"], env=env)))
    if "remove" in only:
        rows.append(("surgeon remove --layers 10-40", run([*SURGEON, "remove", str(base), "--layers", "10-40", "-q",
                                                           "-o", str(args.workdir / "removed"), "--force"], env=env)))
    for name in ("copy", "spliced", "removed"):
        subprocess.run(["rm", "-rf", str(args.workdir / name)])
    print(f"{'command':34} {'wall s':>8} {'CPU s':>8} {'x cat':>7} {'x cp':>7} {'peak RSS MiB':>13}")
    for label, (wall, rss, cpu, _gb_read, rc, err) in rows:
        flag = "" if rc == 0 else f"  (exit {rc}: {err.strip()[-200:]})"
        print(f"{label:34} {wall:8.2f} {cpu:8.2f} {wall / cat[0]:7.2f} {wall / cp[0]:7.2f} {rss:13.0f}{flag}")
    pairs = R1_QUANTIZED + (R1_TENSORS - 2 * R1_QUANTIZED)  # logical tensors: a weight and its scale are one
    overhead = max(0.0, diff[0] - cat[0]) / pairs if diff is not None else 0.0
    if diff is not None:
        print(f"per-tensor overhead of diff: {overhead * 1e3:.3f} ms ({pairs} logical tensors per model)")
    if "decode" in only:
        gbps, cat_gbps, one = decode_throughput(args.workdir, env)
        read = 2 * R1_BYTES / (args.disk_gbps * 1e9)
        compute = 2 * R1_BYTES / (gbps * 1e9)
        print(f"FP8 7168 x 16384 pair (2 x {7168 * 16384 / 1e9:.2f} GB), warm: surgeon diff {gbps:.2f} GB/s of stored "
              f"bytes, cat {cat_gbps:.2f} GB/s ({cat_gbps / gbps:.2f}x), peak RSS {one[1]:.0f} MiB")
        print(f"extrapolated DeepSeek-V3-Base vs R1 (2 x {R1_BYTES / 1e9:.0f} GB) at {args.disk_gbps} GB/s: "
              f"read {read / 60:.1f} min, decode {compute / 60:.1f} min, per-tensor {pairs * overhead / 60:.1f} min; "
              f"about {(max(read, compute) + pairs * overhead) / 60:.0f} min if read and decode overlap, "
              f"{(read + compute + pairs * overhead) / 60:.0f} min if not")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
