"""Freeze-SFT speed and memory: F2 (o_proj + norms + embeddings + head) against F4 (everything).

Runs `surgeon train` once per freeze setting, each in its own process (so each peak-memory
figure is that run's own), on a synthetic checkpoint of a real model's shape and synthetic
s1K-style rows long enough to fill ``--max-length``, at the same batch for every setting.
Everything reported comes from the runner's own report (``OUT/train/metrics.json`` and
``log_history.json``):

- trainable parameters and their share;
- steps/s over the whole run (HF Trainer's ``train_steps_per_second``) and steady steps/s
  (the runner's step timer: end of step 1 to end of the last step, so the first step's
  warm-up is left out);
- tokens/s: the runner's (all tokens over the whole train runtime), and steady tokens/s
  = steady steps/s x the mean tokens of steps 2..N (TRL logs cumulative ``num_tokens``
  every step with ``logging_steps: 1``);
- peak GPU memory: ``torch.cuda.max_memory_allocated`` (the runner's figure); where
  ``nvidia-smi`` is on the PATH, also the device's highest used memory sampled every
  0.2 s during the run (the allocator's reserve and the CUDA context included).

Usage (one GPU; CPU works too with --precision fp32, for testing the script):

    python tools/bench_train_gpu.py --shape qwen2.5-0.5b --max-length 2048 --steps 30 \
        --batch 4 --global-batch 8 --work /tmp/bench --json bench.json
    python tools/bench_train_gpu.py --shape tiny --data synth:64 --steps 8 --batch 2 --global-batch 4 \
        --precision fp32 --work /tmp/bench-tiny
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# Synthetic stand-ins of real shapes (config.json numbers; Qwen2.5 0.5B/1.5B tie their embeddings).
SHAPES = {
    "tiny": dict(arch="qwen2", num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                 vocab_size=512, tied=False),
    "tiny-tied": dict(arch="qwen2", num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                      vocab_size=512, tied=True),
    "qwen2.5-0.5b": dict(arch="qwen2", num_layers=24, hidden_size=896, intermediate_size=4864, num_heads=14,
                         num_kv_heads=2, vocab_size=151936, tied=True),
    "qwen2.5-1.5b": dict(arch="qwen2", num_layers=28, hidden_size=1536, intermediate_size=8960, num_heads=12,
                         num_kv_heads=2, vocab_size=151936, tied=True),
}
MODES = {"F2": "o_proj,norm,emb,head", "F4": "all"}


def long_rows(count: int, max_length: int, seed: int = 0) -> list[dict]:
    """s1K-shaped rows whose rendered length (one token per byte with synth's tokenizer) is
    85-97% of max_length, so batches are nearly full and nothing is truncated."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        question = f"Compute ({a} + {b}) * {c}."
        target = int(max_length * rng.uniform(0.85, 0.97)) - len(question) - 60  # chat markup and answer
        steps, x = [], a
        while sum(len(s) + 1 for s in steps) < target:
            y = rng.randint(2, 99)
            steps.append(f"Check {x} + {y} = {x + y}.")
            x = (x + y) % 1000
        thinking = " ".join(steps)[: max(target, 1)]
        rows.append({"question": question, "thinking_trajectories": [thinking],
                     "attempt": f"The answer is {(a + b) * c}."})
    return rows


class GpuMemorySampler:
    """Highest `nvidia-smi` memory.used (MiB) of GPU 0 while running; None without nvidia-smi."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> int | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5)
            return int(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = self._read()
            if used is not None:
                self.peak_mib = max(self.peak_mib or 0, used)
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuMemorySampler":
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def steady_tokens_per_second(metrics: dict, history: list[dict]) -> tuple[float | None, float | None]:
    """(mean tokens per step over steps 2..N, steady tokens/s) from cumulative num_tokens."""
    cumulative = {int(h["step"]): float(h["num_tokens"]) for h in history if "num_tokens" in h and "step" in h}
    steps = sorted(cumulative)
    sps = metrics.get("steady_steps_per_second")
    if len(steps) < 2 or steps[0] != 1:
        return None, None
    per_step = (cumulative[steps[-1]] - cumulative[1]) / (steps[-1] - 1)
    return per_step, (per_step * sps if sps else None)


def run_mode(name: str, modules: str, args: argparse.Namespace, model_dir: Path, data: str) -> dict:
    out_dir = Path(args.work) / f"out-{name}"
    overrides = [
        f"model.path={model_dir}", "model.synth=null",
        f"freeze.modules={modules}", "freeze.layers=all",
        f"data.source={data}",
        f"train.max_length={args.max_length}", f"train.max_steps={args.steps}",
        f"train.per_device_batch_size={args.batch}", f"train.global_batch_size={args.global_batch}",
        f"train.precision={args.precision}", f"train.learning_rate={args.learning_rate}",
        "train.warmup_ratio=0.0", "train.logging_steps=1",
        f"train.gradient_checkpointing={'true' if args.gradient_checkpointing else 'false'}",
        "distributed.zero_stage=3", "distributed.nproc_per_node=1", "distributed.nnodes=1",
        f"output.dir={out_dir}", "output.overwrite=true", f"output.diff={'true' if args.diff else 'false'}",
    ]
    argv = [sys.executable, "-m", "weightsurgeon", "train", args.config, *overrides]
    print("$ " + " ".join(argv), flush=True)
    env = dict(os.environ, SURGEON_PROGRESS="0")
    t0 = time.perf_counter()
    with GpuMemorySampler() as sampler:
        rc = subprocess.call(argv, env=env)
    wall = time.perf_counter() - t0
    if rc:
        return {"mode": name, "modules": modules, "rc": rc, "wall_s": wall}
    metrics = json.loads((out_dir / "train" / "metrics.json").read_text())
    history = json.loads((out_dir / "train" / "log_history.json").read_text())
    per_step, steady_tps = steady_tokens_per_second(metrics, history)
    peak = max(metrics.get("peak_memory_bytes_per_process") or [0])
    return {
        "mode": name, "modules": modules, "rc": 0, "wall_s": round(wall, 1),
        "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
        "trainable_share": metrics["trainable_share"], "steps": metrics["steps"],
        "steps_per_second": metrics["steps_per_second"], "steady_steps_per_second": metrics["steady_steps_per_second"],
        "tokens_per_second": metrics.get("tokens_per_second"), "tokens_per_step": per_step,
        "steady_tokens_per_second": steady_tps, "peak_memory_allocated_gib": peak / 2**30,
        "nvidia_smi_peak_used_gib": sampler.peak_mib / 1024 if sampler.peak_mib else None,
        "train_loss": metrics.get("train_loss"), "truncated_rows": metrics.get("truncated_rows"),
        "moved_tensors": metrics.get("moved_tensors"), "frozen_moved": len(metrics.get("frozen_moved") or []),
        "device": metrics.get("device"),
    }


def table(rows: list[dict]) -> str:
    head = ("| mode | trainable params (share) | steps/s (steady) | tokens/s (steady) | tokens/step "
            "| peak alloc GiB | nvidia-smi peak GiB | loss | frozen moved |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        if r.get("rc"):
            lines.append(f"| {r['mode']} | failed (exit {r['rc']}) |" + " |" * 7)
            continue
        smi = f"{r['nvidia_smi_peak_used_gib']:.2f}" if r["nvidia_smi_peak_used_gib"] else "-"
        steady_tps = f"{r['steady_tokens_per_second']:,.0f}" if r["steady_tokens_per_second"] else "-"
        tps = f"{r['tokens_per_second']:,.0f}" if r["tokens_per_second"] else "-"
        sss = f"{r['steady_steps_per_second']:.3f}" if r["steady_steps_per_second"] else "-"
        tps_step = f"{r['tokens_per_step']:,.0f}" if r["tokens_per_step"] else "-"
        lines.append(
            f"| {r['mode']} ({r['modules']}) | {r['trainable_params']:,} of {r['total_params']:,} "
            f"({100 * r['trainable_share']:.2f}%) | {r['steps_per_second']:.3f} ({sss}) | {tps} ({steady_tps}) "
            f"| {tps_step} | {r['peak_memory_allocated_gib']:.2f} | {smi} | {r['train_loss']:.3f} | {r['frozen_moved']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    p.add_argument("--config", default="tiny_cpu", help="base recipe (file or shipped name); the rest is overridden")
    p.add_argument("--data", default="long", help="'long' (rows filling --max-length) or a data.source such as synth:64")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4, help="per-device micro-batch")
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--no-diff", dest="diff", action="store_false", help="output.diff=false (no closing diff/bitwise check)")
    p.add_argument("--modes", default="F2,F4")
    p.add_argument("--work", required=True)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()

    from weightsurgeon.synth import make_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    dtype = "bf16" if args.precision == "bf16" else "f32"  # frozen tensors then stay bitwise equal
    model_dir = work / f"base-{args.shape}-{dtype}"
    if not (model_dir / "config.json").exists():
        t0 = time.perf_counter()
        make_checkpoint(model_dir, dtype=dtype, seed=0, shard_bytes=2 * 2**30, **shape)
        print(f"synth {args.shape} ({dtype}) -> {model_dir} in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.data == "long":
        data_file = work / f"rows-{args.max_length}.jsonl"
        rows = long_rows(args.steps * args.global_batch, args.max_length)
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = str(data_file)
    else:
        data = args.data

    results = []
    for name in [m.strip() for m in args.modes.split(",") if m.strip()]:
        modules = MODES.get(name, name)
        results.append(run_mode(name, modules, args, model_dir, data))
        print(json.dumps(results[-1]), flush=True)
    header = (f"{args.shape}, {args.precision}, ZeRO-3, 1 process, max_length {args.max_length}, "
              f"batch {args.batch} x {args.global_batch // args.batch} accumulation = {args.global_batch}, "
              f"{args.steps} steps, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print("\n" + header + "\n" + table(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": header, "args": vars(args), "rows": results}, indent=2) + "\n")
    return 1 if any(r.get("rc") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
