"""Budget forcing (s1): keep a model thinking by replacing its end-of-thinking with "Wait".

The loop, over any `Backend`:

1. prompt + thinking-start marker; generate until the thinking-end marker (or the
   end-of-sequence token), at most the remaining thinking budget;
2. N times, when the model ended its thinking on its own: drop the end marker, append
   "Wait" and continue with the remaining budget;
3. close the thinking (end marker), append the answer marker and generate the answer.

Plain generation (no forcing) is one call whose output is split at the end marker.
Token counts are what the model generated; the forced strings are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from weightsurgeon.recipes.eval.backends import Backend, Sampling


@dataclass(frozen=True)
class ThinkingFormat:
    """Markers of one model family. ``think_start`` may already end the prompt (R1 templates)."""

    think_start: str = "<think>"
    think_end: str = "</think>"
    answer_marker: str = "\nFinal Answer: "
    wait: str = "Wait"


# Presets for common families; any field can be overridden in a recipe or on the CLI.
FORMATS: dict[str, ThinkingFormat] = {
    "think-tags": ThinkingFormat(),  # DeepSeek-R1 distills, QwQ, Qwen3, synth.py's tokenizer
    "s1": ThinkingFormat("<|im_start|>think", "<|im_start|>answer", "\nFinal Answer: ", "Wait"),
}


@dataclass
class ForcedOutput:
    """One sample's generation, split into parts, with the counts the paper reports."""

    prompt: str
    thinking: str
    answer: str
    thinking_tokens: int
    answer_tokens: int
    finish_reason: str
    waits: int = 0
    calls: int = 0
    events: list[str] = field(default_factory=list)

    @property
    def generation(self) -> str:
        return self.thinking + self.answer

    @property
    def total_tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens


def _open_thinking(prompt: str, fmt: ThinkingFormat) -> str:
    if not fmt.think_start or prompt.rstrip().endswith(fmt.think_start):
        return prompt
    return prompt + fmt.think_start


def plain_generate(
    backend: Backend,
    prompts: Sequence[str],
    fmt: ThinkingFormat,
    max_tokens: int,
    sampling: Sampling,
) -> list[ForcedOutput]:
    """One generation per prompt, split at the end-of-thinking marker when present."""
    outs = backend.generate(prompts, max_tokens, [], sampling)
    results = []
    for prompt, gen in zip(prompts, outs):
        text = gen.text
        at = text.find(fmt.think_end) if fmt.think_end else -1
        if at == -1:
            thinking, answer = "", text
            think_tok, ans_tok = 0, gen.num_tokens
        else:
            thinking, answer = text[: at + len(fmt.think_end)], text[at + len(fmt.think_end) :]
            think_tok = min(gen.num_tokens, backend.count_tokens(thinking))
            ans_tok = gen.num_tokens - think_tok
        results.append(ForcedOutput(prompt, thinking, answer, think_tok, ans_tok, gen.finish_reason, calls=1))
    return results


def budget_forced_generate(
    backend: Backend,
    prompts: Sequence[str],
    fmt: ThinkingFormat,
    num_waits: int,
    max_thinking_tokens: int,
    max_answer_tokens: int,
    sampling: Sampling,
) -> list[ForcedOutput]:
    """s1's budget forcing for a batch of prompts; every round is one batched backend call."""
    heads = [_open_thinking(p, fmt) for p in prompts]
    outs = [ForcedOutput(p, "", "", 0, 0, "stop") for p in prompts]
    stop = [fmt.think_end] if fmt.think_end else []
    active = list(range(len(prompts)))
    for round_no in range(num_waits + 1):
        if not active:
            break
        if round_no > 0:
            for i in active:
                outs[i].thinking += fmt.wait
                outs[i].waits += 1
                outs[i].events.append(f"wait after {outs[i].thinking_tokens} thinking tokens")
        budgets = [max_thinking_tokens - outs[i].thinking_tokens for i in active]
        gens = backend.generate([heads[i] + outs[i].thinking for i in active], budgets, stop, sampling)
        still = []
        for i, gen in zip(active, gens):
            out = outs[i]
            out.thinking += gen.text
            out.thinking_tokens += gen.num_tokens
            out.calls += 1
            if gen.finish_reason == "length" or out.thinking_tokens >= max_thinking_tokens:
                out.events.append("thinking budget reached")
            else:
                still.append(i)  # ended its thinking on its own: may be told to Wait
        active = still

    tails = [heads[i] + outs[i].thinking + fmt.think_end + fmt.answer_marker for i in range(len(prompts))]
    answers = backend.generate(tails, max_answer_tokens, [], sampling)
    for out, gen in zip(outs, answers):
        out.thinking = out.thinking + fmt.think_end
        out.answer = fmt.answer_marker + gen.text
        out.answer_tokens = gen.num_tokens
        out.finish_reason = gen.finish_reason
        out.calls += 1
    return outs
