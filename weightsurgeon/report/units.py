"""Per-head and per-expert rows of a diff: ||B - A|| of each attention head and each expert.

A row is one unit (head or expert) of one (tuned, layer, module): the sums of d^2 and A^2
over its elements, so rows merge exactly (a q_proj head's weight rows and bias entries
add) and L2 and relative L2 are derived. Heads come from the kernel's grouped sums (see
weightsurgeon/units.py), experts stored one tensor each from their tensor rows.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

HEADS_CSV = "report_heads.csv"
CSV_COLUMNS = ("tuned", "layer", "module", "kind", "index", "l2_delta", "l2_base", "rel_l2", "sum_sq_delta",
               "sum_sq_base")


@dataclass(slots=True)
class UnitDiff:
    """One head or expert of one (tuned, layer, module)."""

    tuned: str
    layer: int | None
    module: str
    kind: str  # "head" or "expert"
    index: int
    sum_sq_delta: float
    sum_sq_base: float

    @property
    def l2_delta(self) -> float:
        return math.sqrt(self.sum_sq_delta) if self.sum_sq_delta >= 0 else math.nan

    @property
    def l2_base(self) -> float:
        return math.sqrt(self.sum_sq_base) if self.sum_sq_base >= 0 else math.nan

    @property
    def rel_l2(self) -> float:
        return self.l2_delta / self.l2_base if self.sum_sq_base > 0 else math.nan

    def to_dict(self) -> dict:
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"tuned": self.tuned, "layer": self.layer, "module": self.module, "kind": self.kind,
                "index": self.index, "l2_delta": num(self.l2_delta), "l2_base": num(self.l2_base),
                "rel_l2": num(self.rel_l2), "sum_sq_delta": num(self.sum_sq_delta),
                "sum_sq_base": num(self.sum_sq_base)}

    @classmethod
    def from_dict(cls, d: dict) -> "UnitDiff":
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        return cls(tuned=d["tuned"], layer=d["layer"], module=d["module"], kind=d["kind"], index=int(d["index"]),
                   sum_sq_delta=num(d["sum_sq_delta"]), sum_sq_base=num(d["sum_sq_base"]))


class UnitTotals:
    """Unit rows built tensor by tensor as a diff finishes them: heads from the kernel's grouped
    sums, experts stored one tensor each from their tensor's sums."""

    def __init__(self) -> None:
        self.rows: dict[tuple, UnitDiff] = {}

    def _add(self, tuned: str, layer: int | None, module: str, kind: str, index: int, sd: float, sa: float) -> None:
        key = (tuned, layer, module, kind, index)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = UnitDiff(tuned, layer, module, kind, index, sd, sa)
        else:
            row.sum_sq_delta += sd
            row.sum_sq_base += sa

    def add_groups(self, tuned: str, layer: int | None, module: str, groups: Any) -> None:
        """One tensor's grouped sums (kernels.delta.Groups): a row per head or stacked expert."""
        for i, (sd, sa) in enumerate(groups.sums.tolist()):
            self._add(tuned, layer, module, groups.kind, i, sd, sa)

    def add_expert(self, tuned: str, layer: int | None, module: str, expert: int, sum_sq_delta: float,
                   sum_sq_base: float) -> None:
        """One expert stored as a tensor of its own: its tensor's sums."""
        self._add(tuned, layer, module, "expert", expert, sum_sq_delta, sum_sq_base)

    def result(self, labels: list[str]) -> list[UnitDiff]:
        order = {label: i for i, label in enumerate(labels)}
        return sorted(self.rows.values(), key=lambda u: (order.get(u.tuned, len(order)),
                                                         -1 if u.layer is None else u.layer, u.module, u.kind, u.index))


def write_units_csv(units: Iterable[UnitDiff], path: str | Path) -> Path:
    """report_heads.csv: one row per head or expert of each (tuned, layer, module); empty cells for NaN.

    A MoE diff has a row per expert (~100k): the numbers are derived as columns (the same
    operations as UnitDiff's properties, so the same bits) and written in one compiled call.
    """
    import numpy as np

    from weightsurgeon.kernels._floattext import FLOAT, INTEGER, TEXT, csv_text
    from weightsurgeon.report.rows import _floats, _optional

    units = list(units)
    kinds = {"tuned": TEXT, "module": TEXT, "kind": TEXT, "layer": INTEGER, "index": INTEGER}
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for first in range(0, len(units), _BLOCK):  # a block's text at a time: 98k rows' text at once was ~40 MB
            block = units[first:first + _BLOCK]
            sd = np.array([u.sum_sq_delta for u in block], dtype=np.float64)
            sa = np.array([u.sum_sq_base for u in block], dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                l2_delta = np.where(sd >= 0, np.sqrt(sd), math.nan)
                l2_base = np.where(sa >= 0, np.sqrt(sa), math.nan)
                rel_l2 = np.where(sa > 0, l2_delta / np.where(sa > 0, l2_base, 1.0), math.nan)
            columns = {"tuned": [u.tuned for u in block], "layer": [u.layer for u in block],
                       "module": [u.module for u in block], "kind": [u.kind for u in block],
                       "index": [u.index for u in block], "l2_delta": l2_delta, "l2_base": l2_base, "rel_l2": rel_l2,
                       "sum_sq_delta": sd, "sum_sq_base": sa}
            typed = [(kinds.get(c, FLOAT), columns[c]) for c in CSV_COLUMNS]
            text = csv_text(typed)
            if text is not None:
                f.write(text)
            else:  # a label that needs quoting or is not ASCII
                writer.writerows(zip(*(_floats(v) if k == FLOAT else _optional(v) if k == INTEGER else v
                                       for k, v in typed)))
    return path


_BLOCK = 8192  # rows of report_heads.csv composed at once


def read_units_csv(path: Path, source: str) -> list[UnitDiff]:
    """report_heads.csv back into rows (a report folder of schema 4 keeps them there, not in report.json)."""
    from weightsurgeon.errors import SurgeonError

    if not path.is_file():
        raise SurgeonError(f"{source}: its head and expert rows are in {path.name}, which is missing beside it")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append(UnitDiff(tuned=row["tuned"], layer=int(row["layer"]) if row["layer"] else None,
                                 module=row["module"], kind=row["kind"], index=int(row["index"]),
                                 sum_sq_delta=float(row["sum_sq_delta"] or "nan"),
                                 sum_sq_base=float(row["sum_sq_base"] or "nan")))
    return rows


def top_units(units: Iterable[UnitDiff], tuned: str, n: int = 5, kind: str | None = None) -> list[UnitDiff]:
    """The n units of one tuned model with the largest relative L2 (ties by L2)."""
    rows = [u for u in units if u.tuned == tuned and (kind is None or u.kind == kind) and math.isfinite(u.rel_l2)
            and u.sum_sq_delta > 0]
    rows.sort(key=lambda u: (-u.rel_l2, -u.sum_sq_delta))
    return rows[:n]
