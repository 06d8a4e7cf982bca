"""Run one freeze-SFT recipe: TRL ``SFTTrainer`` on HF ``Trainer`` + DeepSpeed.

One process per device; the launchers (torchrun, accelerate, deepspeed) start them, and
``python -m weightsurgeon.recipes.train.runner CONFIG [key=value ...]`` is what they run.
Started without a launcher it runs as a world of one on this machine.

Order matters under ZeRO-3: the process group and the trainer arguments (which hold
the DeepSpeed config that makes ``from_pretrained`` partition weights as they load)
come before the model; parameters are frozen before the engine is built; the weights
are gathered on save, and the saved file is checked for the empty tensors that a
direct ``save_pretrained`` of a partitioned model would write.

Output: the checkpoint, built in a hidden sibling directory and renamed into place when
complete, with ``train/`` holding the recipe, DeepSpeed config, data reports, metrics,
loss curve and the closing diff.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from weightsurgeon.errors import Interrupted, SurgeonError

from .config import RecipeConfig, gradient_accumulation, load_config

REPORT_DIR = "train"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_environment() -> None:
    """Make a bare process a world of one, and pick DeepSpeed's CPU accelerator without GPUs."""
    if "RANK" not in os.environ:
        os.environ.update(
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port())}
        )
    os.environ.setdefault("LOCAL_RANK", "0")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # DeepSpeed calls torch.distributed collectives under their deprecated names once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed\..*deprecated")


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]


def sft_args(cfg: RecipeConfig, work_dir: Path, world_size: int) -> Any:
    """TRL SFTConfig from the recipe. Creating it arms ZeRO-3 partitioning for from_pretrained."""
    from trl import SFTConfig

    from .deepspeed_config import deepspeed_config

    t = cfg.train
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (old name warns).
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    checkpointing = {
        prefix: t.gradient_checkpointing,
        f"{prefix}_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
    }
    if t.precision != "fp32" and not _on_gpu():
        raise SurgeonError(f"train.precision={t.precision} needs a GPU; on CPU set train.precision=fp32")
    return SFTConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation(cfg, world_size),
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        **checkpointing,
        max_length=t.max_length,
        completion_only_loss=t.loss == "completion_only",
        assistant_only_loss=t.loss == "assistant_only",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="no",
        report_to="none",
        deepspeed=deepspeed_config(cfg),
        accelerator_config={"use_configured_state": True},
        ddp_backend=None if _on_gpu() else "gloo",
        dataloader_pin_memory=_on_gpu(),
        disable_tqdm=os.environ.get("SURGEON_PROGRESS", "1") == "0",
    )


