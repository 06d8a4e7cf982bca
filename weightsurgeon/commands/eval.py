"""`surgeon eval` (run, compare) and `surgeon probe`: thin click layers over weightsurgeon.recipes.eval.

``surgeon eval MODEL ...`` runs an evaluation (the group's default command, also spelled
``surgeon eval run``); ``surgeon eval compare A/ B/`` tabulates finished runs. Everything
heavy is imported inside the commands so ``surgeon --help`` stays instant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from weightsurgeon.errors import SurgeonError


class DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to ``default_command``."""

    def __init__(self, *args: Any, default_command: str = "run", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(
    "eval",
    cls=DefaultGroup,
    help=(
        "Score a checkpoint on AIME 2024, MATH500, GPQA Diamond.\n\n"
        "  surgeon eval MODEL --tasks aime24,math500 -o results/\n\n"
        "  surgeon eval compare results_a/ results_b/\n\n"
        "MODEL may also be an eval recipe (.yaml); see `surgeon eval run --help`."
    ),
)
def eval_group() -> None:
    pass


class BudgetForcing(click.ParamType):
    """A count of "Wait"s (0 or more), or ``off`` for plain generation (overrides a recipe)."""

    name = "N|off"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is OFF:
            return value
        if str(value).lower() in ("off", "none", "no"):
            return OFF
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'off'", param, ctx)
        if n < 0:
            self.fail(f"{n} is negative", param, ctx)
        return n


OFF = object()


def _parse_data(values: tuple[str, ...]) -> dict[str, str]:
    data: dict[str, str] = {}
    for value in values:
        task, sep, source = value.partition("=")
        if not sep or not task or not source:
            raise click.BadParameter(f"{value!r}: expected TASK=FILE_OR_HUB_ID", param_hint="--data")
        data[task.strip()] = source.strip()
    return data


@eval_group.command("run")
@click.argument("model", required=False)
@click.argument("overrides", nargs=-1)
@click.option("--config", "recipe", help="Eval recipe YAML, or a shipped one by name (eval_tiny, eval_paper); KEY=VALUE overrides and options given here override it.")
@click.option("--tasks", help="Comma-separated: aime24, math500, gpqa_diamond.")
@click.option("-o", "--output", help="Output folder (results.json, samples_<task>.jsonl).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--harness", type=click.Choice(["surgeon", "lm-eval"]), help="Our loop (default) or lm_eval.simple_evaluate.")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), help="transformers generate (default) or vLLM.")
@click.option("--budget-forcing", type=BudgetForcing(), help="s1 budget forcing: append 'Wait' N times (0: just force the answer); off: plain generation.")
@click.option("--prompt", type=click.Choice(["chat", "plain"]), help="Chat template (default) or plain text (merged models).")
@click.option("--limit", type=click.IntRange(min=1), help="First N problems of each task.")
@click.option("--samples", type=click.IntRange(min=1), help="Generations per problem (accuracy averages them).")
@click.option("--temperature", type=click.FloatRange(min=0), help="0 = greedy (default).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", type=int, help="Sampling seed and GPQA choice-shuffle seed.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Token cap of plain generation.")
@click.option("--max-thinking-tokens", type=click.IntRange(min=1), help="Thinking cap under budget forcing.")
@click.option("--max-answer-tokens", type=click.IntRange(min=1), help="Answer cap under budget forcing.")
@click.option("--thinking", help="Thinking-marker preset: think-tags (<think>...</think>) or s1.")
@click.option("--think-start", help="Override the thinking start marker.")
@click.option("--think-end", help="Override the thinking end marker.")
@click.option("--answer-marker", help="Text appended before the forced answer.")
@click.option("--data", "data", multiple=True, help="TASK=FILE.jsonl or TASK=owner/dataset[:config] (repeatable).")
@click.option("--device", help="hf backend: cpu, cuda, cuda:1 or auto.")
@click.option("--dtype", help="auto, bf16, f16, f32.")
@click.option("--batch-size", type=click.IntRange(min=1), help="hf backend batch size.")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), help="vllm: GPUs per model replica.")
@click.option("--data-parallel-size", type=click.IntRange(min=1), help="Model replicas, one process each (vllm: on disjoint GPU groups).")
@click.option("--max-model-len", type=click.IntRange(min=1), help="vllm: context length.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), help="vllm: GPU memory fraction.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def eval_run(model: str | None, overrides: tuple[str, ...], recipe: str | None, output: str | None, force: bool,
             quiet: bool, data: tuple[str, ...], **options: Any) -> None:
    """Evaluate MODEL (a checkpoint folder, a Hub id in the local cache, or an eval recipe .yaml).

    OVERRIDES are KEY=VALUE settings of the recipe, as for `surgeon train`: samples=4
    temperature=0.6 backend_options.max_model_len=16384 (`surgeon recipe cp eval_paper .`
    shows every key); the options below are shorthands for the common ones.

    Writes results.json (accuracy with a 95% interval, average thinking/answer/total
    tokens) and samples_<task>.jsonl (every generation, graded). Tasks load from the Hub
    (GPQA Diamond is gated: accept its terms on huggingface.co/datasets/Idavidrein/gpqa,
    then `hf auth login`) or from local JSONL with --data TASK=FILE: one object per
    line with "question" and "answer" (GPQA: "correct_answer" and "incorrect_answers",
    or "choices" and an answer letter).
    """
    from weightsurgeon.recipes.catalog import resolve_config
    from weightsurgeon.recipes.eval.config import build_config, load_recipe
    from weightsurgeon.recipes.eval.runner import run_eval
    from weightsurgeon.recipes.eval.tables import SUMMARY_HEADER, print_table, summary_rows

    words = [w for w in (model, *overrides) if w]
    plain = [w for w in words if "=" not in w]  # MODEL may stand anywhere among the overrides
    if len(plain) > 1:
        raise click.UsageError(f"one MODEL at most, got {', '.join(plain)} (overrides are KEY=VALUE)")
    model = plain[0] if plain else None
    overrides = tuple(w for w in words if "=" in w)
    if model and not recipe and model.endswith((".yaml", ".yml")) and Path(model).is_file():
        recipe, model = model, None
    raw = load_recipe(resolve_config(recipe) if recipe else None, overrides)
    if options.get("budget_forcing") is OFF:
        options["budget_forcing"] = None
        raw["budget_forcing"] = None
    backend_keys = ("device", "dtype", "batch_size", "tensor_parallel_size", "data_parallel_size",
                    "max_model_len", "gpu_memory_utilization")
    backend_options = {k: options.pop(k) for k in backend_keys if options.get(k) is not None}
    for k in backend_keys:
        options.pop(k, None)
    overrides: dict[str, Any] = dict(options, model=model, output=output,
                                     backend_options=backend_options or None, data=_parse_data(data) or None)
    cfg = build_config(raw, overrides)
    if not cfg.output:
        raise SurgeonError("no output folder given (-o/--output or `output:` in the recipe)")
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    results = run_eval(cfg, cfg.output, force=force, log=log)
    if not results:  # a non-zero rank of a distributed lm-eval run writes nothing
        return
    print_table(f"{cfg.model} ({results['harness']})", SUMMARY_HEADER, summary_rows(results))
    click.echo(f"wrote {Path(cfg.output) / 'results.json'}")


@eval_group.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
def eval_compare(runs: tuple[str, ...], csv_path: str | None) -> None:
    """Side-by-side accuracy and average generated tokens of finished runs (folders with results.json)."""
    from weightsurgeon.recipes.eval.results import load_results
    from weightsurgeon.recipes.eval.tables import compare_rows, print_table, to_csv

    loaded = [(Path(r).resolve().name, load_results(r)) for r in runs]
    header, rows = compare_rows(loaded)
    print_table("accuracy % [95% CI] and average generated tokens", header, rows)
    if csv_path:
        Path(csv_path).write_text(to_csv(header, rows), encoding="utf-8")
        click.echo(f"wrote {csv_path}")


@click.command("probe")
@click.argument("models", nargs=-1, required=True)
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--prompt", "prompt_mode", type=click.Choice(["chat", "plain"]), default="chat", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", help="hf backend: cpu, cuda or auto.")
@click.option("--dtype", help="auto, bf16, f16, f32.")
@click.option("-o", "--output", help="Folder for probe.json (every output and its evidence).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print probe.json to stdout instead of the tables.")
@click.option("--sweep", help="paper (Table 3: zero/reinit of 7 modules and remove, layers 5-30) or a sweep YAML: "
                              "every destruction applied to ONE loaded MODEL in memory.")
