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
from dataclasses import dataclass
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


# A row's metadata, one tuple per tensor row (`meta_of`); `RowMeta` holds many as columns.
META = ("tuned", "name", "layer", "module", "param", "dtype", "dtype_tuned", "shape", "numel", "added_rows",
        "lora_rank")


def meta_of(t: Any) -> tuple:
    """One TensorDiff's META tuple."""
    return (t.tuned, t.name, t.layer, t.module, t.param, t.dtype, t.dtype_tuned, tuple(t.shape), int(t.numel),
            int(t.added_rows), t.lora_rank)


def _coded(values: Iterable[Any]) -> tuple[list[Any], np.ndarray]:
    """(the distinct values in order of first appearance, each value's index among them)."""
    index: dict[Any, int] = {}
    codes = [index.setdefault(v, len(index)) for v in values]
    return list(index), np.array(codes, dtype=np.int64)


@dataclass(eq=False)
class RowMeta:
    """The META of many rows as columns: what `RowWriter.add_block`, `report.model.ModuleTotals` and
    `report.units.UnitTotals` take.

    A 100k-tensor diff hands its rows over ~4,000 at a time, with a handful of distinct labels,
    modules, params, dtypes and shapes among them: those are codes into short lists, the numbers
    int64 arrays (-1: no layer, no expert; NULL: no LoRA rank), and the one Python object a row
    brings is its name (the header's own str). A tuple per row and the passes over them cost
    more than the row's statistics (~8 us a tensor)."""

    labels: list[str]
    tuned: np.ndarray  # codes into labels
    names: list[str]
    layer: np.ndarray
    modules: list[str]
    module: np.ndarray
    params: list[str]
    param: np.ndarray
    dtypes: list[str]
    dtype: np.ndarray
    dtype_tuned: np.ndarray
    shapes: list[tuple[int, ...]]
    shape: np.ndarray
    numel: np.ndarray
    added_rows: np.ndarray
    lora_rank: np.ndarray
    expert: np.ndarray  # an expert stored as a tensor of its own: its number (report_heads.csv), not in report.csv

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def of(cls, meta: list[tuple], experts: Iterable[int | None] | None = None) -> "RowMeta":
        """Columns of META tuples (and each row's expert number, None or absent: not an expert's own tensor)."""
        from weightsurgeon.kernels._floattext import NULL

        n = len(meta)
        columns = list(zip(*meta)) if meta else [()] * len(META)
        tuned, name, layer, module, param, dtype, dtype_tuned, shape, numel, added_rows, lora_rank = columns
        labels, tuned_codes = _coded(tuned)
        dtypes, dtype_codes = _coded(dtype + dtype_tuned)
        ints = [np.array([-1 if v is None else v for v in values], dtype=np.int64).reshape(n)
                for values in (layer, experts if experts is not None else [None] * n)]
        return cls(labels, tuned_codes, list(name), ints[0], *_coded(module), *_coded(param), dtypes, dtype_codes[:n],
                   dtype_codes[n:], *_coded(shape), np.array(numel, dtype=np.int64).reshape(n),
                   np.array(added_rows, dtype=np.int64).reshape(n),
                   np.array([NULL if v is None else v for v in lora_rank], dtype=np.int64).reshape(n), ints[1])

    def module_keys(self, rows: np.ndarray | None = None) -> tuple[list[tuple], np.ndarray]:
        """The distinct (tuned label, layer or None, module) of the rows (all, or those at `rows`), in
        order of first appearance, and each row's index among them: the keys of the module and unit
        totals, found by one np.unique over a combined integer instead of a tuple per row."""
        columns = [self.tuned, self.layer, self.module]
        if rows is not None:
            columns = [c[rows] for c in columns]
        if not len(columns[0]):
            return [], np.zeros(0, dtype=np.int64)
        key, room = np.zeros(len(columns[0]), dtype=np.int64), 1
        low = [int(c.min()) for c in columns]
        for c, lo in zip(columns, low):
            span = int(c.max()) - lo + 1
            room *= span
            if room >= 1 << 62:  # a layer number beyond any model's: unique rows the slow way
                _, first, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_index=True, return_inverse=True)
                break
            key = key * span + (c - lo)
        else:
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        labels, modules = self.labels, self.modules
        keys = [(labels[t], None if layer < 0 else layer, modules[m])
                for t, layer, m in zip(*(c[first[order]].tolist() for c in columns))]
        return keys, rank[inverse.reshape(-1)]

    def tuples(self) -> list[tuple]:
        """Each row's META tuple."""
        from weightsurgeon.kernels._floattext import NULL

        labels, modules, params, dtypes, shapes = self.labels, self.modules, self.params, self.dtypes, self.shapes
        return [(labels[t], name, None if layer < 0 else layer, modules[m], params[p], dtypes[d], dtypes[dt], shapes[s],
                 numel, added, None if rank == NULL else rank)
                for t, name, layer, m, p, d, dt, s, numel, added, rank in
                zip(self.tuned.tolist(), self.names, self.layer.tolist(), self.module.tolist(), self.param.tolist(),
                    self.dtype.tolist(), self.dtype_tuned.tolist(), self.shape.tolist(), self.numel.tolist(),
                    self.added_rows.tolist(), self.lora_rank.tolist())]


