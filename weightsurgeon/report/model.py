"""DiffReport: what `surgeon diff` measured, as plain data that round-trips through report.json.

Statistics are kept as additive `DeltaStats` (sums, counts, histogram), so a module's row
is the exact merge of its tensors' rows and every derived number (L2, relative L2,
cosine) is recomputed from sums, never averaged. report.json carries the raw sums beside
the derived numbers, so `from_json` rebuilds the same report bit for bit.

Schema ``weightsurgeon.diff/4`` (within a version keys are only ever added, never renamed):
base/tuned identities, options, bin_edges, notes, missing, modules, units, spectra, timing,
and the per-tensor rows: inline as ``tensors`` (a report printed with --json, or written
by the Python API) or, in a report folder, in report.csv and histograms.safetensors, which
``tensor_files`` names (report/rows.py; version 4). A 100k-tensor report.json is then
a few MB instead of 190 MB.
JSON has no NaN: non-finite floats are written as null. Version 2 renamed an identity's
``digest`` to ``layout_digest`` (it hashes the headers: a base and its fine-tune share it)
and added the identity the weights really have where it is known: ``repo``, ``commit``,
``shards[].sha256`` (LFS), and ``origin``. Version 1 reports still load.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Iterable

import numpy as np

from weightsurgeon._version import __version__
from weightsurgeon.errors import SurgeonError
from weightsurgeon.report.rows import CSV_COLUMNS, CSV_EXTRA, csv_row  # noqa: F401  # CSV_*: scripts import them here
from weightsurgeon.report.spectrum import SpectrumRow
from weightsurgeon.report.units import UnitDiff, UnitTable

SCHEMA = "weightsurgeon.diff/4"
# Older schemas still read: /1 and /2 lack the shape of the relative change (r_* become NaN) and units;
# /3 holds every tensor row inline.
READABLE_SCHEMAS = ("weightsurgeon.diff/1", "weightsurgeon.diff/2", "weightsurgeon.diff/3", SCHEMA)

# Reading order of modules inside a layer, and of the layerless ones around the layers.
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "q_norm", "k_norm", "gate_proj", "up_proj",
                "gate_up_proj", "down_proj", "router", "expert_gate_proj", "expert_up_proj", "expert_gate_up_proj",
                "expert_down_proj", "shared_expert_gate_proj", "shared_expert_up_proj", "shared_expert_down_proj",
                "shared_expert_router", "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm")
_BEFORE_LAYERS = ("embed_tokens", "embed_positions")
# Display order of module kinds in tables and figures: inside a layer, then the tensors outside the layers.
DISPLAY_ORDER = MODULE_ORDER + ("embed_tokens", "embed_positions", "lm_head", "norm", "vision", "other")


def display_key(module: str) -> tuple[int, str]:
    return (DISPLAY_ORDER.index(module), module) if module in DISPLAY_ORDER else (len(DISPLAY_ORDER), module)


def _stats_cls():
    from weightsurgeon.kernels.stats import DeltaStats

    return DeltaStats


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _ints(counts: Any) -> list[int]:
    """Histogram counts as plain ints (tolist: 20x faster than a comprehension over numpy scalars)."""
    return np.asarray(counts, dtype=np.int64).tolist()


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def sort_key(tuned_index: int, layer: int | None, module: str, name: str = "") -> tuple:
    """Embeddings, then layers in numeric order (modules in reading order), then the rest (norm, head)."""
    if layer is not None:
        band, pos = 1, layer
    elif module in _BEFORE_LAYERS:
        band, pos = 0, 0
    else:
        band, pos = 2, 0
    order = MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)
    return (tuned_index, band, pos, order, module, name)


@dataclass(frozen=True)
class ModelIdentity:
    """Which checkpoint a side of the diff is: enough to tell whether two reports compared the same inputs."""

    source: str
    path: str
    layout_digest: str  # sha256 over the shard headers: names the layout, not the weights
    architecture: str | None
    num_layers: int
    dtype: str | None
    label: str | None = None  # tuned models only
    origin: str = "local"  # local (a path), cache (a Hub id found in the cache), remote (read from the Hub)
    repo: str | None = None  # the Hub repository, where known
    commit: str | None = None  # its commit hash
    shards: tuple[dict, ...] = ()  # [{file, sha256}]: each shard's LFS sha256 where known (None elsewhere)

    def to_dict(self) -> dict:
        out = {"source": self.source, "path": self.path, "origin": self.origin, "layout_digest": self.layout_digest,
               "repo": self.repo, "commit": self.commit, "shards": [dict(s) for s in self.shards],
               "architecture": self.architecture, "num_layers": self.num_layers, "dtype": self.dtype}
        return out if self.label is None else {"label": self.label, **out}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelIdentity":
        return cls(source=d.get("source", ""), path=d.get("path", ""),
                   layout_digest=d.get("layout_digest", d.get("digest", "")),  # "digest" in schema 1
                   architecture=d.get("architecture"), num_layers=int(d.get("num_layers") or 0),
                   dtype=d.get("dtype"), label=d.get("label"), origin=d.get("origin", "local"), repo=d.get("repo"),
                   commit=d.get("commit"), shards=tuple(dict(s) for s in d.get("shards") or ()))


def stats_fields(stats: Any) -> dict:
    """The derived and raw numbers of one DeltaStats, under report.json's names."""
    std, skewness, kurtosis, bimodality, modes = stats.shape_numbers()
    return {
        "l2_delta": _json_float(stats.l2_delta),
        "l2_base": _json_float(stats.l2_a),
        "l2_tuned": _json_float(stats.l2_b),
        "rel_l2": _json_float(stats.rel_l2),
        "cosine": _json_float(stats.cosine),
        "max_abs_delta": _json_float(stats.max_abs_delta),
        "mean_delta": _json_float(stats.mean_delta),
        "n_base_zero": int(stats.n_base_zero),
        "n_nonfinite": int(stats.n_nonfinite),
        # Raw additive sums: enough to merge rows again or rebuild the report exactly.
        "n": int(stats.n),
        "sum_sq_delta": _json_float(stats.sum_sq_delta),
        "sum_sq_base": _json_float(stats.sum_sq_a),
        "sum_sq_tuned": _json_float(stats.sum_sq_b),
        "dot_base_tuned": _json_float(stats.dot_ab),
        "sum_delta": _json_float(stats.sum_delta),
        # Shape of the clipped relative change (kernels/shape.py): derived, then the central sums it comes from.
        "r_mean": _json_float(stats.r_mean),
        "r_std": _json_float(std),
        "r_skewness": _json_float(skewness),
        "r_excess_kurtosis": _json_float(kurtosis),
        "bimodality": _json_float(bimodality),
        "modes": [round(m, 12) for m in modes],
        "r_m2": _json_float(stats.r_m2),
        "r_m3": _json_float(stats.r_m3),
        "r_m4": _json_float(stats.r_m4),
    }


