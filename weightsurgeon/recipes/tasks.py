"""Evaluation-set loaders: AIME 2024, MATH500 and GPQA Diamond as plain `Problem` records.

One module so that evaluation (`surgeon eval`) and training-data decontamination (which
n-grams the same problem texts) read the sets the same way.

Sources. Each task loads from the Hugging Face Hub by data set id (``datasets`` is needed
then), or from a local file, so users offline or with their own sets can run it:

* ``--data TASK=path.jsonl`` (also ``.json`` holding a list, or ``.parquet``): one
  problem per line. Recognised keys (the Hub's own column names are accepted too):

  - ``id`` (optional; defaults to the line number),
  - ``question`` (or ``problem`` / ``Question``): the problem text,
  - ``answer`` (or ``Answer``): for aime24 an integer 0-999, for math500 a LaTeX answer
    such as ``\\frac{1}{2}``; for gpqa_diamond the letter of the correct choice, when
    ``choices`` is given,
  - gpqa_diamond only: either ``choices`` (list, in the order to show) with ``answer`` a
    letter, or ``correct_answer`` + ``incorrect_answers`` (list of 3), or the Hub's
    ``Correct Answer`` / ``Incorrect Answer 1..3``. Unordered choices are shuffled with
    a seeded RNG keyed on (seed, problem id): runs are reproducible and a problem's
    order does not depend on ``--limit``.

* ``--data TASK=owner/name[:config]`` loads another Hub data set with the same columns.

GPQA is gated on the Hub: accept its terms at https://huggingface.co/datasets/Idavidrein/gpqa
while logged in, then ``hf auth login`` (or set ``HF_TOKEN``) on the machine that runs
the evaluation; or export it once to JSONL and pass the file.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.records import read_records

LETTERS = string.ascii_uppercase
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Please reason step by step, and put the letter of your final answer within \\boxed{}."


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives on the Hub and how its answers are graded."""

    name: str
    kind: str  # "integer" (AIME), "math" (math-verify equivalence), "choice" (letter)
    hub_id: str
    hub_config: str | None
    split: str
    note: str = ""


@dataclass(frozen=True)
class Problem:
    """One evaluation item, as posed to the model (choices already in their shown order)."""

    task: str
    id: str
    question: str
    answer: str
    choices: tuple[str, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        """The full text a model sees (question plus choices): what decontamination n-grams."""
        if not self.choices:
            return self.question
        lines = [f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices)]
        return self.question + "\n" + "\n".join(lines)


TASKS: dict[str, TaskSpec] = {
    "aime24": TaskSpec("aime24", "integer", "HuggingFaceH4/aime_2024", None, "train"),
    "math500": TaskSpec("math500", "math", "HuggingFaceH4/MATH-500", None, "test"),
    "gpqa_diamond": TaskSpec(
        "gpqa_diamond",
        "choice",
        "Idavidrein/gpqa",
        "gpqa_diamond",
        "train",
        note=(
            "GPQA is gated: accept its terms at https://huggingface.co/datasets/Idavidrein/gpqa, "
            "run `hf auth login` (or set HF_TOKEN), or pass a local JSONL with --data gpqa_diamond=FILE"
        ),
    ),
}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise SurgeonError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def parse_task_list(text: str) -> list[str]:
    """``"aime24,math500"`` -> validated names, order kept, duplicates dropped."""
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in names:
            get_task(part)
            names.append(part)
    if not names:
        raise SurgeonError("no tasks given; known tasks: " + ", ".join(TASKS))
    return names


