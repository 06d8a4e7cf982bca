"""A diff's plan costs bounded memory per tensor (issues 14, 15, 19: `surgeon diff` of 100k tensors in < 300 MiB).

A MoE checkpoint holds ~100k tensors (DeepSeek-V3 ~92k). Each test writes a pair of
MoE-shaped checkpoints of N tiny tensors, then, in a fresh Python process (no cache
warmed by other tests), measures with tracemalloc what one step keeps per tensor:
classifying every name (layout.Locations, columns), the whole plan of a diff (its pairs
as a pairs.PairTable), and the run's reading order.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

LAYERS, EXPERTS = 40, 250  # x 3 matrices: 30,000 tensors a model (plus the globals)
N = LAYERS * EXPERTS * 3
# A Location object and a dict entry per name cost ~110 bytes; columns are 21 bytes plus the
# names list's 8.
LAYOUT_PER_NAME = 40
# The run's order of the pairs: a list of groups and a dict of them by name cost ~150 bytes a
# pair; two integer columns cost 16, and one (the PairTable's base keys serve as the other) 8.
WORK_PER_PAIR = 12
# The whole plan (the layout's columns included): a Pair object with a TensorInfo record of each
# side cost ~445 bytes a pair (8c59bf3); a PairTable's four integer columns 28, ~60 in all.
PLAN_PER_PAIR = 100


def _names() -> list[str]:
    names = ["model.embed_tokens.weight"]
    for layer in range(LAYERS):
        for e in range(EXPERTS):
            names += [f"model.layers.{layer}.mlp.experts.{e}.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
    return names + ["model.norm.weight", "lm_head.weight"]


def _write(folder: Path) -> None:
    """One shard of [2] F32 tensors, written as safetensors writes its header."""
    folder.mkdir(parents=True)
    names = _names()
    body = ",".join(f'"{n}":{{"dtype":"F32","shape":[2],"data_offsets":[{8 * i},{8 * i + 8}]}}'
                    for i, n in enumerate(names))
    blob = ('{"__metadata__":{"format":"pt"},' + body + "}").encode()
    blob += b" " * (-len(blob) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + bytes(8 * len(names)))
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_hidden_layers": LAYERS,
                                                    "tie_word_embeddings": False}))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    _write(root / "base")
    _write(root / "tuned")
    return root / "base", root / "tuned"


_MEASURE = r"""
import json, sys, tracemalloc
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.layout import layout_of, classify
from weightsurgeon.diff import plan_diff
base = open_checkpoint(sys.argv[1])
tuned = open_checkpoint(sys.argv[2])
classify("model.layers.0.mlp.experts.0.up_proj.weight")  # the compiled patterns, once
import numpy  # the plan's passes over columns use it; its import is no memory of the plan
out = {}
tracemalloc.start()
layout = layout_of(base.tensors, base.config)
out["layout"] = tracemalloc.get_traced_memory()[0]
del layout
tracemalloc.stop()
tracemalloc.start()
plan = plan_diff(base, [tuned])
out["plan"] = tracemalloc.get_traced_memory()[0]
out["pairs"] = len(plan.pairs)
tracemalloc.stop()
from weightsurgeon.diff import _order_pairs
tracemalloc.start()
work = _order_pairs(plan.pairs, base)
out["work"] = tracemalloc.get_traced_memory()[0]
out["groups"] = [(info.name, [p.name for p in group]) for info, group in work][:3]
print(json.dumps(out))
"""


def _measure(base: Path, tuned: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(base), str(tuned)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def measured(pair):
    return _measure(*pair)


def test_every_name_is_classified_once_into_columns(measured):
    got = measured
    per_name = got["layout"] / (N + 3)
    assert per_name < LAYOUT_PER_NAME, f"{per_name:.0f} bytes a name held by the layout"
    assert got["pairs"] == N + 3


def test_the_plan_holds_its_pairs_as_columns(measured):
    got = measured
    per_pair = got["plan"] / got["pairs"]
    assert per_pair < PLAN_PER_PAIR, f"{per_pair:.0f} bytes a pair held by the plan"


def test_the_reading_order_of_the_pairs_is_integer_columns(measured):
    got = measured
    per_pair = got["work"] / got["pairs"]
    assert per_pair < WORK_PER_PAIR, f"{per_pair:.0f} bytes a pair held by the reading order"
    first = "model.embed_tokens.weight"
    assert got["groups"][:2] == [[first, [first]], [_names()[1], [_names()[1]]]]


def test_byte_counts_from_the_columns_equal_a_count_over_every_pair(tmp_path):
    """DiffPlan.read_bytes/total_bytes count plain rows by numpy over the header columns and
    special rows one by one; a base tensor read by both (a tied base's embedding, also compared
    as the tuned model's head) counts once. The reference walks every Pair."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import plan_diff
    from weightsurgeon.synth import make_checkpoint, make_tuned

    base = make_checkpoint(tmp_path / "base", tied=True, num_layers=2, dtype="bf16")
    untied = make_checkpoint(tmp_path / "untied", tied=False, num_layers=2, dtype="bf16", seed=3)
    wider = make_tuned(base, tmp_path / "f32", dtype="f32")
    plan = plan_diff(open_checkpoint(base), [open_checkpoint(untied), open_checkpoint(wider)])
    assert len(plan.pairs.special) >= 1  # the head compared against the base's embedding

    want: dict[int, int] = {}
    seen: set[str] = set()
    for p in plan.pairs:
        if p.base.name not in seen:
            seen.add(p.base.name)
            want[-1] = want.get(-1, 0) + p.base.nbytes
        want[p.tuned] = want.get(p.tuned, 0) + p.numel * p.other.itemsize
    assert plan.read_bytes() == want
    assert plan.total_bytes == sum(want.values())
