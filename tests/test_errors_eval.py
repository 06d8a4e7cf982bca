"""`surgeon eval`'s refusals through the real CLI: task data, backends, packages, data-parallel workers.

`surgeon eval` reads and checks every task's data before it loads a model, so a bad record
is refused in seconds with no model at all (the MODEL folder here is empty). The backend's
own refusals run on a tiny synthetic model (synth.py writes a working tokenizer) edited one
way per case. A package that is installed here (torch, lm-eval) is hidden for one case by
setting its entry in sys.modules to None, which makes `import` fail as if it were missing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import one_error

pytest.importorskip("transformers")


def _eval(surgeon, model: Path, tmp_path: Path, *extra: str, text: str = '{"question": "1+1?", "answer": "2"}\n'):
    data = tmp_path / "t.jsonl"
    data.write_text(text)
    return surgeon("eval", model, "--tasks", "math500", "--data", f"math500={data}", "--max-tokens", "4",
                   "-o", tmp_path / "out", *extra)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightsurgeon.synth import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("eval-model") / "m", num_layers=2, hidden_size=32,
                           intermediate_size=64, dtype="f32")


@pytest.fixture
def model(tiny: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny, tmp_path / "m"))


# ---------------------------------------------------------------------------------------
# task data: refused before a model is loaded (the model folder is empty)
# ---------------------------------------------------------------------------------------

TASK_CASES = [
    ("no-question", '{"answer": "2"}\n', "math500 record 0: no 'question' (or 'problem') field"),
    ("no-answer", '{"question": "1+1?"}\n', "math500 record 0: no 'answer' field (each record needs its reference"),
    ("bad-line", '{"question": "q", "answer": "1"}\n{oops\n', "a .jsonl task file holds one JSON object per line"),
    ("empty", "\n", "task math500: no problems loaded from"),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in TASK_CASES], ids=[c[0] for c in TASK_CASES])
def test_bad_task_data_is_refused_before_any_model_loads(tmp_path: Path, surgeon, text: str, words: str) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    one_error(_eval(surgeon, empty, tmp_path, text=text), words)
    assert not (tmp_path / "out").exists()


def test_a_missing_task_file_is_refused_before_any_model_loads(tmp_path: Path, surgeon) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    res = surgeon("eval", empty, "--tasks", "math500", "--data", f"math500={tmp_path / 'gone.jsonl'}",
                  "-o", tmp_path / "out")
    one_error(res, "gone.jsonl: data file for task math500 not found; check --data math500=FILE")


# ---------------------------------------------------------------------------------------
# backends and packages
# ---------------------------------------------------------------------------------------

def test_a_folder_transformers_cannot_load(tmp_path: Path, surgeon) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    one_error(_eval(surgeon, empty, tmp_path), f"{empty}: transformers cannot load it (",
              "the hf backend needs a folder (or a Hub id in the local cache) with config.json, the tokenizer")
    assert not (tmp_path / "out").exists()


def test_an_unknown_dtype(model: Path, tmp_path: Path, surgeon) -> None:
    one_error(_eval(surgeon, model, tmp_path, "--dtype", "f8"), "unknown dtype 'f8'; use auto, bf16, f16 or f32")


def test_a_tokenizer_without_a_chat_template(model: Path, tmp_path: Path, surgeon) -> None:
    path = model / "tokenizer_config.json"
    config = json.loads(path.read_text())
    del config["chat_template"]
    path.write_text(json.dumps(config))
    for extra in model.glob("chat_template.*"):
        extra.unlink()
    one_error(_eval(surgeon, model, tmp_path), "its tokenizer has no chat template; use --prompt plain (or add a "
                                               "chat_template to tokenizer_config.json)")
    assert not (tmp_path / "out").exists()
    assert _eval(surgeon, model, tmp_path, "--prompt", "plain").code == 0  # what the message says to do


def test_a_model_with_no_eos_token(model: Path, tmp_path: Path, surgeon) -> None:
    for name, drop in (("generation_config.json", "eos_token_id"), ("config.json", "eos_token_id"),
                       ("tokenizer_config.json", "eos_token"), ("special_tokens_map.json", "eos_token")):
        doc = json.loads((model / name).read_text())
        doc[drop] = None  # null, not absent: an absent eos_token falls back to a default
        (model / name).write_text(json.dumps(doc))
    one_error(_eval(surgeon, model, tmp_path), f"{model}: neither generation_config.json nor the tokenizer names an "
                                               "eos token; set eos_token_id in generation_config.json")


@pytest.mark.parametrize("module,args,words", [
    ("torch", (), "the hf backend needs torch and transformers (pip install weightsurgeon[eval])"),
    ("vllm", ("--backend", "vllm"), "the vllm backend needs vLLM (pip install weightsurgeon[vllm]) and a GPU"),
    ("lm_eval", ("--harness", "lm-eval"), "--harness lm-eval needs lm-eval (pip install weightsurgeon[eval])"),
])
def test_a_missing_package_says_what_to_install(model: Path, tmp_path: Path, surgeon, monkeypatch,
                                                module: str, args: tuple, words: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    one_error(_eval(surgeon, model, tmp_path, *args), words)
    assert not (tmp_path / "out").exists()


def test_parquet_task_data_without_pyarrow(tmp_path: Path, surgeon, monkeypatch) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    data = tmp_path / "t.parquet"
    data.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    one_error(surgeon("eval", empty, "--tasks", "math500", "--data", f"math500={data}", "-o", tmp_path / "out"),
              f"{data}: reading parquet needs pyarrow (pip install pyarrow)")


# ---------------------------------------------------------------------------------------
# data-parallel workers
# ---------------------------------------------------------------------------------------

def test_a_data_parallel_worker_that_fails_to_start(model: Path, tmp_path: Path, surgeon) -> None:
    """Two hf replicas on CPU: each worker (a fresh process) refuses the dtype; the parent says so in one line."""
    one_error(_eval(surgeon, model, tmp_path, "--data-parallel-size", "2", "--dtype", "f8"),
              f"{model}: a data-parallel worker failed: SurgeonError: unknown dtype 'f8'")
    assert not (tmp_path / "out").exists()


def test_a_data_parallel_worker_that_dies(model: Path) -> None:
    """A worker killed (the OOM killer) closes its pipe without a word: the parent names the model and what to check."""
    import multiprocessing as mp

    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.recipes.eval.parallel import DataParallelBackend

    parent, child = mp.Pipe()
    child.close()
    backend = DataParallelBackend.__new__(DataParallelBackend)
    backend.model, backend._conns, backend._procs = str(model), [parent], []
    with pytest.raises(SurgeonError) as e:
        backend._receive(parent)
    assert str(e.value) == (f"{model}: a data-parallel worker died without a word (killed, out of memory?); check the "
                            "system log (dmesg), or lower --data-parallel-size or --batch-size")


# ---------------------------------------------------------------------------------------
# probe --sweep: cells that cannot be applied to a loaded model in memory
# ---------------------------------------------------------------------------------------

def test_a_splice_cell_that_would_untie_the_head(tmp_path: Path) -> None:
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.recipes.eval.sweep import Cell, plan_for
    from weightsurgeon.synth import make_checkpoint

    tied = make_checkpoint(tmp_path / "tied", num_layers=1, hidden_size=32, intermediate_size=64, tied=True)
    untied = make_checkpoint(tmp_path / "untied", num_layers=1, hidden_size=32, intermediate_size=64, tied=False)
    with open_checkpoint(tied) as base, open_checkpoint(untied) as donor:
        with pytest.raises(SurgeonError) as e:
            plan_for(base, Cell("splice", "head", "all"), {}, donor)
    assert str(e.value) == ("splice head all: this splice edits config.json or adds tensors (an untied head); it "
                            "cannot be done in memory: write it with surgeon splice")


def test_cells_a_loaded_model_cannot_take(tiny: Path) -> None:
    """A model class with no layer list, and one whose parameter names are not the checkpoint's."""
    torch = pytest.importorskip("torch")
    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.recipes.eval.sweep import Cell, apply_cell, plan_for

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Module()
            self.proj = torch.nn.Linear(2, 2)

    with open_checkpoint(tiny) as ckpt:
        with pytest.raises(SurgeonError) as e:
            apply_cell(Odd(), plan_for(ckpt, Cell("remove", None, "0"), {}))
        assert str(e.value) == ("Odd: cannot find the decoder's layer list (.layers, .h or .blocks) to remove layers in "
                                "memory; write the cut model with surgeon remove and probe it instead")
        with pytest.raises(SurgeonError) as e:
            apply_cell(Odd(), plan_for(ckpt, Cell("zero", "o_proj", "0"), {}))
        assert str(e.value) == ("model.layers.0.self_attn.o_proj.weight: the loaded model has no such parameter (this "
                                "architecture's names differ between checkpoint and model); write the changed "
                                "checkpoint with surgeon zero and probe it instead")
