"""The benchmarks' models: real checkpoint shapes scaled to a size, generated once and reused.

Every benchmark in tools/ takes ``--shape`` and ``--size`` and calls `ensure_models`: the
models are written by weightsurgeon.synth into a work folder with a stamp of what was asked
for, and the next run with the same stamp reuses them (generating a 12 GB pair takes
minutes; measuring it again should not). The shapes are those of released models, with the
decoder layer count scaled so that one model is about ``--size`` GB:

    qwen2.5-14b  Qwen2.5-14B: 5120 hidden, 13824 intermediate, 40/8 heads, 152064 vocab (48 layers)
    llama3-8b    Llama-3-8B: 4096 hidden, 14336 intermediate, 32/8 heads, 128256 vocab (32 layers)
    qwen3-moe    Qwen3-30B-A3B: 2048 hidden, 128 experts of 768, 32/4 heads, 151936 vocab (48 layers)
    small        1024 hidden, 2816 intermediate, 16/4 heads, 32000 vocab: many layers per GB
    moe-10k      64 layers x 52 experts of 4 x 8, F32: about 10k tensors in 3 MB (cost per tensor)
    moe-100k     64 layers x 512 experts of 4 x 8, F32: about 99k tensors in 24 MB (issue 19's shape)
    one-tensor   a single bf16 matrix of --size GB (no per-tensor cost at all)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

# name -> synth.make_checkpoint arguments; "layers" None means: scaled to --size.
SHAPES: dict[str, dict] = {
    "qwen2.5-14b": dict(arch="qwen2", hidden_size=5120, intermediate_size=13824, num_heads=40, num_kv_heads=8,
                        vocab_size=152064, dtype="bf16"),
    "llama3-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_heads=32, num_kv_heads=8,
                      vocab_size=128256, dtype="bf16"),
    "qwen3-moe": dict(arch="qwen3_moe", hidden_size=2048, intermediate_size=768, num_heads=32, num_kv_heads=4,
                      vocab_size=151936, num_experts=128, dtype="bf16"),
    "small": dict(arch="qwen2", hidden_size=1024, intermediate_size=2816, num_heads=16, num_kv_heads=4,
                  vocab_size=32000, dtype="bf16"),
    "moe-10k": dict(arch="qwen3_moe", hidden_size=8, intermediate_size=4, num_heads=2, num_kv_heads=1,
                    vocab_size=512, num_experts=52, num_layers=64, dtype="f32"),
    "moe-100k": dict(arch="qwen3_moe", hidden_size=8, intermediate_size=4, num_heads=2, num_kv_heads=1,
                     vocab_size=512, num_experts=512, num_layers=64, dtype="f32"),
    "one-tensor": dict(dtype="bf16"),
}
SHARD_BYTES = 2_000_000_000  # shards of at most 2 GB, as releases ship 2-5 GB ones
FAST_FROM_GB = 2.0  # from this size on, values come from reinit's parallel generator (synth's fast=True)


def shape_args(shape: str, size_gb: float) -> dict:
    """make_checkpoint's arguments for `shape` at about size_gb GB per model."""
    from weightsurgeon.format import itemsize
    from weightsurgeon.synth import SYNTH_DTYPES, ModelShape, tensor_specs

    if shape not in SHAPES:
        raise SystemExit(f"--shape must be one of {', '.join(SHAPES)}, not {shape!r}")
    args = dict(SHAPES[shape])
    if shape == "one-tensor" or "num_layers" in args:
        return args
    width = itemsize(SYNTH_DTYPES[args["dtype"]])
    fields = {k: args[k] for k in ("arch", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                                   "vocab_size")}
    fields["num_experts"] = args.get("num_experts", 0)

    def nbytes(layers: int) -> int:
        specs = tensor_specs(ModelShape(num_layers=layers, **fields), tied=False)
        return sum(math.prod(s) for _, s in specs) * width

    fixed, per_layer = nbytes(0), nbytes(1) - nbytes(0)
    args["num_layers"] = max(1, round((size_gb * 1e9 - fixed) / per_layer))
    return args


def model_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _make_one_tensor(path: Path, size_gb: float) -> None:
    """A single-file model holding one bf16 lm_head of about size_gb (4096 wide)."""
    from weightsurgeon.synth import write_weights

    rows = max(1, round(size_gb * 1e9 / (4096 * 2)))
    write_weights(path, [("lm_head.weight", (rows, 4096))], "bf16", shard_bytes=None)


def ensure_models(workdir: Path, shape: str, size_gb: float, tuned: int = 1, donor: bool = False) -> dict[str, Path]:
    """BASE, `tuned` fine-tunes of it (planted deltas, seeds 1..tuned) and optionally an independent DONOR.

    Reused when the work folder's stamp matches; otherwise the folder is emptied and the
    models written again. Returns {"base": ..., "tuned1": ..., "donor": ...}.
    """
    from weightsurgeon.synth import make_checkpoint, make_tuned

    args = shape_args(shape, size_gb)
    fast = size_gb >= FAST_FROM_GB  # numpy's PCG64 on one thread makes ~100 MB/s: hours for a 2 x 12 GB pair
    stamp = {"shape": shape, "size_gb": size_gb, "args": args, "tuned": tuned, "donor": donor, "fast": fast,
             "version": 1}
    names = ["base", *(f"tuned{i}" for i in range(1, tuned + 1)), *(["donor"] if donor else [])]
    paths = {name: workdir / name for name in names}
    marker = workdir / "models.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp and all(model_files(p) for p in paths.values()):
        return paths
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.perf_counter()
    print(f"generating {', '.join(names)} ({shape}, {args.get('num_layers', 1)} layers, ~{size_gb:g} GB each) "
          f"in {workdir} ...", file=sys.stderr, flush=True)
    for name, path in paths.items():
        if shape == "one-tensor":
            if name == "base":
                _make_one_tensor(path, size_gb)
            else:
                make_tuned(paths["base"], path, seed=int(name[5:]) if name.startswith("tuned") else 99)
        elif name == "base" or name == "donor":
            make_checkpoint(path, seed=0 if name == "base" else 1, shard_bytes=SHARD_BYTES, fast=fast, **args)
        else:
            make_tuned(paths["base"], path, seed=int(name[5:]), fast=fast)
    marker.write_text(json.dumps(stamp))
    print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return paths


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def add_model_arguments(ap, default_workdir: str) -> None:
    """--shape, --size and --workdir, the same in every benchmark."""
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES), help="model shape (default small)")
    ap.add_argument("--size", type=float, default=1.3, help="GB per model, by scaling the layer count (default 1.3)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("BENCH_WORKDIR", "/tmp")) / default_workdir,
                    help="where the models are generated and kept for the next run")


def drop_cached(files: list[Path]) -> None:
    """Make the files cold: flush them, then ask the kernel to drop their pages (no root needed)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
