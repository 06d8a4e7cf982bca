"""Per-head and per-expert rows of a diff: ||B - A|| of each attention head and each expert.

A row is one unit (head or expert) of one (tuned, layer, module): the sums of d^2 and A^2
over its elements, so rows merge exactly (a q_proj head's weight rows and bias entries
add) and L2 and relative L2 are derived. Heads come from the kernel's grouped sums (see
weightsurgeon/units.py), experts stored one tensor each from their tensor rows.

A MoE diff has a row per expert (64 layers x 512 experts x 3 matrices: ~98k), so the rows
are kept as columns (`UnitTable`: numpy arrays, text as small code tables), never as an
object per expert: the figures, the findings and report_heads.csv read the columns, and a
`UnitDiff` is made only when one row is asked for.
"""
from __future__ import annotations

import csv
import math
from array import array
from operator import itemgetter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

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


def derived(sum_sq_delta: np.ndarray, sum_sq_base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l2_delta, l2_base, rel_l2) of many rows: UnitDiff's properties, the same operations, so the same bits."""
    sd, sa = np.asarray(sum_sq_delta, dtype=np.float64), np.asarray(sum_sq_base, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        l2_delta = np.where(sd >= 0, np.sqrt(sd), math.nan)
        l2_base = np.where(sa >= 0, np.sqrt(sa), math.nan)
        rel_l2 = np.where(sa > 0, l2_delta / np.where(sa > 0, l2_base, 1.0), math.nan)
    return l2_delta, l2_base, rel_l2


class UnitTable(Sequence):
    """Head and expert rows as columns: tuned, module and kind as codes into small name lists,
    layer (-1: none), index and the two sums as arrays. Reads as a sequence of UnitDiff (made on
    access) for callers that want rows; the report's own readers use the columns."""

    def __init__(self, tuned_names: Sequence[str], module_names: Sequence[str], kind_names: Sequence[str],
                 tuned: Any, layer: Any, module: Any, kind: Any, index: Any, sum_sq_delta: Any,
                 sum_sq_base: Any) -> None:
        self.tuned_names, self.module_names, self.kind_names = list(tuned_names), list(module_names), list(kind_names)
        self.tuned = np.asarray(tuned, dtype=np.int32)
        self.layer = np.asarray(layer, dtype=np.int64)
        self.module = np.asarray(module, dtype=np.int32)
        self.kind = np.asarray(kind, dtype=np.int32)
        self.index = np.asarray(index, dtype=np.int64)
        self.sum_sq_delta = np.asarray(sum_sq_delta, dtype=np.float64)
        self.sum_sq_base = np.asarray(sum_sq_base, dtype=np.float64)
        self._rel: np.ndarray | None = None

    @classmethod
    def empty(cls) -> "UnitTable":
        return cls([], [], [], [], [], [], [], [], [], [])

    @classmethod
    def of(cls, rows: Iterable[UnitDiff]) -> "UnitTable":
        """A table of UnitDiff rows, in their order (a report.json 'units' list, the Python API)."""
        if isinstance(rows, UnitTable):
            return rows
        rows = list(rows)
        codes: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        cols = [[codes[0].setdefault(u.tuned, len(codes[0])) for u in rows],
                [-1 if u.layer is None else u.layer for u in rows],
                [codes[1].setdefault(u.module, len(codes[1])) for u in rows],
                [codes[2].setdefault(u.kind, len(codes[2])) for u in rows]]
        return cls(list(codes[0]), list(codes[1]), list(codes[2]), *cols, [u.index for u in rows],
                   [u.sum_sq_delta for u in rows], [u.sum_sq_base for u in rows])

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        layer = int(self.layer[i])
        return UnitDiff(self.tuned_names[self.tuned[i]], None if layer < 0 else layer, self.module_names[self.module[i]],
                        self.kind_names[self.kind[i]], int(self.index[i]), float(self.sum_sq_delta[i]),
                        float(self.sum_sq_base[i]))

    def __iter__(self) -> Iterator[UnitDiff]:
        tuned, modules, kinds = self.tuned_names, self.module_names, self.kind_names
        for t, layer, m, k, i, sd, sa in zip(self.tuned.tolist(), self.layer.tolist(), self.module.tolist(),
                                             self.kind.tolist(), self.index.tolist(), self.sum_sq_delta.tolist(),
                                             self.sum_sq_base.tolist()):
            yield UnitDiff(tuned[t], None if layer < 0 else layer, modules[m], kinds[k], i, sd, sa)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (UnitTable, list, tuple)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UnitTable({len(self)} rows)"

    @property
    def rel_l2(self) -> np.ndarray:
        """Relative L2 of every row (NaN where the base sum is 0 or not finite)."""
        if self._rel is None:
            self._rel = derived(self.sum_sq_delta, self.sum_sq_base)[2]
        return self._rel

    def code(self, names: list[str], name: str) -> int:
        """The code of `name` in one of the name lists (-1: absent, so a mask selects nothing)."""
        return names.index(name) if name in names else -1

    def where(self, tuned: str | None = None, module: str | None = None, kind: str | None = None,
              per_layer: bool = False) -> np.ndarray:
        """Row mask: rows of one tuned model, module kind, unit kind; with per_layer, rows that have a layer."""
        mask = np.ones(len(self), dtype=bool)
        for names, column, value in ((self.tuned_names, self.tuned, tuned), (self.module_names, self.module, module),
                                     (self.kind_names, self.kind, kind)):
            if value is not None:
                mask &= column == self.code(names, value)
        if per_layer:
            mask &= self.layer >= 0
        return mask


class UnitTotals:
    """Unit rows built tensor by tensor as a diff finishes them: heads from the kernel's grouped
    sums, experts stored one tensor each from their tensor's sums. Kept as flat columns (key id,
    index, the two sums: 32 bytes a contribution) and summed per unit once, at the end, in
    arrival order (bincount adds each unit's contributions in input order: the same sums, bit
    for bit, as adding them one by one)."""

    def __init__(self) -> None:
        self.keys: dict[tuple, int] = {}  # (tuned, layer, module, kind) -> key id
        self.ids, self.index, self.sd, self.sa = array("q"), array("q"), array("d"), array("d")

    def _key(self, tuned: str, layer: int | None, module: str, kind: str) -> int:
        return self.keys.setdefault((tuned, layer, module, kind), len(self.keys))

    def add_groups(self, tuned: str, layer: int | None, module: str, groups: Any) -> None:
        """One tensor's grouped sums (kernels.delta.Groups): a row per head or stacked expert."""
        sums = np.ascontiguousarray(groups.sums, dtype=np.float64)
        k = self._key(tuned, layer, module, groups.kind)
        self.ids.frombytes(np.full(len(sums), k, dtype=np.int64).tobytes())
        self.index.frombytes(np.arange(len(sums), dtype=np.int64).tobytes())
        self.sd.frombytes(np.ascontiguousarray(sums[:, 0]).tobytes())
        self.sa.frombytes(np.ascontiguousarray(sums[:, 1]).tobytes())

    def add_experts(self, meta: Any, rows: np.ndarray, sum_sq_delta: np.ndarray, sum_sq_base: np.ndarray) -> None:
        """Experts stored as tensors of their own: rows `rows` of a block's META (report/rows.RowMeta,
        whose `expert` column numbers them), in order, with their tensors' sums."""
        if not len(rows):
            return
        keys, inverse = meta.module_keys(rows)
        ids = np.array([self._key(*k, "expert") for k in keys], dtype=np.int64)
        self.ids.frombytes(ids[inverse].tobytes())
        self.index.frombytes(np.ascontiguousarray(meta.expert[rows], dtype=np.int64).tobytes())
        self.sd.frombytes(np.ascontiguousarray(sum_sq_delta, dtype=np.float64).tobytes())
        self.sa.frombytes(np.ascontiguousarray(sum_sq_base, dtype=np.float64).tobytes())

    def result(self, labels: list[str]) -> UnitTable:
        """The unit rows, one per (tuned, layer, module, kind, index), ordered by tuned model (in
        `labels`' order), layer (none first), module, kind and index."""
        if not self.ids:
            return UnitTable.empty()
        ids = np.frombuffer(self.ids, dtype=np.int64)
        index = np.frombuffer(self.index, dtype=np.int64)
        span = int(index.max()) + 1
        units, inverse = np.unique(ids * span + index, return_inverse=True)
        sd = np.bincount(inverse, weights=np.frombuffer(self.sd, dtype=np.float64), minlength=len(units))
        sa = np.bincount(inverse, weights=np.frombuffer(self.sa, dtype=np.float64), minlength=len(units))
        keys = list(self.keys)  # in key-id order
        tuned_names = sorted({k[0] for k in keys}, key=lambda t: (labels.index(t) if t in labels else len(labels), t))
        module_names = sorted({k[2] for k in keys})
        kind_names = sorted({k[3] for k in keys})
        key_tuned = np.array([tuned_names.index(k[0]) for k in keys], dtype=np.int32)
        key_layer = np.array([-1 if k[1] is None else k[1] for k in keys], dtype=np.int64)
        key_module = np.array([module_names.index(k[2]) for k in keys], dtype=np.int32)
        key_kind = np.array([kind_names.index(k[3]) for k in keys], dtype=np.int32)
        key, unit_index = units // span, units % span
        tuned, layer, module, kind = key_tuned[key], key_layer[key], key_module[key], key_kind[key]
        # labels not among `labels` sort after them (as the rows' sort did), then by name: tuned_names' order
        order = np.lexsort((unit_index, kind, module, layer, tuned))
        return UnitTable(tuned_names, module_names, kind_names, tuned[order], layer[order], module[order], kind[order],
                         unit_index[order], sd[order], sa[order])


def write_units_csv(units: Iterable[UnitDiff] | UnitTable, path: str | Path) -> Path:
    """report_heads.csv: one row per head or expert of each (tuned, layer, module); empty cells for NaN.

    A MoE diff has a row per expert (~100k): the numbers are derived as columns (the same
    operations as UnitDiff's properties, so the same bits) and written in one compiled call
    per block.
    """
    from weightsurgeon.kernels._floattext import CODED, FLOAT, INTEGER, NULL, column_cells, csv_text

    table = UnitTable.of(units)
    kinds = {"tuned": CODED, "module": CODED, "kind": CODED, "layer": INTEGER, "index": INTEGER}
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for first in range(0, len(table), _BLOCK):  # a block's text at a time: 98k rows' text at once was ~40 MB
            block = slice(first, first + _BLOCK)
            sd, sa = table.sum_sq_delta[block], table.sum_sq_base[block]
            l2_delta, l2_base, rel_l2 = derived(sd, sa)
            layer = table.layer[block]
            columns = {"tuned": (table.tuned_names, table.tuned[block]), "layer": np.where(layer >= 0, layer, NULL),
                       "module": (table.module_names, table.module[block]),
                       "kind": (table.kind_names, table.kind[block]),
                       "index": table.index[block], "l2_delta": l2_delta, "l2_base": l2_base, "rel_l2": rel_l2,
                       "sum_sq_delta": sd, "sum_sq_base": sa}
            typed = [(kinds.get(c, FLOAT), columns[c]) for c in CSV_COLUMNS]
            text = csv_text(typed)
            if text is not None:
                f.write(text)
            else:  # a label that needs quoting or is not ASCII
                writer.writerows(zip(*(column_cells(kind, values) for kind, values in typed)))
    return path


_BLOCK = 8192  # rows of report_heads.csv composed at once


def read_units_csv(path: Path, source: str) -> UnitTable:
    """report_heads.csv back into rows (a report folder of schema 4 keeps them there, not in report.json)."""
    from weightsurgeon.errors import SurgeonError

    if not path.is_file():
        raise SurgeonError(f"{source}: its head and expert rows are in {path.name}, which is missing beside it")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return UnitTable.empty()
        at = [header.index(c) for c in ("tuned", "layer", "module", "kind", "index", "sum_sq_delta", "sum_sq_base")]
        try:
            cells = list(zip(*map(itemgetter(*at), reader)))
        except IndexError:
            raise ValueError(f"{path.name}: a row has fewer cells than its header names") from None
    if not cells:
        return UnitTable.empty()
    tuned, layer, module, kind, index, sd, sa = cells
    codes = []
    for column in (tuned, module, kind):
        names: dict[str, int] = {}
        codes.append(([names.setdefault(v, len(names)) for v in column], list(names)))
    return UnitTable(codes[0][1], codes[1][1], codes[2][1], codes[0][0], [int(v) if v else -1 for v in layer],
                     codes[1][0], codes[2][0], [int(v) for v in index], [float(v or "nan") for v in sd],
                     [float(v or "nan") for v in sa])


def top_units(units: Iterable[UnitDiff] | UnitTable, tuned: str, n: int = 5, kind: str | None = None) -> list[UnitDiff]:
    """The n units of one tuned model with the largest relative L2 (ties by L2), among those that changed."""
    table = UnitTable.of(units)
    rel = table.rel_l2
    mask = table.where(tuned=tuned, kind=kind) & np.isfinite(rel) & (table.sum_sq_delta > 0)
    rows = np.flatnonzero(mask)
    # the sort key (-rel_l2, -sum_sq_delta), then the table's order, as a stable sort of the rows gives
    order = rows[np.lexsort((rows, -table.sum_sq_delta[rows], -rel[rows]))][:n]
    return [table[int(i)] for i in order]