def _first(row: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    return None


def _clean(value: Any) -> str:
    return str(value).strip()


def shuffle_choices(correct: str, incorrect: list[str], seed: int, problem_id: str) -> tuple[tuple[str, ...], str]:
    """Seeded shuffle keyed on the problem, so the order survives ``--limit`` and reordering."""
    choices = [correct] + list(incorrect)
    rng = random.Random(f"{seed}:{problem_id}")
    order = list(range(len(choices)))
    rng.shuffle(order)
    shown = tuple(choices[i] for i in order)
    return shown, LETTERS[order.index(0)]


def normalize_row(spec: TaskSpec, row: dict[str, Any], index: int, seed: int = 0, origin: str | None = None) -> Problem:
    """Turn a Hub row or a local JSONL record into a `Problem`; errors name the file (``origin``) and the record."""
    where = f"{origin + ': ' if origin else ''}{spec.name} record {index}"
    pid = _first(row, "id", "unique_id", "Record ID", "ID")
    pid = _clean(pid) if pid is not None else str(index)
    question = _first(row, "question", "problem", "Question")
    if question is None:
        raise SurgeonError(f"{where}: no 'question' (or 'problem') field")
    question = _clean(question)
    if spec.kind != "choice":
        answer = _first(row, "answer", "Answer")
        if answer is None:
            raise SurgeonError(f"{where}: no 'answer' field (each record needs its reference answer)")
        return Problem(spec.name, pid, question, _clean(answer))

    choices = _first(row, "choices", "options")
    if choices is not None:
        choices = tuple(_clean(c) for c in choices)
        answer = _first(row, "answer", "Answer")
        if answer is None:
            raise SurgeonError(f"{where}: 'choices' given without an 'answer' letter")
        letter = _clean(answer).strip("()").upper()
        if len(letter) != 1 or LETTERS.find(letter) not in range(len(choices)):
            raise SurgeonError(f"{where}: answer {answer!r} is not a letter of its {len(choices)} choices")
        return Problem(spec.name, pid, question, letter, choices)

    correct = _first(row, "correct_answer", "Correct Answer")
    if "incorrect_answers" in row:
        incorrect = [_clean(x) for x in row["incorrect_answers"]]
    else:
        incorrect = [_clean(row[k]) for k in ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3") if k in row]
    if correct is None or not incorrect:
        raise SurgeonError(
            f"{where}: needs 'choices'+'answer', 'correct_answer'+'incorrect_answers', "
            "or the Hub's 'Correct Answer'/'Incorrect Answer N' columns"
        )
    shown, letter = shuffle_choices(_clean(correct), incorrect, seed, pid)
    return Problem(spec.name, pid, question, letter, shown)


def _read_local(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow comes with datasets
            raise SurgeonError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
        yield from pq.read_table(path).to_pylist()
        return
    yield from read_records(path, "task")


def _read_hub(spec: TaskSpec, source: str | None) -> Iterator[dict[str, Any]]:
    hub_id, config = spec.hub_id, spec.hub_config
    if source:
        hub_id, _, cfg = source.partition(":")
        config = cfg or None
    try:
        import datasets
    except ImportError as exc:
        raise SurgeonError("loading tasks from the Hub needs `datasets` (pip install weightsurgeon[eval]), "
                           "or pass a local JSONL with --data TASK=FILE") from exc
    try:
        ds = datasets.load_dataset(hub_id, config, split=spec.split)
    except Exception as exc:  # the Hub raises many types: gated, offline, missing
        hint = f" ({spec.note})" if spec.note else ""
        raise SurgeonError(f"cannot load {spec.name} from the Hub as {hub_id}: {exc}{hint}") from exc
    yield from ds


def is_local_source(source: str | None) -> bool:
    if not source:
        return False
    return Path(source).suffix.lower() in (".jsonl", ".json", ".parquet") or Path(source).exists()


def iter_problems(name: str, source: str | None = None, seed: int = 0) -> Iterator[Problem]:
    """Stream a task's problems from the Hub (default id) or ``source`` (file or Hub id)."""
    spec = get_task(name)
    origin = source or spec.hub_id
    if is_local_source(source):
        path = Path(source)  # type: ignore[arg-type]
        if not path.is_file():
            raise SurgeonError(f"{path}: data file for task {name} not found; check --data {name}=FILE")
        rows: Iterator[dict[str, Any]] = _read_local(path)
    else:
        rows = _read_hub(spec, source)
    for index, row in enumerate(rows):
        yield normalize_row(spec, row, index, seed, origin)


def load_problems(name: str, source: str | None = None, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The first ``limit`` problems of a task (all when None)."""
    out: list[Problem] = []
    for problem in iter_problems(name, source, seed):
        if limit is not None and len(out) >= limit:
            break
        out.append(problem)
    if not out:
        raise SurgeonError(f"task {name}: no problems loaded from {source or get_task(name).hub_id}")
    return out


def iter_texts(name: str, source: str | None = None) -> Iterator[str]:
    """Problem texts for n-gram decontamination of training data."""
    for problem in iter_problems(name, source):
        yield problem.text


def user_message(problem: Problem) -> str:
    """The problem as the user turn: text (with lettered choices) plus the answer instruction.

    Both harnesses build prompts from it, so a task reads the same to the model whichever runs it.
    """
    instruction = CHOICE_INSTRUCTION if problem.choices else MATH_INSTRUCTION
    return f"{problem.text}\n\n{instruction}"
