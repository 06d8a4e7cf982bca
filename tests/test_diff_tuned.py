"""Several fine-tunes in one pass (`surgeon diff BASE T1 T2 T3`): each base part is read from the
page cache and decoded once for all tuned models (kernels._compiled.delta_file), and every tuned
model's statistics are bit for bit those of diffing it alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from weightsurgeon.diff import diff_checkpoints
from weightsurgeon.kernels import delta
from weightsurgeon.synth import make_checkpoint, make_tuned

SHAPE = dict(num_layers=2, hidden_size=256, intermediate_size=640, num_heads=4, num_kv_heads=2, vocab_size=600)
FIELDS = ("n", "n_nonfinite", "n_base_zero", "sum_sq_delta", "sum_sq_a", "sum_sq_b", "dot_ab", "sum_delta",
          "max_abs_delta", "r_mean", "r_m2", "r_m3", "r_m4")


def _same(a, b) -> None:
    for f in FIELDS:
        assert getattr(a, f) == getattr(b, f) or (np.isnan(getattr(a, f)) and np.isnan(getattr(b, f))), f
    np.testing.assert_array_equal(a.hist, b.hist)


def test_tuned_models_share_each_base_part_and_match_their_single_diffs(tmp_path: Path, monkeypatch) -> None:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **SHAPE)
    tuned = [make_tuned(base, tmp_path / f"t{i}" / "ft", seed=i) for i in (1, 2, 3)]
    calls = {"together": 0, "one": 0}
    together, one = delta.accumulate_tuned_from_files, delta.accumulate_delta_from_files

    def counted_together(*args, **kw):
        calls["together"] += 1
        return together(*args, **kw)

    def counted_one(*args, **kw):
        calls["one"] += 1
        return one(*args, **kw)

    monkeypatch.setattr(delta, "accumulate_tuned_from_files", counted_together)
    monkeypatch.setattr(delta, "accumulate_delta_from_files", counted_one)
    report = diff_checkpoints(base, tuned, chunk_bytes=96 * 1024)  # many chunks per tensor, parts cut by chunks
    assert calls["together"] > 0 and calls["one"] == 0, calls
    monkeypatch.undo()
    labels = report.labels
    big = 0
    for t, label in zip(tuned, labels):
        single = diff_checkpoints(base, t, chunk_bytes=96 * 1024, labels=[label])
        for row in single.tensors:
            _same(report.tensor(row.name, label).stats, row.stats)
            big += row.stats.n > (1 << 16)
        assert [u.to_dict() for u in report.units if u.tuned == label] == [u.to_dict() for u in single.units]
    assert big >= 3 * 4  # tensors of more than one kernel part went through the shared launch


def test_a_failed_read_in_the_shared_launch_goes_one_pair_at_a_time(tmp_path: Path, monkeypatch) -> None:
    base = make_checkpoint(tmp_path / "base", dtype="bf16", **SHAPE)
    tuned = [make_tuned(base, tmp_path / f"t{i}" / "ft", seed=i) for i in (1, 2)]
    want = diff_checkpoints(base, tuned, chunk_bytes=96 * 1024)
    monkeypatch.setattr(delta, "accumulate_tuned_from_files", lambda *a, **k: False)
    got = diff_checkpoints(base, tuned, chunk_bytes=96 * 1024)
    for row in want.tensors:
        _same(got.tensor(row.name, row.tuned).stats, row.stats)


def test_a_chunk_longer_than_the_buffers_is_read_in_pieces_with_the_kernels_bits(tmp_path: Path, monkeypatch) -> None:
    """Chunks are not cut to fit our read buffers (the kernel reads the files itself): the pairs read
    here go a piece of whole parts at a time, folded once per chunk, so their numbers equal the
    kernel's own reads of the same chunk bit for bit."""
    from weightsurgeon import diff as diff_module

    base = make_checkpoint(tmp_path / "base", dtype="bf16", **SHAPE)
    tuned = [make_tuned(base, tmp_path / f"t{i}" / "ft", seed=i) for i in (1, 2)]
    chunk = 6 * (1 << 16) * 2  # six parts of a bf16 side: longer than every tensor here (up to 2.5 parts)
    want = diff_checkpoints(base, tuned, chunk_bytes=chunk)
    monkeypatch.setattr(diff_module, "MAX_BUFFER_BYTES", (1 << 16) * 2 * 3)  # one part a side for three sides
    pieces = []
    real = diff_module._ChunkReader._run_buffered

    def counted(self, info, pairs, start, stop, *rest):
        pieces.append(-(-(stop - start) // (len(self._buffers()[0]) // info.itemsize)))
        return real(self, info, pairs, start, stop, *rest)

    monkeypatch.setattr(diff_module._ChunkReader, "_run_buffered", counted)
    monkeypatch.setattr(delta, "accumulate_tuned_from_files", lambda *a, **k: False)
    monkeypatch.setattr(delta, "accumulate_delta_from_files", lambda *a, **k: False)
    got = diff_checkpoints(base, tuned, chunk_bytes=chunk)
    assert max(pieces) == 3  # 2.5 parts read one part at a time
    for row in want.tensors:
        _same(got.tensor(row.name, row.tuned).stats, row.stats)
    assert [u.to_dict() for u in got.units] == [u.to_dict() for u in want.units]
