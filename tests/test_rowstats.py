"""Report rows derived in batches (kernels/_rowstats.py) equal the rows derived one at a time.

The diff derives ~100k tensor rows as columns: every number of report.csv must be the one
DeltaStats' own properties give (the scalar Python definitions), bit for bit, and the
modes the ones histogram_modes gives a single row, ties included.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from weightsurgeon.kernels import _rowstats
from weightsurgeon.kernels.delta import accumulate_delta, batch_from_files
from weightsurgeon.kernels.shape import derive_columns, histogram_modes, mode_positions
from weightsurgeon.kernels.stats import DeltaStats, StatsColumns
from weightsurgeon.report.model import TensorDiff, stats_fields
from weightsurgeon.report.rows import CSV_COLUMNS, CSV_EXTRA, csv_cells, csv_row, meta_of

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
BINS, CLIP = 200, 1.0


def kernel_row(a: np.ndarray, b: np.ndarray, bins: int = BINS, clip: float = CLIP) -> DeltaStats:
    stats = DeltaStats.empty(bins, clip)
    accumulate_delta(stats, a.astype(np.float32).view(np.uint32), b.astype(np.float32).view(np.uint32), "F32", "F32")
    return stats


def edge_rows() -> list[DeltaStats]:
    """Rows from the kernel on the cases that take every branch of the derivation."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(64).astype(np.float32)
    rows = [
        DeltaStats.empty(BINS, CLIP),  # nothing counted: every derived number NaN
        kernel_row(x, x),  # zero delta
        kernel_row(np.zeros(16), rng.standard_normal(16)),  # all-zero base: rel_l2 NaN, no histogram
        kernel_row(x, np.zeros(64)),  # all-zero tuned: cosine NaN
        kernel_row(np.array([1.0, np.nan, np.inf, 2.0, -np.inf]), np.array([1.5, 1.0, 1.0, np.nan, 3.0])),  # NaN/Inf
        kernel_row(np.array([1.0, 2.0, 4.0]), np.array([1.5, 3.0, 6.0])),  # constant ratio: var 0, 3 elements
        kernel_row(np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.5, 3.0, 6.0, 8.5])),  # n = 4: bimodality's edge
        kernel_row(x, x * 3.0),  # every ratio clipped into the end bins: no inner counts, no modes
        kernel_row(x, x * np.float32(1.25)),  # one inner bin: one mode
        kernel_row(x, x + rng.standard_normal(64).astype(np.float32)),
        kernel_row(x, -x),  # every ratio -2: the low end bin
    ]
    big = rng.standard_normal(20000).astype(np.float32)
    rows.append(kernel_row(big, big * (1 + 0.3 * np.sign(rng.standard_normal(20000))).astype(np.float32)))  # two modes
    huge = DeltaStats.empty(BINS, CLIP)  # a histogram count beyond float-exact integer products
    huge.hist[50], huge.hist[150] = 1 << 27, 1 << 27
    huge.n = 1 << 28
    huge.r_m2, huge.r_m3, huge.r_m4 = 0.25 * huge.n, 1e-3 * huge.n, 0.07 * huge.n
    rows.append(huge)
    return rows


def same(x: float, y: float) -> bool:
    return repr(float(x)) == repr(float(y))


def test_derived_columns_equal_the_scalar_properties_bit_for_bit() -> None:
    rows = edge_rows()
    derived, offsets, found = derive_columns(StatsColumns.of(rows, BINS), CLIP)
    for i, s in enumerate(rows):
        std, skewness, kurtosis, bimodality, modes = s.shape_numbers()
        want = {_rowstats.L2_DELTA: s.l2_delta, _rowstats.L2_A: s.l2_a, _rowstats.L2_B: s.l2_b,
                _rowstats.REL_L2: s.rel_l2, _rowstats.COSINE: s.cosine, _rowstats.MEAN_DELTA: s.mean_delta,
                _rowstats.R_STD: std, _rowstats.R_SKEW: skewness, _rowstats.R_KURT: kurtosis,
                _rowstats.BIMODALITY: bimodality}
        for column, value in want.items():
            assert same(derived[i, column], value), (i, column, derived[i, column], value)
        assert mode_positions(found[offsets[i]:offsets[i + 1]].tolist(), CLIP, BINS) == modes, i
    assert [len(rows[i].modes) for i in (0, 7, 8, 11)] == [0, 0, 1, 2]
    assert math.isnan(derived[0, _rowstats.R_STD]) and math.isnan(derived[5, _rowstats.R_SKEW])
    assert not math.isnan(derived[-1, _rowstats.BIMODALITY])  # the exact Python fallback ran


