"""Benchmark the delta kernel against its numpy twin and a memory-read bound, side by side.

    python tools/bench_kernels.py                 # 32M elements per side, all cores numba sees
    python tools/bench_kernels.py --threads 2 --elements 64M --json out.json

For BF16, F16 and F32 it times, on the same in-memory chunk pair (buffers allocated and
touched once, then reused, as the streaming diff does):

- kernel: accumulate_delta (decode, statistics, histogram), numba threads as configured;
- numpy twin: reference_delta_stats, single-threaded (on a slice: it allocates float64
  temporaries several times the input);
- read bound: a numba parallel sum over the same bytes viewed as uint64 (same threads),
  and numpy's single-threaded np.add.reduce over them;
- copy: np.copyto of the same bytes into a reused buffer;
- kernel, 1 core: the kernel on one thread, timed in CPU seconds, so that other processes
  on a shared machine do not count; twice that is what two idle cores would reach at
  perfect scaling.

Throughput counts the bytes of A and B together. It also measures, in fresh processes
with an empty numba cache directory, the first-call compile time of the kernels and then
the cached load time. The machine's load average is printed: other work on the cores
skews every number, so compare ratios taken in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def parse_count(text: str) -> int:
    """'32M' -> 33554432; plain integers pass through."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def best_seconds(fn, repeat: int, clock=time.perf_counter) -> float:
    fn()  # warm: compile, page in
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def single_thread_cpu_seconds(fn, repeat: int) -> float:
    """Best CPU seconds of fn on one numba thread: what one core does, whatever else runs on the machine."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return best_seconds(fn, repeat, clock=time.process_time)
    finally:
        numba.set_num_threads(threads)


def make_pair(n: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A weights-like base (N(0, 0.02)) and a tuned copy (relative change ~10%), stored as `dtype`."""
    from weightsurgeon.kernels.decode import encode_from_float32

    rng = np.random.default_rng(seed)
    a = np.empty(n, dtype=np.float32)
    b = np.empty(n, dtype=np.float32)
    step = 1 << 22
    for start in range(0, n, step):
        m = min(step, n - start)
        a[start : start + m] = rng.standard_normal(m, dtype=np.float32) * np.float32(0.02)
        b[start : start + m] = a[start : start + m] + rng.standard_normal(m, dtype=np.float32) * np.float32(0.002)
    return encode_from_float32(a, dtype), encode_from_float32(b, dtype)


def read_bound_kernel():
    from numba import njit, prange

    @njit(parallel=True, nogil=True, cache=False)
    def sum_words(x):
        total = np.uint64(0)
        for i in prange(x.size):
            total += x[i]
        return total

    return sum_words


def compile_times() -> dict[str, float]:
    """Seconds to import + warm up the kernels with an empty cache, then with that cache."""
    code = (
        "import time; t = time.perf_counter(); import weightsurgeon.kernels.delta as k; k.warmup(); "
        "print(time.perf_counter() - t)"
    )
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-kernels-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label, program in (("first_call_compile_s", code), ("cached_load_s", code)):
            result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
            out[label] = float(result.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", default="32M", help="elements per side (default 32M)")
    parser.add_argument("--twin-elements", default="4M", help="elements the numpy twin runs on (default 4M)")
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: numba's default)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions, best is kept (default 5)")
    parser.add_argument("--dtypes", default="BF16,F16,F32")
    parser.add_argument("--no-compile-times", action="store_true", help="skip the fresh-process compile timing")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import numba

    from weightsurgeon.kernels.delta import accumulate_delta, warmup
    from weightsurgeon.kernels.reference import reference_delta_stats
    from weightsurgeon.kernels.stats import DeltaStats

    if args.threads:
        numba.set_num_threads(args.threads)
    n = parse_count(args.elements)
    n_twin = min(n, parse_count(args.twin_elements))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"numba {numba.__version__}, numpy {np.__version__}, {numba.get_num_threads()} numba threads, "
          f"{os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{n:,} elements per side (twin: {n_twin:,}), best of {args.repeat}")
    warmup()
    sum_words = read_bound_kernel()
    results: dict = {"elements": n, "twin_elements": n_twin, "threads": numba.get_num_threads(),
                     "load_average": list(load), "dtypes": {}}
    header = (f"{'dtype':6} {'kernel':>10} {'numpy twin':>11} {'read bound':>11} {'np reduce':>10} {'copy':>10} "
              f"{'kernel/read':>12} {'kernel, 1 core CPU-time':>24}")
    print(header)
    print("-" * len(header))
    for dtype in args.dtypes.split(","):
        a, b = make_pair(n, dtype)
        nbytes = a.nbytes + b.nbytes
        words_a, words_b = a.view(np.uint8).view(np.uint64), b.view(np.uint8).view(np.uint64)
        copy_target = np.empty_like(a)
        copy_target[...] = a  # touch once: first-touch memory is several times slower
        copy_b = np.empty_like(b)
        copy_b[...] = b

        def kernel():
            accumulate_delta(DeltaStats.empty(), a, b, dtype, dtype)

        def twin():
            reference_delta_stats(a[:n_twin], b[:n_twin], dtype, dtype)

        def read():
            sum_words(words_a)
            sum_words(words_b)

        def reduce():
            np.add.reduce(words_a)
            np.add.reduce(words_b)

        def copy():
            np.copyto(copy_target, a)
            np.copyto(copy_b, b)

        rates = {
            "kernel": nbytes / best_seconds(kernel, args.repeat) / 1e9,
            "numpy_twin": (a[:n_twin].nbytes + b[:n_twin].nbytes) / best_seconds(twin, max(1, args.repeat // 2)) / 1e9,
            "read_bound": nbytes / best_seconds(read, args.repeat) / 1e9,
            "np_reduce": nbytes / best_seconds(reduce, args.repeat) / 1e9,
            "copy": nbytes / best_seconds(copy, args.repeat) / 1e9,
            "kernel_1core_cpu": nbytes / single_thread_cpu_seconds(kernel, args.repeat) / 1e9,
        }
        results["dtypes"][dtype] = rates
        print(f"{dtype:6} {rates['kernel']:7.2f} GB/s {rates['numpy_twin']:8.2f} GB/s {rates['read_bound']:8.2f} GB/s "
              f"{rates['np_reduce']:7.2f} GB/s {rates['copy']:5.2f} GB/s {rates['kernel'] / rates['read_bound']:11.0%} "
              f"{rates['kernel_1core_cpu']:19.2f} GB/s")
        del a, b, words_a, words_b, copy_target, copy_b
    if not args.no_compile_times:
        results.update(compile_times())
        print(f"first call, empty cache: {results['first_call_compile_s']:.1f} s (import + compile); "
              f"fresh process with that cache: {results['cached_load_s']:.2f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
