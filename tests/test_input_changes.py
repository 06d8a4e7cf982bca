"""An input that changes during a run (a training job or a download still writing it) fails the run:
one line naming the file, no report, no output, and nothing temporary left."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from weightsurgeon.atomic import TEMP_PREFIX
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.diff import diff_checkpoints
from weightsurgeon.errors import SurgeonError
from weightsurgeon.verify import verify_checkpoint

SMALL = dict(arch="llama", num_layers=4, hidden_size=64, intermediate_size=160, num_heads=4, num_kv_heads=2,
             vocab_size=300, dtype="f32", shard_bytes=60_000)


class OnFirstAdvance:
    """A progress object that changes a file the first time the run reports progress (mid-run)."""

    def __init__(self, change) -> None:
        self.change, self.done = change, False

    def advance(self, _n: int) -> None:
        if not self.done:
            self.done = True
            self.change()


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 16)


def _replace_with_copy(path: Path) -> None:
    """What rsync or a re-download does: same bytes, a new file under the old name."""
    shutil.copyfile(path, path.with_suffix(".new"))
    os.replace(path.with_suffix(".new"), path)


@pytest.mark.parametrize("change, says", [(_append, "changed size"), (_replace_with_copy, "was replaced by another file"),
                                          (Path.unlink, "was deleted")])
def test_diff_fails_when_a_tuned_shard_changes(tiny_model, change, says):
    base = tiny_model(name="base", **SMALL)
    tuned = tiny_model(name="tuned", seed=3, **SMALL)
    shard = sorted(tuned.glob("*.safetensors"))[-1]
    with pytest.raises(SurgeonError) as err:
        diff_checkpoints(base, tuned, chunk_bytes=4096, progress=OnFirstAdvance(lambda: change(shard)))
    assert str(err.value).startswith(f"{shard}: {says}") and "while this run was reading it" in str(err.value)
    assert "nothing was written" in str(err.value)


def test_unchanged_inputs_pass(tiny_model):
    base = tiny_model(name="base", **SMALL)
    report = diff_checkpoints(base, base, chunk_bytes=4096, progress=OnFirstAdvance(lambda: None))
    assert report.tensors


def test_verify_deep_fails_when_the_model_changes(tiny_model):
    model = tiny_model(name="m", **SMALL)
    shard = sorted(model.glob("*.safetensors"))[0]
    with open_checkpoint(model) as ckpt, pytest.raises(SurgeonError, match="changed size"):
        verify_checkpoint(ckpt, deep=True, progress=OnFirstAdvance(lambda: _append(shard)))


def test_splice_writes_nothing_when_the_donor_changes(tiny_model, tmp_path, surgeon, monkeypatch):
    import weightsurgeon.writer as writer

    base = tiny_model(name="base", **SMALL)
    donor = tiny_model(name="donor", seed=5, **SMALL)
    config = donor / "config.json"
    real = writer._write_shard

    def write_then_touch(*args, **kw):
        real(*args, **kw)
        os.utime(config, ns=(time.time_ns(), time.time_ns() + 10**9))  # a download rewriting config.json

    monkeypatch.setattr(writer, "_write_shard", write_then_touch)
    out = tmp_path / "out"
    r = surgeon("splice", base, donor, "--take", "o_proj", "--max-shard-size", "50KB", "-o", out, "-q")
    assert r.code == 1 and r.err_lines == [f"error: {config}: was modified while this run was reading it; the result "
                                           "would mix bytes that never existed together, so nothing was written: "
                                           "rerun once it is complete"], r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_cli_diff_fails_when_a_thread_appends_to_a_shard(tiny_model, tmp_path, run_cli):
    """The user's case: another process writes the tuned model while `surgeon diff` reads it."""
    shape = dict(arch="llama", num_layers=4, hidden_size=512, intermediate_size=1376, num_heads=8, num_kv_heads=4,
                 vocab_size=8192, dtype="f32", shard_bytes=30_000_000)
    base = tiny_model(name="base", **shape)
    tuned = tiny_model(name="tuned", seed=2, **shape)
    shard = sorted(tuned.glob("*.safetensors"))[-1]
    out = tmp_path / "report"
    stop = threading.Event()

    def writer() -> None:  # as soon as the run has begun (its temporary report folder exists), append
        while not stop.is_set():
            if [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]:
                _append(shard)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        r = run_cli("diff", base, tuned, "-o", out, "--no-plots", "-q")
    finally:
        stop.set()
        thread.join()
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {shard}: changed size (") and "nothing was written" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