class _Timer:
    """Trainer callback: wall time per optimizer step, so steady-state steps/s leaves out warm-up."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.start = 0.0

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timer = self

        class StepTimer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - HF signature
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                timer.step_ends.append(time.perf_counter())

        return StepTimer()

    def steady_steps_per_second(self) -> float | None:
        if len(self.step_ends) < 3:
            return None
        return (len(self.step_ends) - 1) / (self.step_ends[-1] - self.step_ends[0])


def peak_memory_bytes() -> int:
    """This process's high-water mark: GPU allocator peak on CUDA, resident set on CPU."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _shutdown_process_group() -> None:
    """Wait for every rank, then tear the process group down.

    Without this, a rank that finishes first (every rank but 0, which still writes the
    report) exits with the process group alive, and its communication threads are killed
    at interpreter exit: "terminate called without an active exception", SIGABRT, and the
    launcher fails the whole run (seen once in CI on the 2-process ZeRO-3 test).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def resolve_checkpoint_dir(path: str) -> Path:
    """A local directory for a model given as a path or a Hub id (cached, or fetched when online)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]  # never pickles
    try:
        return Path(snapshot_download(path, local_files_only=True, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - not cached: try the Hub unless offline
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise SurgeonError(f"model {path!r}: not a directory and not in the local Hugging Face cache (HF_HUB_OFFLINE is set)")
    try:
        return Path(snapshot_download(path, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise SurgeonError(f"model {path!r}: not a local directory, and fetching it from the Hub failed "
                           f"({str(exc)[:200]}); check the path, or the Hub id and the network") from None


def check_saved(out_dir: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse a checkpoint with empty or misshapen tensors (the ZeRO-3 direct-save failure)."""
    from safetensors import safe_open

    files = sorted(out_dir.glob("*.safetensors"))
    if not files:
        raise SurgeonError(f"{out_dir}: training wrote no safetensors file")
    seen: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                seen[name] = tuple(handle.get_slice(name).get_shape())
    empty = [n for n, s in seen.items() if 0 in s or (s == () and expected.get(n, ()) != ())]
    if empty:
        raise SurgeonError(
            f"{out_dir}: saved tensor {empty[0]} is empty ({len(empty)} in all): ZeRO-3 weights were not "
            "gathered on save (stage3_gather_16bit_weights_on_model_save)"
        )
    for name, shape in expected.items():
        if name in seen and seen[name] != shape:
            raise SurgeonError(f"{out_dir}: saved tensor {name} has shape {list(seen[name])}, expected {list(shape)}")
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise SurgeonError(f"{out_dir}: saved checkpoint lacks {missing[0]} ({len(missing)} tensors missing)")


def write_loss(log_history: list[dict[str, Any]], report_dir: Path, title: str) -> None:
    """loss.csv and a loss-curve PNG in the manner of the paper's Fig. 6."""
    rows = [h for h in log_history if "loss" in h and "step" in h]
    with open(report_dir / "loss.csv", "w", encoding="utf-8") as f:
        f.write("step,epoch,loss,learning_rate,grad_norm,num_tokens\n")
        for h in rows:
            f.write(
                f"{h['step']},{h.get('epoch', '')},{h['loss']},{h.get('learning_rate', '')},"
                f"{h.get('grad_norm', '')},{h.get('num_tokens', '')}\n"
            )
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in rows], [float(h["loss"]) for h in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(report_dir / "loss.png", dpi=120)
    plt.close(fig)


def _prepare_data(cfg: RecipeConfig, tokenizer: Any, base_dir: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from . import data

    rows = data.load_rows(cfg.data, base_dir)
    pairs = data.to_prompt_completion(rows, tokenizer, cfg.data)
    dc = cfg.data.decontaminate
    eval_texts = data.eval_texts_for_tasks(dc.tasks, base_dir)
    for path in dc.files:
        local = Path(path)
        if base_dir is not None and not local.is_absolute() and not local.exists():
            local = base_dir / local
        eval_texts.extend(data.read_eval_file(local))
    pairs, decon = data.decontaminate(pairs, eval_texts, dc.ngram)
    if not pairs:
        raise SurgeonError(f"data.source {cfg.data.source}: decontamination ({dc.ngram}-gram overlap with the "
                           "evaluation sets) dropped every training row; check data.decontaminate (tasks, files, "
                           "ngram) and the data")
    lengths = data.length_report(pairs, tokenizer, cfg.train.max_length)
    if lengths["rows_without_completion"] == lengths["rows"]:
        raise SurgeonError(
            f"train.max_length={cfg.train.max_length} leaves no completion token in any row "
            f"(the shortest prompt has {lengths['prompt_min']} tokens); raise train.max_length"
        )
    if cfg.train.loss == "assistant_only":
        examples = [data.to_messages(row, cfg.data, i) for i, row in enumerate(rows)]
        kept = {d["row"] for d in decon.dropped}
        examples = [e for i, e in enumerate(examples) if i not in kept]
    else:
        examples = [{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs]
    return examples, {"decontamination": decon.to_dict(), "lengths": lengths}


def _closing_diff(base: Path, tuned: Path, trainable: set[str], report_dir: Path) -> dict[str, Any] | None:
    """Which tensors moved, read from the `surgeon diff` of the result against the start.

    The diff streams both checkpoints in bounded chunks and already measures every
    tensor's delta, so its per-tensor rows answer "moved or not" without a second pass;
    frozen tensors must not move. None (with a warning) if the diff itself fails: the
    trained checkpoint is still good.
    """
    from weightsurgeon.diff import diff_checkpoints  # the Delta stethoscope (`surgeon diff`)

    try:
        report = diff_checkpoints(base, [tuned], labels=["tuned"], allow_missing=True)
        (report_dir / "diff").mkdir(exist_ok=True)
        report.write_json(report_dir / "diff" / "report.json")
        report.write_csv(report_dir / "diff" / "report.csv")
    except Exception as exc:  # noqa: BLE001 - hours of training are not thrown away over the report
        print(f"warning: surgeon diff of the result failed, moved tensors not checked: {exc}", file=sys.stderr)
        return None
    return moved_tensors(report, trainable)


def moved_tensors(report: Any, trainable: set[str]) -> dict[str, Any]:
    """Sort a DiffReport's tensors into moved and unchanged.

    A tensor moved when its dtype or shape changed or its delta is not exactly zero; the
    kernel sums squared differences in float64, where any two distinct stored values
    differ. A tensor with NaN/Inf values counts as moved: the delta cannot compare them.
    """
    moved, unchanged = [], []
    for t in report.tensors:
        same = (t.dtype == t.dtype_tuned and not t.added_rows and t.stats.n_nonfinite == 0
                and t.stats.sum_sq_delta == 0.0)
        (unchanged if same else moved).append(t.name)
    where = {m["name"]: m["where"] for m in report.missing}
    moved += [name for name, w in where.items() if w == "shape"]
    moved.sort()
    return {
        "moved": moved,
        "unchanged_count": len(unchanged),
        "frozen_moved": [n for n in moved if n not in trainable],
        "trainable_unchanged": sorted(n for n in unchanged if n in trainable),
        "only_in_base": sorted(n for n, w in where.items() if w == "base_only"),
        "only_in_result": sorted(n for n, w in where.items() if w == "tuned_only"),
    }


def _work_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


def run(cfg: RecipeConfig, base_dir: Path | None = None) -> dict[str, Any]:
    """Train, save, report. Returns the summary (on every rank; files are written by rank 0)."""
    prepare_environment()
    from accelerate import PartialState

    state = PartialState(backend=None if _on_gpu() else "gloo")
    rank0 = state.is_main_process
    world = state.num_processes

    final = Path(cfg.output.dir).expanduser().resolve()
    work = _work_dir(final)
    error = None
    if rank0:
        from weightsurgeon.atomic import check_output_path

        model_dir = Path(cfg.model.path).expanduser().resolve()
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            check_output_path(final, [model_dir], force=cfg.output.overwrite)
        except (SurgeonError, OSError) as exc:
            error = str(exc)
        if error is None:
            shutil.rmtree(work, ignore_errors=True)
            (work / REPORT_DIR).mkdir(parents=True)
            if cfg.model.synth and not model_dir.exists():
                from weightsurgeon.synth import make_checkpoint

                make_checkpoint(model_dir, **cfg.model.synth)
    error = _broadcast(error)
    if error:
        # values: rank 0's refusal of the output folder (check_output_path's rows, or the OSError of making its parent), on every rank
        raise SurgeonError(error)
    try:
        summary = _train(cfg, state, work, base_dir, world)
        _barrier()
        if rank0:
            from weightsurgeon.atomic import move_into_place

            summary["output"] = str(final)
            from weightsurgeon.card import write_train_card

            write_train_card(work, cfg.model.path, cfg.freeze.modules, cfg.freeze.layers, cfg.name, final,
                             command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
            (work / REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            move_into_place(work, final, force=True)  # never a moment with neither the old nor the new output
        _barrier()
        return summary
    except BaseException:
        if rank0:
            shutil.rmtree(work, ignore_errors=True)
        raise


def _train(cfg: RecipeConfig, state: Any, work: Path, base_dir: Path | None, world: int) -> dict[str, Any]:
    import torch
    import yaml
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from .deepspeed_config import deepspeed_config
    from .freeze import apply_freeze, format_plan

    rank0 = state.is_main_process
    report_dir = work / REPORT_DIR
    model_path = str(resolve_checkpoint_dir(cfg.model.path))
    if cfg.world_size != world and rank0:
        print(f"note: the recipe names {cfg.world_size} processes, this launch has {world}; "
              f"gradient accumulation keeps the global batch at {cfg.train.global_batch_size}", file=sys.stderr)

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples, data_reports = _prepare_data(cfg, tokenizer, base_dir)
    lengths = data_reports["lengths"]
    if rank0:
        (report_dir / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (report_dir / "deepspeed.json").write_text(json.dumps(deepspeed_config(cfg), indent=2) + "\n")
        (report_dir / "decontamination.json").write_text(json.dumps(data_reports["decontamination"], indent=2) + "\n")
        (report_dir / "lengths.json").write_text(json.dumps(lengths, indent=2) + "\n")
        dropped = data_reports["decontamination"]["dropped_count"]
        print(f"data: {len(examples)} rows ({dropped} dropped by {cfg.data.decontaminate.ngram}-gram decontamination); "
              f"tokens mean {lengths['mean']:.0f}, p90 {lengths['p90']}, max {lengths['max']}", file=sys.stderr)
        if lengths["truncated_rows"]:
            print(f"warning: {lengths['truncated_rows']} of {lengths['rows']} rows exceed train.max_length="
                  f"{lengths['max_length']} and are truncated ({lengths['completion_tokens_lost']} completion "
                  "tokens cut)", file=sys.stderr)
        if lengths["rows_without_completion"]:
            print(f"warning: {lengths['rows_without_completion']} rows keep no completion token within "
                  "train.max_length and are dropped from training", file=sys.stderr)

    args = sft_args(cfg, work, world)  # before the model: arms zero.Init
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=_dtype(cfg.train.precision), trust_remote_code=cfg.model.trust_remote_code
    )
    expected = _param_shapes(model)
    plan = apply_freeze(model, cfg.freeze)
    if rank0:
        (report_dir / "freeze.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
        print(format_plan(plan), file=sys.stderr)

    timer = _Timer()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        callbacks=[timer.callback()],
    )
    trainable_now = sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in trainer.model.parameters() if p.requires_grad)
    result = trainer.train()
    peaks = _gather(peak_memory_bytes())
    trainer.save_model(str(work))
    _barrier()

    summary: dict[str, Any] = {
        "recipe": cfg.name,
        "world_size": world,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "trainable_params": plan.trainable_params,
        "trainable_params_in_engine": trainable_now,
        "total_params": plan.total_params,
        "trainable_share": plan.share,
        "steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "steps_per_second": result.metrics.get("train_steps_per_second"),
        "steady_steps_per_second": timer.steady_steps_per_second(),
        "samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_loss": result.metrics.get("train_loss"),
        "peak_memory_bytes_per_process": peaks,
        "data_rows": len(examples),
        "decontaminated_rows": data_reports["decontamination"]["dropped_count"],
        "truncated_rows": lengths["truncated_rows"],
    }
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    if tokens and result.metrics.get("train_runtime"):
        summary["tokens"] = int(float(tokens[-1]))
        summary["tokens_per_second"] = float(tokens[-1]) / result.metrics["train_runtime"]
    if state.is_main_process:
        (work / "training_args.bin").unlink(missing_ok=True)  # a pickle; checkpoints here stay pickle-free
        check_saved(work, expected)
        write_loss(trainer.state.log_history, report_dir, f"{cfg.name or 'freeze-SFT'}: {plan.modules}")
        (report_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
        diff = _closing_diff(Path(model_path), work, set(plan.trainable), report_dir) if cfg.output.diff else None
        if diff is not None:
            (report_dir / "diff.json").write_text(json.dumps(diff, indent=2) + "\n")
            summary["moved_tensors"] = len(diff["moved"])
            summary["frozen_moved"] = diff["frozen_moved"]
            if diff["frozen_moved"]:
                print(f"warning: {len(diff['frozen_moved'])} frozen tensors differ from the starting model "
                      f"(e.g. {diff['frozen_moved'][0]}); a dtype change (train.precision vs the checkpoint's "
                      "dtype) does this", file=sys.stderr)
        (report_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _param_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Full shapes of what save_pretrained writes: parameters (ZeRO-3 keeps them in ds_shape)."""
    shapes = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shapes[name] = tuple(getattr(p, "ds_shape", p.shape))
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        shapes.pop("lm_head.weight", None)
    return shapes


def summary_line(s: dict[str, Any]) -> str:
    """One line for the terminal; the full numbers are in train/metrics.json."""
    mem = max(s.get("peak_memory_bytes_per_process") or [0]) / 2**30
    tps = s.get("tokens_per_second")
    return (
        f"trained {s['trainable_params']:,} of {s['total_params']:,} parameters ({100 * s['trainable_share']:.2f}%) "
        f"for {s['steps']} steps on {s['world_size']} process(es): {s['steps_per_second']} steps/s"
        + (f", {tps:,.0f} tokens/s" if tps else "")
        + f", peak memory {mem:.2f} GiB/process; {s.get('moved_tensors', '?')} tensors moved -> {s['output']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point for launchers: ``python -m weightsurgeon.recipes.train.runner CONFIG [k=v ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m weightsurgeon.recipes.train.runner CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 2
    try:
        path = Path(argv[0])
        cfg = load_config(path, argv[1:])
        summary = run(cfg, base_dir=path.resolve().parent)
        _shutdown_process_group()  # on success only: after a failure the other ranks may never reach a barrier
        if summary.get("output"):
            print(summary_line(summary))
    except (SurgeonError, Interrupted) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
