"""`surgeon probe`: generate answers to the built-in prompts and sort each into level I-IV.

Used after `zero`/`reinit`/`remove` to tabulate the paper's Table 3: which destruction
leaves a model fluent, which leaves it talking nonsense.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from weightsurgeon.recipes.eval.backends import Backend, Sampling
from weightsurgeon.recipes.eval.parallel import make_backend
from weightsurgeon.recipes.eval.levels import LEVEL_NAMES, PROBE_PROMPTS, ProbePrompt, classify

SCHEMA = "weightsurgeon.probe/1"


def run_probe(
    backend: Backend,
    prompt_mode: str = "chat",
    max_new_tokens: int = 128,
    probes: Sequence[ProbePrompt] = PROBE_PROMPTS,
    seed: int = 0,
) -> dict[str, Any]:
    """Greedy answers to ``probes`` and their verdicts (one model's entry of probe.json)."""
    prompts = [backend.chat_prompt(p.prompt) if prompt_mode == "chat" else p.prompt + "\n" for p in probes]
    gens = backend.generate(prompts, max_new_tokens, [], Sampling(seed=seed))
    rows = []
    for probe, prompt, gen in zip(probes, prompts, gens):
        verdict = classify(probe, gen.text)
        rows.append({
            "id": probe.id,
            "kind": probe.kind,
            "prompt": prompt,
            "output": gen.text,
            "tokens": gen.num_tokens,
            "level": verdict.level,
            "reason": verdict.reason,
            "evidence": verdict.evidence,
        })
    counts = Counter(r["level"] for r in rows)
    return {
        "prompt_mode": prompt_mode,
        "max_new_tokens": max_new_tokens,
        "levels": {lvl: counts.get(lvl, 0) for lvl in LEVEL_NAMES},
        "rows": rows,
    }


def probe_model(model: str, backend_name: str = "hf", backend_options: dict[str, Any] | None = None,
                **kwargs: Any) -> dict[str, Any]:
    """Load, probe, and release one model (several are probed one after another)."""
    backend = make_backend(backend_name, model, backend_options)
    try:
        result = run_probe(backend, **kwargs)
    finally:
        if hasattr(backend, "close"):
            backend.close()
        del backend
        _release_memory()
    return {"model": model, **result}


def _release_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - the backends need torch anyway
        pass


def write_probe(result: dict[str, Any], out_dir: str | Path, force: bool = False) -> Path:
    from weightsurgeon.atomic import atomic_output_dir

    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, [], force) as tmp:
        (tmp / "probe.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir / "probe.json"
