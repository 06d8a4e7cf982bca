"""Data parallel generation: N copies of a backend, one process each, on disjoint GPU groups.

vLLM runs one engine per process; to use 8 GPUs with a model that fits on 2, run 4
replicas (``--data-parallel-size 4 --tensor-parallel-size 2``). Each worker process sets
``CUDA_VISIBLE_DEVICES`` to its own group *before* importing torch or vLLM, builds its
backend once and then serves every ``generate`` call of the run (budget forcing makes
several). A call's prompts are split into contiguous shards, one per worker, and the
results are put back in order, so the output is the same as one backend's.

`make_backend` lives here, not in backends.py, so that the dependency runs one way:
parallel builds on backends, and a worker opens its one backend with `open_backend`.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import replace
from typing import Any, Sequence

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.eval.backends import (Backend, Generation, Sampling, _per_prompt, apply_chat, check_backend,
                                                 cuda_available, open_backend)


def gpu_groups(replicas: int, per_replica: int, visible: str | None) -> list[str | None]:
    """Disjoint device lists per replica, from CUDA_VISIBLE_DEVICES (or 0..N-1)."""
    if visible is None and per_replica == 0:
        return [None] * replicas
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
    need = replicas * per_replica
    if devices is None:
        devices = [str(i) for i in range(need)]
    if len(devices) < need:
        raise SurgeonError(f"{replicas} replicas x {per_replica} GPUs need {need} GPUs; "
                           f"CUDA_VISIBLE_DEVICES lists {len(devices)}")
    return [",".join(devices[i * per_replica : (i + 1) * per_replica]) for i in range(replicas)]


def _serve(conn: Any, name: str, model: str, options: dict[str, Any], devices: str | None) -> None:
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        backend = open_backend(name, model, options)
    except Exception as exc:  # reported to the parent, which raises it as a SurgeonError
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        prompts, caps, stop, sampling = msg
        try:
            conn.send(("ok", backend.generate(prompts, caps, stop, sampling)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class DataParallelBackend:
    """Same interface as one backend; ``generate`` fans a call out to the replicas."""

    def __init__(self, name: str, model: str, options: dict[str, Any], replicas: int,
                 gpus_per_replica: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.name = f"{name}x{replicas}"
        self.model = model
        if gpus_per_replica is None:
            gpus_per_replica = int(options.get("tensor_parallel_size", 1)) if name == "vllm" else 0
        groups = gpu_groups(replicas, gpus_per_replica, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        ctx = mp.get_context("spawn")  # a fresh interpreter: CUDA is initialised after the env is set
        self._conns, self._procs = [], []
        for devices in groups:
            parent, child = ctx.Pipe()
            # not a daemon: vLLM's engine starts processes of its own, which daemons may not
            proc = ctx.Process(target=_serve, args=(child, name, model, options, devices), daemon=False)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            self._receive(conn)

    def _receive(self, conn: Any) -> Any:
        try:
            kind, payload = conn.recv()
        except EOFError:
            self.close()
            raise SurgeonError(f"{self.model}: a data-parallel worker died without a word (killed, out of memory?); "
                               "check the system log (dmesg), or lower --data-parallel-size or --batch-size") from None
        if kind == "error":
            self.close()
            raise SurgeonError(f"{self.model}: a data-parallel worker failed: {payload}")
        return payload

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], stop: Sequence[str],
                 sampling: Sampling) -> list[Generation]:
        caps = _per_prompt(max_new_tokens, len(prompts))
        n = len(self._conns)
        size = -(-len(prompts) // n) if prompts else 0
        shards = [(i * size, min(len(prompts), (i + 1) * size)) for i in range(n)]
        busy = []
        for conn, (lo, hi) in zip(self._conns, shards):
            if lo < hi:
                # seeds offset by position, so a sample draws the same whichever replica runs it
                conn.send((list(prompts[lo:hi]), caps[lo:hi], list(stop), replace(sampling, seed=sampling.seed + lo)))
                busy.append(conn)
        out: list[Generation] = []
        for conn in busy:
            out.extend(self._receive(conn))
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, user_message: str) -> str:
        return apply_chat(self.tokenizer, user_message)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __del__(self) -> None:
        if getattr(self, "_procs", None):
            self.close()


def make_backend(name: str, model: str, options: dict[str, Any] | None = None) -> Backend | DataParallelBackend:
    """The backend a run asked for: one in this process, or ``data_parallel_size`` replicas in workers."""
    options = dict(options or {})
    check_backend(name, model, options)  # in the parent: a typo fails before any worker starts
    replicas = int(options.pop("data_parallel_size", 1))
    if replicas <= 1:
        return open_backend(name, model, options)
    gpus = None
    if name == "hf":
        gpus = 0 if options.get("device", "auto") == "cpu" or not cuda_available() else 1
    return DataParallelBackend(name, model, options, replicas, gpus)
