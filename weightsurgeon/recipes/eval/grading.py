"""Answer extraction (s1's rules) and grading per task kind.

Extraction follows s1: look in the text after the answer marker (the whole generation
when there is none), take the last ``\\boxed{...}`` (nested braces allowed), else the
rest of the line after the last ``Answer:``. Grading then depends on the task:
AIME compares integers (``033`` == ``33``), MATH500 asks math-verify whether the two
expressions are equivalent (``\\frac{1}{2}`` == ``0.5`` == ``\\dfrac12``), GPQA compares
choice letters (``(B)``, ``B.``, ``\\text{B}`` all read as B).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

_ANSWER_RE = re.compile(r"answer\s*:", re.IGNORECASE)
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # what the rules pulled out of the generation
    normalized: str | None  # the comparable form (integer, letter, math-verify's parse)
    correct: bool
    method: str  # "boxed", "answer-line", "math-verify-fallback", or "none"


def _match_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at``; None if unbalanced."""
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # skip escaped characters such as \{ and \}
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``) in ``text``."""
    commands = list(re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text))
    for command in reversed(commands):
        after = command.end()
        rest = text[after:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            open_at = after + (len(rest) - len(stripped))
            close = _match_brace(text, open_at)
            if close is not None:
                return text[open_at + 1 : close].strip()
        elif rest[:1] == " ":
            token = re.match(r"[^\s$]+", stripped)
            if token:
                return token.group(0)
    return None


def last_answer_line(text: str) -> str | None:
    """The rest of the line after the last ``Answer:`` (case-insensitive), or None."""
    matches = list(_ANSWER_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    line = rest.strip().split("\n", 1)[0].strip()
    return line or None


def extract_answer(region: str) -> tuple[str | None, str]:
    """s1's order: last boxed, else last ``Answer:`` line. Returns (answer, method)."""
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed, "boxed"
    line = last_answer_line(region)
    if line is not None:
        return line, "answer-line"
    return None, "none"


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    for _ in range(3):  # \text{\textbf{B}} and friends
        text = _TEXT_RE.sub(r"\1", text)
    text = text.replace("\\$", "").replace("\\%", "").replace("$", "").replace("\\,", "").replace("\\!", "").replace("\\ ", " ")
    text = text.strip().rstrip(".").strip()
    return text


def normalize_integer(answer: str | None) -> int | None:
    """AIME answers: ``033``, ``$33$``, ``\\text{33}``, ``33.``, ``1,000`` -> int; else None."""
    if answer is None:
        return None
    text = _strip_wrappers(answer)
    text = text.replace(",", "").replace("{", "").replace("}", "")
    text = re.sub(r"\^\s*\\circ", "", text).strip()
    match = re.fullmatch(r"[+-]?\d+(?:\.0+)?", text)
    if not match:
        return None
    return int(float(text)) if "." in text else int(text)


def normalize_letter(answer: str | None, num_choices: int = 4) -> str | None:
    """Multiple choice: ``(B)``, ``B.``, ``\\text{B}``, ``B) foo``, ``Option b`` -> "B"."""
    if answer is None:
        return None
    text = _strip_wrappers(answer)
    text = re.sub(r"^(?:option|choice|answer)\s*(?:is\s*)?:?\s*", "", text, flags=re.IGNORECASE)
    match = re.match(r"^\(?\s*([A-Za-z])\s*\)?(?=$|[\s.,:;)\]])", text)
    if not match:
        return None
    letter = match.group(1).upper()
    if ord(letter) - ord("A") >= num_choices:
        return None
    # a lower-case single letter is a letter only if the answer is just that letter
    if match.group(1).islower() and len(text.strip("() .")) > 1:
        return None
    return letter


def _math_parse(text: str):
    from math_verify import parse

    if "\\boxed" in text or "$" in text:
        return parse(text)
    return parse("\\boxed{" + text + "}")


def math_equal(gold: str, predicted: str) -> bool:
    """math-verify equivalence of two answers given as LaTeX or plain expressions."""
    from math_verify import verify

    gold_parsed = _math_parse(gold)
    pred_parsed = _math_parse(predicted)
    if not gold_parsed or not pred_parsed:
        return _strip_wrappers(gold) == _strip_wrappers(predicted)
    return bool(verify(gold_parsed, pred_parsed))


def choice_by_text(answer: str | None, choices: Sequence[str]) -> str | None:
    """A multiple-choice answer given as the text of a choice instead of its letter."""
    if answer is None:
        return None
    text = " ".join(_strip_wrappers(answer).lower().split())
    for i, choice in enumerate(choices):
        if text and text == " ".join(_strip_wrappers(choice).lower().split()):
            return chr(ord("A") + i)
    return None


def grade(kind: str, region: str, gold: str, num_choices: int = 4, choices: Sequence[str] = ()) -> Grade:
    """Extract the answer from ``region`` and compare it with ``gold`` for a task ``kind``."""
    extracted, method = extract_answer(region)
    if kind == "integer":
        value = normalize_integer(extracted)
        gold_value = normalize_integer(gold)
        if value is None and extracted:
            # an expression such as \frac{66}{2}: let math-verify decide
            return Grade(extracted, extracted, math_equal(gold, extracted), method)
        ok = value is not None and value == gold_value
        return Grade(extracted, None if value is None else str(value), ok, method)
    if kind == "choice":
        num_choices = len(choices) or num_choices
        letter = normalize_letter(extracted, num_choices) or choice_by_text(extracted, choices)
        return Grade(extracted, letter, letter is not None and letter == gold.strip().upper(), method)
    if kind == "math":
        if extracted is None:
            # math-verify runs its own extraction over the free text (last LaTeX / expression)
            from math_verify import parse, verify

            pred = parse(region) if region.strip() else []
            ok = bool(pred) and bool(verify(_math_parse(gold), pred))
            shown = str(pred[-1]) if pred else None
            return Grade(None, shown, ok, "math-verify-fallback" if pred else "none")
        return Grade(extracted, extracted, math_equal(gold, extracted), method)
    raise ValueError(f"unknown task kind {kind!r}")
