#!/usr/bin/env python
"""What the shape statistics and per-head sums cost: `surgeon diff` of this tree against a baseline tree.

The baseline is another checkout of the project (default: a temporary worktree of
--baseline-ref, e.g. the commit before the statistics landed). On the synthetic bf16 pair
of tools/benchmodels.py (shape 'small', generated once, reused), in one run, tools taking turns in a seeded
shuffled order per round:

- ``surgeon diff BASE TUNED -o DIR --no-plots`` of this tree and of the baseline, cold
  (page cache dropped) and warm;
- ``cat`` of the same files to /dev/null (the read bound);
- each tree's kernel alone on 64 Mi bf16 elements per side in memory (GB/s): the compute
  cost the disk hides in a cold diff.

Prints medians, the ratio this/baseline (the goal: diff time within 1.10x), peak RSS
and the load average before and after.

    python tools/bench_stats.py --baseline-ref 67d4eec --repeat 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_diff import run_child, warm_cache  # noqa: E402
from benchmodels import drop_cached, ensure_models, load_average, model_files  # noqa: E402

KERNEL = r"""
import sys, time, numpy as np
from weightsurgeon.kernels.delta import accumulate_delta, warmup
from weightsurgeon.kernels.stats import DeltaStats
from weightsurgeon.synth import float32_to_bf16_bits
warmup()
n = 64 << 20
rng = np.random.default_rng(0)
a32 = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
a = float32_to_bf16_bits(a32)
b = float32_to_bf16_bits(a32 * (np.float32(1) + np.float32(0.05) * rng.standard_normal(n, dtype=np.float32)))
best = 1e9
for _ in range(int(sys.argv[1])):
    stats = DeltaStats.empty()
    t = time.perf_counter()
    for i in range(0, n, 32 << 20):
        accumulate_delta(stats, a[i:i + (32 << 20)], b[i:i + (32 << 20)], "BF16", "BF16")
    best = min(best, time.perf_counter() - t)
print(4 * n / best / 1e9)
"""


def tree_env(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def diff_cmd(base: Path, tuned: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "weightsurgeon", "diff", str(base), str(tuned), "-o", str(out), "--no-plots",
            "--force"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout to compare against")
    ap.add_argument("--baseline-ref", default=None, help="or a git ref, checked out into a temporary worktree")
    ap.add_argument("--size", type=float, default=1.3, help="GB per model (default 1.3)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-diff")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if (args.baseline is None) == (args.baseline_ref is None):
        raise SystemExit("give --baseline PATH or --baseline-ref REF")
    made = None
    baseline = args.baseline
    if baseline is None:
        made = Path(tempfile.mkdtemp(prefix="bench-stats-baseline-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(made), args.baseline_ref],
                       check=True, capture_output=True)
        baseline = made
    load_before = load_average()
    try:
        models = ensure_models(args.workdir, "small", args.size)
        base, tuned = models["base"], models["tuned1"]
        files = model_files(base) + model_files(tuned)
        nbytes = sum(f.stat().st_size for f in files)
        trees = {"this": ROOT, "baseline": baseline}
        outs = {name: Path(tempfile.mkdtemp(prefix=f"bench-stats-{name}-")) for name in trees}
        for name, tree in trees.items():  # compile or load each tree's kernel cache once, untimed
            run_child(diff_cmd(base, tuned, outs[name] / "r"), env=tree_env(tree))
        times: dict[str, list[float]] = {}
        peaks: dict[str, list[float]] = {}
        rng = random.Random(args.seed)
        for _ in range(args.repeat):
            jobs = [(f"{name} {temp}", temp, name) for name in list(trees) + ["cat"] for temp in ("cold", "warm")]
            rng.shuffle(jobs)
            for key, temp, name in jobs:
                if temp == "cold":
                    drop_cached(files)
                else:
                    warm_cache(files)
                if name == "cat":
                    result = run_child(["cat", *map(str, files)])
                else:
                    result = run_child(diff_cmd(base, tuned, outs[name] / "r"), env=tree_env(trees[name]))
                times.setdefault(key, []).append(result["seconds"])
                peaks.setdefault(key, []).append(result["peak_rss_mib"])
        kernel = {}
        for name, tree in trees.items():
            res = subprocess.run([sys.executable, "-c", KERNEL, "3"], env=tree_env(tree), capture_output=True,
                                 text=True, check=True)
            kernel[name] = float(res.stdout.strip().splitlines()[-1])
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if made is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(made)], capture_output=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"pair: {nbytes / 1e9:.2f} GB (both models), {args.repeat} round(s), medians; load average before "
          f"{load_before}, after {load_average()}")
    print(f"{'':22}{'cold s':>9}{'warm s':>9}{'peak RSS MiB':>14}")
    for name in ("this", "baseline", "cat"):
        peak = max(p for k, ps in peaks.items() if k.startswith(name) for p in ps)
        print(f"{name:22}{med[name + ' cold']:9.2f}{med[name + ' warm']:9.2f}{peak:14.0f}")
    cold = med["this cold"] / med["baseline cold"]
    warm = med["this warm"] / med["baseline warm"]
    print(f"this / baseline: cold {cold:.3f}x, warm {warm:.3f}x (goal <= 1.10); "
          f"this / cat: cold {med['this cold'] / med['cat cold']:.2f}x")
    print(f"kernel alone, bf16 in memory: this {kernel['this']:.2f} GB/s, baseline {kernel['baseline']:.2f} GB/s "
          f"({kernel['baseline'] / kernel['this']:.3f}x the time)")
    if args.json:
        args.json.write_text(json.dumps({"times": times, "peaks": peaks, "kernel_gb_per_s": kernel,
                                         "ratio_cold": cold, "ratio_warm": warm, "bytes": nbytes}, indent=1))


if __name__ == "__main__":
    main()
