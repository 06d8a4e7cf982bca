"""JSON and JSONL files of records (task sets for eval, training data): one reader, one set of messages.

A ``.json`` file whose text starts with ``[`` is a list of records; anything else is read as
JSONL, one record per line (blank lines skipped). Every record must be a JSON object. Errors
name the file (and the line or item) and what such a file holds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from weightsurgeon.errors import SurgeonError


def read_records(path: Path, kind: str) -> Iterator[dict[str, Any]]:
    """The records of a .json list or a .jsonl file; ``kind`` ("task", "data") names the file in messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SurgeonError(f"{path}: not a JSON/JSONL {kind} file (not UTF-8 text)") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SurgeonError(f"{path}: invalid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                               f"a .json {kind} file is a list of records") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise SurgeonError(f"{path}: item {i} is not a JSON object (a .json {kind} file is a list of records)")
            yield row
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SurgeonError(f"{path}:{lineno}: invalid JSON ({exc.msg}); "
                               f"a .jsonl {kind} file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise SurgeonError(f"{path}:{lineno}: not a JSON object; a .jsonl {kind} file holds one JSON object per line")
        yield row