def stats_from_fields(d: dict, bins: int, clip: float) -> Any:
    """Inverse of `stats_fields` (+ the row's hist; a row without one has an empty histogram)."""
    return _stats_cls()(bins=bins, clip=clip, n=int(d["n"]), n_nonfinite=int(d["n_nonfinite"]),
                        n_base_zero=int(d["n_base_zero"]), sum_sq_delta=_float(d["sum_sq_delta"]),
                        sum_sq_a=_float(d["sum_sq_base"]), sum_sq_b=_float(d["sum_sq_tuned"]),
                        dot_ab=_float(d["dot_base_tuned"]), sum_delta=_float(d["sum_delta"]),
                        max_abs_delta=_float(d["max_abs_delta"]),
                        hist=None if d.get("hist") is None else np.asarray(d["hist"], dtype=np.int64),
                        **{k: _float(d.get(k)) for k in ("r_mean", "r_m2", "r_m3", "r_m4")})


def finite(x: float) -> float | None:
    """A number for display, None for NaN/inf (what report.json writes as null)."""
    return x if x is not None and math.isfinite(x) else None


@dataclass
class TensorDiff:
    """One tensor of one tuned model against the base."""

    tuned: str
    name: str
    layer: int | None
    module: str
    param: str
    dtype: str
    dtype_tuned: str
    shape: tuple[int, ...]
    numel: int  # elements compared (the base tensor's; the shared rows when tokens were added)
    stats: Any  # DeltaStats
    added_rows: int = 0
    lora_rank: int | None = None  # the adapter's rank when the tuned value is W + scaling * B @ A

    def to_dict(self, hist: bool = True) -> dict:
        out = {"tuned": self.tuned, "name": self.name, "layer": self.layer, "module": self.module,
               "param": self.param, "dtype": self.dtype, "dtype_tuned": self.dtype_tuned, "shape": list(self.shape),
               "numel": int(self.numel), **stats_fields(self.stats), "added_rows": int(self.added_rows),
               "lora_rank": self.lora_rank}
        if hist:
            out["hist"] = _ints(self.stats.hist)
        return out

    @classmethod
    def from_dict(cls, d: dict, bins: int, clip: float) -> "TensorDiff":
        return cls(tuned=d["tuned"], name=d["name"], layer=d["layer"], module=d["module"], param=d["param"],
                   dtype=d["dtype"], dtype_tuned=d.get("dtype_tuned", d["dtype"]), shape=tuple(d["shape"]),
                   numel=int(d["numel"]), stats=stats_from_fields(d, bins, clip), added_rows=int(d.get("added_rows", 0)),
                   lora_rank=d.get("lora_rank"))


