"""Freeze-SFT for real: the tiny recipe under DeepSpeed ZeRO-3 on CPU (gloo, fp32).

One process in-process-style (`surgeon train`), and two processes through the torchrun
launcher (`surgeon train ... --launch`), each a fresh subprocess with its own free port.
Frozen tensors must come back bitwise identical, trainable ones changed, and the result
must reload in transformers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
pytest.importorskip("trl")

from safetensors.numpy import load_file  # noqa: E402

from weightsurgeon.layout import select_names  # noqa: E402
from weightsurgeon.recipes.catalog import find_recipe  # noqa: E402

F2 = "o_proj,norm,emb,head"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "DS_ACCELERATOR": "cpu", "SURGEON_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"})
    return env


def _train(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from weightsurgeon.commands.train import train_cmd; train_cmd()",
           str(find_recipe("tiny_cpu")),
           f"model.path={tmp / 'base'}", f"output.dir={tmp / 'tuned'}", *extra]
    proc = subprocess.run(cmd, cwd=tmp, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _tensors(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _check_result(tmp: Path, modules: str, world: int) -> dict:
    base, tuned = _tensors(tmp / "base"), _tensors(tmp / "tuned")
    assert set(base) == set(tuned)
    trainable = set(select_names(base, modules, None, num_layers=2))
    assert trainable and trainable != set(base)
    for name in base:
        a, b = base[name], tuned[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if name in trainable:
            assert a.tobytes() != b.tobytes(), f"trainable {name} did not move"
        else:
            assert a.tobytes() == b.tobytes(), f"frozen {name} moved"
    report = tmp / "tuned" / "train"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["world_size"] == world
    assert metrics["trainable_params"] == sum(base[n].size for n in trainable)
    assert metrics["trainable_params_in_engine"] == metrics["trainable_params"]  # ZeRO-3: counted by ds_numel
    assert metrics["steps"] == 8 and metrics["steps_per_second"] > 0 and metrics["tokens_per_second"] > 0
    assert len(metrics["peak_memory_bytes_per_process"]) == world
    assert metrics["frozen_moved"] == []
    assert (report / "diff" / "report.json").is_file()  # the `surgeon diff` report of result vs start
    diff = json.loads((report / "diff.json").read_text())
    assert set(diff["moved"]) == trainable
    loss = (report / "loss.csv").read_text().splitlines()
    assert loss[0].startswith("step,") and len(loss) == 9
    assert (report / "loss.png").stat().st_size > 1000
    assert not (tmp / "tuned" / "training_args.bin").exists()
    assert not (tmp / ".tuned.partial").exists()
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp / "tuned" / "README.md")  # the model card, parsed back by huggingface_hub
    assert card.data.tags == ["weightsurgeon", "train"] and card.data.library_name == "transformers"
    assert modules in card.text and str(tmp / "base") in card.text
    return metrics


def _reload(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    shapes = {n: tuple(t.shape) for n, t in _tensors(path).items()}
    for name, param in model.named_parameters():
        assert tuple(param.shape) == shapes[name]
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.logits).all()


def test_single_process_zero3_f2(tmp_path: Path) -> None:
    proc = _train(tmp_path)
    assert "trained 74,048 of 139,840 parameters" in proc.stdout
    metrics = _check_result(tmp_path, F2, world=1)
    assert metrics["moved_tensors"] == 9
    _reload(tmp_path / "tuned")
    # an existing output is never overwritten without --force
    cmd = [sys.executable, "-m", "weightsurgeon.recipes.train.runner", str(find_recipe("tiny_cpu")),
           f"model.path={tmp_path / 'base'}", f"output.dir={tmp_path / 'tuned'}"]
    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "already exists" in again.stderr
    # a failed run leaves neither an output nor its temporary directory behind
    failed = subprocess.run(cmd[:-1] + [f"output.dir={tmp_path / 'failed'}", "train.max_length=8"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and "leaves no completion token" in failed.stderr
    assert not (tmp_path / "failed").exists() and not (tmp_path / ".failed.partial").exists()
    # --force never deletes the starting model by replacing a directory that holds it
    guard = subprocess.run(cmd[:-1] + [f"output.dir={tmp_path}", "output.overwrite=true"], cwd=tmp_path,
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert guard.returncode == 1 and "contain the input" in guard.stderr and (tmp_path / "base").is_dir()


def test_two_processes_torchrun_zero3_mlp(tmp_path: Path) -> None:
    # also the assistant-only loss path: chat messages, masks from the template's {% generation %} tags
    proc = _train(tmp_path, "freeze.modules=mlp,norm", "distributed.nproc_per_node=2", "train.loss=assistant_only",
                  "--launch")
    assert "torch.distributed.run --nproc_per_node=2" in proc.stderr
    _check_result(tmp_path, "mlp,norm", world=2)
    _reload(tmp_path / "tuned")
