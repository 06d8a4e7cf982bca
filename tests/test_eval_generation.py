"""Generation on tiny engineered models: backends, budget forcing, `surgeon eval`, `probe`, `compare`.

The models come from `weightsurgeon.synth` with weights engineered to make greedy
decoding predictable: every layer is zeroed (the residual stream is the token
embedding), so the model is a bigram table we write ourselves. ``scripted_model``
writes a fixed text whatever the prompt, then ends; ``loop=True`` repeats its last
token forever instead of ending.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from weightsurgeon.recipes.eval.backends import HFBackend, Sampling  # noqa: E402
from weightsurgeon.recipes.eval.parallel import make_backend  # noqa: E402
from weightsurgeon.recipes.eval.budget import ThinkingFormat, budget_forced_generate, plain_generate  # noqa: E402
from weightsurgeon.synth import make_checkpoint  # noqa: E402

EOS = 258  # <|im_end|> in synth.py's tokenizer
CONFIGS = Path(__file__).resolve().parents[1] / "weightsurgeon" / "recipes" / "configs"
ANSWER_SCRIPT = "hm</think>\\boxed{7}"  # 12 distinct tokens: thinks "hm", then answers 7


def scripted_model(path: Path, script: str, loop: bool = False, **shape) -> Path:
    from transformers import AutoTokenizer

    shape = {"num_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1, **shape}
    out = make_checkpoint(path, **shape)
    ids = AutoTokenizer.from_pretrained(out)(script, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids) and len(ids) < 31, "script tokens must be distinct and few"
    files = sorted(out.glob("*.safetensors"))
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    tensors = {k: (np.ones_like(v) if k.endswith("norm.weight") else np.zeros_like(v)) for k, v in tensors.items()}
    emb, head = tensors["model.embed_tokens.weight"], tensors["lm_head.weight"]
    emb[:, 0] = 1.0  # any token outside the script: start the script
    head[ids[0], 0] = 10.0
    chain = ids + [ids[-1] if loop else EOS]
    for j, (cur, nxt) in enumerate(zip(chain[:-1], chain[1:]), start=1):
        emb[cur] = 0.0
        emb[cur, j] = 1.0
        head[nxt, j] = 10.0
    for f in files:
        f.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def answer_model(tmp_path_factory):
    return scripted_model(tmp_path_factory.mktemp("answer") / "model", ANSWER_SCRIPT)


@pytest.fixture(scope="module")
def answer_backend(answer_model):
    return HFBackend(str(answer_model), device="cpu", dtype="f32", batch_size=4)


def surgeon(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (registers eval/probe if cli.py does not list them yet)."""
    code = ("import weightsurgeon.cli as c;"
            "c.COMMANDS.setdefault('eval', 'weightsurgeon.commands.eval:eval_group');"
            "c.COMMANDS.setdefault('probe', 'weightsurgeon.commands.eval:probe_cmd');"
            "c.main()")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_hf_backend_stop_strings_eos_and_caps(answer_backend):
    s = Sampling()
    full, stopped, capped = answer_backend.generate(["Q:", "Q:", "Q:"], [40, 40, 2], ["</think>"], s)
    assert stopped.text == "hm" and stopped.finish_reason == "stop" and stopped.stop_reason == "</think>"
    assert capped.text == "hm" and capped.finish_reason == "length" and capped.num_tokens == 2
    no_stop = answer_backend.generate(["Q:"], 40, [], s)[0]
    assert no_stop.text == ANSWER_SCRIPT and no_stop.stop_reason == "eos"
    assert no_stop.num_tokens == answer_backend.count_tokens(ANSWER_SCRIPT) + 1  # the eos counts
    assert full.num_tokens == 3  # "h", "m", "</think>"
    assert answer_backend.generate(["Q:"], 0, [], s)[0].num_tokens == 0
    # a row stopped early is padded while the batch goes on: padding is not counted
    early, late = answer_backend.generate(["Q:", "\\"], 40, ["</think>", "7"], s)
    assert (early.text, early.num_tokens) == ("hm", 3)
    assert (late.text, late.num_tokens, late.stop_reason) == ("boxed{", 7, "7")


def test_plain_generation_splits_thinking_and_answer(answer_backend):
    out = plain_generate(answer_backend, ["Q:"], ThinkingFormat(), 40, Sampling())[0]
    assert out.thinking == "hm</think>" and out.answer == "\\boxed{7}"
    assert out.thinking_tokens == 3 and out.answer_tokens == 10 and out.calls == 1


