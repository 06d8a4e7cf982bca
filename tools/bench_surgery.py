"""Benchmark surgery against its bounds and baselines, side by side in one run.

On a synthetic bf16 pair it generates (about 1.3 GB per model by default), it times

- ``cp -r`` of BASE (the copy bound), and ``cp -r`` followed by ``sync`` of the copied files
  (surgeon fsyncs its output before the atomic rename; cp does not),
- ``surgeon splice BASE DONOR --take o_proj`` (also with ``--no-fsync``, like cp), ``surgeon zero BASE --module o_proj --layers L``,
  ``surgeon remove BASE --layers L``,
- where mergekit is installed in a separate venv (``--mergekit /tmp/mk/bin/mergekit-yaml``):
  the same splice (linear merge, weight filter on o_proj: bitwise the same output) and the
  same removal (passthrough slices),

each ``--repeat`` times, alternating, and reports the median wall time, the ratio to
``cp -r``, and each process's own peak RSS (``os.wait4``'s ru_maxrss). Ratios, never a lone
absolute time: the machine may be shared.

    python tools/bench_surgery.py --workdir /tmp/bench_surgery [--size-gb 1.3] [--mergekit PATH]
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

SURGEON = [sys.executable, "-m", "weightsurgeon"]


TIME = "/usr/bin/time"  # GNU time: reports its child's own peak RSS (%M, KiB)


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB of the command's own process, exit status, stderr tail).

    A child forked from this (numpy-sized) Python would inherit its RSS as a floor of ru_maxrss,
    so the command runs under GNU time, a small process, when it is installed.
    """
    wrapped = [TIME, "-f", "BENCH_MAXRSS_KB=%M", *cmd] if os.path.exists(TIME) else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss
    lines = stderr.splitlines()
    if lines and lines[-1].startswith("BENCH_MAXRSS_KB="):
        rss_kib = int(lines[-1].split("=", 1)[1])
        stderr = "\n".join(lines[:-1])
    return wall, rss_kib / 1024, rc, stderr[-800:]


def shape_for(size_gb: float) -> dict:
    """A llama-like shape whose bf16 checkpoint is about size_gb (hidden 2048, 12 layers ~ 1.3 GB)."""
    hidden, inter, vocab = 2048, 5504, 32000
    per_layer = (2 * hidden * hidden + 2 * hidden * 512 + 3 * hidden * inter + 2 * hidden) * 2
    fixed = 2 * vocab * hidden * 2
    layers = max(2, round((size_gb * 1e9 - fixed) / per_layer))
    return {"num_layers": layers, "hidden_size": hidden, "intermediate_size": inter, "num_heads": 16,
            "num_kv_heads": 4, "vocab_size": vocab}