@click.option("--donor", help="--sweep merge (or a YAML sweep with splice): the model whose modules go into MODEL.")
@click.option("--tasks", help="--sweep: also score every cell on these tasks (aime24, math500, gpqa_diamond).")
@click.option("--data", "data", multiple=True, help="--sweep --tasks: TASK=FILE.jsonl or TASK=owner/dataset (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="--sweep --tasks: first N problems of each task.")
def probe_cmd(models: tuple[str, ...], backend: str, prompt_mode: str, max_new_tokens: int, device: str | None,
              dtype: str | None, output: str | None, force: bool, as_json: bool, sweep: str | None,
              donor: str | None, tasks: str | None, data: tuple[str, ...], limit: int | None) -> None:
    """Sort each MODEL's answers to built-in chat and math prompts into levels I-IV (paper's Table 3).

    I nonsense, II fluent but off-topic, III on-topic but wrong, IV correct; each verdict
    prints the evidence (repetition, entropy, topic words, answer found) that decided it.
    With several MODELs (say a base and its zero/reinit/remove variants) a last table
    counts the levels per model. With --sweep, one MODEL is loaded once and each
    destruction applied in memory (the same values zero/reinit/remove write) and undone:
    surgeon probe BASE --sweep paper -o table3/  (table3.csv/.md/.png, generations.jsonl);
    surgeon probe BASE --sweep merge --donor DONOR --tasks math500 --limit 50 -o table1/.
    """
    if sweep is not None:
        from weightsurgeon.commands.probe_sweep import run_sweep_command

        run_sweep_command(models, sweep, backend, prompt_mode, max_new_tokens, device, dtype, output, force, as_json,
                          donor=donor, tasks=tasks, data=_parse_data(data), limit=limit)
        return
    if donor or tasks or data or limit:
        raise click.UsageError("--donor, --tasks, --data and --limit go with --sweep")
    import json

    from weightsurgeon.atomic import check_output_path
    from weightsurgeon.recipes.eval.levels import LEVEL_NAMES
    from weightsurgeon.recipes.eval.probe import SCHEMA, probe_model, write_probe
    from weightsurgeon.recipes.eval.tables import print_table

    if output:
        check_output_path(Path(output), [], force)
    options = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    results = []
    for model in models:
        result = probe_model(model, backend, options, prompt_mode=prompt_mode, max_new_tokens=max_new_tokens)
        results.append(result)
        if as_json:
            continue
        rows = []
        for r in result["rows"]:
            text = " ".join(r["output"].split())
            rows.append([r["id"], r["level"], r["reason"], (text[:48] + "...") if len(text) > 51 else text])
        print_table(f"{model}: output levels", ["prompt", "level", "evidence", "output"], rows)
        summary = ", ".join(f"{lvl} ({LEVEL_NAMES[lvl]}): {n}" for lvl, n in result["levels"].items())
        click.echo(f"levels: {summary}")
    document = {"schema": SCHEMA, "models": results}
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    elif len(results) > 1:
        header = ["model"] + [f"{lvl} {LEVEL_NAMES[lvl]}" for lvl in LEVEL_NAMES] + ["most common"]
        rows = []
        for r in results:
            counts = r["levels"]
            top = max(counts, key=lambda lvl: (counts[lvl], list(LEVEL_NAMES).index(lvl)))
            rows.append([r["model"]] + [str(counts[lvl]) for lvl in LEVEL_NAMES] + [top])
        print_table("output levels per model", header, rows)
    if output:
        path = write_probe(document, output, force)
        click.echo(f"wrote {path}", err=as_json)
