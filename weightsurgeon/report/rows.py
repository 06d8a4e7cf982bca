"""Per-tensor rows of a diff report, streamed to two files beside report.json.

A MoE checkpoint has ~100k tensors; their rows with 200-bin histograms made report.json
130-190 MB and kept ~2 KB per tensor in memory until the end. The diff writes each
tensor's row as soon as the tensor is done, and keeps only per-module aggregates:

- ``report.csv``: one row per tensor and tuned model, every statistic and the raw sums
  (enough to rebuild the row exactly: floats are written with repr), in the order the
  diff finished them (the base's on-disk order). ``pandas.read_csv`` opens it in one call.
- ``histograms.safetensors``: one tensor ``histograms`` of shape [rows, bins], row i the
  relative-change histogram of CSV row i; I32 counts (I64 where a tensor has 2^31
  elements or more). ``safetensors.numpy.load_file`` opens it.

report.json (schema 4) names both under ``tensor_files``; `DiffReport.from_json` reads
them back when the rows are asked for.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, Iterable

import numpy as np

TENSORS_CSV = "report.csv"
HISTOGRAMS = "histograms.safetensors"
HISTOGRAMS_TENSOR = "histograms"

# The CSV's first columns: scripts read these names.
CSV_COLUMNS = ("tuned", "name", "layer", "module", "param", "dtype", "numel", "l2_delta", "l2_base", "l2_tuned",
               "rel_l2", "cosine", "max_abs_delta", "mean_delta", "n_base_zero", "n_nonfinite")
# Then these; the raw sums (schema 4) make a row rebuildable exactly.
CSV_EXTRA = ("dtype_tuned", "shape", "added_rows", "n", "r_mean", "r_std", "r_skewness", "r_excess_kurtosis",
             "bimodality", "n_modes", "modes", "lora_rank", "sum_sq_delta", "sum_sq_base", "sum_sq_tuned",
             "dot_base_tuned", "sum_delta", "r_m2", "r_m3", "r_m4")
_INT_COLUMNS = ("numel", "n_base_zero", "n_nonfinite", "added_rows", "n")


# A row's metadata, as `RowWriter.add_block` takes it: one tuple per tensor row.
META = ("tuned", "name", "layer", "module", "param", "dtype", "dtype_tuned", "shape", "numel", "added_rows",
        "lora_rank")


def meta_of(t: Any) -> tuple:
    """One TensorDiff's META tuple."""
    return (t.tuned, t.name, t.layer, t.module, t.param, t.dtype, t.dtype_tuned, tuple(t.shape), int(t.numel),
            int(t.added_rows), t.lora_rank)


def _floats(column: np.ndarray) -> list[str]:
    """repr of each value (the shortest text that reads back exactly); empty for NaN/inf. Compiled
    (kernels/_floattext.py): repr itself cost ~0.5 us a value, 2.5M values at 100k tensors."""
    from weightsurgeon.kernels._floattext import float_cells

    return float_cells(column)


def _optional(values: Iterable[Any]) -> list[str]:
    return ["" if v is None else str(v) for v in values]


