"""Cost per tensor: `surgeon diff` of the same bytes held in 1, ~10k and ~99k tensors.

A MoE checkpoint holds ~100k tensors (DeepSeek-V3 ~91k, Qwen3-235B-A22B ~95k); what a diff
costs per tensor, beyond reading and computing the bytes, decides how it scales there. This
runs `surgeon diff BASE TUNED -o DIR` (with and without figures) on three pairs from
tools/benchmodels.py: ``one-tensor`` (a single matrix), ``moe-10k`` and ``moe-100k`` (64
layers of 52 or 512 experts of 4 x 8, F32), the single matrix sized like the 100k-tensor
model, so that the difference is the per-tensor cost alone. Per run: wall time, CPU time
(user + system, from GNU time: on a shared machine wall time mostly measures the load),
peak RSS, the report files' sizes; and per tensor: CPU microseconds beyond the one-tensor run;
and per pair the figures' CPU seconds (the run with figures less the one without).

    python tools/bench_tensors.py --repeat 3
    python tools/bench_tensors.py --repeat 3 --format png,svg    # the figures in both formats
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmodels import SHAPES, ensure_models, load_average, model_files  # noqa: E402

TIME = "/usr/bin/time"


def run(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds and peak RSS (MiB) of the command's own process, under GNU time."""
    wrapped = [TIME, "-f", "BENCH %M %U %S", *cmd]
    started = time.perf_counter()
    proc = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed: {proc.stderr.strip()[-400:]}")
    kib, user, system = proc.stderr.strip().splitlines()[-1].split()[1:]
    return {"wall": wall, "cpu": float(user) + float(system), "rss_mib": int(kib) / 1024}


def tensor_count(folder: Path) -> int:
    from weightsurgeon.checkpoint import open_checkpoint

    with open_checkpoint(folder) as ckpt:
        return len(ckpt.tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("BENCH_WORKDIR", "/tmp")) / "bench-tensors")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--format", dest="formats", default=None, metavar="LIST",
                    help="figure formats of the runs with figures (diff --format; default: the diff's own, PNG)")
    args = ap.parse_args()
    shapes = ["moe-100k", "moe-10k", "one-tensor"]
    pairs = {s: ensure_models(args.workdir / s, s, 0.0, tuned=1) for s in shapes[:2]}
    moe_bytes = sum(f.stat().st_size for f in model_files(pairs["moe-100k"]["base"]))
    pairs["one-tensor"] = ensure_models(args.workdir / "one-tensor", "one-tensor", moe_bytes / 1e9, tuned=1)
    surgeon = [sys.executable, "-m", "weightsurgeon", "diff"]
    load_before = load_average()
    rows = []
    for shape in shapes:
        base, tuned = pairs[shape]["base"], pairs[shape]["tuned1"]
        nbytes = sum(f.stat().st_size for f in model_files(base) + model_files(tuned))
        count = tensor_count(base)
        for plots in (False, True):
            out = args.workdir / f"report-{shape}-{int(plots)}"
            figures = ["--format", args.formats] if args.formats else []
            cmd = [*surgeon, str(base), str(tuned), "-o", str(out), "--force", "-q", *(figures if plots else ["--no-plots"])]
            runs = [run(cmd) for _ in range(args.repeat)]
            files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
            rows.append({"shape": shape, "tensors": count, "bytes": nbytes, "plots": plots,
                         "wall": statistics.median(r["wall"] for r in runs),
                         "cpu": statistics.median(r["cpu"] for r in runs),
                         "rss_mib": max(r["rss_mib"] for r in runs),
                         "report_json_mb": files.get("report.json", 0) / 1e6,
                         "side_files_mb": sum(v for k, v in files.items() if k != "report.json" and not
                                              k.endswith((".png", ".svg", ".html"))) / 1e6})
            shutil.rmtree(out, ignore_errors=True)
    load_after = load_average()
    single = {r["plots"]: r["cpu"] for r in rows if r["shape"] == "one-tensor"}
    print(f"\nload average before {load_before}, after {load_after}; {os.cpu_count()} CPUs; medians of {args.repeat}")
    print(f"{'pair':12s} {'tensors':>8s} {'MB read':>8s} {'figures':>7s} {'wall s':>7s} {'CPU s':>6s} "
          f"{'CPU us/tensor':>14s} {'peak RSS MiB':>13s} {'report.json MB':>15s} {'other files MB':>15s}")
    for r in rows:
        extra = (r["cpu"] - single[r["plots"]]) / max(1, r["tensors"] - 1) * 1e6
        r["cpu_us_per_tensor"] = extra
        print(f"{r['shape']:12s} {r['tensors']:8d} {r['bytes'] / 1e6:8.1f} {'yes' if r['plots'] else 'no':>7s} "
              f"{r['wall']:7.2f} {r['cpu']:6.2f} {extra if r['tensors'] > 1 else 0:14.1f} {r['rss_mib']:13.0f} "
              f"{r['report_json_mb']:15.2f} {r['side_files_mb']:15.2f}")
    without = {r["shape"]: r["cpu"] for r in rows if not r["plots"]}
    print("figures and report.html (CPU s with figures - without): " + ", ".join(
        f"{r['shape']} {r['cpu'] - without[r['shape']]:.2f}" for r in rows if r["plots"]))
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
