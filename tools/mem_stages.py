"""Where a diff's peak memory comes from: VmHWM and VmRSS after each stage of `surgeon diff -o DIR --no-plots`.

Runs the stages the CLI runs, in this process: imports, opening the base, opening the
tuned model, the plan, the kernels' start, streaming (rows written to DIR), the report
files. After each it prints the process's high-water mark and resident set (Linux
/proc/self/status) and the time; ``--trace`` adds Python's own allocations (tracemalloc:
what is held, and the stage's peak), which slows every stage.

    python tools/mem_stages.py BASE TUNED DIR [--trace]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def _status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("tuned")
    ap.add_argument("out", type=Path, help="report folder (replaced)")
    ap.add_argument("--trace", action="store_true", help="also tracemalloc's held and peak bytes per stage")
    args = ap.parse_args()
    if args.trace:
        import tracemalloc

        tracemalloc.start()
    started = time.perf_counter()

    def mark(stage: str) -> None:
        s = _status()
        extra = ""
        if args.trace:
            held, peak = tracemalloc.get_traced_memory()
            extra = f"  python held {held / 2**20:7.1f} MiB, stage peak {peak / 2**20:7.1f} MiB"
            tracemalloc.reset_peak()
        print(f"{stage:12s} VmHWM {s['VmHWM']:6.0f} MiB  VmRSS {s['VmRSS']:6.0f} MiB  "
              f"{time.perf_counter() - started:6.2f} s{extra}", flush=True)

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.commands.diff import write_report_folder
    from weightsurgeon.diff import plan_diff, run_diff
    from weightsurgeon.progress import kernels_ready

    mark("imports")
    base = open_checkpoint(args.base)
    mark("open base")
    tuned = open_checkpoint(args.tuned)
    mark("open tuned")
    plan = plan_diff(base, [tuned])
    mark("plan")
    kernels_ready(quiet=True)
    mark("kernels")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    report = run_diff(plan, rows_folder=args.out)
    mark("run")
    write_report_folder(report, args.out, plots=False)
    mark("report")


if __name__ == "__main__":
    main()
