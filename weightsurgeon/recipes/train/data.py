"""Training rows -> prompt/completion text: loading, chat formatting, decontamination, lengths.

The text is rendered here with the model's own chat template (not inside the trainer),
so that what is measured (token lengths, truncation, contamination) is exactly what is
trained, and TRL's completion-only loss masks everything up to the end of the prompt.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.records import read_records

from .config import DataConfig

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(cfg: DataConfig, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows from a local JSONL/JSON/parquet file, or a Hub data set id (via `datasets`)."""
    if cfg.source.startswith("synth:"):
        try:
            count = int(cfg.source.split(":", 1)[1])
        except ValueError:
            raise SurgeonError(f"data.source {cfg.source!r}: expected synth:N with N rows") from None
        rows = synthetic_rows(count)
        return rows[: cfg.max_samples] if cfg.max_samples is not None else rows
    source = Path(cfg.source).expanduser()
    if base_dir is not None and not source.is_absolute() and not source.exists():
        if (base_dir / source).exists():
            source = base_dir / source
    if source.suffix in LOCAL_SUFFIXES or source.exists():
        if not source.is_file():
            raise SurgeonError(f"{source}: data file not found")
        rows = _load_local(source)
    else:
        rows = _load_hub(cfg.source, cfg.split)
    if cfg.max_samples is not None:
        rows = rows[: cfg.max_samples]
    if not rows:
        raise SurgeonError(f"{cfg.source}: the data set has no rows")
    return rows


