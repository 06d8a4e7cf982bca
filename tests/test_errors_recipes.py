"""Every refusal of the recipes layer (recipe files, train configs, eval options, task and training data,
sweeps, results and loss tables), as a user meets it.

The CLI runs in process wherever it reaches the check before a model loads (`surgeon train`,
`surgeon recipe cp`, `surgeon eval`, `surgeon probe --sweep`, `surgeon eval compare`,
`surgeon train-plot`). Data files are read only after torch and the model's tokenizer load, so
their checks are called as functions: the same code, without seconds of imports per case.
Each case: exit 1 and one ``error:`` line holding the message's distinctive words (or the SurgeonError).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.catalog import find_recipe

RECIPE = find_recipe("tiny_cpu")


def _one_error(r, *words: str) -> None:
    assert r.code == 1 and len(r.err_lines) == 1 and r.err_lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    dst = tmp_path / "tiny.yaml"
    shutil.copyfile(RECIPE, dst)
    return dst


# ---------------------------------------------------------------------------------------
# recipe files and key=value overrides (surgeon train reads and checks them before anything runs)
# ---------------------------------------------------------------------------------------

FILE_CASES = [
    ("not-yaml", "model: [1,\n", "not valid YAML"),
    ("not-mapping", "- a\n- b\n", "a recipe is a mapping of settings"),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_a_bad_recipe_file_is_one_line(tmp_path: Path, surgeon, text: str, words: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    _one_error(surgeon("train", path), f"{path}: {words}")


def test_recipe_files_that_cannot_be_read(tmp_path: Path, surgeon, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no" / "r.yaml"
    _one_error(surgeon("train", missing), f"{missing}: no such config file (see `surgeon recipe ls`)")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe: 1\n")  # was an internal error (UnicodeDecodeError)
    _one_error(surgeon("train", binary), f"{binary}: not a recipe (the file is not UTF-8 text)")
    real = Path.read_text

    def refuse(self: Path, *a, **kw) -> str:  # root reads anything: EACCES made by hand
        if self.name == "tiny.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    shutil.copyfile(RECIPE, tmp_path / "tiny.yaml")
    monkeypatch.setattr(Path, "read_text", refuse)
    _one_error(surgeon("train", tmp_path / "tiny.yaml"), "tiny.yaml: cannot read recipe: Permission denied", "cannot read recipe")


def test_recipe_cp_refusals(tmp_path: Path, surgeon) -> None:
    (tmp_path / "there.yaml").write_text("x")
    _one_error(surgeon("recipe", "cp", "tiny_cpu", tmp_path / "there.yaml"), "there.yaml: exists; pass --force to overwrite it")
    assert (tmp_path / "there.yaml").read_text() == "x"
    _one_error(surgeon("recipe", "cp", "tiny_cpu", tmp_path / "nodir" / "x.yaml"),
               "nodir: no such directory; create it first, or copy into an existing folder")


# (id, overrides, words): every check of the typed config, reached by a key=value override
OVERRIDE_CASES = [
    ("override-yaml", ["train.learning_rate=[1,"], "override 'train.learning_rate=[1,': value is not valid YAML"),
    ("override-section", ["train.learning_rate.x=1"], "override train.learning_rate.x: 'learning_rate' is not a section"),
    ("section", ["freeze=3"], "config recipe.freeze: expected a section, got 3"),
    ("list", ["data.decontaminate.tasks={a: 1}"], "config recipe.data.decontaminate.tasks: expected a list"),
    ("mapping", ["model.arch=[1]"], "config recipe.model.arch: expected a mapping, got [1]"),
    ("bool", ["model.trust_remote_code=maybe"], "config recipe.model.trust_remote_code: expected true/false"),
    ("number", ["train.learning_rate=fast"], "config recipe.train.learning_rate: expected a number, got 'fast'"),
    ("string", ["data.source=[1]"], "config recipe.data.source: expected a string, got [1]"),
    ("unknown", ["train.lr=1"], "config recipe.train: unknown key(s) lr; known:"),
    ("choice", ["train.precision=fp8"], "config recipe.train.precision: 'fp8' is not one of bf16, fp16, fp32"),
    ("batch", ["train.per_device_batch_size=0"], "config train: batch sizes must be >= 1"),
    ("ngram", ["data.decontaminate.ngram=0"], "config data.decontaminate.ngram must be >= 1"),
    ("warmup", ["train.warmup_ratio=1"], "config train.warmup_ratio must be in [0, 1)"),
    ("steps", ["train.num_epochs=0", "train.max_steps=0"], "config train: set num_epochs > 0 or max_steps > 0"),
]


@pytest.mark.parametrize("overrides,words", [c[1:] for c in OVERRIDE_CASES], ids=[c[0] for c in OVERRIDE_CASES])
def test_a_bad_train_setting_is_one_line_naming_the_recipe(recipe: Path, surgeon, overrides: list[str], words: str) -> None:
    r = surgeon("train", recipe, *overrides, "--dry-run")
    _one_error(r, words)
    if not words.startswith("override"):  # an override names itself; a setting names the file it came from
        assert str(recipe) in r.stderr


def test_config_api_guards() -> None:
    """What the CLI checks before (a missing file, a YAML list) the Python API checks again."""
    from weightsurgeon.recipes.train.config import config_from_dict, load_config

    with pytest.raises(SurgeonError, match="the top level must be a mapping of sections"):
        config_from_dict([1])  # type: ignore[arg-type]
    with pytest.raises(SurgeonError, match="no such config file"):
        load_config("/nonexistent/r.yaml")


def test_launch_refusals(recipe: Path, surgeon, monkeypatch: pytest.MonkeyPatch) -> None:
    _one_error(surgeon("train", recipe, "distributed.nnodes=2", "--launch"), "--launch starts one node; for several nodes use --slurm")
    # a launcher whose processes fail: its status is the error (the real launcher would train first)
    import weightsurgeon.recipes.train.launch as launch

    monkeypatch.setattr(launch, "launch_command", lambda *a, **kw: [sys.executable, "-c", "raise SystemExit(3)"])
    r = surgeon("train", recipe, "distributed.nproc_per_node=2", "--launch")
    assert r.code == 1 and r.err_lines[0].endswith("-c 'raise SystemExit(3)'"), r.stderr  # the command it ran, then:
    assert r.err_lines[1:] == ["error: training processes exited with status 3 (see the log above)"], r.stderr


# ---------------------------------------------------------------------------------------
# surgeon eval: options and recipe keys, checked before a model loads
# ---------------------------------------------------------------------------------------

EVAL_CASES = [
    ("no-model", ["--tasks", "aime24", "-o", "{out}"], "no model given (argument MODEL or `model:` in the recipe)"),
    ("no-output", ["{model}", "--tasks", "aime24"], "no output folder given (-o/--output or `output:` in the recipe)"),
    ("samples", ["{model}", "--tasks", "aime24", "-o", "{out}", "samples=0"], "samples must be at least 1, not 0"),
    ("samples-type", ["{model}", "--tasks", "aime24", "-o", "{out}", "samples=abc"],
     "samples must be a whole number, not 'abc'"),  # was an internal error (int('abc'))
    ("max-tokens-type", ["{model}", "--tasks", "aime24", "-o", "{out}", "max_tokens=x"], "max_tokens must be a whole number"),
    ("limit-type", ["{model}", "--tasks", "aime24", "-o", "{out}", "limit=x"], "limit must be a whole number or null, not 'x'"),
    ("limit", ["{model}", "--tasks", "aime24", "-o", "{out}", "limit=0"], "limit must be at least 1, not 0"),
    ("prompt", ["{model}", "--tasks", "aime24", "-o", "{out}", "prompt=foo"], "prompt must be chat or plain, not 'foo'"),
    ("harness", ["{model}", "--tasks", "aime24", "-o", "{out}", "harness=x"], "harness must be surgeon or lm-eval, not 'x'"),
    ("key", ["{model}", "--tasks", "aime24", "-o", "{out}", "bogus=1"], "overrides: unknown key(s) bogus; known: model"),
    ("task", ["{model}", "--tasks", "nope", "-o", "{out}"], "unknown task 'nope'; known tasks: aime24"),
    ("budget", ["{model}", "--tasks", "aime24", "-o", "{out}", "budget_forcing=-1"], "budget_forcing must be 0 or more, not -1"),
    ("budget-lm-eval", ["{model}", "--tasks", "aime24", "-o", "{out}", "harness=lm-eval", "budget_forcing=2"],
     "--budget-forcing runs in our harness only; drop it or use --harness surgeon"),
    ("backend-option", ["{model}", "--tasks", "aime24", "-o", "{out}", "backend_options={bogus: 1}"],
     "backend hf does not take option(s) bogus; it takes"),
    ("no-tasks", ["{model}", "--tasks", ",", "-o", "{out}"], "no tasks given; known tasks: aime24"),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_a_bad_eval_request_is_one_line(tmp_path: Path, surgeon, args: list[str], words: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    r = surgeon("eval", *(a.replace("{model}", str(model)).replace("{out}", str(tmp_path / "out")) for a in args))
    _one_error(r, words)
    assert not (tmp_path / "out").exists()


def test_an_eval_recipe_whose_data_is_not_a_mapping(tmp_path: Path, surgeon) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("tasks: aime24\ndata: [a.jsonl]\n")
    _one_error(surgeon("eval", tmp_path, "--config", path, "-o", tmp_path / "out"),
               f"{path}: `data:` maps task names to files or Hub ids")


def test_eval_compare_refuses_what_is_not_a_result(tmp_path: Path, surgeon) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text("{nope")
    _one_error(surgeon("eval", "compare", tmp_path / "a", tmp_path / "a"), "results.json: invalid JSON",
               "give the folder `surgeon eval -o` wrote")
    (tmp_path / "a" / "results.json").write_bytes(b"\xff\xfe")  # was an internal error (UnicodeDecodeError)
    _one_error(surgeon("eval", "compare", tmp_path / "a", tmp_path / "a"), "results.json: invalid JSON")
    (tmp_path / "a" / "results.json").write_text('{"schema": "other"}')
    _one_error(surgeon("eval", "compare", tmp_path / "a", tmp_path / "a"), "results.json: not a surgeon eval result (schema")


# ---------------------------------------------------------------------------------------
# task data (called directly; through the CLI, before any model loads: test_errors_eval.py)
# ---------------------------------------------------------------------------------------

TASK_CASES = [
    ("no-question", "math500", '{"answer": "2"}\n', "math500 record 0: no 'question' (or 'problem') field"),
    ("no-answer", "math500", '{"question": "1+1?"}\n', "math500 record 0: no 'answer' field (each record needs its reference"),
    ("choices-no-answer", "gpqa_diamond", '{"question": "q", "choices": ["a", "b"]}\n',
     "gpqa_diamond record 0: 'choices' given without an 'answer' letter"),
    ("answer-not-letter", "gpqa_diamond", '{"question": "q", "choices": ["a", "b"], "answer": "C"}\n',
     "gpqa_diamond record 0: answer 'C' is not a letter of its 2 choices"),
    ("bad-line", "math500", '{"question": "q", "answer": "1"}\n{oops\n', "a .jsonl task file holds one JSON object per line"),
    ("not-object-line", "math500", "[1, 2]\n", "t.jsonl:1: not a JSON object; a .jsonl task file holds one JSON object per line"),
    ("empty", "math500", "\n", "task math500: no problems loaded from"),
]


@pytest.mark.parametrize("task,text,words", [c[1:] for c in TASK_CASES], ids=[c[0] for c in TASK_CASES])
def test_a_bad_task_file_names_the_record(tmp_path: Path, task: str, text: str, words: str) -> None:
    from weightsurgeon.recipes.tasks import load_problems

    path = tmp_path / "t.jsonl"
    path.write_text(text)
    with pytest.raises(SurgeonError) as e:
        load_problems(task, str(path))
    assert words in str(e.value), str(e.value)


def test_task_files_that_are_not_json(tmp_path: Path) -> None:
    from weightsurgeon.recipes.tasks import load_problems

    cases = [("a.json", b"[{oops", "a .json task file is a list of records"),
             ("b.json", b"[1, 2]", "b.json: item 0 is not a JSON object"),  # was an internal error (TypeError)
             ("c.jsonl", b"\xff\xfe", "c.jsonl: not a JSON/JSONL task file (not UTF-8 text)"),  # was internal
             ("gone.jsonl", None, "gone.jsonl: data file for task math500 not found")]
    for name, raw, words in cases:
        if raw is not None:
            (tmp_path / name).write_bytes(raw)
        with pytest.raises(SurgeonError) as e:
            load_problems("math500", str(tmp_path / name))
        assert words in str(e.value), str(e.value)


def test_a_task_from_an_unreachable_hub_names_the_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    from weightsurgeon.recipes.tasks import load_problems

    with pytest.raises(SurgeonError) as e:
        load_problems("aime24", "nobody/no-such-dataset-errB")  # offline (conftest): the Hub is not asked
    assert "cannot load aime24 from the Hub as nobody/no-such-dataset-errB" in str(e.value)
    assert "from the Hub as" in str(e.value)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(SurgeonError, match="loading tasks from the Hub needs `datasets`"):
        load_problems("aime24")


# ---------------------------------------------------------------------------------------
# training data (read after the tokenizer loads: called directly)
# ---------------------------------------------------------------------------------------

def _data_cfg(source: str, **kw):
    from weightsurgeon.recipes.train.config import DataConfig

    return DataConfig(source=source, **kw)


class _ShiftingTemplate:
    """A chat template that renders a conversation's start differently from the prompt alone
    (some templates drop a thinking block from earlier turns): the completion cannot be cut off."""

    chat_template = "{{ messages }}"
    eos_token = "</s>"

    def apply_chat_template(self, messages: list, tokenize: bool, add_generation_prompt: bool) -> str:
        return ("<gen>" if add_generation_prompt else "<full>") + "".join(m["content"] for m in messages)


def test_training_data_refusals(tmp_path: Path) -> None:
    from weightsurgeon.recipes.train.data import eval_texts_for_tasks, load_rows, read_eval_file, to_prompt_completion

    (tmp_path / "bad.jsonl").write_text('{"q": 1}\n{oops\n')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("[{oops")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe")
    (tmp_path / "adir.jsonl").mkdir()
    cases = [
        (_data_cfg("synth:many"), "data.source 'synth:many': expected synth:N with N rows"),
        (_data_cfg(str(tmp_path / "adir.jsonl")), "adir.jsonl: data file not found"),
        (_data_cfg(str(tmp_path / "empty.jsonl")), "empty.jsonl: the data set has no rows"),
        (_data_cfg(str(tmp_path / "bad.jsonl")), "bad.jsonl:2: invalid JSON ("),
        (_data_cfg(str(tmp_path / "list.json")), "list.json: item 0 is not a JSON object (a .json data file is a list of records)"),
        (_data_cfg(str(tmp_path / "broken.json")), "broken.json: invalid JSON (line 1, column 3:"),  # was internal
        (_data_cfg(str(tmp_path / "bin.jsonl")), "bin.jsonl: not a JSON/JSONL data file (not UTF-8 text)"),  # was internal
    ]
    for cfg, words in cases:
        with pytest.raises(SurgeonError) as e:
            load_rows(cfg)
        assert words in str(e.value), str(e.value)
    with pytest.raises(SurgeonError, match=r"data row 0: no column 'question' \(columns: q\)"):
        to_prompt_completion([{"q": "x"}], None, _data_cfg("synth:1"))
    with pytest.raises(SurgeonError, match="the tokenizer has no chat template; use data.format=prompt_completion"):
        to_prompt_completion([{"question": "q"}], SimpleNamespace(chat_template=None), _data_cfg("synth:1"))
    chat = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(SurgeonError, match="data row 0: the chat template renders the prompt differently"):
        to_prompt_completion(chat, _ShiftingTemplate(), _data_cfg("synth:1", format="messages"))
    for messages in (["q", "a"], [{"role": "user", "content": "q"}, "a"], [], None):  # was an AttributeError
        with pytest.raises(SurgeonError, match=r"data row 0: 'messages' must be a chat list of \{role, content\} "
                                               "objects ending with an assistant turn"):
            to_prompt_completion([{"messages": messages}], _ShiftingTemplate(), _data_cfg("synth:1", format="messages"))
    with pytest.raises(SurgeonError, match="gone.txt: decontamination file not found"):
        read_eval_file(tmp_path / "gone.txt")
    with pytest.raises(SurgeonError, match="not a decontamination file"):
        read_eval_file(tmp_path / "bin.jsonl")
    with pytest.raises(SurgeonError, match="decontamination against math500: .*bad.jsonl: math500 record 0: no 'question'"):
        eval_texts_for_tasks([f"math500={tmp_path / 'bad.jsonl'}"])


# ---------------------------------------------------------------------------------------
# surgeon probe --sweep: the sweep file is checked before the model loads
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightsurgeon.synth import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("probe") / "m", num_layers=2, hidden_size=32,
                           intermediate_size=64, num_heads=2, num_kv_heads=1, vocab_size=300)


SWEEP_CASES = [
    ("not-mapping", "- zero\n", "a sweep is a mapping with methods, modules and layers"),
    ("unknown-key", "methods: zero\nmodules: o_proj\nlayers: all\nsize: 3\n", "unknown key(s) size (methods, modules"),
    ("required", "methods: zero\nmodules: o_proj\n", "layers is required: add a `layers:` entry"),
    ("list", "methods: zero\nmodules: []\nlayers: all\n", "modules must be a string or a non-empty list of strings"),
    ("splice-donor", "methods: splice\nmodules: o_proj\nlayers: all\n", "method splice needs a donor (donor: in the file, or --donor)"),
    ("reinit", "methods: reinit\nmodules: o_proj\nlayers: all\nreinit: {scale: 2}\n", "reinit takes std, mean and seed"),
    ("yaml", "methods: [zero\n", "cannot read the sweep"),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_a_bad_sweep_file_is_one_line(probe_model: Path, tmp_path: Path, surgeon, text: str, words: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    _one_error(surgeon("probe", probe_model, "--sweep", path), f"{path}: {words}")


def test_sweep_request_refusals(probe_model: Path, tmp_path: Path, surgeon) -> None:
    _one_error(surgeon("probe", probe_model, "--sweep", "merge"), "--sweep merge needs --donor DONOR")
    _one_error(surgeon("probe", probe_model, "--sweep", tmp_path / "nope.yaml"), "neither 'paper' nor a YAML file")
    _one_error(surgeon("probe", probe_model, probe_model, "--sweep", "paper"), "--sweep probes one MODEL (loaded once), got 2")
    _one_error(surgeon("probe", probe_model, "--sweep", "paper", "--backend", "vllm"), "it runs on the hf backend only")
    _one_error(surgeon("probe", probe_model, "--sweep", "paper", "--limit", "3"), "--data and --limit go with --tasks")


# ---------------------------------------------------------------------------------------
# surgeon train-plot
# ---------------------------------------------------------------------------------------

def test_train_plot_refusals(tmp_path: Path, surgeon) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _one_error(surgeon("train-plot", run, "-o", tmp_path / "f.png"), "run: no train/loss.csv (not a `surgeon train` output?)")
    (run / "train").mkdir()
    (run / "train" / "loss.csv").write_text("step,loss\n1,abc\n")
    _one_error(surgeon("train-plot", run, "-o", tmp_path / "f.png"), "loss.csv: malformed row",
               "needs numbers in the step and loss columns")
    (run / "train" / "loss.csv").write_bytes(b"step,loss\n\xff\xfe\n")  # was an internal error (UnicodeDecodeError)
    _one_error(surgeon("train-plot", run, "-o", tmp_path / "f.png"), "loss.csv: not a loss table (the file is not UTF-8 text)")
    assert not (tmp_path / "f.png").exists()
    from weightsurgeon.recipes.train.plots import plot_losses

    with pytest.raises(SurgeonError, match="no runs to plot"):  # the CLI requires one RUN; the API checks too
        plot_losses([], tmp_path / "g.png")


# ---------------------------------------------------------------------------------------
# what the runners check around a model (called directly: the CLI gets there after training or on GPUs)
# ---------------------------------------------------------------------------------------

def test_replicas_need_enough_visible_gpus() -> None:
    from weightsurgeon.recipes.eval.parallel import gpu_groups

    assert gpu_groups(2, 1, "0,1") == ["0", "1"]
    with pytest.raises(SurgeonError, match="2 replicas x 2 GPUs need 4 GPUs; CUDA_VISIBLE_DEVICES lists 3"):
        gpu_groups(2, 2, "0,1,2")


def test_a_model_neither_local_nor_cached_offline() -> None:
    from weightsurgeon.recipes.train.runner import resolve_checkpoint_dir

    with pytest.raises(SurgeonError, match="not a directory and not in the local Hugging Face cache \\(HF_HUB_OFFLINE is set\\)"):
        resolve_checkpoint_dir("nobody/no-such-model-errB")  # conftest sets HF_HUB_OFFLINE


def test_a_saved_checkpoint_is_checked_against_the_model(tmp_path: Path) -> None:
    """What a ZeRO-3 save gets wrong (empty tensors, other shapes, missing ones) is refused by name."""
    import numpy as np
    from safetensors.numpy import save_file

    from weightsurgeon.recipes.train.runner import check_saved

    with pytest.raises(SurgeonError, match="training wrote no safetensors file"):
        check_saved(tmp_path, {"w": (2, 2)})
    save_file({"w": np.zeros((0,), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(SurgeonError, match="ZeRO-3 weights were not gathered on save"):
        check_saved(tmp_path, {"w": (2, 2)})
    save_file({"w": np.zeros((2, 3), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(SurgeonError, match=r"saved tensor w has shape \[2, 3\], expected \[2, 2\]"):
        check_saved(tmp_path, {"w": (2, 2)})
    with pytest.raises(SurgeonError, match=r"saved checkpoint lacks v \(1 tensors missing\)"):
        check_saved(tmp_path, {"w": (2, 3), "v": (1,)})


def test_a_dry_run_arch_without_model_type(recipe: Path, surgeon) -> None:
    _one_error(surgeon("train", recipe, "model.arch={hidden_size: 8}", "--dry-run"),
               "config model.arch needs a model_type (e.g. qwen2)")


# ---------------------------------------------------------------------------------------
# training: what the run refuses after the tokenizer loads (called directly: the CLI would train first)
# ---------------------------------------------------------------------------------------

def _tiny_tokenizer(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    from weightsurgeon.synth import write_tokenizer

    (tmp_path / "tok").mkdir()
    return transformers.AutoTokenizer.from_pretrained(str(write_tokenizer(tmp_path / "tok")))


def test_decontamination_that_drops_every_row(tmp_path: Path) -> None:
    from weightsurgeon.recipes.train.config import load_config
    from weightsurgeon.recipes.train.data import synthetic_rows
    from weightsurgeon.recipes.train.runner import _prepare_data

    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in synthetic_rows(4)))
    cfg = load_config(RECIPE, ["data.source=synth:4", f"data.decontaminate.files=[{evals}]", "data.decontaminate.ngram=2"])
    with pytest.raises(SurgeonError) as e:
        _prepare_data(cfg, _tiny_tokenizer(tmp_path), None)
    assert str(e.value) == ("data.source synth:4: decontamination (2-gram overlap with the evaluation sets) dropped "
                            "every training row; check data.decontaminate (tasks, files, ngram) and the data")


def test_a_hub_data_set_that_cannot_be_loaded(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from weightsurgeon.recipes.train.config import DataConfig
    from weightsurgeon.recipes.train.data import load_rows

    with pytest.raises(SurgeonError) as e:  # offline (conftest): datasets cannot reach the Hub
        load_rows(DataConfig(source="nobody/no-such-data-err4"))
    assert "data set 'nobody/no-such-data-err4' (split 'train') could not be loaded (" in str(e.value)
    assert "check the id and split, or give a local .jsonl, .json or .parquet file as data.source" in str(e.value)


def test_a_model_neither_local_nor_fetchable(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from weightsurgeon.recipes.train.runner import resolve_checkpoint_dir

    def no_hub(repo_id, local_files_only=False, **kw):
        raise OSError("not cached" if local_files_only else "Connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(SurgeonError) as e:
        resolve_checkpoint_dir("nobody/no-such-model")
    assert str(e.value) == ("model 'nobody/no-such-model': not a local directory, and fetching it from the Hub failed "
                            "(Connection refused); check the path, or the Hub id and the network")


def test_half_precision_training_on_a_cpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bf16 is allowed")
    from weightsurgeon.recipes.train.config import load_config
    from weightsurgeon.recipes.train.runner import sft_args

    cfg = load_config(RECIPE, ["train.precision=bf16"])
    with pytest.raises(SurgeonError, match="train.precision=bf16 needs a GPU; on CPU set train.precision=fp32"):
        sft_args(cfg, tmp_path, 1)