@dataclass
class ModuleDiff:
    """One (layer, module) of one tuned model: the exact merge of its tensors (weight + bias ...)."""

    tuned: str
    layer: int | None
    module: str
    numel: int
    num_tensors: int
    stats: Any  # DeltaStats

    def to_dict(self) -> dict:
        return {"tuned": self.tuned, "layer": self.layer, "module": self.module, "numel": int(self.numel),
                "num_tensors": self.num_tensors, **stats_fields(self.stats), "hist": _ints(self.stats.hist)}

    @classmethod
    def from_dict(cls, d: dict, bins: int, clip: float) -> "ModuleDiff":
        return cls(tuned=d["tuned"], layer=d["layer"], module=d["module"], numel=int(d["numel"]),
                   num_tensors=int(d.get("num_tensors", 0)), stats=stats_from_fields(d, bins, clip))


class ModuleTotals:
    """(tuned, layer, module) rows built tensor by tensor, exactly (sums and counts add).

    Rows arrive in blocks (kernels/stats.StatsColumns) and are summed into per-module
    arrays by module id, in arrival order (a compiled loop, kernels/_rowstats.add_rows: the
    same sums, bit for bit, as adding the rows one by one). The moments of the relative change are
    merged once per module at the end (one shape.combine over its tensors, in arrival
    order). So a diff keeps per-module aggregates only, whatever the number of tensors.
    """

    _SUMS = ("sum_sq_delta", "sum_sq_a", "sum_sq_b", "dot_ab", "sum_delta")
    _COUNTS = ("n", "n_nonfinite", "n_base_zero")

    def __init__(self, bins: int, clip: float) -> None:
        self.bins, self.clip = bins, clip
        self.index: dict[tuple, int] = {}
        self.sums = np.zeros((0, len(self._SUMS)))
        self.max_abs = np.zeros(0)
        self.counts = np.zeros((0, len(self._COUNTS) + 2), dtype=np.int64)  # + numel, tensors
        self.hist = np.zeros((0, bins), dtype=np.int64)
        self.moments: list[tuple[np.ndarray, ...]] = []  # (module ids, r_n, r_mean, r_m2, r_m3, r_m4) per block

    def _grow(self, size: int) -> None:
        have = len(self.max_abs)
        if size <= have:
            return
        size = max(size, 2 * have, 64)
        self.sums = np.concatenate([self.sums, np.zeros((size - have, self.sums.shape[1]))])
        self.max_abs = np.concatenate([self.max_abs, np.zeros(size - have)])
        self.counts = np.concatenate([self.counts, np.zeros((size - have, self.counts.shape[1]), dtype=np.int64)])
        self.hist = np.concatenate([self.hist, np.zeros((size - have, self.bins), dtype=np.int64)])

    def add_block(self, meta: Any, columns: Any) -> None:
        """Rows of many tensors: their META as columns (report/rows.RowMeta) and statistics."""
        if not len(meta):
            return
        from weightsurgeon.kernels import _rowstats

        keys, inverse = meta.module_keys()
        index = self.index
        ids = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)[inverse]
        self._grow(len(index))
        sums = np.stack([getattr(columns, name) for name in self._SUMS], axis=1)
        counts = np.stack([getattr(columns, name) for name in self._COUNTS]
                          + [meta.numel, np.ones(len(meta), dtype=np.int64)], axis=1)
        _rowstats.add_rows(ids, sums, columns.max_abs_delta, counts, columns.hist, self.sums, self.max_abs, self.counts,
                           self.hist)
        self.moments.append((ids, columns.r_n, columns.r_mean, columns.r_m2, columns.r_m3, columns.r_m4))

    def add(self, tuned: str, layer: int | None, module: str, numel: int, stats: Any) -> None:
        """One tensor's row."""
        from weightsurgeon.kernels.stats import StatsColumns
        from weightsurgeon.report.rows import RowMeta

        self.add_block(RowMeta.of([(tuned, "", layer, module, "", "", "", (), numel, 0, None)]),
                       StatsColumns.of([stats], self.bins))

    def result(self, tuned_order: list[str]) -> list[ModuleDiff]:
        from weightsurgeon.kernels.shape import combine

        rows = []
        if self.moments:
            ids, n, mean, m2, m3, m4 = (np.concatenate(c) for c in zip(*self.moments))
            order = np.argsort(ids, kind="stable")  # each module's tensors in arrival order
            starts = np.searchsorted(ids[order], np.arange(len(self.index) + 1))
            n, mean, m2, m3, m4 = (c[order].astype(np.float64) for c in (n, mean, m2, m3, m4))
        for (tuned, layer, module), k in self.index.items():
            stats = _stats_cls().empty(self.bins, self.clip)
            for j, name in enumerate(self._SUMS):
                setattr(stats, name, float(self.sums[k, j]))
            stats.max_abs_delta = float(self.max_abs[k])
            for j, name in enumerate(self._COUNTS):
                setattr(stats, name, int(self.counts[k, j]))
            stats.hist = self.hist[k].copy()
            a, b = starts[k], starts[k + 1]
            _, stats.r_mean, stats.r_m2, stats.r_m3, stats.r_m4 = combine(n[a:b], mean[a:b], m2[a:b], m3[a:b],
                                                                          m4[a:b])
            rows.append(ModuleDiff(tuned, layer, module, int(self.counts[k, -2]), int(self.counts[k, -1]), stats))
        index = {label: i for i, label in enumerate(tuned_order)}
        return sorted(rows, key=lambda m: sort_key(index.get(m.tuned, len(index)), m.layer, m.module))


