"""Output levels of the paper's Table 3, by transparent heuristics that print their evidence.

Levels: I nonsense, II fluent but off-topic, III on-topic but wrong, IV correct.
The verdict is a short decision list, checked in order, so a reader can redo it by hand:

Markup such as ``<think>`` or ``<|im_end|>`` is removed first.

I   empty; or mostly non-word characters (word-character share < 0.5); or, with at
    least 8 words, heavy repetition (more than half of the word 3-grams are repeats, or
    one word run longer than 5) or a word distribution with entropy < 1.5 bits.
IV  the expected answer is present (math: the extracted or last number equals it; chat:
    one of the accepted answers appears as a word).
III at least one of the prompt's topic words (or its expected answers) appears.
I   fewer than 3 words made of letters: too little to call fluent.
II  otherwise: fluent text about something else.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from weightsurgeon.recipes.eval.grading import extract_answer, normalize_integer

_WORD_RE = re.compile(r"[A-Za-z0-9']+")
_MARKUP_RE = re.compile(r"<\|?/?[A-Za-z_]{1,20}\|?>")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
LEVEL_NAMES = {"I": "nonsense", "II": "fluent, off-topic", "III": "on-topic, wrong", "IV": "correct"}


@dataclass(frozen=True)
class ProbePrompt:
    id: str
    kind: str  # "chat" or "math"
    prompt: str
    topic: tuple[str, ...]  # words that show the output is about the prompt
    accept: tuple[str, ...]  # answers that count as correct (words, or one integer for math)


# A small built-in set: conversational and math prompts with unambiguous short answers.
PROBE_PROMPTS: tuple[ProbePrompt, ...] = (
    ProbePrompt("chat-capital", "chat", "What is the capital city of France?",
                ("capital", "france", "french", "city"), ("paris",)),
    ProbePrompt("chat-color", "chat", "What color is a clear daytime sky?",
                ("sky", "color", "colour", "daytime", "clear"), ("blue",)),
    ProbePrompt("chat-week", "chat", "How many days are there in one week? Answer with a word.",
                ("days", "week", "day"), ("seven", "7")),
    ProbePrompt("chat-opposite", "chat", "What is the opposite of the word 'hot'?",
                ("opposite", "hot", "word", "temperature"), ("cold",)),
    ProbePrompt("chat-greeting", "chat", "Say hello to a friend named Anna in one sentence.",
                ("anna", "friend", "hello"), ("hello", "hi")),
    ProbePrompt("math-add", "math", "What is 17 + 25? Put the final answer in \\boxed{}.",
                ("17", "25", "add", "sum", "plus"), ("42",)),
    ProbePrompt("math-mul", "math", "Compute 6 times 7. Put the final answer in \\boxed{}.",
                ("6", "7", "times", "multiply", "product"), ("42",)),
    ProbePrompt("math-sub", "math", "What is 100 minus 37? Put the final answer in \\boxed{}.",
                ("100", "37", "minus", "subtract", "difference"), ("63",)),
    ProbePrompt("math-square", "math", "What is the square of 12? Put the final answer in \\boxed{}.",
                ("12", "square", "squared", "times"), ("144",)),
    ProbePrompt("math-half", "math", "What is half of 90? Put the final answer in \\boxed{}.",
                ("90", "half", "divide", "two"), ("45",)),
)


@dataclass
class Verdict:
    level: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def repetition(ws: list[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: all distinct, near 1: a loop)."""
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def entropy_bits(ws: list[str]) -> float:
    counts = Counter(ws)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def longest_run(ws: list[str]) -> int:
    best = run = 0
    prev = None
    for w in ws:
        run = run + 1 if w == prev else 1
        prev = w
        best = max(best, run)
    return best


def word_char_share(text: str) -> float:
    stripped = re.sub(r"\s", "", text)
    if not stripped:
        return 0.0
    return sum(ch.isalnum() for ch in stripped) / len(stripped)


def _matches(word_list: list[str], vocab: tuple[str, ...]) -> list[str]:
    present = set(word_list)
    return [v for v in vocab if v.lower() in present]


def _math_value(text: str) -> int | None:
    extracted, _ = extract_answer(text)
    value = normalize_integer(extracted)
    if value is not None:
        return value
    numbers = _NUMBER_RE.findall(text)
    return normalize_integer(numbers[-1]) if numbers else None


def classify(probe: ProbePrompt, output: str) -> Verdict:
    """Level I-IV of one output, with the numbers that decided it."""
    output = _MARKUP_RE.sub(" ", output)
    ws = words(output)
    ev: dict[str, Any] = {
        "words": len(ws),
        "word_char_share": round(word_char_share(output), 3),
        "repetition_3gram": round(repetition(ws), 3),
        "entropy_bits": round(entropy_bits(ws), 3),
        "longest_run": longest_run(ws),
    }
    if not ws:
        return Verdict("I", "no words", ev)
    if ev["word_char_share"] < 0.5:
        return Verdict("I", f"word-character share {ev['word_char_share']} < 0.5", ev)
    if len(ws) >= 8:
        if ev["repetition_3gram"] > 0.5:
            return Verdict("I", f"repeated 3-grams {ev['repetition_3gram']} > 0.5", ev)
        if ev["longest_run"] > 5:
            return Verdict("I", f"one word repeated {ev['longest_run']} times in a row", ev)
        if ev["entropy_bits"] < 1.5:
            return Verdict("I", f"word entropy {ev['entropy_bits']} bits < 1.5", ev)
    if probe.kind == "math":
        value = _math_value(output)
        ev["answer_found"] = value
        if value is not None and str(value) in probe.accept:
            return Verdict("IV", f"answer {value} is correct", ev)
    else:
        hits = _matches(ws, probe.accept)
        ev["answer_found"] = hits
        if hits:
            return Verdict("IV", f"expected answer {hits[0]!r} present", ev)
    topic = _matches(ws, probe.topic + probe.accept)
    ev["topic_words"] = topic
    if topic:
        return Verdict("III", f"on topic ({', '.join(topic)}) but not correct", ev)
    alpha = [w for w in ws if w.isalpha()]
    ev["letter_words"] = len(alpha)
    if len(alpha) < 3:
        return Verdict("I", f"only {len(alpha)} word(s) made of letters", ev)
    return Verdict("II", "fluent but none of the prompt's topic words", ev)