def _typed_columns(meta: list[tuple], columns: Any, clip: float) -> list[tuple[int, Any]]:
    """report.csv's columns of many rows (kernels/stats.StatsColumns and their META tuples), in the
    file's order, each as (kind, values) of kernels/_floattext (TEXT: str cells; INTEGER: ints,
    None for an empty cell; FLOAT: float64, empty cell for NaN/inf): the numbers
    `report.model.stats_fields` gives each row, derived for all rows at once
    (kernels/shape.derive_columns)."""
    from weightsurgeon.kernels import _rowstats
    from weightsurgeon.kernels._floattext import FLOAT, INTEGER, TEXT
    from weightsurgeon.kernels.shape import derive_columns, mode_positions

    derived, offsets, found = derive_columns(columns, clip)
    bins = columns.hist.shape[1]
    table = {i: repr(round(c, 12)) for i, c in zip(sorted(set(found.tolist())),
                                                    mode_positions(sorted(set(found.tolist())), clip, bins))}
    names = [table[i] for i in found.tolist()]
    bounds = offsets.tolist()
    modes = [";".join(names[a:b]) for a, b in zip(bounds, bounds[1:])]
    tuned, name, layer, module, param, dtype, dtype_tuned, shape, numel, added_rows, lora_rank = zip(*meta)
    shapes: dict[tuple, str] = {}
    shape_text = [shapes.get(s) or shapes.setdefault(s, "x".join(map(str, s))) for s in shape]
    d = [derived[:, c] for c in range(_rowstats.N_DERIVED)]
    out = {
        "tuned": (TEXT, tuned), "name": (TEXT, name), "layer": (INTEGER, layer), "module": (TEXT, module),
        "param": (TEXT, param), "dtype": (TEXT, dtype), "numel": (INTEGER, numel),
        "l2_delta": (FLOAT, d[_rowstats.L2_DELTA]), "l2_base": (FLOAT, d[_rowstats.L2_A]),
        "l2_tuned": (FLOAT, d[_rowstats.L2_B]), "rel_l2": (FLOAT, d[_rowstats.REL_L2]),
        "cosine": (FLOAT, d[_rowstats.COSINE]), "max_abs_delta": (FLOAT, columns.max_abs_delta),
        "mean_delta": (FLOAT, d[_rowstats.MEAN_DELTA]), "n_base_zero": (INTEGER, columns.n_base_zero),
        "n_nonfinite": (INTEGER, columns.n_nonfinite), "dtype_tuned": (TEXT, dtype_tuned),
        "shape": (TEXT, shape_text), "added_rows": (INTEGER, added_rows), "n": (INTEGER, columns.n),
        "r_mean": (FLOAT, columns.r_mean), "r_std": (FLOAT, d[_rowstats.R_STD]),
        "r_skewness": (FLOAT, d[_rowstats.R_SKEW]), "r_excess_kurtosis": (FLOAT, d[_rowstats.R_KURT]),
        "bimodality": (FLOAT, d[_rowstats.BIMODALITY]), "n_modes": (INTEGER, np.diff(offsets)),
        "modes": (TEXT, modes), "lora_rank": (INTEGER, lora_rank), "sum_sq_delta": (FLOAT, columns.sum_sq_delta),
        "sum_sq_base": (FLOAT, columns.sum_sq_a), "sum_sq_tuned": (FLOAT, columns.sum_sq_b),
        "dot_base_tuned": (FLOAT, columns.dot_ab), "sum_delta": (FLOAT, columns.sum_delta),
        "r_m2": (FLOAT, columns.r_m2), "r_m3": (FLOAT, columns.r_m3), "r_m4": (FLOAT, columns.r_m4),
    }
    return [out[c] for c in CSV_COLUMNS + CSV_EXTRA]


def csv_cells(meta: list[tuple], columns: Any, clip: float) -> list[list[str]]:
    """report.csv's cells of many rows, as columns of str in the file's order (see _typed_columns);
    empty cells for null/NaN."""
    from weightsurgeon.kernels._floattext import FLOAT, INTEGER

    if not meta:
        return []
    out = []
    for kind, values in _typed_columns(meta, columns, clip):
        if kind == FLOAT:
            out.append(_floats(values))
        elif kind == INTEGER:
            out.append(_optional(values.tolist() if isinstance(values, np.ndarray) else values))
        else:
            out.append(list(values))
    return out


_TEXT = ("tuned", "name", "module", "param", "dtype", "dtype_tuned")  # the cells that may hold any text


def write_csv_columns(f: IO[str], writer: Any, cells: list[list[str]]) -> None:
    """Rows given as columns into a CSV file opened with newline="": what `writer.writerows`
    writes (its "\\r\\n" line ends), joined in one call where no text cell needs quoting."""
    if not cells or not cells[0]:
        return
    header = CSV_COLUMNS + CSV_EXTRA
    text = "".join("".join(cells[header.index(c)]) for c in _TEXT)
    rows = zip(*cells)
    if any(ch in text for ch in ',"\r\n'):
        writer.writerows(rows)
    else:
        f.write("\r\n".join(map(",".join, rows)) + "\r\n")


def write_csv_block(f: IO[str], writer: Any, meta: list[tuple], columns: Any, clip: float) -> None:
    """Rows of many tensors into report.csv (opened with newline=""), as `writer.writerows` of
    their csv_cells writes them: composed in one compiled call (kernels/_floattext.csv_text), or
    cell by cell where a text cell is not plain ASCII or needs quoting."""
    from weightsurgeon.kernels._floattext import csv_text

    if not meta:
        return
    text = csv_text(_typed_columns(meta, columns, clip))
    if text is None:
        write_csv_columns(f, writer, csv_cells(meta, columns, clip))
    else:
        f.write(text)


def csv_row(t: Any) -> list[str]:
    """One TensorDiff as report.csv's cells: empty cells for null/NaN."""
    from weightsurgeon.kernels.stats import StatsColumns

    return [column[0] for column in csv_cells([meta_of(t)], StatsColumns.of([t.stats], t.stats.bins), t.stats.clip)]


def hist_dtype(largest: int) -> str:
    """I32 counts where every tensor has fewer than 2^31 elements, else I64."""
    return "I32" if largest < 2**31 else "I64"


