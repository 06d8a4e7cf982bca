"""Every message of the diff planner (diff.py), the writer's output folder (atomic.py) and the commands/ layer.

Each case runs the real CLI in process on tiny models built once per module and checks the one
`error:` line (exit 1, the distinctive words, what to do) and that nothing was written. A
function is called only where click's own checks (exit 2) stand in front of the engine's, or
where the fault needs the world to misbehave (a full disk, a launcher that fails).
"""
from __future__ import annotations

import errno
import json
import shutil
import struct
from pathlib import Path

import pytest

from conftest import one_error, rewrite_checkpoint
from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import build_header
from weightsurgeon.synth import make_checkpoint, make_tuned


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("errors-commands")
    base = make_checkpoint(root / "base", arch="qwen2", num_layers=2, dtype="f32")
    return base, make_tuned(base, root / "tuned")


# ---------------------------------------------------------------------------------------
# surgeon diff
# ---------------------------------------------------------------------------------------

def test_diff_requests_that_compare_nothing(pair, surgeon, tmp_path: Path) -> None:
    base, tuned = pair
    out = tmp_path / "r"
    one_error(surgeon("diff", base, tuned, "--bins", 0, "-o", out), "--bins must be an integer in 1..")
    one_error(surgeon("diff", base, tuned, "--clip", "nan", "-o", out), "--clip must be a finite number")
    other = make_checkpoint(tmp_path / "llama", arch="llama", num_layers=1, hidden_size=32, intermediate_size=48)
    one_error(surgeon("diff", base, other, "--allow-missing", "-o", out),
               "no tensor pairs to compare: the models share no tensor of the same shape; "
               "diff models of one architecture and size")
    assert not out.exists()


def test_diff_engine_checks_behind_click(pair) -> None:
    """click refuses these first (exit 2); the engine function says the same to Python callers."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.diff import plan_diff

    with open_checkpoint(pair[0]) as base, open_checkpoint(pair[1]) as tuned:
        with pytest.raises(SurgeonError, match="nothing to compare: give at least one tuned model"):
            plan_diff(base, [])
        with pytest.raises(SurgeonError, match=r"label\(s\) for 1 tuned model\(s\): give one label per tuned model"):
            plan_diff(base, [tuned], labels=["a", "b"])
        with pytest.raises(SurgeonError, match="--every must be a positive integer, got 0"):
            plan_diff(base, [tuned], every=0)
        with pytest.raises(SurgeonError, match="--every must be a positive integer, got"):
            plan_diff(base, [tuned], every=True)


def test_strict_diff_of_a_model_with_nan(pair, surgeon, tmp_path: Path) -> None:
    name = "model.layers.0.mlp.down_proj.weight"
    bad = rewrite_checkpoint(pair[1], tmp_path / "nan",
                             patch={name: lambda raw: raw.__setitem__(slice(0, 4), struct.pack("<f", float("inf")))})
    one_error(surgeon("diff", pair[0], bad, "--strict", "-o", tmp_path / "r"),
               f"tensor '{name}' has 1 NaN/Inf value(s) of", "no report written")
    assert not (tmp_path / "r").exists()


def test_tuned_names_that_pair_with_the_base_ambiguously(pair, surgeon, tmp_path: Path) -> None:
    """A tuned model holding o_proj both as the base names it and without `model.`: which is the base's?"""
    from safetensors.numpy import load_file, save_file

    name = "model.layers.0.self_attn.o_proj.weight"
    src = rewrite_checkpoint(pair[1], tmp_path / "doubled")
    tensors = load_file(str(src / "model.safetensors"))
    tensors[name[len("model."):]] = tensors[name]
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    one_error(surgeon("diff", pair[0], src, "-o", tmp_path / "r"),
               "tensor names differ from the base's by a prefix, ambiguously", name,
               "rename the tensors so each pairs with one base tensor")
    assert not (tmp_path / "r").exists()


def test_a_complex_tensor_cannot_be_diffed(pair, surgeon, tmp_path: Path) -> None:
    base, tuned = tmp_path / "b", tmp_path / "t"
    for src, dst in ((pair[0], base), (pair[1], tuned)):
        shutil.copytree(src, dst)
        prefix, sizes = build_header([("model.layers.0.extra.weight", "C64", (2,))], {"format": "pt"})
        (dst / "extra.safetensors").write_bytes(prefix + bytes(sizes[0]))
        index = {"weight_map": {"model.layers.0.extra.weight": "extra.safetensors"}}
        (dst / "model.safetensors").rename(dst / "main.safetensors")
        from weightsurgeon.format import parse_header

        index["weight_map"].update({t.name: "main.safetensors" for t in parse_header(dst / "main.safetensors").tensors})
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    one_error(surgeon("diff", base, tuned, "-o", tmp_path / "r"),
               "base: tensor 'model.layers.0.extra.weight' is C64: complex values cannot be compared "
               "(select other modules with --module)")


# ---------------------------------------------------------------------------------------
# The output folder: a write that fails (a full disk) is one line naming the output
# ---------------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_leaves_nothing(pair, surgeon, tmp_path: Path, monkeypatch) -> None:
    import weightsurgeon.writer as writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "pwrite_all", full)
    out = tmp_path / "out"
    one_error(surgeon("splice", pair[0], pair[1], "--take", "o_proj", "-o", out),
               "writing failed", f"{out}: writing failed: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# plot, probe --sweep, train, eval: the requests they refuse before any work
# ---------------------------------------------------------------------------------------

def test_plot_requests(pair, surgeon, tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error(surgeon("plot", empty), "give a folder written by `surgeon diff`", f"{empty}: folder has no report.json")
    assert surgeon("diff", *pair, "-o", tmp_path / "r", "--no-plots", "-q").code == 0
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "figs").write_text("a file")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    one_error(surgeon("plot", tmp_path / "r", "-o", "~/figs"),
               f"{tmp_path / 'home' / 'figs'}: exists and is not a folder; give -o a folder for the figures")


def test_probe_sweep_requests(pair, surgeon, tmp_path: Path) -> None:
    base = pair[0]
    one_error(surgeon("probe", base, "--sweep", "paper", "--backend", "vllm"),
               "--sweep changes weights in memory between cells: it runs on the hf backend only")
    one_error(surgeon("probe", base, "--sweep", "paper", "--limit", 3), "--data and --limit go with --tasks")
    one_error(surgeon("probe", base, base, "--sweep", "paper"), "--sweep probes one MODEL (loaded once), got", "got 2")


def test_train_launch_requests(surgeon, monkeypatch) -> None:
    import subprocess

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    one_error(surgeon("train", "qwen2.5-32b-f2", "--launch", "distributed.nnodes=2"),
               "--launch starts one node; for several nodes use --slurm or run the printed command on each")
    monkeypatch.setattr(subprocess, "call", lambda argv: 3)  # the launcher's processes failed
    one_error(surgeon("train", "qwen2.5-32b-f2", "--launch"), "training processes exited with status", "status 3 ")


def test_eval_without_an_output_folder(pair, surgeon) -> None:
    one_error(surgeon("eval", pair[0], "--tasks", "aime24"),
               "no output folder given (-o/--output or `output:` in the recipe)")
