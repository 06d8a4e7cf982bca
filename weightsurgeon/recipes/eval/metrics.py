"""Accuracy with a 95% confidence interval, and the token averages the paper reports.

With one sample per problem the interval is Wilson's score interval (well behaved at
0 and 1 and for 30 problems). With K samples per problem the samples of one problem
are not independent, so the interval is a percentile bootstrap over problems (seeded,
so the same records always give the same interval).
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Any, Iterable

Z95 = 1.959963984540054


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: list[float], iters: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (one value per problem)."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    return (means[int(0.025 * iters)], means[min(iters - 1, int(0.975 * iters))])


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Task metrics from per-sample records (keys: problem_id, correct, *_tokens, finish_reason)."""
    records = list(records)
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        per_problem[r["problem_id"]].append(bool(r["correct"]))
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    k = max((len(v) for v in per_problem.values()), default=0)
    if k <= 1:
        ci, method = wilson(correct, n), "wilson"
    else:
        ci, method = bootstrap([sum(v) / len(v) for v in per_problem.values()]), "bootstrap-over-problems"

    def avg(key: str) -> float:
        return sum(r[key] for r in records) / n if n else 0.0

    return {
        "problems": len(per_problem),
        "samples_per_problem": k,
        "generations": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [ci[0], ci[1]],
        "ci_method": method,
        "avg_thinking_tokens": avg("thinking_tokens"),
        "avg_answer_tokens": avg("answer_tokens"),
        "avg_total_tokens": avg("total_tokens"),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
    }