def make_pair(work: Path, size_gb: float) -> tuple[Path, Path, int]:
    from weightsurgeon.synth import make_checkpoint

    shape = shape_for(size_gb)
    base, donor = work / "base", work / "donor"
    for path, seed in ((base, 0), (donor, 1)):
        if not (path / "config.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            print(f"generating {path} ({shape['num_layers']} layers) ...", flush=True)
            make_checkpoint(path, arch="llama", dtype="bf16", tied=False, seed=seed, shard_bytes=2_000_000_000, **shape)
    return base, donor, shape["num_layers"]


def mergekit_configs(work: Path, base: Path, donor: Path, num_layers: int, lo: int, hi: int) -> tuple[Path, Path]:
    linear = work / "mk_splice.yml"
    linear.write_text(
        "merge_method: linear\nmodels:\n"
        f"  - model: {base}\n    parameters:\n      weight:\n        - filter: o_proj\n          value: 0.0\n        - value: 1.0\n"
        f"  - model: {donor}\n    parameters:\n      weight:\n        - filter: o_proj\n          value: 1.0\n        - value: 0.0\n"
        "dtype: bfloat16\n")
    passthrough = work / "mk_remove.yml"
    passthrough.write_text(
        "merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - model: {base}\n        layer_range: [0, {lo}]\n"
        f"  - sources:\n      - model: {base}\n        layer_range: [{hi + 1}, {num_layers}]\n"
        "dtype: bfloat16\n")
    return linear, passthrough


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_surgery"))
    ap.add_argument("--size-gb", type=float, default=1.3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mergekit", default="/tmp/mk/bin/mergekit-yaml", help="mergekit-yaml of a separate venv ('' to skip)")
    ap.add_argument("--mergekit-repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    base, donor, n = make_pair(work, args.size_gb)
    lo, hi = n // 4, n // 4 + n // 2 - 1  # remove / zero the middle half of the layers
    layers = f"{lo}-{hi}"
    outs = work / "outs"
    shutil.rmtree(outs, ignore_errors=True)
    outs.mkdir()
    model_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))

    jobs: dict[str, list[str] | None] = {
        "cp -r": ["cp", "-r", str(base), "{out}"],
        "cp -r + sync": ["sh", "-c", f"cp -r '{base}' '{{out}}' && sync '{{out}}'/*"],
        "surgeon splice --take o_proj": SURGEON + ["splice", str(base), str(donor), "--take", "o_proj", "-q", "-o", "{out}"],
        "surgeon splice --take o_proj --no-fsync": SURGEON + ["splice", str(base), str(donor), "--take", "o_proj", "--no-fsync", "-q", "-o", "{out}"],
        f"surgeon zero --module o_proj --layers {layers}": SURGEON + ["zero", str(base), "--module", "o_proj", "--layers", layers, "-q", "-o", "{out}"],
        f"surgeon remove --layers {layers}": SURGEON + ["remove", str(base), "--layers", layers, "-q", "-o", "{out}"],
    }
    mergekit = args.mergekit if args.mergekit and Path(args.mergekit).exists() else None
    mk_jobs: dict[str, list[str]] = {}
    if mergekit:
        linear, passthrough = mergekit_configs(work, base, donor, n, lo, hi)
        mk_env = ["--quiet"]
        mk_jobs = {
            "mergekit linear (o_proj filter)": [mergekit, str(linear), "{out}", *mk_env],
            f"mergekit passthrough (remove {layers})": [mergekit, str(passthrough), "{out}", *mk_env],
        }

    results: dict[str, dict] = {}
    env = dict(os.environ, HF_HUB_OFFLINE="1")

    def run_job(name: str, cmd: list[str], out: Path) -> None:
        """Run one job into `out` (then removed) and fold its time and peak RSS into results[name]."""
        wall, rss, rc, err = run([c.replace("{out}", str(out)) for c in cmd], env=env)
        r = results.setdefault(name, {"walls": [], "rss_mib": 0.0, "rc": 0})
        r["walls"].append(wall)
        r["rss_mib"] = max(r["rss_mib"], rss)
        if rc:
            r["rc"], r["error"] = rc, err.strip().splitlines()[-1] if err.strip() else ""
        shutil.rmtree(out, ignore_errors=True)
        print(f"  {name}: {wall:.2f} s, peak RSS {rss:.0f} MiB{'' if not rc else f' FAILED ({rc})'}", flush=True)

    for rep in range(args.repeat):
        for name, cmd in jobs.items():
            run_job(name, cmd, outs / f"o{len(results)}_{rep}_{abs(hash(name)) % 10000}")
    for rep in range(args.mergekit_repeat):
        for name, cmd in mk_jobs.items():
            run_job(name, cmd, outs / f"mk{rep}_{abs(hash(name)) % 10000}")

    cp = statistics.median(results["cp -r"]["walls"])
    cps = statistics.median(results["cp -r + sync"]["walls"])
    print(f"\nmodel: {model_bytes / 1e9:.2f} GB bf16, {n} layers; load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    print(f"{'job':46s} {'median s':>9s} {'x cp -r':>8s} {'x cp+sync':>9s} {'peak RSS MiB':>13s}")
    for name, r in results.items():
        med = statistics.median(r["walls"])
        r.update({"median_s": med, "ratio_cp": med / cp, "ratio_cp_sync": med / cps})
        status = "" if not r["rc"] else f"  FAILED: {r.get('error', '')[:100]}"
        print(f"{name:46s} {med:9.2f} {med / cp:8.2f} {med / cps:9.2f} {r['rss_mib']:13.0f}{status}")
    if mergekit and "mergekit linear (o_proj filter)" in results:
        sp = results["surgeon splice --take o_proj"]["median_s"]
        mk = results["mergekit linear (o_proj filter)"]
        if not mk["rc"]:
            print(f"\nsplice vs mergekit linear: {mk['median_s'] / sp:.1f}x faster")
        rm = results[f"surgeon remove --layers {layers}"]["median_s"]
        mkr = results[f"mergekit passthrough (remove {layers})"]
        if not mkr["rc"]:
            print(f"remove vs mergekit passthrough: {mkr['median_s'] / rm:.1f}x faster")
    if args.json:
        args.json.write_text(json.dumps({"model_bytes": model_bytes, "layers": n, "results": results}, indent=2))


if __name__ == "__main__":
    main()
