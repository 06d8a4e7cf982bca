"""Recipe configs, overrides, the recipe catalog and the launch commands (no torch needed)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from weightsurgeon.commands.train import recipe_group, train_cmd
from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.catalog import copy_recipe, find_recipe, list_recipes
from weightsurgeon.recipes.train.config import gradient_accumulation, load_config
from weightsurgeon.recipes.train.deepspeed_config import deepspeed_config
from weightsurgeon.recipes.train.launch import launch_command, sbatch_script, shell_line

PAPER = [f"qwen2.5-{s}-f{i}" for s in ("14b", "32b") for i in range(1, 5)]


def test_every_shipped_train_recipe_validates() -> None:
    names = {e.name for e in list_recipes() if e.kind == "train"}
    assert set(PAPER) | {"tiny_cpu"} <= names
    for name in names:
        cfg = load_config(find_recipe(name))
        assert cfg.name == name
        gradient_accumulation(cfg, cfg.world_size)


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_match_the_paper_setup(name: str) -> None:
    cfg = load_config(find_recipe(name))
    t = cfg.train
    assert (t.learning_rate, t.weight_decay, t.num_epochs, t.max_length) == (1e-5, 1e-4, 5.0, 32768)
    assert t.global_batch_size == 16 and t.precision == "bf16" and t.loss == "completion_only"
    assert cfg.distributed.zero_stage == 3 and cfg.world_size == 8
    assert gradient_accumulation(cfg, 8) == 2
    assert cfg.data.source == "simplescaling/s1K" and cfg.data.decontaminate.ngram == 8
    assert cfg.model.arch["hidden_size"] == 5120
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"]["enabled"] is True


def test_overrides_are_typed_and_checked(tmp_path: Path) -> None:
    src = find_recipe("tiny_cpu")
    cfg = load_config(src, ["train.learning_rate=2e-5", "freeze.modules=attn", "freeze.layers=0-1",
                            "distributed.nproc_per_node=2", "data.decontaminate.tasks=[aime24]"])
    assert cfg.train.learning_rate == 2e-5 and cfg.freeze.modules == "attn" and cfg.freeze.layers == "0-1"
    assert cfg.world_size == 2 and cfg.data.decontaminate.tasks == ("aime24",)
    assert gradient_accumulation(cfg, 2) == 1
    with pytest.raises(SurgeonError, match="unknown key"):
        load_config(src, ["train.lr=1"])
    with pytest.raises(SurgeonError, match="expected an integer"):
        load_config(src, ["train.per_device_batch_size=two"])
    with pytest.raises(SurgeonError, match="not one of"):
        load_config(src, ["train.precision=fp8"])
    with pytest.raises(SurgeonError, match="not key=value"):
        load_config(src, ["train.learning_rate"])
    with pytest.raises(SurgeonError, match="not a multiple"):
        gradient_accumulation(load_config(src, ["train.global_batch_size=5"]), 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: x}\n")
    with pytest.raises(SurgeonError, match="missing required key"):
        load_config(bad)


def test_recipe_ls_and_cp(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(recipe_group, ["ls"])
    assert out.exit_code == 0 and "qwen2.5-32b-f2" in out.output and "tiny_cpu" in out.output
    out = runner.invoke(recipe_group, ["cp", "qwen2.5-32b-f2", str(tmp_path / "mine.yaml")])
    assert out.exit_code == 0, out.output
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["freeze"]["modules"] == "o_proj,emb,head,norm"
    with pytest.raises(SurgeonError, match="exists"):
        copy_recipe("qwen2.5-32b-f2", tmp_path / "mine.yaml")
    assert copy_recipe("tiny_cpu", tmp_path).name == "tiny_cpu.yaml"
    with pytest.raises(SurgeonError, match="no recipe named"):
        find_recipe("nope")


def test_multi_gpu_prints_launcher_and_sbatch(tmp_path: Path) -> None:
    cfg = load_config(find_recipe("qwen2.5-32b-f2"))
    argv = launch_command(cfg, "f2.yaml", ["train.seed=1"])
    assert argv[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc_per_node=8" in argv
    assert argv[-4:] == ["-m", "weightsurgeon.recipes.train.runner", "f2.yaml", "train.seed=1"]
    multi = load_config(find_recipe("qwen2.5-32b-f2"), ["distributed.nnodes=2", "distributed.launcher=accelerate"])
    line = shell_line(launch_command(multi, "f2.yaml"))
    assert "accelerate launch --use_deepspeed --num_processes=16 --num_machines=2" in line
    assert "--machine_rank=$NODE_RANK" in line
    ds = shell_line(launch_command(load_config(find_recipe("tiny_cpu"), ["distributed.launcher=deepspeed"]), "t.yaml"))
    assert ds.startswith("deepspeed --num_gpus=1") and "--module weightsurgeon.recipes.train.runner" in ds
    script = sbatch_script(multi, "f2.yaml")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script
    assert "--machine_rank=$SLURM_NODEID" in script

    runner = CliRunner()
    out = runner.invoke(train_cmd, ["qwen2.5-32b-f2"])
    assert out.exit_code == 0 and "--nproc_per_node=8" in out.output
    job = tmp_path / "job.sh"
    out = runner.invoke(train_cmd, ["qwen2.5-14b-f4", "--slurm", str(job), "distributed.nnodes=4"])
    assert out.exit_code == 0 and "#SBATCH --nodes=4" in job.read_text()
    out = runner.invoke(train_cmd, ["missing.yaml"])
    assert out.exit_code != 0 and isinstance(out.exception, SurgeonError)


def test_train_plot_overlays_runs(tmp_path: Path) -> None:
    from weightsurgeon.commands.train import train_plot_cmd

    for name, modules, share, losses in [("f2", "o_proj,norm,emb,head", 0.099, [3.0, 2.5, 2.2]),
                                         ("f4", "all", 1.0, [3.0, 2.4, 2.0])]:
        report = tmp_path / name / "train"
        report.mkdir(parents=True)
        (report / "loss.csv").write_text("step,epoch,loss\n" + "".join(f"{i + 1},0,{v}\n" for i, v in enumerate(losses)))
        (report / "freeze.json").write_text(f'{{"modules": "{modules}", "trainable_share": {share}}}')
    out = CliRunner().invoke(train_plot_cmd, [str(tmp_path / "f2"), str(tmp_path / "f4"), "-o", str(tmp_path / "fig.png")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty").mkdir()
    out = CliRunner().invoke(train_plot_cmd, [str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")])
    assert isinstance(out.exception, SurgeonError) and "loss.csv" in str(out.exception)


def test_the_launcher_entry_reports_an_interrupt_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    """Interrupted is a BaseException (no `except Exception` may swallow it): the runner's own
    entry point, which launchers call on every rank, still turns it into one error line."""
    from weightsurgeon.errors import Interrupted
    from weightsurgeon.recipes.train import runner

    def interrupted(*_args, **_kwargs):
        raise Interrupted("interrupted by SIGTERM; nothing was written")

    monkeypatch.setattr(runner, "load_config", interrupted)
    assert runner.main([str(tmp_path / "recipe.yaml")]) == 1
    assert capsys.readouterr().err.strip() == "error: interrupted by SIGTERM; nothing was written"


def test_closing_diff_finds_one_ulp_moves_from_the_diff_report(tmp_path: Path) -> None:
    """The runner's moved/frozen check reads the streaming diff's per-tensor rows (no whole-tensor loads)."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from weightsurgeon.recipes.train.runner import _closing_diff
    from weightsurgeon.synth import make_checkpoint

    base = make_checkpoint(tmp_path / "base")
    tuned = tmp_path / "tuned"
    shutil.copytree(base, tuned)
    shard = next(tuned.glob("*.safetensors"))
    tensors = load_file(str(shard))
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.norm.weight"):
        t = tensors[name].copy()
        t.flat[3] = np.nextafter(t.flat[3], np.float32(np.inf))  # one element, one ulp
        tensors[name] = t
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (tuned / "model.safetensors.index.json").unlink(missing_ok=True)
    trainable = {"model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight"}
    (tmp_path / "report").mkdir()
    diff = _closing_diff(base, tuned, trainable, tmp_path / "report")
    assert diff is not None
    assert diff["moved"] == ["model.layers.0.self_attn.o_proj.weight", "model.norm.weight"]
    assert diff["frozen_moved"] == ["model.norm.weight"]
    assert diff["trainable_unchanged"] == ["model.layers.1.self_attn.o_proj.weight"]
    assert diff["only_in_base"] == ["model.layers.1.mlp.up_proj.weight"] and diff["only_in_result"] == []
    assert (tmp_path / "report" / "diff" / "report.json").is_file()


def _keys(cls: type, prefix: str = "") -> set[str]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def _written(tree: dict, keys: set[str], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in tree.items():
        if isinstance(v, dict) and any(key.startswith(f"{prefix}{k}.") for key in keys):
            out |= _written(v, keys, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_recipe_cp_gives_every_key_to_edit(tmp_path: Path) -> None:
    """A copied recipe is whole: every setting its runner reads is in the file, none left to guess."""
    from weightsurgeon.recipes.eval.config import EvalConfig
    from weightsurgeon.recipes.train.config import RecipeConfig

    for entry in list_recipes():
        keys = _keys(RecipeConfig if entry.kind == "train" else EvalConfig)
        copied = copy_recipe(entry.name, tmp_path / f"{entry.name}.yaml")
        written = _written(yaml.safe_load(copied.read_text()), keys)
        assert written == keys, (entry.name, sorted(keys - written), sorted(written - keys))