def test_csv_cells_of_a_block_equal_each_row_alone_and_the_json_fields() -> None:
    rows = edge_rows()
    tensors = [TensorDiff("t", f"model.layers.{i}.mlp.up_proj.weight", i, "up_proj", "weight", "F32", "F32", (4, 8),
                          32, s) for i, s in enumerate(rows)]
    block = list(zip(*csv_cells([meta_of(t) for t in tensors], StatsColumns.of(rows, BINS), CLIP)))
    header = CSV_COLUMNS + CSV_EXTRA
    for t, cells in zip(tensors, block):
        assert list(cells) == csv_row(t)
        fields = stats_fields(t.stats)
        for key in ("l2_delta", "rel_l2", "cosine", "mean_delta", "r_std", "r_skewness", "r_excess_kurtosis",
                    "bimodality", "r_m2"):
            cell = cells[header.index(key)]
            assert (cell == "" and fields[key] is None) or float(cell) == fields[key], (key, cell, fields[key])
        assert cells[header.index("modes")] == ";".join(repr(m) for m in fields["modes"])


def tie_histograms() -> list[np.ndarray]:
    """Histograms whose smoothed counts tie exactly: a tie must be settled the same way everywhere."""
    out = []
    for counts in ([(100, 5), (101, 5)],  # a plateau of two bins
                   [(60, 7), (140, 7)],  # two equal modes, symmetric about the centre
                   [(40, 3), (100, 3), (160, 3)],  # three equal modes
                   [(90, 4), (91, 4), (92, 9)],  # a plateau that rises again: one mode
                   [(1, 1)], [(198, 2)],  # next to the end bins
                   [(0, 9), (199, 9)]):  # end bins only: no mode
        h = np.zeros(BINS, dtype=np.int64)
        for i, c in counts:
            h[i] = c
        out.append(h)
    return out


def test_modes_of_many_rows_equal_each_row_alone_ties_included() -> None:
    rng = np.random.default_rng(11)
    hists = tie_histograms()
    stds = [0.0, 0.3, 0.0, 0.01, 0.0, 0.0, 1.0]
    for _ in range(400):  # small tensors: a few counts, wide smoothing; and larger, smoother ones
        size = int(rng.choice([3, 32, 300, 5000]))
        values = np.clip(rng.normal(rng.uniform(-0.5, 0.5), rng.uniform(0.001, 0.6), size), -CLIP, CLIP)
        h, _ = np.histogram(values, bins=BINS, range=(-CLIP, CLIP))
        hists.append(h.astype(np.int64))
        stds.append(float(values.std()))
    stack = np.stack(hists)
    offsets, found = _rowstats.modes(stack, np.array(stds), CLIP, 0.05)
    for i, (h, std) in enumerate(zip(hists, stds)):
        assert mode_positions(found[offsets[i]:offsets[i + 1]].tolist(), CLIP, BINS) == histogram_modes(h, CLIP, std)
    width = 2 * CLIP / BINS
    centre = [-CLIP + (i + 0.5) * width for i in range(BINS)]
    ties = [histogram_modes(h, CLIP, s) for h, s in zip(tie_histograms(), stds)]
    assert ties[0] == [centre[100]]  # a plateau's left end, once
    assert ties[1] == [centre[60], centre[140]] and ties[2] == [centre[40], centre[100], centre[160]]
    assert ties[3] == [centre[92]] and ties[4] == [centre[1]] and ties[5] == [centre[198]] and ties[6] == []
    assert histogram_modes(np.array([5, 5]), CLIP, 0.1) == [] and histogram_modes(np.array([0, 5, 0]), CLIP, 0.1) == \
        [pytest.approx(0.0)]


def test_a_batch_from_files_gives_the_columns_of_fresh_statistics(tmp_path) -> None:
    """batch_from_files' columns: each row the DeltaStats one call on fresh statistics gives."""
    from weightsurgeon.kernels.delta import accumulate_delta_from_files

    rng = np.random.default_rng(5)
    sizes = [1, 4, 32, 33, 1000]
    a = rng.standard_normal(sum(sizes)).astype(np.float32)
    b = (a * (1 + 0.05 * rng.standard_normal(a.size))).astype(np.float32)
    a[3], b[40] = np.nan, np.inf
    path = tmp_path / "pair.bin"
    path.write_bytes(a.tobytes() + b.tobytes())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    with open(path, "rb") as f:
        columns, failed = batch_from_files(BINS, CLIP, f.fileno(), 4 * starts, "F32", f.fileno(), a.nbytes + 4 * starts,
                                           "F32", np.array(sizes))
        assert not failed.any() and len(columns) == len(sizes)
        for i, (start, size) in enumerate(zip(starts, sizes)):
            one = DeltaStats.empty(BINS, CLIP)
            assert accumulate_delta_from_files(one, f.fileno(), 4 * int(start), "F32", f.fileno(),
                                               a.nbytes + 4 * int(start), "F32", size)
            assert stats_fields(columns.row(i, BINS, CLIP)) == stats_fields(one)
            np.testing.assert_array_equal(columns.hist[i], one.hist)


