"""results.json: what both harnesses (ours and lm-eval's) write, and how it is read back.

Its own module so that the two harnesses, the tables and ``surgeon eval compare`` share
the schema without importing each other.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.eval.config import EvalConfig

SCHEMA = "weightsurgeon.eval/1"


def results_header(cfg: EvalConfig, harness: str, started: float) -> dict[str, Any]:
    """The fields every results.json opens with, whichever harness generated (tasks filled in later)."""
    return {
        "schema": SCHEMA,
        "harness": harness,
        "model": cfg.model,
        "config": cfg.to_dict(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 3),
        "tasks": {},
    }


def load_results(path: str | Path) -> dict[str, Any]:
    """A finished run's results.json (given the folder or the file)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError:
        raise SurgeonError(f"{file}: no results.json here (is this a finished `surgeon eval` output?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SurgeonError(f"{file}: invalid JSON: {exc}; give the folder `surgeon eval -o` wrote") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SurgeonError(f"{file}: not a surgeon eval result (schema {SCHEMA} expected)")
    return data
