"""Every message of opening a checkpoint (checkpoint.py) and of the selectors (layout.py), as a user meets it.

One tiny sharded model is built per module; each case copies it, damages one thing (a side
file, the index, a name, a selector) and runs the real CLI in process: exit 1, one `error:`
line naming the file, the distinctive words, what to do, and the inputs untouched. A
function is called directly only where no command can produce the fault (an I/O error, a
file that shrinks between two reads).
"""
from __future__ import annotations

import errno
import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import one_error, tensor_entry, write_raw
from weightsurgeon.errors import SurgeonError
from weightsurgeon.synth import make_checkpoint, write_weights

REDOWNLOAD = "the file is damaged: download the model again"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("errors-ckpt") / "base", arch="qwen2", num_layers=2,
                           shard_bytes=60_000)


@pytest.fixture
def model(sharded: Path, tmp_path: Path) -> Path:
    """A fresh copy of the sharded model, free to damage."""
    return Path(shutil.copytree(sharded, tmp_path / "model"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


INDEX = "model.safetensors.index.json"


def _index(model: Path) -> dict:
    return json.loads((model / INDEX).read_text())


# (id, how to damage the model folder, words the message must hold, file named)
def _move_tensor(model: Path) -> None:
    """Swap the shards the index names for two tensors stored in different shards (both shards stay listed)."""
    index = _index(model)
    items = list(index["weight_map"].items())
    (a, fa), (b, fb) = items[0], next(item for item in items if item[1] != items[0][1])
    index["weight_map"][a], index["weight_map"][b] = fb, fa
    (model / INDEX).write_text(json.dumps(index))


def _big_config(model: Path) -> None:
    with open(model / "config.json", "wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)  # sparse: no disk used


FOLDER_CASES = [
    ("config_not_object", lambda m: (m / "config.json").write_text("[1, 2]"), "config.json",
     ("must be a JSON object, got", "got list", REDOWNLOAD)),
    ("config_not_json", lambda m: (m / "config.json").write_text('{"a": '), "config.json",
     ("not valid JSON (Expecting value", REDOWNLOAD)),
    ("config_over_64mb", _big_config, "config.json", f"larger than 64 MB, so not a checkpoint JSON file; {REDOWNLOAD}"),
    ("config_json_bomb", lambda m: (m / "config.json").write_text("[" + "[]," * 400_000 + "[]]"), "config.json",
     "not a checkpoint JSON file: "),
    ("config_gptq", lambda m: (m / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}})),
     "model", "quantized checkpoint (quantization_config: gptq"),
    ("config_loop_link", lambda m: ((m / "config.json").unlink(), (m / "config.json").symlink_to("config.json")),
     "config.json", ("cannot access (Too many levels of symbolic links)", "check the path and its permissions")),
    ("index_not_object", lambda m: (m / INDEX).write_text('"x"'), INDEX, ("must be a JSON object, got", "got str", REDOWNLOAD)),
    ("index_no_weight_map", lambda m: (m / INDEX).write_text('{"metadata": {}}'), INDEX,
     "missing or empty 'weight_map'; the index is damaged: download it again"),
    ("index_wrong_shard", _move_tensor, INDEX, "the index and the shards disagree: download the model again"),
]


