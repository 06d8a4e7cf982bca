"""Benchmark `surgeon extract --lora` against the by-hand way, side by side in one run.

On a synthetic bf16 base/fine-tune pair (llama-shaped, hidden 2048 by default, planted deltas)
it times, each ``--repeat`` times in alternation, for the o_proj of every layer at rank R:

- ``surgeon extract TUNED --base BASE --take o_proj --lora R`` (randomized SVD, the default),
- the same with ``--svd exact`` (LAPACK's SVD of each delta),
- by hand, as mergekit's extract_lora does it: safetensors loads both models whole into
  torch, then ``torch.linalg.svd`` (full, float32) of each o_proj delta, and
  ``safetensors.torch.save_file`` of the factors,

and reports median wall time, the ratio to the by-hand run, each process's own peak RSS, the
kept share of the squared delta norm of each method, and the load average (the machine may be
shared; ratios, never a lone absolute time).

    python tools/bench_lora.py --workdir /tmp/bench_lora [--hidden 2048 --layers 8 --rank 64 --repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_surgery import run  # noqa: E402  (wall time, the command's own peak RSS and CPU seconds)

SURGEON = [sys.executable, "-m", "weightsurgeon"]

BY_HAND = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
base, tuned, out, rank = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
def load(d):
    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd
a, b = load(base), load(tuned)
factors, kept, total = {}, 0.0, 0.0
for name in a:
    if name.endswith("o_proj.weight"):
        d = b[name].float() - a[name].float()
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        factors[name + ".lora_B"] = (u[:, :rank] * s[:rank].sqrt()).to(a[name].dtype).contiguous()
        factors[name + ".lora_A"] = (s[:rank].sqrt()[:, None] * vh[:rank]).to(a[name].dtype).contiguous()
        kept += float((s[:rank].double() ** 2).sum()); total += float((s.double() ** 2).sum())
out.mkdir(parents=True, exist_ok=True)
save_file(factors, str(out / "adapter_model.safetensors"))
print(kept / total, file=sys.stderr)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_lora"))
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="Keep the workdir.")
    args = ap.parse_args()

    from weightsurgeon.synth import make_checkpoint, make_tuned

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    base, tuned = work / "base", work / "tuned"
    if not base.exists():
        make_checkpoint(base, arch="llama", num_layers=args.layers, hidden_size=args.hidden,
                        intermediate_size=int(args.hidden * 2.6875), num_heads=16, num_kv_heads=16,
                        vocab_size=32000, dtype="bf16")
        make_tuned(base, tuned)
    script = work / "by_hand.py"
    script.write_text(BY_HAND)
    r = str(args.rank)
    cases = {
        "surgeon extract --lora (randomized)": SURGEON + ["extract", str(tuned), "--base", str(base), "--take", "o_proj", "--lora", r, "-q"],
        "surgeon extract --lora --svd exact": SURGEON + ["extract", str(tuned), "--base", str(base), "--take", "o_proj", "--lora", r, "--svd", "exact", "-q"],
        "by hand: load both + torch.linalg.svd": [sys.executable, str(script), str(base), str(tuned)],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    rss: dict[str, float] = {k: 0.0 for k in cases}
    cpus: dict[str, list[float]] = {k: [] for k in cases}
    kept: dict[str, str] = {}
    for i in range(args.repeat):
        for name, cmd in cases.items():
            out = work / f"out-{abs(hash(name)) % 10000}"
            shutil.rmtree(out, ignore_errors=True)
            full = cmd + ([str(out), r] if name.startswith("by hand") else ["-o", str(out)])
            wall, peak, cpu, rc, err = run(full)
            cpus[name].append(cpu)
            if rc != 0:
                raise SystemExit(f"{name} failed: {err}")
            times[name].append(wall)
            rss[name] = max(rss[name], peak)
            if name.startswith("by hand"):
                kept[name] = f"{float(err.strip().splitlines()[-1]):.4f}"
            else:
                kept[name] = f"{json.loads((out / 'surgeon.json').read_text())['lora']['kept_share_total']:.4f}"
    ref = statistics.median(times["by hand: load both + torch.linalg.svd"])
    print(f"o_proj of {args.layers} layers, hidden {args.hidden}, bf16, rank {args.rank}, median of {args.repeat}")
    print(f"{'':40s} {'time':>8s} {'vs by hand':>11s} {'CPU s':>7s} {'peak RSS':>10s} {'kept':>8s}")
    for name in cases:
        med = statistics.median(times[name])
        print(f"{name:40s} {med:7.2f}s {med / ref:10.2f}x {statistics.median(cpus[name]):7.2f} {rss[name]:6.0f} MiB {kept[name]:>8s}")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