class RowWriter:
    """Writes tensor rows as they come: a CSV line and a histogram row each.

    The number of rows is known before the first (the plan's pairs), so the histogram
    file's header is written first and rows follow in order; `close` checks the count.
    """

    def __init__(self, folder: Path, rows: int, bins: int, largest: int) -> None:
        from weightsurgeon.format import build_header

        self.folder, self.rows, self.bins, self.done = Path(folder), int(rows), int(bins), 0
        self.dtype = hist_dtype(largest)
        self.np_dtype = np.int32 if self.dtype == "I32" else np.int64
        self.csv_file: IO[str] = open(self.folder / TENSORS_CSV, "w", newline="", encoding="utf-8")
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(CSV_COLUMNS + CSV_EXTRA)
        self.hist_file = open(self.folder / HISTOGRAMS, "wb")
        prefix, _ = build_header([(HISTOGRAMS_TENSOR, self.dtype, (self.rows, self.bins))],
                                 {"format": "np", "rows": f"the rows of {TENSORS_CSV}, in order"})
        self.hist_file.write(prefix)

    def add_block(self, meta: list[tuple], columns: Any, clip: float) -> None:
        """Rows of many tensors at once: their META tuples and statistics (kernels/stats.StatsColumns)."""
        if self.done + len(meta) > self.rows:
            raise RuntimeError(f"internal: more than the {self.rows} planned tensor rows")
        write_csv_block(self.csv_file, self.csv, meta, columns, clip)
        self.hist_file.write(np.ascontiguousarray(columns.hist, dtype=self.np_dtype).tobytes())
        self.done += len(meta)

    def add(self, t: Any) -> None:
        """One TensorDiff's row."""
        from weightsurgeon.kernels.stats import StatsColumns

        self.add_block([meta_of(t)], StatsColumns.of([t.stats], t.stats.bins), t.stats.clip)

    def close(self) -> dict:
        """Close both files; report.json's ``tensor_files`` entry."""
        self.csv_file.close()
        self.hist_file.close()
        if self.done != self.rows:
            raise RuntimeError(f"internal: {self.done} tensor rows written of {self.rows} planned")
        return {"csv": TENSORS_CSV, "histograms": HISTOGRAMS, "rows": self.rows, "hist_dtype": self.dtype}

    def abort(self) -> None:
        self.csv_file.close()
        self.hist_file.close()


def write_rows(tensors: Iterable[Any], folder: Path, rows: int, bins: int) -> dict:
    """Rows already in memory (a report from the Python API) written as a streamed diff writes them."""
    tensors = list(tensors)
    writer = RowWriter(folder, rows, bins, max((t.numel for t in tensors), default=0))
    try:
        if tensors:
            from weightsurgeon.kernels.stats import StatsColumns

            writer.add_block([meta_of(t) for t in tensors], StatsColumns.of([t.stats for t in tensors], bins),
                             tensors[0].stats.clip)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _number(text: str, integer: bool) -> Any:
    if text == "":
        return None
    return int(text) if integer else float(text)


def read_rows(folder: Path, files: dict, source: str) -> list[dict]:
    """The rows of report.csv with their histograms, as report.json's schema-3 tensor dicts."""
    from safetensors.numpy import load_file

    from weightsurgeon.errors import SurgeonError

    csv_path, hist_path = folder / str(files.get("csv", TENSORS_CSV)), folder / str(files.get("histograms", HISTOGRAMS))
    for path in (csv_path, hist_path):
        if not path.is_file():
            raise SurgeonError(f"{source}: its tensor rows are in {path.name}, which is missing beside it")
    try:
        hists = load_file(str(hist_path))[HISTOGRAMS_TENSOR]
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
        raise SurgeonError(f"{hist_path}: not a histogram file of a diff report ({str(e)[:120]})") from None
    out = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            d: dict[str, Any] = {k: _number(row[k], k in _INT_COLUMNS) for k in CSV_EXTRA + CSV_COLUMNS
                                 if k not in ("tuned", "name", "module", "param", "dtype", "dtype_tuned", "shape",
                                              "modes", "layer", "lora_rank")}
            d.update(tuned=row["tuned"], name=row["name"], module=row["module"], param=row["param"],
                     dtype=row["dtype"], dtype_tuned=row["dtype_tuned"],
                     shape=[int(s) for s in row["shape"].split("x")] if row["shape"] else [],
                     layer=int(row["layer"]) if row["layer"] else None,
                     lora_rank=int(row["lora_rank"]) if row["lora_rank"] else None,
                     hist=hists[i] if i < len(hists) else None)
            out.append(d)
    if len(out) != len(hists):
        raise SurgeonError(f"{source}: {csv_path.name} has {len(out)} rows but {hist_path.name} {len(hists)}: the report "
                           "folder is damaged; run surgeon diff again")
    return out