def synthetic_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """s1K-shaped rows (question, thinking_trajectories, attempt) of small arithmetic problems."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        total = (a + b) * c
        rows.append({
            "question": f"Compute ({a} + {b}) * {c}.",
            "thinking_trajectories": [f"First {a} + {b} = {a + b}. Then {a + b} * {c} = {total}."],
            "attempt": f"The answer is {total}.",
        })
    return rows


def _load_local(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import datasets

        return list(datasets.Dataset.from_parquet(str(path)))
    return list(read_records(path, "data"))


def _load_hub(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one line for the user
        raise SurgeonError(f"data set {name!r} (split {split!r}) could not be loaded ({str(exc)[:200]}); check the "
                           "id and split, or give a local .jsonl, .json or .parquet file as data.source") from None


def _text(value: Any) -> str:
    """s1K stores the thinking trace as a one-element list."""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _field(row: dict[str, Any], name: str, index: int) -> str:
    if name not in row:
        raise SurgeonError(f"data row {index}: no column {name!r} (columns: {', '.join(sorted(row))})")
    return _text(row[name])


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise SurgeonError("the tokenizer has no chat template; use data.format=prompt_completion with rendered text")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _eos(tokenizer: Any) -> str:
    return tokenizer.eos_token or ""


def to_prompt_completion(rows: list[dict[str, Any]], tokenizer: Any, cfg: DataConfig) -> list[dict[str, str]]:
    """Render each row as {"prompt", "completion", "question"} strings.

    ``question`` is the user-visible text, the part compared with evaluation sets.
    """
    pairs = []
    for i, row in enumerate(rows):
        if cfg.format == "s1k":
            question = _field(row, cfg.question_field, i)
            messages = [{"role": "user", "content": question}]
            if cfg.system_prompt:
                messages.insert(0, {"role": "system", "content": cfg.system_prompt})
            prompt = _render(tokenizer, messages, generation_prompt=True)
            completion = (
                cfg.think_start
                + _field(row, cfg.thinking_field, i).strip()
                + cfg.think_end
                + cfg.answer_prefix
                + _field(row, cfg.answer_field, i).strip()
                + _eos(tokenizer)
            )
        elif cfg.format == "prompt_completion":
            question = _field(row, "prompt", i)
            prompt, completion = question, _field(row, "completion", i)
        else:
            messages = row.get("messages")
            if (not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages)
                    or messages[-1].get("role") != "assistant"):
                raise SurgeonError(f"data row {i}: 'messages' must be a chat list of {{role, content}} objects "
                                   "ending with an assistant turn")
            question = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
            prompt = _render(tokenizer, messages[:-1], generation_prompt=True)
            full = _render(tokenizer, messages, generation_prompt=False)
            if not full.startswith(prompt):
                raise SurgeonError(
                    f"data row {i}: the chat template renders the prompt differently alone and in the "
                    "full conversation, so the completion cannot be cut off; use data.format=prompt_completion"
                )
            # ChatML ends a turn with eos + newline; TRL appends eos unless the text ends with it.
            completion = full[len(prompt):].rstrip()
        pairs.append({"prompt": prompt, "completion": completion, "question": question})
    return pairs


def to_messages(row: dict[str, Any], cfg: DataConfig, index: int) -> dict[str, Any]:
    """A chat-format example for assistant-only loss (the template must mark generation)."""
    if cfg.format == "messages":
        return {"messages": row["messages"]}
    if cfg.format == "prompt_completion":
        raise SurgeonError("train.loss=assistant_only needs chat data (data.format s1k or messages)")
    content = (cfg.think_start + _field(row, cfg.thinking_field, index).strip() + cfg.think_end
               + cfg.answer_prefix + _field(row, cfg.answer_field, index).strip())
    messages = [{"role": "user", "content": _field(row, cfg.question_field, index)},
                {"role": "assistant", "content": content}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return {"messages": messages}


# --- decontamination -----------------------------------------------------------------

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of lower-cased text; texts shorter than n give their whole word tuple."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DecontamReport:
    """What was dropped and why: row index, the shared n-gram, the eval text it came from."""

    ngram: int
    checked: int = 0
    eval_texts: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ngram": self.ngram,
            "checked": self.checked,
            "eval_texts": self.eval_texts,
            "dropped_count": len(self.dropped),
            "dropped": self.dropped,
        }


def decontaminate(
    pairs: list[dict[str, str]], eval_texts: Iterable[str], n: int = 8
) -> tuple[list[dict[str, str]], DecontamReport]:
    """Keep the rows whose question shares no word n-gram with any evaluation text."""
    index: dict[tuple[str, ...], int] = {}
    texts = []
    for j, text in enumerate(eval_texts):
        texts.append(text)
        for gram in ngrams(text, n):
            index.setdefault(gram, j)
    report = DecontamReport(ngram=n, checked=len(pairs), eval_texts=len(texts))
    kept = []
    for i, pair in enumerate(pairs):
        hit = next((g for g in ngrams(pair["question"], n) if g in index), None)
        if hit is None:
            kept.append(pair)
        else:
            report.dropped.append(
                {"row": i, "ngram": " ".join(hit), "eval_text": texts[index[hit]][:200]}
            )
    return kept, report


def read_eval_file(path: str | Path) -> list[str]:
    """Questions of an evaluation set kept as a file: JSONL rows or one text per line."""
    path = Path(path)
    if not path.is_file():
        raise SurgeonError(f"{path}: decontamination file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SurgeonError(f"{path}: not a decontamination file (not UTF-8 text); give JSONL or plain text") from None
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(row, dict):
            out.append(next((_text(row[k]) for k in ("question", "problem", "prompt", "text") if k in row), ""))
        else:
            out.append(_text(row))
    return [t for t in out if t]


def eval_texts_for_tasks(names: Iterable[str], base_dir: Path | None = None) -> list[str]:
    """Problem texts of evaluation tasks, read by the same loaders ``surgeon eval`` uses.

    Each item is ``TASK`` (its Hub data set) or ``TASK=SOURCE`` (a local file or Hub id).
    """
    from weightsurgeon.recipes import tasks

    texts: list[str] = []
    for item in names:
        name, _, source = str(item).partition("=")
        source = source.strip() or None
        if source and base_dir is not None and not Path(source).is_absolute() and (base_dir / source).exists():
            source = str(base_dir / source)
        try:
            texts.extend(tasks.iter_texts(name.strip(), source))
        except SurgeonError as exc:
            raise SurgeonError(f"decontamination against {name}: {exc}") from None
    return texts


# --- token lengths ---------------------------------------------------------------------


def length_report(pairs: list[dict[str, str]], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Token-length statistics against the configured sequence length.

    Truncation cuts the completion's end (the answer), so it is counted and reported,
    never silent.
    """
    lengths = []
    lost = 0
    completion_total = 0
    no_completion = 0
    prompt_min = None
    for pair in pairs:
        n_prompt = len(tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"])
        n_all = len(tokenizer(pair["prompt"] + pair["completion"], add_special_tokens=False)["input_ids"])
        lengths.append(n_all)
        prompt_min = n_prompt if prompt_min is None else min(prompt_min, n_prompt)
        completion_total += max(n_all - n_prompt, 0)
        lost += max(n_all - max(max_length, n_prompt), 0)
        no_completion += n_prompt >= max_length  # nothing left to learn from: the trainer drops it
    lengths.sort()

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0

    over = sum(1 for n in lengths if n > max_length)
    return {
        "rows": len(lengths),
        "max_length": max_length,
        "tokens_total": sum(lengths),
        "mean": (sum(lengths) / len(lengths)) if lengths else 0.0,
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": lengths[-1] if lengths else 0,
        "prompt_min": prompt_min or 0,
        "truncated_rows": over,
        "rows_without_completion": no_completion,
        "completion_tokens_lost": lost,
        "completion_tokens_total": completion_total,
    }
