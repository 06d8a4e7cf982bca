"""Run an evaluation: load tasks, build prompts, generate, grade, write the results.

Outputs (in one folder, written atomically like every surgeon output):
``results.json`` (schema ``weightsurgeon.eval/1``: the config, per-task metrics) and
``samples_<task>.jsonl`` (one record per generation: prompt, generation, thinking and
answer parts, extracted answer, correctness, token counts, finish reason).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from weightsurgeon.recipes.eval.backends import Backend, Sampling, check_backend
from weightsurgeon.recipes.eval.budget import ForcedOutput, budget_forced_generate, plain_generate
from weightsurgeon.recipes.eval.config import EvalConfig
from weightsurgeon.recipes.eval.grading import grade
from weightsurgeon.recipes.eval.metrics import summarize
from weightsurgeon.recipes.eval.parallel import make_backend
from weightsurgeon.recipes.eval.results import results_header
from weightsurgeon.recipes.tasks import Problem, get_task, load_problems, user_message

def build_prompt(problem: Problem, mode: str, backend: Backend) -> str:
    """``chat``: the model's template; ``plain``: bare text, as the paper does for merged models."""
    message = user_message(problem)
    if mode == "chat":
        return backend.chat_prompt(message)
    return message + "\n\n"


def generate(backend: Backend, prompts: list[str], cfg: EvalConfig) -> list[ForcedOutput]:
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.seed)
    fmt = cfg.thinking_format()
    if cfg.budget_forcing is None:
        return plain_generate(backend, prompts, fmt, cfg.max_tokens, sampling)
    return budget_forced_generate(
        backend, prompts, fmt, cfg.budget_forcing, cfg.max_thinking_tokens, cfg.max_answer_tokens, sampling
    )


def grade_output(problem: Problem, kind: str, out: ForcedOutput, sample: int) -> dict[str, Any]:
    """One JSONL record. Grading reads the answer part, or everything when there is none."""
    region = out.answer if out.answer.strip() else out.generation
    g = grade(kind, region, problem.answer, choices=problem.choices)
    return {
        "task": problem.task,
        "problem_id": problem.id,
        "sample": sample,
        "prompt": out.prompt,
        "generation": out.generation,
        "thinking": out.thinking,
        "answer": out.answer,
        "extracted": g.extracted,
        "normalized": g.normalized,
        "gold": problem.answer,
        "choices": list(problem.choices),
        "correct": g.correct,
        "grading": g.method,
        "thinking_tokens": out.thinking_tokens,
        "answer_tokens": out.answer_tokens,
        "total_tokens": out.total_tokens,
        "finish_reason": out.finish_reason,
        "waits": out.waits,
    }


def evaluate_task(backend: Backend, task: str, cfg: EvalConfig,
                  problems: list[Problem] | None = None) -> list[dict[str, Any]]:
    """Generate and grade one task; `problems` already read (run_eval reads every task before loading a model)."""
    spec = get_task(task)
    if problems is None:
        problems = load_problems(task, cfg.data.get(task), cfg.limit, cfg.seed)
    prompts, index = [], []
    for problem in problems:
        prompt = build_prompt(problem, cfg.prompt, backend)
        for k in range(cfg.samples):
            prompts.append(prompt)
            index.append((problem, k))
    outputs = generate(backend, prompts, cfg)
    return [grade_output(problem, spec.kind, out, k) for (problem, k), out in zip(index, outputs)]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_eval(
    cfg: EvalConfig,
    out_dir: str | Path,
    force: bool = False,
    backend: Backend | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on ``cfg.tasks``; returns what it writes to results.json."""
    from weightsurgeon.atomic import atomic_output_dir, check_output_path

    out_dir = Path(out_dir)
    model_path = Path(cfg.model)
    inputs = [model_path] if model_path.exists() else []
    check_output_path(out_dir, inputs, force)  # fail before loading a model, not after generating
    if cfg.harness == "lm-eval":
        from weightsurgeon.recipes.eval.lm_harness import run_lm_eval

        return run_lm_eval(cfg, out_dir, force, log)
    if cfg.samples > 1 and cfg.temperature == 0:
        log("warning: --samples > 1 with temperature 0 repeats the same greedy generation")
    owned = backend is None
    options = dict(cfg.backend_options)
    if owned:
        if cfg.backend == "vllm":
            options.setdefault("seed", cfg.seed)
        check_backend(cfg.backend, cfg.model, options)
    # the request, then every task's data, then the model: a bad record costs seconds, not a model load
    problems = {task: load_problems(task, cfg.data.get(task), cfg.limit, cfg.seed) for task in cfg.tasks}
    started = time.time()
    if backend is None:
        backend = make_backend(cfg.backend, cfg.model, options)
    per_task: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    try:
        for task in cfg.tasks:
            mode = "plain generation" if cfg.budget_forcing is None else f"budget forcing, {cfg.budget_forcing} x Wait"
            log(f"{task}: generating ({cfg.backend}, {cfg.prompt} prompts, {mode})")
            t0 = time.time()
            per_task[task] = evaluate_task(backend, task, cfg, problems[task])
            timings[task] = time.time() - t0
    finally:
        if owned and hasattr(backend, "close"):
            backend.close()  # data-parallel workers
    results = results_header(cfg, "surgeon", started)
    for task, records in per_task.items():
        metrics = summarize(records)
        metrics["elapsed_s"] = round(timings[task], 3)
        tokens = sum(r["total_tokens"] for r in records)
        metrics["tokens_per_s"] = round(tokens / timings[task], 2) if timings[task] > 0 else None
        metrics["samples_file"] = f"samples_{task}.jsonl"
        results["tasks"][task] = metrics
    with atomic_output_dir(out_dir, inputs, force) as tmp:
        for task, records in per_task.items():
            _write_jsonl(tmp / f"samples_{task}.jsonl", records)
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