@pytest.mark.parametrize("waits", [0, 1, 3])
def test_budget_forcing_appends_wait_exactly_n_times(tmp_path, waits):
    # a model that emits the end-of-thinking marker at every step
    model = scripted_model(tmp_path / "m", "</think>", loop=True)
    backend = HFBackend(str(model), device="cpu")
    fmt = ThinkingFormat()
    out = budget_forced_generate(backend, ["Q:", "Another question:"], fmt, waits, 50, 4, Sampling())
    for o in out:
        assert o.thinking == "Wait" * waits + "</think>"
        assert o.waits == waits and o.calls == waits + 2
        assert o.thinking_tokens == waits + 1  # one "</think>" generated per round
        assert o.answer == fmt.answer_marker + "</think>" * 4 and o.answer_tokens == 4
        assert o.finish_reason == "length"


def test_budget_forcing_caps_thinking(tmp_path):
    model = scripted_model(tmp_path / "m", "a", loop=True)  # thinks "aaaa..." forever
    backend = HFBackend(str(model), device="cpu")
    out = budget_forced_generate(backend, ["Q:"], ThinkingFormat(), 2, 5, 3, Sampling())[0]
    assert out.thinking == "aaaaa</think>" and out.waits == 0 and out.thinking_tokens == 5
    assert out.events == ["thinking budget reached"]
    assert out.answer == "\nFinal Answer: aaa"


def test_budget_forcing_continues_thinking_after_wait(answer_backend):
    out = budget_forced_generate(answer_backend, ["Q:"], ThinkingFormat(), 2, 100, 30, Sampling())[0]
    assert out.thinking == "hmWaithmWaithm</think>"
    assert out.answer.endswith("\\boxed{7}") and out.answer_tokens == 13


def test_make_backend_rejects_unknown_options(answer_model):
    from weightsurgeon.errors import SurgeonError

    with pytest.raises(SurgeonError, match="does not take"):
        make_backend("hf", str(answer_model), {"tensor_parallel_size": 2})
    with pytest.raises(SurgeonError, match="unknown backend"):
        make_backend("tgi", str(answer_model), {})
    with pytest.raises(SurgeonError, match="no such checkpoint folder"):
        make_backend("hf", str(answer_model / "missing"), {})


def test_data_parallel_replicas_give_the_same_outputs(answer_model, answer_backend):
    from weightsurgeon.recipes.eval.parallel import DataParallelBackend, gpu_groups

    assert gpu_groups(2, 2, "4,5,6,7") == ["4,5", "6,7"]
    assert gpu_groups(3, 1, None) == ["0", "1", "2"]
    assert gpu_groups(2, 0, None) == [None, None]
    backend = make_backend("hf", str(answer_model), {"device": "cpu", "data_parallel_size": 2})
    try:
        assert isinstance(backend, DataParallelBackend)
        prompts = ["Q:", "Hello", "x", "Q:", "Hello"]
        caps = [40, 40, 2, 5, 40]
        got = backend.generate(prompts, caps, ["</think>"], Sampling())
        assert got == answer_backend.generate(prompts, caps, ["</think>"], Sampling())
        forced = budget_forced_generate(backend, ["Q:"], ThinkingFormat(), 1, 50, 20, Sampling())[0]
        assert forced.thinking == "hmWaithm</think>"
    finally:
        backend.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vLLM backend needs CUDA; no GPU here")
