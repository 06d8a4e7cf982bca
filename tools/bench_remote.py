"""Benchmark `surgeon diff --remote` against curl fetching the same bytes from the same server, side by side.

A stand-in Hub (tests/hubserver.py: the Hub's endpoints, ranged reads with sendfile, LFS
redirects to a "CDN" host) serves a synthetic bf16 pair on 127.0.0.1, from the page cache
(the files are read once first). Each round, in its own shuffled order:

- ``curl``: the same byte ranges the diff fetches (each shard's tensor data, both models),
  one ``curl -r`` per shard, one after the other (what a script fetching the bytes would do);
- ``curl x2``: the same ranges, both models at once (two curl processes; the diff reads both);
- ``surgeon diff --remote``: the whole pair, every tensor (``--no-plots -q``), a fresh process;
- ``surgeon diff (local files)``: the same diff from the files on disk (what the computing
  costs without the network; where the machine is busy, the diff is bound by it, not by fetching).

``--rate MB/S`` paces the server: every file byte of every connection together goes through
one link of that rate (a total limit, not a per-connection one: the diff keeps several
requests in flight, curl one, and a per-connection limit would hand the diff more link). Without
it, loopback is as fast as the server's sendfile, and on a small machine that measures the CPUs
the server and the diff share, not whether the diff keeps up with a network.

It prints the median throughput (tensor bytes fetched / wall time, process start included)
of each, the ratio of the diff to each curl, each process's own peak RSS (GNU time), and the
load average before and after: the machine may be shared.

    python tools/bench_remote.py [--shape small] [--size 1.3] [--repeat 3] [--module o_proj] [--rate 500]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent)]

from bench_surgery import run  # noqa: E402  (tools/ is not a package)
from benchmodels import add_model_arguments, ensure_models, load_average, model_files  # noqa: E402
from hubserver import HubServer  # noqa: E402

SURGEON = [sys.executable, "-m", "weightsurgeon"]


def warm(folder: Path) -> None:
    for p in model_files(folder):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def tensor_ranges(folder: Path, module: str | None) -> list[tuple[str, int, int]]:
    """(file, first, last) of the tensor bytes a diff of `module` (None: all) reads, coalesced per file."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.layout import classify

    out: list[tuple[str, int, int]] = []
    with open_checkpoint(folder) as c:
        for t in c:
            if module is not None and classify(t.name).module != module:
                continue
            if out and out[-1][0] == t.file.name and out[-1][2] == t.begin - 1:
                out[-1] = (t.file.name, out[-1][1], t.end - 1)
            else:
                out.append((t.file.name, t.begin, t.end - 1))
    return out


def curl_script(url: str, repo: str, commit: str, ranges: list[tuple[str, int, int]]) -> str:
    # -L: the server redirects to its "CDN" as the Hub does; the diff follows the same redirect
    return "\n".join(f"curl -sfL -o /dev/null -r {a}-{b} '{url}/{repo}/resolve/{commit}/{f}' || exit 1"
                     for f, a, b in ranges)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap, "bench-remote")
    ap.add_argument("--repeat", type=int, default=3, help="rounds, each in its own shuffled order (median reported)")
    ap.add_argument("--module", default=None, help="diff only this module (default: every tensor)")
    ap.add_argument("--rate", type=float, default=None, metavar="MB/S",
                    help="pace the server to this many MB/s (1e6 bytes), all connections together (default: unlimited)")
    args = ap.parse_args()

    models = ensure_models(args.workdir, args.shape, args.size, tuned=1)
    base, tuned, work = models["base"], models["tuned1"], args.workdir
    warm(base)
    warm(tuned)
    load_before = load_average()
    with HubServer(lifetime=24 * 3600, rate=args.rate * 1e6 if args.rate else None) as hub:
        commits = {"org/base": hub.add("org/base", base), "org/tuned": hub.add("org/tuned", tuned)}
        ranges = {repo: tensor_ranges(folder, args.module) for repo, folder in (("org/base", base), ("org/tuned", tuned))}
        scripts = {repo: curl_script(hub.url, repo, commits[repo], r) for repo, r in ranges.items()}
        tensor_bytes = sum(b - a + 1 for r in ranges.values() for _, a, b in r)
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HOME=str(work / "hf-home"), PYTHONPATH=str(HERE.parent))
        diff = SURGEON + ["diff", "org/base", "org/tuned", "--remote", "--no-plots", "-q", "--force",
                          "-o", str(work / "report")] + (["--module", args.module] if args.module else [])
        jobs = {
            "curl": ["sh", "-c", scripts["org/base"] + "\n" + scripts["org/tuned"]],
            "curl x2": ["sh", "-c", f"( {scripts['org/base']} ) & ( {scripts['org/tuned']} ) & wait"],
            "surgeon diff --remote": diff,
            # the same diff from the local files: what the computing costs, without the network
            "surgeon diff (local files)": SURGEON + ["diff", str(base), str(tuned), "--no-plots", "-q", "--force",
                                                     "-o", str(work / "report-local")]
            + (["--module", args.module] if args.module else []),
        }
        results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in jobs}
        rng = random.Random(0)
        for r in range(args.repeat):
            order = list(jobs)
            rng.shuffle(order)
            for name in order:
                hub.reset()
                wall, rss, _cpu, rc, err = run(jobs[name], env=env)
                if rc != 0:
                    sys.exit(f"{name} failed ({rc}): {err}")
                results[name].append((wall, rss, tensor_bytes if "local" in name else hub.data_bytes))
            print(f"round {r + 1}/{args.repeat}: " + ", ".join(f"{k} {results[k][-1][0]:.2f} s" for k in jobs), flush=True)
    load_after = load_average()

    def rate(name: str) -> float:
        return statistics.median(b / w for w, _, b in results[name]) / 1e9

    what = f"module {args.module}" if args.module else "every tensor"
    fetched = statistics.median(b for _, _, b in results["surgeon diff --remote"])
    print(f"\nremote diff of a pair of {args.size:g} GB models ({args.shape}) ({what}: {fetched / 1e9:.2f} GB fetched), "
          f"loopback{f' paced to {args.rate:g} MB/s in total' if args.rate else ' (unpaced)'}, page cache warm, "
          f"median of {args.repeat}")
    print(f"{'':24} {'GB/s':>6} {'diff / this':>12} {'peak RSS MiB':>13}")
    diff_rate = rate("surgeon diff --remote")
    for name in jobs:
        rss = max(m for _, m, _ in results[name])
        print(f"{name:24} {rate(name):6.2f} {diff_rate / rate(name):11.2f}x {rss:13.0f}")
    print(f"load average before {load_before}, after {load_after}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
