"""Small pairs planned and queued as columns: no Python step per pair, the same report.

A 100k-tensor MoE diff spent ~10 us a tensor pairing names one by one (PairTable.add) and
judging and queueing each base tensor in Python (SmallPairs.take). Now the plan adds the plain
pairs in bulk and the run hands runs of small base tensors to SmallPairs as column slices
(SmallPairs.judge / take_run); `take` remains for the base tensors the columns cannot decide.
These tests count those Python-level calls, and check that the report files are byte for byte
those of the one-tensor-at-a-time path on a pair with every kind of pair in it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from weightsurgeon.synth import make_checkpoint, make_tuned

LAYERS, EXPERTS = 2, 256
# hidden 64 x vocab 1100 = 70,400 elements: the embedding and the head are larger than one kernel
# part (65,536), so they take the chunk path; the 3 x 2 x 256 experts (8 x 64) are small.
MOE = dict(arch="qwen3_moe", num_layers=LAYERS, hidden_size=64, intermediate_size=8, num_heads=4, num_kv_heads=2,
           num_experts=EXPERTS, vocab_size=1100)
REPORT_FILES = ("report.csv", "report_heads.csv", "histograms.safetensors")


def _prefixed(folder: Path, prefix: str) -> None:
    """Every tensor name of a checkpoint with a wrapper prefix (as torch.compile saves them)."""
    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(f)
        save_file({prefix + k: v for k, v in tensors.items()}, f, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {prefix + k: v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    base = make_checkpoint(root / "base", dtype="bf16", tied=True, shard_bytes=120_000, **MOE)
    same = make_tuned(base, root / "same")  # bf16, tied like the base: plain pairs
    # untied (the base's tied head compared with its lm_head), 8 added vocabulary rows, F16 against
    # BF16 (same width: batched under a dtype pair of its own), names behind a wrapper prefix
    renamed = make_checkpoint(root / "renamed", dtype="f16", tied=False, seed=5, shard_bytes=90_000,
                              **{**MOE, "vocab_size": 1108})
    _prefixed(renamed, "_orig_mod.")
    wide = make_tuned(base, root / "wide", dtype="f32", seed=4)  # other widths: read in Python
    head = make_checkpoint(root / "head", dtype="bf16", tied=False, seed=6, shard_bytes=70_000, **MOE)
    return {"base": base, "same": same, "renamed": renamed, "wide": wide, "head": head}


def _count(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[int]:
    calls = [0]
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_plain_small_pairs_take_no_python_call_each(models, surgeon, tmp_path, monkeypatch):
    """1,536 expert pairs: none is added to the plan or queued for the kernel one at a time."""
    import weightsurgeon.kernels.delta as delta
    from weightsurgeon.pairs import PairTable
    from weightsurgeon.smallpairs import SmallPairs

    added, taken, judged = (_count(monkeypatch, PairTable, "add"), _count(monkeypatch, SmallPairs, "take"),
                            _count(monkeypatch, SmallPairs, "_batchable"))
    batched: list[int] = []
    real_batch = delta.batch_from_files

    def counted_batch(*args):
        batched.append(len(args[-1]))
        return real_batch(*args)

    monkeypatch.setattr(delta, "batch_from_files", counted_batch)
    got = surgeon("diff", models["base"], models["same"], "-o", tmp_path / "r", "--no-plots", "-q")
    assert got.code == 0, got.err
    rows = (tmp_path / "r" / "report.csv").read_text().count("\n") - 1
    experts = LAYERS * EXPERTS * 3
    assert rows > experts
    assert sum(batched) >= experts  # every expert pair went to the kernel in a batch
    assert added[0] == 0  # plain pairs enter the plan in bulk
    # only the base tensors with per-head sums (q, k, v, o of each layer) and the large embedding are decided
    # one at a time; before, every base tensor was (1,500+ calls)
    assert taken[0] <= 4 * LAYERS + 2 and judged[0] == taken[0]


def test_report_files_equal_the_one_tensor_at_a_time_path(models, surgeon, tmp_path, monkeypatch):
    """Tied head, renamed names, added rows, three dtypes, large and small tensors, four tuned models:
    the report files of the column runs are byte for byte those of deciding each base tensor alone."""
    from weightsurgeon.smallpairs import SmallPairs

    inputs = [models[k] for k in ("base", "head", "same", "renamed", "wide")]
    got = surgeon("diff", *inputs, "--allow-missing", "-o", tmp_path / "runs", "--no-plots", "-q")
    assert got.code == 0, got.err
    notes = "\n".join(json.loads((tmp_path / "runs" / "report.json").read_text())["notes"])
    for said in ("tied embeddings on the base only", "paired with the base's by prefix", "added row(s)",
                 "stored as BF16 in the base and F16", "stored as BF16 in the base and F32"):
        assert said in notes

    real_judge = SmallPairs.judge
    taken = _count(monkeypatch, SmallPairs, "take")

    def nothing_batchable(self, order, elems):  # every base tensor through `take`, one at a time
        runs = real_judge(self, order, elems)
        runs.batchable[:] = False
        return runs

    monkeypatch.setattr(SmallPairs, "judge", nothing_batchable)
    got = surgeon("diff", *inputs, "--allow-missing", "-o", tmp_path / "alone", "--no-plots", "-q")
    assert got.code == 0, got.err
    assert taken[0] > LAYERS * EXPERTS * 3  # the one-at-a-time path did run
    for name in REPORT_FILES:
        assert (tmp_path / "runs" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