def test_vllm_backend_matches_hf_greedy(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    # head size 64 and float16: shapes and a dtype every vLLM attention backend supports
    model = scripted_model(tmp_path / "m", ANSWER_SCRIPT, hidden_size=128, intermediate_size=256, dtype="f16")
    backend = make_backend("vllm", str(model), {"gpu_memory_utilization": 0.3, "max_model_len": 512})
    got = backend.generate(["Q:"], 40, ["</think>"], Sampling())[0]
    assert got.text == "hm" and got.finish_reason == "stop"
    forced = budget_forced_generate(backend, ["Q:"], ThinkingFormat(), 1, 50, 20, Sampling())[0]
    assert forced.thinking == "hmWaithm</think>" and forced.answer.endswith("\\boxed{7}")


def test_surgeon_eval_end_to_end_and_compare(answer_model, tmp_path):
    recipe = CONFIGS / "eval_tiny.yaml"
    forced = surgeon("eval", str(answer_model), "--config", str(recipe), "-o", str(tmp_path / "forced"))
    assert forced.returncode == 0, forced.stderr
    assert "aime24" in forced.stdout and "33.3" in forced.stdout
    results = json.loads((tmp_path / "forced" / "results.json").read_text())
    assert results["schema"] == "weightsurgeon.eval/1" and results["config"]["budget_forcing"] == 1
    # the scripted model always answers 7: right on "3 + 4" and "x + 5 = 12", never a GPQA letter
    assert {t: m["correct"] for t, m in results["tasks"].items()} == {"aime24": 1, "math500": 1, "gpqa_diamond": 0}
    records = [json.loads(x) for x in (tmp_path / "forced" / "samples_aime24.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["waits"] == 1 and r["extracted"] == "7" for r in records)
    assert records[0]["thinking"] == "hmWaithm</think>" and records[0]["prompt"].startswith("<|im_start|>user")
    assert {"generation", "answer", "normalized", "thinking_tokens", "answer_tokens", "total_tokens",
            "finish_reason"} <= set(records[0])

    plain = surgeon("eval", "run", str(answer_model), "--config", "eval_tiny", "--tasks", "aime24",
                    "--budget-forcing", "off", "--prompt", "plain", "--limit", "2", "--samples", "2",
                    "-o", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    res2 = json.loads((tmp_path / "plain" / "results.json").read_text())
    m = res2["tasks"]["aime24"]
    assert (m["problems"], m["samples_per_problem"], m["generations"]) == (2, 2, 4)
    assert m["ci_method"] == "bootstrap-over-problems" and m["avg_thinking_tokens"] == 3
    assert "repeats the same greedy generation" in plain.stderr

    again = surgeon("eval", str(answer_model), "--config", str(recipe), "-o", str(tmp_path / "plain"))
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "--force" in again.stderr

    cmp = surgeon("eval", "compare", str(tmp_path / "forced"), str(tmp_path / "plain"), "--csv", str(tmp_path / "t.csv"))
    assert cmp.returncode == 0, cmp.stderr
    assert "forced" in cmp.stdout and "plain" in cmp.stdout
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("run,model,aime24 acc %") and len(lines) == 3
    assert lines[2].split(",")[-1] == "-"  # the plain run has no gpqa_diamond

    bad = surgeon("eval", "compare", str(tmp_path))
    assert bad.returncode == 1 and "no results.json" in bad.stderr


def test_surgeon_eval_lm_eval_harness(answer_model, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from click.testing import CliRunner

    from weightsurgeon.commands.eval import eval_group

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lm"
    res = CliRunner().invoke(eval_group, [str(answer_model), "--config", str(CONFIGS / "eval_tiny.yaml"),
                                          "--harness", "lm-eval", "--budget-forcing", "off", "--max-tokens", "16",
                                          "--tasks", "aime24,gpqa_diamond", "--samples", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["harness"] == "lm-eval"
    for task, m in results["tasks"].items():
        assert m["accuracy"] == m["lm_eval_accuracy"]  # lm-eval's hooks and our grading agree
        assert m["samples_per_problem"] == 2 and m["generations"] == 6
    assert results["tasks"]["aime24"]["correct"] == 2  # "3 + 4", twice
    first = json.loads((out / "samples_aime24.jsonl").read_text().splitlines()[0])
    assert "What is 3 + 4?" in first["prompt"] and first["generation"] == ANSWER_SCRIPT
    assert first["thinking_tokens"] == 3 and first["extracted"] == "7"
    assert "SURGEON_EVAL_SEED" not in os.environ


def test_surgeon_probe_levels(answer_model, tmp_path):
    looping = scripted_model(tmp_path / "loop", "ab", loop=True)  # "abbbbbbb...": nonsense
    res = surgeon("probe", str(answer_model), str(looping), "--max-new-tokens", "16", "-o", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    assert "levels: I (nonsense)" in res.stdout and "output levels per model" in res.stdout
    data = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert data["schema"] == "weightsurgeon.probe/1" and [m["model"] for m in data["models"]] == [str(answer_model), str(looping)]
    scripted, loop = data["models"]
    assert sum(scripted["levels"].values()) == len(scripted["rows"]) == 10
    # "hm \boxed{7}" has two words of letters: level I, except where 7 happens to be right or on topic
    by_id = {r["id"]: r["level"] for r in scripted["rows"]}
    assert by_id["chat-capital"] == "I" and by_id["chat-week"] == "IV" and by_id["math-mul"] == "III"
    assert all("repetition_3gram" in r["evidence"] for r in scripted["rows"])
    assert loop["levels"]["I"] == 10


def test_probe_classifier_on_known_texts():
    from weightsurgeon.recipes.eval.levels import PROBE_PROMPTS, classify

    capital = next(p for p in PROBE_PROMPTS if p.id == "chat-capital")
    add = next(p for p in PROBE_PROMPTS if p.id == "math-add")
    assert classify(capital, "The capital of France is Paris.").level == "IV"
    assert classify(capital, "The capital is Berlin, I believe.").level == "III"
    assert classify(capital, "I like to eat apples in the garden with my dog.").level == "II"
    assert classify(capital, "the the the the the the the the the the").level == "I"
    assert classify(capital, "#$%^&*(){}[]!!").level == "I"
    assert classify(add, "17 plus 25 is \\boxed{42}.").level == "IV"
    assert classify(add, "17 plus 25 is \\boxed{41}.").level == "III"
