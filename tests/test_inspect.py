"""`surgeon inspect`: the JSON a script reads, the per-layer view, warnings, and odd-but-valid inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import edit_json, rewrite_checkpoint, tensor_entry, write_raw
from weightsurgeon.checkpoint import open_checkpoint


def test_json_fields(tiny_model, surgeon) -> None:
    path = tiny_model(arch="qwen2", num_layers=3, hidden_size=64, vocab_size=300, dtype="bf16", shard_bytes=50_000)
    result = surgeon("inspect", "--json", path)
    assert result.code == 0 and result.stderr == ""
    info = json.loads(result.stdout)
    with open_checkpoint(path) as ckpt:
        numel = sum(t.numel for t in ckpt)
        nbytes = sum(t.nbytes for t in ckpt)
        files = [f.name for f in ckpt.files]
    assert info["architecture"] == "Qwen2ForCausalLM" and info["model_type"] == "qwen2"
    assert (info["num_layers"], info["hidden_size"], info["vocab_size"]) == (3, 64, 300)
    assert info["tied_embeddings"] is False and info["partial"] is False
    assert info["num_parameters"] == numel == sum(info["parameters_by_group"].values())
    assert info["total_bytes"] == nbytes and info["dtypes"] == {"BF16": {"tensors": 3 * 12 + 3, "bytes": nbytes}}
    assert set(info["parameters_by_group"]) == {"attn", "mlp", "norm", "emb", "head"}
    assert info["parameters_by_group"]["emb"] == 300 * 64
    assert [s["file"] for s in info["shards"]] == files and len(files) > 1
    assert all(s["bytes"] == (path / s["file"]).stat().st_size for s in info["shards"])
    assert {"q_proj", "o_proj", "down_proj", "lm_head", "embed_tokens"} <= set(info["modules"])
    assert info["other"] == [] and info["warnings"] == [] and "parameters_by_layer" not in info


def test_verbose_per_layer(tiny_model, surgeon) -> None:
    path = tiny_model(arch="qwen3", num_layers=2, tied=True)
    info = json.loads(surgeon("inspect", "--json", "-v", path).stdout)
    assert info["tied_embeddings"] is True and "head" not in info["parameters_by_group"]
    per_layer = info["parameters_by_layer"]
    assert set(per_layer) == {"0", "1"}
    assert per_layer["0"]["o_proj"] == 64 * 64 and per_layer["0"]["q_norm"] == 16
    text = surgeon("inspect", "-v", path)
    assert text.code == 0 and "parameters per layer" in text.stdout and "q_norm" in text.stdout


def test_table_output(tiny_model, surgeon) -> None:
    path = tiny_model(arch="llama", dtype="f16")
    result = surgeon("inspect", path)
    assert result.code == 0
    for needle in ("LlamaForCausalLM", "layers", "hidden size", "F16", "parameters by module group",
                   "model.safetensors", "tied embeddings"):
        assert needle in result.stdout


def test_other_names_warned_on_stderr_json_stays_clean(tiny_model, surgeon) -> None:
    path = tiny_model()
    (path / "model.safetensors").rename(path / "a.safetensors")
    write_raw(path / "b.safetensors", {"mystery[/bold].scale": tensor_entry("F32", [1], 0, 4)}, b"\0" * 4)
    result = surgeon("inspect", "--json", path)
    assert result.code == 0
    info = json.loads(result.stdout)
    assert info["other"] == ["mystery[/bold].scale"] and "other" in info["parameters_by_group"]
    assert "warning:" in result.stderr and "mystery[/bold].scale" in result.stderr
    table = surgeon("inspect", path)  # a name that looks like rich markup must not break the table
    assert table.code == 0 and "mystery[/bold].scale" in table.stdout


@pytest.mark.parametrize("architectures", [5, "Qwen2ForCausalLM", {}, {"a": 1}, [], [None], ["[/x]"], None])
def test_odd_config_values_are_shown_not_crashed_on(tiny_model, surgeon, architectures) -> None:
    path = tiny_model()
    edit_json(path / "config.json", architectures=architectures, model_type=["[bold]"])
    assert surgeon("inspect", path).code == 0
    info = json.loads(surgeon("inspect", "--json", path).stdout)
    assert info["architecture"] in (None, "Qwen2ForCausalLM", "[/x]") and info["model_type"] is None


def test_inspect_single_file_and_no_config(tiny_model, surgeon, tmp_path: Path) -> None:
    path = tiny_model()
    alone = rewrite_checkpoint(path, tmp_path / "alone")
    (alone / "config.json").unlink()
    result = surgeon("inspect", "--json", alone / "model.safetensors")
    assert result.code == 0 and "no config.json" in result.stderr
    info = json.loads(result.stdout)
    assert info["path"].endswith("model.safetensors") and info["num_layers"] == 2 and info["architecture"] is None


def test_inspect_refuses_what_verify_refuses(tiny_model, surgeon) -> None:
    path = tiny_model()
    edit_json(path / "config.json", num_hidden_layers=5)
    result = surgeon("inspect", path)
    assert result.code == 1 and result.err_lines == [result.stderr.strip()] and "num_hidden_layers" in result.stderr