@pytest.mark.parametrize("case_id,damage,named,words", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_a_damaged_model_folder_is_one_line(model: Path, surgeon, tmp_path: Path, case_id, damage, named: str,
                                             words: str) -> None:
    damage(model)
    before = _snapshot(model)
    line = one_error(surgeon("zero", model, "--module", "o_proj", "-o", tmp_path / "out"),
                      *((words,) if isinstance(words, str) else words))
    assert f"{model}/{named}" in line or (named == "model" and f"{model}:" in line), line
    assert _snapshot(model) == before and not (tmp_path / "out").exists()


def test_index_lists_a_tensor_in_the_wrong_shard(model: Path, surgeon) -> None:
    _move_tensor(model)
    one_error(surgeon("inspect", model), "lists tensor", "but it is stored in model-0000")


@pytest.mark.parametrize("suffix,words", [
    ("qweight", "GPTQ/AWQ-quantized weights (model.layers.0.self_attn.q_proj.qweight); the engine works on plain float"),
    ("absmax", "bitsandbytes-quantized weights (model.layers.0.self_attn.q_proj.absmax); use the unquantized model"),
])
def test_integer_quantized_weights_are_refused(tmp_path: Path, surgeon, suffix: str, words: str) -> None:
    path = write_raw(tmp_path / "model.safetensors",
                     {f"model.layers.0.self_attn.q_proj.{suffix}": tensor_entry("I32", [2], 0, 8)}, b"\0" * 8)
    line = one_error(surgeon("inspect", path), words)
    assert str(path) in line


def test_names_that_are_no_path(tmp_path: Path, surgeon) -> None:
    one_error(surgeon("inspect", ""), "not a path or Hub id; give a model folder, a .safetensors file or ORG/NAME")
    missing = tmp_path / "no" / "such-model"
    one_error(surgeon("inspect", missing), f"{missing}: no such file or directory (and not a Hub id like")
    long = "m" * 300  # longer than a file name may be: the path cannot even be looked up
    one_error(surgeon("inspect", long), f"{long}: cannot access (File name too long)",
               "; check the path and its permissions")


def test_hub_ids_that_cannot_be_resolved(tmp_path: Path, surgeon, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    one_error(surgeon("inspect", "org/tiny@v1", "--revision", "v2"),
               "and --revision says", "names revision 'v1' and --revision says 'v2': give one")
    one_error(surgeon("zero", "org/absent-model", "--module", "o_proj", "-o", tmp_path / "o"),
               "no such directory, and not in the local Hugging Face cache; download it first with `hf download",
               "org/absent-model: no such", "`hf download org/absent-model`")

    def broken(**kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "empty-cache"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    one_error(surgeon("zero", "org/absent-model", "--module", "o_proj", "-o", tmp_path / "o"),
               "cannot resolve from the local Hugging Face cache", "org/absent-model: cannot", "(PermissionError")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # an install without it: an import error
    one_error(surgeon("zero", "org/absent-model", "--module", "o_proj", "-o", tmp_path / "o"),
               "huggingface_hub is not installed: pass a local path instead of a Hub id")
    assert not (tmp_path / "o").exists()


def test_an_unreadable_config_names_it(model: Path, surgeon, monkeypatch) -> None:
    """EIO on config.json (a failing disk); as root no permission bit makes a file unreadable, so open() fails."""
    import weightsurgeon.checkpoint as checkpoint

    real_open = open

    def failing(path, *a, **kw):
        if str(path).endswith("config.json"):
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(checkpoint, "open", failing, raising=False)
    one_error(surgeon("inspect", model),
               f"{model}/config.json: cannot read (Input/output error); check the file's permissions and the disk")


def test_a_shard_that_fails_or_shrinks_under_a_run(model: Path, monkeypatch) -> None:
    """A disk error while reading a tensor, and a shard truncated after it was opened (a download still running)."""
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.source import LocalFile

    with open_checkpoint(model) as ckpt:
        info = next(iter(ckpt))

        def failing(self, offset, view):
            raise OSError(errno.EIO, "Input/output error")

        with monkeypatch.context() as m:
            m.setattr(LocalFile, "read_into", failing)
            with pytest.raises(SurgeonError, match=r"read failed in tensor .* \(Input/output error\); check the disk"):
                ckpt.read_tensor(info.name)
            with pytest.raises(SurgeonError, match=r"cannot read \(Input/output error\); check the file's permissions"):
                ckpt.header_digest(ckpt.shards[0])
        shard = ckpt.shards[0]
        with open(shard.path, "r+b") as f:
            f.truncate(16)
        with pytest.raises(SurgeonError, match="file shrank below its header while this run was reading it"):
            ckpt.header_digest(shard)


# Selectors, through the CLI a user types them into.
@pytest.mark.parametrize("args,words", [
    (("--module", ""), "empty module selector: name modules (o_proj, q_proj, ...) or groups"),
    (("--module", "re:("), ("bad regex in module selector", "'re:('")),
    (("--module", "o_proj", "--layers", "1,,0"), ("empty item; write layers as 5-30", "bad layer list '1,,0'")),
    (("--module", "o_proj", "--layers", "x"), ("is not N or N-M", "bad layer list 'x': 'x'")),
    (("--module", "o_proj", "--layers", "7"), ("is out of range: the model has", "layer 7 ", "2 layers (0-1)")),
])
def test_bad_selectors_are_one_line(sharded: Path, surgeon, tmp_path: Path, args, words: str) -> None:
    one_error(surgeon("zero", sharded, *args, "-o", tmp_path / "out"), *((words,) if isinstance(words, str) else words))
    assert not (tmp_path / "out").exists()


def test_selecting_part_of_a_fused_tensor(tmp_path: Path, surgeon) -> None:
    """Phi-3 stores q, k and v as one qkv_proj: --module q_proj cannot take a third of it."""
    specs = [("model.embed_tokens.weight", (16, 8)), ("model.layers.0.self_attn.qkv_proj.weight", (24, 8)),
             ("model.layers.0.self_attn.o_proj.weight", (8, 8)), ("model.norm.weight", (8,))]
    folder = write_weights(tmp_path / "phi", specs)
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3", "num_hidden_layers": 1}))
    one_error(surgeon("zero", folder, "--module", "q_proj", "-o", tmp_path / "out"),
               "this model stores", "--module q_proj: this model stores q_proj fused into qkv_proj "
               "(e.g. model.layers.0.self_attn.qkv_proj.weight); select qkv_proj instead")