def aggregate_modules(tensors: Iterable[TensorDiff], tuned_order: list[str], bins: int, clip: float) -> list[ModuleDiff]:
    """Merge tensor rows into (tuned, layer, module) rows, exactly (sums and counts add)."""
    from weightsurgeon.kernels.stats import StatsColumns
    from weightsurgeon.report.rows import RowMeta, meta_of

    tensors = list(tensors)
    totals = ModuleTotals(bins, clip)
    totals.add_block(RowMeta.of([meta_of(t) for t in tensors]), StatsColumns.of([t.stats for t in tensors], bins))
    return totals.result(tuned_order)


class FileRows(Sequence):
    """A saved report's tensor rows, read from report.csv and histograms.safetensors on first use
    (`plot` and `compare-reports` need the module rows only)."""

    def __init__(self, folder: Path, files: dict, labels: list[str], bins: int, clip: float, source: str) -> None:
        self.folder, self.files, self.labels, self.bins, self.clip, self.source = folder, files, labels, bins, clip, source
        self.loaded: list[TensorDiff] | None = None

    def _rows(self) -> list[TensorDiff]:
        if self.loaded is None:
            from weightsurgeon.report.rows import read_rows

            try:
                rows = [TensorDiff.from_dict(d, self.bins, self.clip) for d in read_rows(self.folder, self.files, self.source)]
            except (KeyError, TypeError, ValueError) as e:
                raise SurgeonError(f"{self.source}: damaged tensor rows: {type(e).__name__}: {str(e)[:120]}") from e
            index = {label: i for i, label in enumerate(self.labels)}
            rows.sort(key=lambda r: sort_key(index.get(r.tuned, len(index)), r.layer, r.module, r.name))
            self.loaded = rows
        return self.loaded

    def __getitem__(self, i: Any) -> Any:
        return self._rows()[i]

    def __len__(self) -> int:
        return len(self._rows())