@pytest.mark.parametrize("label", ["t", 'tun\u00e9d, "2"'])
def test_head_and_expert_rows_written_as_columns_equal_each_row_alone(tmp_path, label: str) -> None:
    """report_heads.csv (one row per expert: ~100k in a MoE diff) written as columns: each row's
    cells are UnitDiff.to_dict's numbers, empty where they are null."""
    import csv

    from weightsurgeon.report.units import CSV_COLUMNS as UNIT_COLUMNS
    from weightsurgeon.report.units import UnitDiff, read_units_csv, write_units_csv

    values = [(0.0, 0.0), (1e-300, 4.0), (2.5, 0.0), (math.nan, 1.0), (math.inf, 2.0), (3.0, math.inf), (0.1, 0.3)]
    units = [UnitDiff(label, None if i == 0 else i, "o_proj", "head" if i % 2 else "expert", i, sd, sa)
             for i, (sd, sa) in enumerate(values)]
    path = write_units_csv(units, tmp_path / "heads.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for u, row in zip(units, rows):
        want = u.to_dict()
        for c in UNIT_COLUMNS:
            v = want[c]
            assert row[c] == ("" if v is None else repr(v) if isinstance(v, float) else str(v)), (c, row[c], v)
    back = read_units_csv(path, "test")
    assert [(b.layer, b.index, b.sum_sq_base) for b in back][-1] == (6, 6, 0.3)
    assert [(b.tuned, b.layer, b.index) for b in back] == [(u.tuned, u.layer, u.index) for u in units]


@pytest.mark.parametrize("name", ["model.layers.0.mlp.up_proj.weight", 'odd,name "quoted"\nweight', "mod\u00e8le.w"])
def test_rows_joined_in_one_write_equal_the_csv_writer(name: str) -> None:
    """report.csv's fast paths (one join per block; one compiled call per block) write what
    csv.writer writes; a name that needs quoting or is not ASCII takes csv.writer itself."""
    import csv
    import io

    from weightsurgeon.report.rows import write_csv_block, write_csv_columns

    rows = edge_rows()
    shapes = [(4, 8), (), (32,), (2, 4, 4), (1, 32)]
    tensors = [TensorDiff(f"t{i % 2}", name if i % 3 else f"{name}.{i}", None if i % 4 == 1 else i * 17,
                          "up_proj" if i % 2 else "other", "weight" if i % 3 else "bias", "F32", "BF16" if i % 2 else "F32",
                          shapes[i % len(shapes)], 32, s, added_rows=i % 3, lora_rank=None if i % 2 else 16)
               for i, s in enumerate(rows)]
    meta, columns = [meta_of(t) for t in tensors], StatsColumns.of(rows, BINS)
    cells = csv_cells(meta, columns, CLIP)
    fast, slow, compiled = io.StringIO(newline=""), io.StringIO(newline=""), io.StringIO(newline="")
    write_csv_columns(fast, csv.writer(fast), cells)
    write_csv_block(compiled, csv.writer(compiled), meta, columns, CLIP)
    csv.writer(slow).writerows(zip(*cells))
    assert fast.getvalue() == slow.getvalue()
    assert compiled.getvalue() == slow.getvalue()
    assert [r[1] for r in csv.reader(io.StringIO(fast.getvalue(), newline=""))] == [t.name for t in tensors]


def test_the_compiled_csv_lines_equal_the_csv_writer_on_every_kind_of_cell() -> None:
    """kernels/_floattext.csv_text: text, integers (None: empty; negative; int64's extremes) and
    floats (NaN/inf: empty; -0.0; subnormal; huge) as csv.writer writes their str/repr."""
    import csv
    import io

    from weightsurgeon.kernels._floattext import FLOAT, INTEGER, TEXT, csv_text

    rng = np.random.default_rng(7)
    n = 300
    ints = rng.integers(-(1 << 62), 1 << 62, n)
    ints[:4] = [0, -1, np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1]
    floats = rng.standard_normal(n) * np.exp(rng.uniform(-700, 700, n))
    floats[:6] = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    text = [f"name.{i}" * (i % 3) for i in range(n)]  # empty cells among them
    optional = [None if i % 5 == 0 else i for i in range(n)]
    got = csv_text([(TEXT, text), (INTEGER, ints), (FLOAT, floats), (INTEGER, optional), (TEXT, ["x"] * n),
                    (FLOAT, floats[::-1].copy())])
    want = io.StringIO(newline="")
    csv.writer(want).writerows(zip(text, ints.tolist(), ["" if not math.isfinite(v) else repr(v) for v in floats.tolist()],
                                   ["" if v is None else v for v in optional], ["x"] * n,
                                   ["" if not math.isfinite(v) else repr(v) for v in floats[::-1].tolist()]))
    assert got == want.getvalue()
    assert csv_text([(TEXT, ["a,b"]), (FLOAT, np.array([1.0]))]) is None
    assert csv_text([(TEXT, ["caf\u00e9"]), (FLOAT, np.array([1.0]))]) is None
