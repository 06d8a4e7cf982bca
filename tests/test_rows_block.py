"""A block of report rows is built from the plan's columns (diff._Rows): the same rows as a
record-by-record walk, and no Python work per row.

A 100k-tensor diff hands its rows to the report ~4,000 at a time. Their metadata (name,
place in the model, dtypes, shape) comes from the header and layout columns by numpy, and
the module totals, the expert rows and report.csv take them as columns: a tuple, a dict
lookup or a call per row cost ~8 us a tensor before.
"""
from __future__ import annotations

import cProfile
import pstats
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.diff import _LazyStats, _Rows, _unit_groups, plan_diff
from weightsurgeon.kernels.stats import StatsColumns
from weightsurgeon.layout import classify
from weightsurgeon.synth import make_checkpoint, make_tuned


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rows_block")
    out = {name: root / name for name in ("moe", "f32", "f16", "tied", "untied", "one", "one-tuned")}
    make_checkpoint(out["moe"], arch="qwen3_moe", num_layers=2, hidden_size=32, num_experts=32, dtype="bf16",
                    shard_bytes=40_000)
    make_tuned(out["moe"], out["f32"], dtype="f32", seed=1)
    make_tuned(out["moe"], out["f16"], dtype="f16", seed=2)
    make_checkpoint(out["tied"], num_layers=2, hidden_size=64, dtype="bf16", tied=True)
    make_checkpoint(out["untied"], num_layers=2, hidden_size=64, dtype="f32", tied=False, seed=3)
    make_checkpoint(out["one"], arch="qwen3_moe", num_layers=2, hidden_size=32, num_experts=64, dtype="bf16")
    make_tuned(out["one"], out["one-tuned"], seed=1)
    return out


def reference(plan) -> tuple[list[tuple], list[int]]:
    """Each pair's META tuple and expert number (-1: none) from its Pair record and its name's Location."""
    known = plan.layout.locations
    metas, experts = [], []
    for p in plan.pairs:
        loc = known.get(p.name) or classify(p.name)
        own = loc if loc.layer is not None else classify(p.name)
        metas.append((plan.labels[p.tuned], p.name, loc.layer, loc.module, loc.param, p.base.dtype, p.other.dtype,
                      p.base.shape, p.numel, p.added_rows, None))
        experts.append(-1 if own.expert is None else own.expert)
    return metas, experts


@pytest.mark.parametrize("pair", [("moe", "f32", "f16"), ("tied", "untied"), ("untied", "tied")])
def test_a_block_of_rows_equals_the_walk_over_every_pair(models: dict[str, Path], pair: tuple[str, ...]) -> None:
    """Mixed dtypes, two tuned models, shards, experts, heads, a tied head compared under another
    name (a special pair): every row, in a shuffled block, equals its record's."""
    base, *tuned = (open_checkpoint(models[name]) for name in pair)
    plan = plan_diff(base, tuned)
    want, want_experts = reference(plan)
    if pair[0] == "tied":
        assert len(plan.pairs.special) >= 1  # the tuned head against the base's embedding
    rows = np.random.default_rng(0).permutation(len(plan.pairs))
    meta = _Rows(plan, _LazyStats(plan.options["bins"], 1.0), {}, None)._metas(rows)
    assert meta.tuples() == [want[i] for i in rows]
    assert meta.expert.tolist() == [want_experts[i] for i in rows]
    if pair[0] == "moe":
        assert sum(e >= 0 for e in want_experts) == 2 * 2 * 32 * 3  # two tuned models' expert matrices
        assert {m[5] + "/" + m[6] for m in want} == {"BF16/F32", "BF16/F16"}


def calls(function, *args) -> int:
    profile = cProfile.Profile()
    profile.runcall(function, *args)
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined]


def test_python_calls_do_not_grow_with_the_rows_of_a_block(models: dict[str, Path], tmp_path: Path) -> None:
    """Building a block's rows, its module totals, expert rows and report.csv lines makes no call
    per row: a block of every pair makes about as many calls as a block of a tenth of them (a
    call per row before: ~12 in the metadata, 4 per expert, a tuple and a join in the CSV)."""
    plan = plan_diff(open_checkpoint(models["one"]), [open_checkpoint(models["one-tuned"])])  # one shard: one gather
    groups = _unit_groups(plan)
    every = np.array([i for i in range(len(plan.pairs)) if (plan.pairs.tuned[i], plan.pairs.name(i)) not in groups])
    counts = []
    for n in (len(every) // 10, len(every)):
        folder = tmp_path / str(n)
        folder.mkdir()
        rows = _Rows(plan, _LazyStats(200, 1.0), groups, folder)
        columns = StatsColumns.empty(n, 200)
        columns.hist[:, 100] = 5  # a mode in every row
        columns.hist[::2, 60] = 9  # and a second in half of them
        columns.n[:] = columns.hist.sum(axis=1)
        rows._block(every[:n], columns)  # numba's kernels load on the first call: not counted
        rows.abort()
        rows = _Rows(plan, _LazyStats(200, 1.0), groups, folder)
        counts.append(calls(rows._block, every[:n], columns))
        rows.abort()
    assert len(every) >= 390
    assert counts[1] - counts[0] < 60, counts