@dataclass
class DiffReport:
    """Everything one `surgeon diff` run measured; `to_dict` is report.json."""

    base: ModelIdentity
    tuned: list[ModelIdentity]
    options: dict
    tensors: list[TensorDiff]
    modules: list[ModuleDiff]
    notes: list[str] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Tensors holding NaN/Inf, per model: {"model": "base" or a label, "name", "count", "numel", "file"}.
    nonfinite: list[dict] = field(default_factory=list)
    # Per head and per expert (report/units.UnitTable: columns; a list of UnitDiff rows is made one)
    units: Any = field(default_factory=UnitTable.empty)
    spectra: list[Any] = field(default_factory=list)  # report/spectrum.SpectrumRow: diff --spectrum
    # Where the tensor rows are, when not in `tensors` alone: report/rows.RowWriter.close()'s entry
    # (a streamed diff holds no rows in memory: `tensors` is empty; a loaded report reads them back).
    tensor_files: dict | None = None
    timing: dict = field(default_factory=lambda: {"seconds": 0.0, "bytes_read": 0, "gb_per_s": None})
    version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if not isinstance(self.units, UnitTable):
            self.units = UnitTable.of(self.units)

    # -- derived views --------------------------------------------------------------------
    @property
    def bins(self) -> int:
        return int(self.options["bins"])

    @property
    def clip(self) -> float:
        return float(self.options["clip"])

    @property
    def bin_edges(self) -> list[float]:
        return [float(x) for x in np.histogram_bin_edges(np.empty(0), bins=self.bins, range=(-self.clip, self.clip))]

    @property
    def num_tensors(self) -> int:
        """Tensor rows of the report, in memory or in its files."""
        if self.tensor_files is not None and not isinstance(self.tensors, FileRows):
            return int(self.tensor_files["rows"])
        return len(self.tensors)

    @property
    def labels(self) -> list[str]:
        return [t.label or "" for t in self.tuned]

    @property
    def every(self) -> int | None:
        """The histogram figure's layer step the diff was run with, if any."""
        every = self.options.get("every")
        return every if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else None

    def module_row(self, tuned: str, layer: int | None, module: str) -> ModuleDiff | None:
        """The (tuned, layer, module) row, or None."""
        index = self.__dict__.get("_rows")
        if index is None or len(index) != len(self.modules):
            index = self.__dict__["_rows"] = {(m.tuned, m.layer, m.module): m for m in self.modules}
        return index.get((tuned, layer, module))

    def module_names(self, per_layer: bool | None = None) -> list[str]:
        """Module kinds present in display order (only per-layer ones, only layerless ones, or all)."""
        found = {m.module for m in self.modules if per_layer is None or (m.layer is not None) == per_layer}
        return sorted(found, key=display_key)

    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.modules if m.layer is not None})

    def rows_of(self, tuned: str, module: str) -> list[ModuleDiff]:
        """One module kind's rows for one tuned model: the layerless one first, then by layer."""
        rows = [m for m in self.modules if m.tuned == tuned and m.module == module]
        return sorted(rows, key=lambda m: -1 if m.layer is None else m.layer)

    def tensor(self, name: str, tuned: str | None = None) -> TensorDiff:
        """The row of one tensor (of the first tuned model unless `tuned` names one)."""
        tuned = self.labels[0] if tuned is None else tuned
        for t in self.tensors:
            if t.name == name and t.tuned == tuned:
                return t
        raise KeyError(f"{name!r} (tuned {tuned!r}) is not in the report")

    def module_kinds(self, tuned: str | None = None) -> list[dict]:
        """Per module kind across layers: median/max of rel_l2 and l2_delta, pooled rel_l2, share of the squared delta.

        The one summary the terminal table, the HTML page and the share figure all show. The
        median across layers is the paper-style summary (robust to one odd layer); the pooled
        relative L2 is sqrt(sum ||B-A||^2 / sum ||A||^2) over every layer; ``share`` is a
        fraction of the tuned model's total squared delta (0..1; displays multiply by 100);
        ``layers`` counts per-layer rows (0 for embeddings, head and final norm); the peak's
        layer is None where nothing changed.
        """
        tuned = self.labels[0] if tuned is None else tuned
        rows = [m for m in self.modules if m.tuned == tuned]
        total_sq = sum(m.stats.sum_sq_delta for m in rows if math.isfinite(m.stats.sum_sq_delta))
        kinds: dict[str, list[ModuleDiff]] = {}
        for m in rows:
            kinds.setdefault(m.module, []).append(m)
        out = []
        for module, ms in kinds.items():
            rel = [m.stats.rel_l2 for m in ms if math.isfinite(m.stats.rel_l2)]
            l2 = [m.stats.l2_delta for m in ms if math.isfinite(m.stats.l2_delta)]
            sq_d = sum(m.stats.sum_sq_delta for m in ms)
            sq_a = sum(m.stats.sum_sq_a for m in ms)
            peak = max(ms, key=lambda m: m.stats.rel_l2 if math.isfinite(m.stats.rel_l2) else -1.0)
            out.append({
                "module": module,
                "layers": sum(1 for m in ms if m.layer is not None),
                "numel": sum(m.numel for m in ms),
                "median_rel_l2": statistics.median(rel) if rel else math.nan,
                "median_l2_delta": statistics.median(l2) if l2 else math.nan,
                "max_rel_l2": peak.stats.rel_l2,
                "max_rel_l2_layer": peak.layer if peak.stats.rel_l2 > 0 else None,
                "pooled_rel_l2": math.sqrt(sq_d / sq_a) if sq_a > 0 else math.nan,
                "l2_delta": math.sqrt(sq_d) if math.isfinite(sq_d) else math.nan,
                "sum_sq_delta": sq_d,
                "share": (sq_d / total_sq) if total_sq > 0 and math.isfinite(sq_d) else 0.0,
                "unchanged": all(m.stats.sum_sq_delta == 0.0 and m.stats.max_abs_delta == 0.0 for m in ms),
            })
        out.sort(key=lambda r: sort_key(0, None, r["module"]))
        return out

    # -- JSON ----------------------------------------------------------------------------
    def to_dict_header(self) -> dict:
        """Every key of report.json but the per-row lists and timing."""
        return {
            "schema": SCHEMA,
            "version": self.version,
            "created": self.created,
            "base": self.base.to_dict(),
            "tuned": [t.to_dict() for t in self.tuned],
            "options": dict(self.options),
            "bin_edges": self.bin_edges,
            "notes": list(self.notes),
            "missing": [dict(m) for m in self.missing],
            "warnings": list(self.warnings),
            "nonfinite": [dict(e) for e in self.nonfinite],
        }

    def to_dict(self) -> dict:
        """report.json as a dict (NaN/inf already null)."""
        files = self.tensor_files
        rows: dict = ({"tensor_files": dict(files)} if files is not None else {"tensors": [t.to_dict() for t in self.tensors]})
        return {**self.to_dict_header(),
                **rows,
                "modules": [m.to_dict() for m in self.modules],
                "units": [] if files is not None and "units" in files else [u.to_dict() for u in self.units],
                "spectra": [r.to_dict() for r in self.spectra],
                "timing": dict(self.timing)}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def dump(self, fp: Any) -> None:
        """Write report.json to a text stream row by row: a 50k-tensor MoE report never sits in memory as one dict."""
        head = self.to_dict_header()
        fp.write("{")
        for i, (key, value) in enumerate(head.items()):
            fp.write(("" if i == 0 else ",") + "\n " + json.dumps(key) + ": " + json.dumps(value, allow_nan=False))
        row_lists: list[tuple[str, Any]] = [("modules", self.modules), ("units", self.units), ("spectra", self.spectra)]
        if self.tensor_files is not None:  # the tensor rows, and the head/expert rows (one per expert), are in files
            fp.write(",\n \"tensor_files\": " + json.dumps(self.tensor_files))
            row_lists = [(key, [] if key == "units" and "units" in self.tensor_files else rows) for key, rows in row_lists]
        else:
            row_lists.insert(0, ("tensors", self.tensors))
        for key, rows in row_lists:
            fp.write(",\n " + json.dumps(key) + ": [")
            for i, row in enumerate(rows):
                fp.write(("" if i == 0 else ",") + "\n  " + json.dumps(row.to_dict(), allow_nan=False))
            fp.write("\n ]")
        fp.write(",\n \"timing\": " + json.dumps(self.timing, allow_nan=False) + "\n}\n")

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "w", encoding="utf-8") as f:
            self.dump(f)
        return path

    @classmethod
    def from_dict(cls, d: Any, source: str = "report", folder: Path | None = None) -> "DiffReport":
        """Rebuild a report from report.json's dict, checked: one SurgeonError naming ``source`` and the first problem.

        Tensor rows kept in files (``tensor_files``) are read from `folder` when first used;
        without a folder (JSON text) such a report has no tensor rows.
        """
        if not isinstance(d, dict):
            raise SurgeonError(f"{source}: not a diff report (the JSON is a {type(d).__name__}, not an object)")
        schema = d.get("schema")
        if schema not in READABLE_SCHEMAS:
            if isinstance(schema, str) and schema.startswith("weightsurgeon.diff/"):
                raise SurgeonError(f"{source}: report schema {schema!r} is not supported by this version (expected {SCHEMA!r})")
            raise SurgeonError(f"{source}: not a weightsurgeon diff report (schema {schema!r:.60}, expected {SCHEMA!r})")
        _check_rows(d, source)
        try:
            options = dict(d["options"])
            bins, clip = int(options["bins"]), float(options["clip"])
            files = d.get("tensor_files")
            tensors: Any = [TensorDiff.from_dict(t, bins, clip) for t in d.get("tensors") or []]
            if files is not None:
                if not isinstance(files, dict) or not isinstance(files.get("rows"), int):
                    raise SurgeonError(f"{source}: 'tensor_files' must name the row files and their row count")
                if folder is not None:
                    tensors = FileRows(folder, files, [t["label"] for t in d["tuned"]], bins, clip, source)
            units = UnitTable.of(UnitDiff.from_dict(u) for u in d.get("units") or [])
            if files is not None and folder is not None and isinstance(files.get("units"), str):
                from weightsurgeon.report.units import read_units_csv

                units = read_units_csv(folder / files["units"], source)
            return cls(
                base=ModelIdentity.from_dict(d["base"]),
                tuned=[ModelIdentity.from_dict(t) for t in d["tuned"]],
                options=options,
                tensors=tensors,
                tensor_files=dict(files) if files is not None else None,
                modules=[ModuleDiff.from_dict(m, bins, clip) for m in d["modules"]],
                units=units,
                spectra=[SpectrumRow.from_dict(r) for r in d.get("spectra") or []],
                notes=list(d.get("notes", [])),
                missing=list(d.get("missing", [])),
                warnings=list(d.get("warnings", [])),
                nonfinite=[dict(e) for e in d.get("nonfinite", [])],
                timing=dict(d.get("timing", {})),
                version=d.get("version", ""),
                created=d.get("created", ""),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SurgeonError(f"{source}: damaged diff report: {type(e).__name__}: {str(e)[:120]}") from e

    @classmethod
    def from_json(cls, source: str | Path) -> "DiffReport":
        """Load report.json (a path, or JSON text starting with '{'); one SurgeonError naming the file for anything else."""
        text = str(source)
        where = "report"
        if not text.lstrip().startswith("{"):
            path = Path(source).expanduser()
            if not path.exists():
                raise SurgeonError(f"{path}: no such file (give the report.json, or the folder, that `surgeon diff -o` wrote)")
            where = str(path)
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise SurgeonError(f"{path}: not a JSON report (the file is not UTF-8 text)") from None
            except OSError as e:
                raise SurgeonError(f"{path}: cannot read ({e.strerror or e}); check that the file is readable") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SurgeonError(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except RecursionError:
            raise SurgeonError(f"{where}: not valid JSON (nested too deeply)") from None
        return cls.from_dict(d, source=where, folder=None if where == "report" else Path(where).expanduser().parent)

    # -- CSV -----------------------------------------------------------------------------
    def write_csv(self, path: str | Path) -> Path:
        """report.csv: one row per tensor and tuned model; empty cells for null/NaN (report/rows.py)."""
        path = Path(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS + CSV_EXTRA)
            for t in self.tensors:
                writer.writerow(csv_row(t))
        return path

    def write_rows(self, folder: str | Path) -> dict:
        """The tensor rows into report.csv and histograms.safetensors in `folder`, as a streamed diff
        writes them (already there when the diff streamed them); report.json then names the files."""
        if self.tensor_files is None:
            from weightsurgeon.report.rows import write_rows

            self.tensor_files = write_rows(self.tensors, Path(folder), len(self.tensors), self.bins)
        if self.units and "units" not in self.tensor_files:
            from weightsurgeon.report.units import HEADS_CSV, write_units_csv

            write_units_csv(self.units, Path(folder) / HEADS_CSV)
            self.tensor_files["units"] = HEADS_CSV
        return self.tensor_files


def _check_rows(d: dict, source: str) -> None:
    """What a hand-edited or foreign report.json gets wrong, named before any row is built."""
    for key in ("tuned", "modules"):
        if not isinstance(d.get(key), list):
            raise SurgeonError(f"{source}: {key!r} is missing or not a list")
    labels = []
    for i, t in enumerate(d["tuned"]):
        if not isinstance(t, dict) or not isinstance(t.get("label"), str):
            raise SurgeonError(f"{source}: tuned[{i}] has no 'label'")
        labels.append(t["label"])
    if not labels:
        raise SurgeonError(f"{source}: the report lists no tuned model")
    options = d.get("options")
    if not isinstance(options, dict) or isinstance(options.get("bins"), bool) or not isinstance(options.get("bins"), int):
        raise SurgeonError(f"{source}: 'options' has no integer 'bins'")
    bins = options["bins"]
    edges = d.get("bin_edges")
    if edges is not None:
        if (not isinstance(edges, list) or len(edges) < 2
                or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in edges)):
            raise SurgeonError(f"{source}: 'bin_edges' must be a list of at least two numbers")
        if any(not math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise SurgeonError(f"{source}: 'bin_edges' must be finite and increasing")
        if len(edges) != bins + 1:
            raise SurgeonError(f"{source}: 'bin_edges' describes {len(edges) - 1} bins but options.bins is {bins}")
    for kind, rows in (("modules", d["modules"]), ("tensors", d.get("tensors") or [])):
        for i, m in enumerate(rows):
            where = f"{source}: {kind}[{i}]"
            if not isinstance(m, dict):
                raise SurgeonError(f"{where} is not an object")
            if m.get("tuned") not in labels:
                raise SurgeonError(f"{where}: 'tuned' is {m.get('tuned')!r:.60}, not one of the report's tuned models {labels}")
            if not isinstance(m.get("module"), str) or not m["module"]:
                raise SurgeonError(f"{where}: 'module' is missing")
            layer = m.get("layer")
            if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
                raise SurgeonError(f"{where}: 'layer' must be an integer or null, not {layer!r:.40}")
            hist = m.get("hist")
            if hist is not None:
                if not isinstance(hist, list) or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in hist):
                    raise SurgeonError(f"{where}: 'hist' must be a list of counts")
                if len(hist) != bins:
                    raise SurgeonError(f"{where}: 'hist' has {len(hist)} bins but 'bin_edges' describes {bins}")
