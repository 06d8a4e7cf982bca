"""`--harness lm-eval`: the same tasks through ``lm_eval.simple_evaluate``, for lm-eval numbers.

The task definitions ship as YAML in ``lm_eval_tasks/`` (usable directly:
``lm_eval --include_path .../lm_eval_tasks --tasks surgeon_math500``); their hooks
below reuse our loaders and grading, so both harnesses agree on every answer. A run
writes a per-run folder of thin YAMLs that include the shipped ones and override the
data source (local JSONL or another Hub id), the token cap and the repeats.

lm-eval's hf/vllm models do plain generation: budget forcing is ours only. The GPQA
choice shuffle seed is read from ``SURGEON_EVAL_SEED`` (default 0) because lm-eval's
``process_docs`` hook receives only the data set.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.eval.budget import FORMATS
from weightsurgeon.recipes.eval.config import EvalConfig
from weightsurgeon.recipes.eval.grading import grade
from weightsurgeon.recipes.eval.metrics import summarize
from weightsurgeon.recipes.eval.results import results_header
from weightsurgeon.recipes.tasks import Problem, get_task, is_local_source, normalize_row, user_message

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
SEED_ENV = "SURGEON_EVAL_SEED"


def lm_eval_task_name(task: str) -> str:
    return f"surgeon_{task}"


# --- hooks named by the YAML task files -------------------------------------------------


def _process(task: str, dataset):
    import datasets

    spec = get_task(task)
    seed = int(os.environ.get(SEED_ENV, "0"))
    rows = []
    for index, row in enumerate(dataset):
        p = normalize_row(spec, row, index, seed)
        rows.append({"id": p.id, "task": task, "question": p.question, "answer": p.answer, "choices": list(p.choices)})
    return datasets.Dataset.from_list(rows)


def process_docs_aime24(dataset):
    return _process("aime24", dataset)


def process_docs_math500(dataset):
    return _process("math500", dataset)


def process_docs_gpqa_diamond(dataset):
    return _process("gpqa_diamond", dataset)


def _problem(doc: dict[str, Any]) -> Problem:
    return Problem(doc["task"], doc["id"], doc["question"], doc["answer"], tuple(doc.get("choices") or ()))


def doc_to_text(doc: dict[str, Any]) -> str:
    return user_message(_problem(doc))


def answer_region(generation: str, think_end: str = FORMATS["think-tags"].think_end) -> str:
    """The text after the end of thinking, or all of it when the model never closed it."""
    at = generation.rfind(think_end)
    return generation[at + len(think_end) :] if at != -1 else generation


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    problem = _problem(doc)
    g = grade(get_task(problem.task).kind, answer_region(results[0]), problem.answer, choices=problem.choices)
    return {"accuracy": 1.0 if g.correct else 0.0}


# --- running ------------------------------------------------------------------------------


def write_task_yamls(cfg: EvalConfig, folder: Path) -> list[str]:
    """One thin YAML per task: include the shipped definition, override source and caps."""
    import yaml

    names = []
    for task in cfg.tasks:
        spec = get_task(task)
        name = lm_eval_task_name(task)
        override: dict[str, Any] = {
            "include": str(TASKS_DIR / f"{name}.yaml"),
            "task": name,
            "repeats": cfg.samples,
            "generation_kwargs": {
                "until": [],
                "max_gen_toks": cfg.max_tokens,
                "do_sample": cfg.temperature > 0,
                **({"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.temperature > 0 else {}),
            },
        }
        source = cfg.data.get(task)
        if is_local_source(source):
            path = Path(source).resolve()  # type: ignore[arg-type]
            if not path.is_file():
                raise SurgeonError(f"{path}: data file for task {task} not found; check --data {task}=FILE")
            fmt = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower(), "json")
            override.update(dataset_path=fmt, dataset_name=None, test_split="test",
                            dataset_kwargs={"data_files": {"test": str(path)}})
        elif source:
            hub_id, _, config = source.partition(":")
            override.update(dataset_path=hub_id, dataset_name=config or None, test_split=spec.split)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")
        names.append(name)
    return names


def task_manager(folder: Path):
    """An lm-eval TaskManager that sees only our tasks (scanning lm-eval's own takes long)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


def _model_args(cfg: EvalConfig) -> tuple[str, dict[str, Any]]:
    opts = dict(cfg.backend_options)
    if cfg.backend == "vllm":
        args: dict[str, Any] = {"pretrained": cfg.model, "seed": cfg.seed}
        for key in ("tensor_parallel_size", "data_parallel_size", "max_model_len", "gpu_memory_utilization"):
            if key in opts:
                args[key] = opts[key]
        if opts.get("dtype"):
            args["dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}.get(opts["dtype"], opts["dtype"])
        return "vllm", args
    args = {"pretrained": cfg.model}
    if opts.get("device") and opts["device"] != "auto":
        args["device"] = opts["device"]
    if opts.get("dtype") and opts["dtype"] != "auto":
        args["dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}.get(opts["dtype"], opts["dtype"])
    return "hf", args


def run_lm_eval(cfg: EvalConfig, out_dir: Path, force: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Evaluate through lm-eval; results.json has our schema plus lm-eval's own numbers."""
    try:
        import lm_eval
    except ImportError as exc:
        raise SurgeonError("--harness lm-eval needs lm-eval (pip install weightsurgeon[eval])") from exc

    started = time.time()
    previous_seed = os.environ.get(SEED_ENV)
    os.environ[SEED_ENV] = str(cfg.seed)
    model_type, model_args = _model_args(cfg)
    with tempfile.TemporaryDirectory(prefix="surgeon-lm-eval-") as folder:
        names = write_task_yamls(cfg, Path(folder))
        log(f"lm-eval: {model_type} model, tasks {', '.join(names)}")
        try:
            out = _simple_evaluate(lm_eval, cfg, model_type, model_args, names, Path(folder))
        finally:
            if previous_seed is None:
                os.environ.pop(SEED_ENV, None)
            else:
                os.environ[SEED_ENV] = previous_seed
    if out is None:  # non-zero ranks of a distributed run
        return {}
    return _write_results(cfg, out, out_dir, force, started)


def _simple_evaluate(lm_eval: Any, cfg: EvalConfig, model_type: str, model_args: dict[str, Any],
                     names: list[str], folder: Path) -> Any:
    return lm_eval.simple_evaluate(
        model=model_type,
        model_args=model_args,
        tasks=names,
        task_manager=task_manager(folder),
        limit=cfg.limit,
        batch_size=cfg.backend_options.get("batch_size", 1),
        apply_chat_template=cfg.prompt == "chat",
        log_samples=True,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        bootstrap_iters=0,
    )


def _generations(sample: dict[str, Any]) -> list[str]:
    """All K generations of a doc: lm-eval keeps one request per doc whose ``resps`` holds the repeats."""
    out: list[str] = []
    for resp in sample.get("resps", []):
        out.extend(resp if isinstance(resp, list) else [resp])
    return [str(x) for x in out]


def _prompt_of(sample: dict[str, Any]) -> str:
    """The context lm-eval sent (its sample layout differs across 0.4.x releases)."""
    args = sample.get("arguments")
    if isinstance(args, dict):
        args = list(args.values())
        first = args[0] if args else {}
        return str(next(iter(first.values()), "")) if isinstance(first, dict) else ""
    if args and isinstance(args[0], (list, tuple)) and args[0]:
        return str(args[0][0])
    return ""


def _write_results(cfg: EvalConfig, out: dict[str, Any], out_dir: Path, force: bool, started: float) -> dict[str, Any]:
    """lm-eval's samples as our records (graded again: both must agree), then results.json."""
    import lm_eval
    from transformers import AutoTokenizer

    from weightsurgeon.atomic import atomic_output_dir

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    think_end = cfg.thinking_format().think_end
    per_task: dict[str, list[dict[str, Any]]] = {}
    for task in cfg.tasks:
        records = []
        for sample in out["samples"][lm_eval_task_name(task)]:
            doc = sample["doc"]
            problem = _problem(doc)
            for k, text in enumerate(_generations(sample)):
                at = text.find(think_end)
                thinking, answer = (text[: at + len(think_end)], text[at + len(think_end) :]) if at != -1 else ("", text)
                g = grade(get_task(task).kind, answer if answer.strip() else text, problem.answer,
                          choices=problem.choices)
                n_think = len(tokenizer(thinking, add_special_tokens=False)["input_ids"]) if thinking else 0
                n_answer = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
                records.append({
                    "task": task, "problem_id": problem.id, "sample": k, "prompt": _prompt_of(sample), "generation": text, "thinking": thinking, "answer": answer,
                    "extracted": g.extracted, "normalized": g.normalized, "gold": problem.answer,
                    "choices": list(problem.choices), "correct": g.correct, "grading": g.method,
                    "thinking_tokens": n_think, "answer_tokens": n_answer, "total_tokens": n_think + n_answer,
                    "finish_reason": "unknown", "waits": 0,
                })
        per_task[task] = records
    results = results_header(cfg, "lm-eval", started)
    results["lm_eval"] = {"version": getattr(lm_eval, "__version__", "unknown"), "results": out.get("results", {})}
    for task, records in per_task.items():
        metrics = summarize(records)
        metrics["samples_file"] = f"samples_{task}.jsonl"
        # lm-eval's own number; its default filter scores only the first of several samples
        metrics["lm_eval_accuracy"] = out["results"].get(lm_eval_task_name(task), {}).get("accuracy,none")
        results["tasks"][task] = metrics
    model_path = Path(cfg.model)
    with atomic_output_dir(out_dir, [model_path] if model_path.exists() else [], force) as tmp:
        for task, records in per_task.items():
            with (tmp / f"samples_{task}.jsonl").open("w", encoding="utf-8") as fh:
                for record in records:
                    fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return results