def _row_meta(meta: "RowMeta | list[tuple]") -> RowMeta:
    return meta if isinstance(meta, RowMeta) else RowMeta.of(meta)


def _typed_columns(meta: RowMeta | list[tuple], columns: Any, clip: float) -> list[tuple[int, Any]]:
    """report.csv's columns of many rows (kernels/stats.StatsColumns and their META), in the file's
    order, each as (kind, values) of kernels/_floattext (TEXT: str cells; CODED: (names, codes);
    INTEGER: ints, NULL for an empty cell; FLOAT: float64, empty cell for NaN/inf): the numbers
    `report.model.stats_fields` gives each row, derived for all rows at once
    (kernels/shape.derive_columns)."""
    from weightsurgeon.kernels import _rowstats
    from weightsurgeon.kernels._floattext import CODED, FLOAT, INTEGER, LIST, NULL, TEXT
    from weightsurgeon.kernels.shape import derive_columns, mode_positions

    meta = _row_meta(meta)
    derived, offsets, found = derive_columns(columns, clip)
    bins = columns.hist.shape[1]
    bins_found, mode_codes = np.unique(found, return_inverse=True)
    modes = ([repr(round(c, 12)) for c in mode_positions(bins_found.tolist(), clip, bins)], offsets,
             mode_codes.reshape(-1))
    shapes = ["x".join(map(str, s)) for s in meta.shapes]
    d = [derived[:, c] for c in range(_rowstats.N_DERIVED)]
    out = {
        "tuned": (CODED, (meta.labels, meta.tuned)), "name": (TEXT, meta.names),
        "layer": (INTEGER, np.where(meta.layer >= 0, meta.layer, NULL)), "module": (CODED, (meta.modules, meta.module)),
        "param": (CODED, (meta.params, meta.param)), "dtype": (CODED, (meta.dtypes, meta.dtype)),
        "numel": (INTEGER, meta.numel),
        "l2_delta": (FLOAT, d[_rowstats.L2_DELTA]), "l2_base": (FLOAT, d[_rowstats.L2_A]),
        "l2_tuned": (FLOAT, d[_rowstats.L2_B]), "rel_l2": (FLOAT, d[_rowstats.REL_L2]),
        "cosine": (FLOAT, d[_rowstats.COSINE]), "max_abs_delta": (FLOAT, columns.max_abs_delta),
        "mean_delta": (FLOAT, d[_rowstats.MEAN_DELTA]), "n_base_zero": (INTEGER, columns.n_base_zero),
        "n_nonfinite": (INTEGER, columns.n_nonfinite), "dtype_tuned": (CODED, (meta.dtypes, meta.dtype_tuned)),
        "shape": (CODED, (shapes, meta.shape)), "added_rows": (INTEGER, meta.added_rows), "n": (INTEGER, columns.n),
        "r_mean": (FLOAT, columns.r_mean), "r_std": (FLOAT, d[_rowstats.R_STD]),
        "r_skewness": (FLOAT, d[_rowstats.R_SKEW]), "r_excess_kurtosis": (FLOAT, d[_rowstats.R_KURT]),
        "bimodality": (FLOAT, d[_rowstats.BIMODALITY]), "n_modes": (INTEGER, np.diff(offsets)),
        "modes": (LIST, modes), "lora_rank": (INTEGER, meta.lora_rank), "sum_sq_delta": (FLOAT, columns.sum_sq_delta),
        "sum_sq_base": (FLOAT, columns.sum_sq_a), "sum_sq_tuned": (FLOAT, columns.sum_sq_b),
        "dot_base_tuned": (FLOAT, columns.dot_ab), "sum_delta": (FLOAT, columns.sum_delta),
        "r_m2": (FLOAT, columns.r_m2), "r_m3": (FLOAT, columns.r_m3), "r_m4": (FLOAT, columns.r_m4),
    }
    return [out[c] for c in CSV_COLUMNS + CSV_EXTRA]


def csv_cells(meta: RowMeta | list[tuple], columns: Any, clip: float) -> list[list[str]]:
    """report.csv's cells of many rows, as columns of str in the file's order (see _typed_columns);
    empty cells for null/NaN."""
    from weightsurgeon.kernels._floattext import column_cells

    if not len(meta):
        return []
    return [column_cells(kind, values) for kind, values in _typed_columns(meta, columns, clip)]


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


def write_csv_block(f: IO[str], writer: Any, meta: RowMeta | list[tuple], columns: Any, clip: float) -> None:
    """Rows of many tensors into report.csv (opened with newline=""), as `writer.writerows` of
    their csv_cells writes them: composed in one compiled call (kernels/_floattext.csv_text), or
    cell by cell where a text cell is not plain ASCII or needs quoting."""
    from weightsurgeon.kernels._floattext import csv_text

    if not len(meta):
        return
    meta = _row_meta(meta)
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

    def add_block(self, meta: RowMeta | list[tuple], columns: Any, clip: float) -> None:
        """Rows of many tensors at once: their META (RowMeta, or tuples) and statistics (kernels/stats.StatsColumns)."""
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
