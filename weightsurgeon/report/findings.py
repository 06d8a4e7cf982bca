"""Findings: the paper's claims about a diff as sentences, each one a number of the report.

Computed from the report's rows (never stored apart from them), per tuned model:

- the module kind with the largest change: the median over layers of the L2 of its
  delta (the paper's Fig. 2 quantity), and its ratio to the next kind's (the paper's "2x");
- in how many layers each module kind has the largest L2 of the delta;
- which module kinds change bimodally in how many layers: the smoothed histogram of
  their clipped relative change has two or more modes (kernels/shape.py), with the
  median of Sarle's coefficient over those layers;
- the heads (or experts) with the largest relative L2;
- with --spectrum, the median share of the squared delta the top 1, 8 and 64 singular values hold;
- the module kinds that did not change at all.

With several tuned models, `pattern_agreement` compares them: Spearman's rank
correlation of the per-module medians between every pair, over the module kinds both
have, so "the pattern holds across fine-tunes" is a number.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from weightsurgeon.report.units import top_units as units_by_rel_l2

TOP_UNITS = 3


@dataclass
class Finding:
    """One line of the block: its text and the numbers it states, by name."""

    key: str  # "largest", "first", "bimodal", "top_units", "unchanged", "agreement"
    text: str
    numbers: dict = field(default_factory=dict)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def module_medians(report: Any, tuned: str) -> dict[str, float]:
    """Per-layer module kinds -> median over layers of the L2 of the delta (finite rows only)."""
    by_kind: dict[str, list[float]] = {}
    for m in report.modules:
        if m.tuned == tuned and m.layer is not None and math.isfinite(m.stats.l2_delta):
            by_kind.setdefault(m.module, []).append(m.stats.l2_delta)
    return {k: statistics.median(v) for k, v in by_kind.items() if v}


def _first_counts(report: Any, tuned: str) -> tuple[dict[str, int], int]:
    best: dict[int, tuple[float, str]] = {}
    for m in report.modules:
        if m.tuned != tuned or m.layer is None or not math.isfinite(m.stats.l2_delta):
            continue
        if m.layer not in best or m.stats.l2_delta > best[m.layer][0]:
            best[m.layer] = (m.stats.l2_delta, m.module)
    counts: dict[str, int] = {}
    for value, module in best.values():
        if value > 0:
            counts[module] = counts.get(module, 0) + 1
    return counts, len(best)


def findings(report: Any, tuned: str | None = None) -> list[Finding]:
    """The findings of one tuned model (the first unless named)."""
    tuned = report.labels[0] if tuned is None else tuned
    out: list[Finding] = []
    medians = module_medians(report, tuned)
    ranked = sorted(((v, k) for k, v in medians.items() if v > 0), reverse=True)
    if ranked:
        top_value, top = ranked[0]
        if len(ranked) > 1:
            next_value, nxt = ranked[1]
            ratio = top_value / next_value
            text = (f"largest change: {top} (median L2 of the delta over layers {_fmt(top_value)}), "
                    f"{_fmt(ratio)}x the next, {nxt} ({_fmt(next_value)})")
        else:
            nxt, next_value, ratio = None, math.nan, math.nan
            text = f"largest change: {top} (median L2 of the delta over layers {_fmt(top_value)}), the only module that changed"
        out.append(Finding("largest", text, {"module": top, "median_l2_delta": top_value, "next": nxt,
                                             "next_median_l2_delta": next_value, "ratio": ratio}))
    counts, layers = _first_counts(report, tuned)
    if counts:
        parts = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        text = "largest L2 of the delta in a layer: " + ", ".join(f"{m} in {n} of {layers}" for m, n in parts)
        out.append(Finding("first", text, {"layers": layers, "counts": dict(parts)}))
    bimodal: dict[str, list[float]] = {}
    layers_of: dict[str, int] = {}
    for m in report.modules:
        if m.tuned != tuned or m.layer is None or m.stats.r_n == 0:
            continue
        layers_of[m.module] = layers_of.get(m.module, 0) + 1
        if len(m.stats.modes) >= 2:
            bimodal.setdefault(m.module, []).append(m.stats.bimodality)
    if layers_of:
        if bimodal:
            parts = sorted(bimodal.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            shown = []
            for module, coeffs in parts:
                finite = [c for c in coeffs if math.isfinite(c)]
                coeff = statistics.median(finite) if finite else math.nan
                shown.append(f"{module} in {len(coeffs)} of {layers_of[module]} layers (Sarle {_fmt(coeff)})")
            rest = sorted(set(layers_of) - set(bimodal))
            text = "bimodal relative change: " + ", ".join(shown) + (f"; unimodal: {', '.join(rest)}" if rest else "")
        else:
            text = "bimodal relative change: none (every module's histogram has one mode)"
        out.append(Finding("bimodal", text, {m: {"layers": len(c), "of": layers_of[m]} for m, c in bimodal.items()}))
    top_units = units_by_rel_l2(getattr(report, "units", []), tuned, TOP_UNITS)
    if top_units:
        text = "top units by relative L2: " + ", ".join(
            f"layer {u.layer} {u.module} {u.kind} {u.index} ({_fmt(u.rel_l2)})" for u in top_units)
        out.append(Finding("top_units", text, {"units": [(u.layer, u.module, u.kind, u.index, u.rel_l2)
                                                          for u in top_units]}))
    spectra: dict[str, list[Any]] = {}
    for r in getattr(report, "spectra", []):
        if r.tuned == tuned and r.sigma:
            spectra.setdefault(r.module, []).append(r)
    if spectra:
        parts, numbers = [], {}
        for module, rs in sorted(spectra.items()):
            shares = {k: statistics.median(r.share(k) for r in rs) for k in (1, 8, 64)}
            numbers[module] = {"matrices": len(rs), **{f"median_share_top{k}": v for k, v in shares.items()}}
            parts.append(f"{module} top 1/8/64 singular values hold {_fmt(100 * shares[1])}/{_fmt(100 * shares[8])}/"
                         f"{_fmt(100 * shares[64])}% of the squared delta (median of {len(rs)})")
        out.append(Finding("spectrum", "low rank: " + "; ".join(parts), numbers))
    kinds = {}
    for m in report.modules:
        if m.tuned == tuned:
            kinds.setdefault(m.module, []).append(m.stats.sum_sq_delta == 0.0 and m.stats.max_abs_delta == 0.0)
    unchanged = sorted(k for k, flags in kinds.items() if all(flags))
    if unchanged:
        out.append(Finding("unchanged", "bitwise unchanged: " + ", ".join(unchanged), {"modules": unchanged}))
    return out


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank (as Spearman's coefficient needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (Pearson's of the ranks); NaN for fewer than 3 or a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def pattern_agreement(medians: dict[str, dict[str, float]]) -> list[Finding]:
    """Spearman's rho of per-module medians between every pair of labelled patterns (tuned models, reports)."""
    labels = list(medians)
    out = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            shared = sorted(set(medians[a]) & set(medians[b]))
            rho = spearman([medians[a][m] for m in shared], [medians[b][m] for m in shared])
            out.append(Finding("agreement", f"{a} vs {b}: Spearman {_fmt(rho)} over {len(shared)} module kinds "
                                            f"(rank correlation of the median L2 of the delta)",
                               {"a": a, "b": b, "rho": rho, "modules": len(shared)}))
    return out


def report_findings(report: Any) -> dict[str, list[Finding]]:
    """Every tuned model's findings, plus the agreement of their patterns under the key '' when there are several."""
    out = {label: findings(report, label) for label in report.labels}
    if len(report.labels) > 1:
        out[""] = pattern_agreement({label: module_medians(report, label) for label in report.labels})
    return out
