"""Task loaders (local JSONL schema, seeded GPQA shuffle), metrics, recipes, lm-eval task YAMLs."""
import json
from pathlib import Path

import pytest

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes import tasks
from weightsurgeon.recipes.catalog import find_recipe
from weightsurgeon.recipes.eval.config import EvalConfig, build_config, load_recipe
from weightsurgeon.recipes.eval.metrics import summarize, wilson

CONFIGS = Path(tasks.__file__).parent / "configs"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gpqa_rows(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Question {i}?", "correct_answer": f"right{i}",
             "incorrect_answers": [f"wrong{i}a", f"wrong{i}b", f"wrong{i}c"]} for i in range(n)]


def test_local_jsonl_math_and_aime(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": "2"}, {"question": "x?", "answer": "\\frac12", "id": "b"}])
    probs = tasks.load_problems("math500", str(src))
    assert [(p.id, p.question, p.answer) for p in probs] == [("0", "1+1?", "2"), ("b", "x?", "\\frac12")]
    assert tasks.load_problems("aime24", str(src), limit=1)[0].answer == "2"


def test_gpqa_shuffle_is_seeded_per_problem_and_independent_of_limit(tmp_path):
    src = write_jsonl(tmp_path / "g.jsonl", gpqa_rows(20))
    a = tasks.load_problems("gpqa_diamond", str(src), seed=0)
    b = tasks.load_problems("gpqa_diamond", str(src), seed=0)
    c = tasks.load_problems("gpqa_diamond", str(src), seed=1)
    assert a == b
    assert a != c
    assert tasks.load_problems("gpqa_diamond", str(src), limit=3, seed=0) == a[:3]
    for p in a:
        assert sorted(p.choices) == sorted([f"right{p.id[1:]}"] + [f"wrong{p.id[1:]}{x}" for x in "abc"])
        assert p.choices["ABCD".index(p.answer)] == f"right{p.id[1:]}"
    # the correct answer is not always in one place
    assert len({p.answer for p in a}) > 1


def test_gpqa_hub_columns_and_explicit_choices(tmp_path):
    hub = {"Question": "Q?", "Correct Answer": "yes", "Incorrect Answer 1": "n1",
           "Incorrect Answer 2": "n2", "Incorrect Answer 3": "n3", "Record ID": "rec1"}
    given = {"id": "z", "question": "Z?", "choices": ["p", "q", "r"], "answer": "(C)"}
    src = write_jsonl(tmp_path / "g.jsonl", [hub, given])
    first, second = tasks.load_problems("gpqa_diamond", str(src))
    assert first.id == "rec1" and first.choices[tasks.LETTERS.index(first.answer)] == "yes"
    assert second.choices == ("p", "q", "r") and second.answer == "C"
    assert "C) r" in second.text  # what decontamination n-grams includes the choices


def test_iter_texts_for_decontamination(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"question": "Find the sum of all x.", "answer": "3"}])
    assert list(tasks.iter_texts("aime24", str(src))) == ["Find the sum of all x."]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"answer": "1"}], "no 'question'"),
        ([{"question": "q"}], "no 'answer'"),
    ],
)
def test_bad_records_name_the_record(tmp_path, rows, message):
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SurgeonError, match=message):
        tasks.load_problems("math500", str(src))


def test_bad_inputs_are_surgeon_errors(tmp_path):
    with pytest.raises(SurgeonError, match="unknown task"):
        tasks.parse_task_list("aime24,aime25")
    with pytest.raises(SurgeonError, match="not found"):
        tasks.load_problems("aime24", str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\nnot json\n')
    with pytest.raises(SurgeonError, match=r"bad.jsonl:2"):
        tasks.load_problems("aime24", str(bad))
    gq = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "D"}])
    with pytest.raises(SurgeonError, match="not a letter"):
        tasks.load_problems("gpqa_diamond", str(gq))


def test_metrics_wilson_and_bootstrap():
    lo, hi = wilson(0, 30)
    assert lo == 0.0 and 0.10 < hi < 0.13
    lo, hi = wilson(15, 30)
    assert lo < 0.5 < hi
    recs = [{"problem_id": str(i), "correct": i < 3, "thinking_tokens": 10, "answer_tokens": 2,
             "total_tokens": 12, "finish_reason": "stop"} for i in range(10)]
    m = summarize(recs)
    assert m["accuracy"] == 0.3 and m["ci_method"] == "wilson" and m["avg_total_tokens"] == 12
    recs2 = [dict(r, problem_id=str(i // 2)) for i, r in enumerate(recs)]
    m2 = summarize(recs2)
    assert m2["samples_per_problem"] == 2 and m2["problems"] == 5
    assert m2["ci_method"] == "bootstrap-over-problems" and m2["ci95"][0] <= 0.3 <= m2["ci95"][1]
    assert summarize(recs2) == m2  # seeded bootstrap


def test_shipped_recipes_load_and_validate(tmp_path):
    tiny = load_recipe(CONFIGS / "eval_tiny.yaml")
    cfg = build_config(tiny, {"model": "m", "limit": 2})
    assert cfg.limit == 2 and cfg.budget_forcing == 1
    for task in cfg.tasks:  # relative data paths resolve next to the recipe
        assert len(tasks.load_problems(task, cfg.data[task])) == 3
    copied = tmp_path / "mine.yaml"  # a copied shipped recipe still finds the shipped data
    copied.write_text((CONFIGS / "eval_tiny.yaml").read_text())
    assert load_recipe(copied)["data"] == tiny["data"]
    assert find_recipe("eval_tiny") == CONFIGS / "eval_tiny.yaml"
    paper = build_config(load_recipe(find_recipe("eval_paper.yaml")), {"model": "m"})
    assert paper.backend == "vllm" and paper.budget_forcing == 2 and paper.data == {}
    merged = build_config(load_recipe(find_recipe("eval_merged")), {"model": "m"})
    assert merged.prompt == "plain" and merged.budget_forcing == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: x\n")
    with pytest.raises(SurgeonError, match="unknown key"):
        load_recipe(bad)
    with pytest.raises(SurgeonError, match="budget-forcing"):
        EvalConfig(model="m", harness="lm-eval", budget_forcing=2).validate()
    # key=value overrides, as for surgeon train: dotted keys, YAML values, the same key check
    over = build_config(load_recipe(find_recipe("eval_paper"), ["samples=4", "temperature=0.6", "model=m",
                                                                "backend_options.max_model_len=4096"]), {})
    assert (over.samples, over.temperature, over.model) == (4, 0.6, "m")
    assert over.backend_options == {"tensor_parallel_size": 1, "max_model_len": 4096, "gpu_memory_utilization": 0.9}
    assert build_config(load_recipe(None, ["tasks=aime24", "data.aime24=x.jsonl"]), {"model": "m"}).data == {"aime24": "x.jsonl"}
    with pytest.raises(SurgeonError, match="unknown key"):
        load_recipe(find_recipe("eval_tiny"), ["sampels=2"])
    with pytest.raises(SurgeonError, match="budget_forcing must be a whole number or null"):
        build_config(load_recipe(find_recipe("eval_tiny"), ["budget_forcing=off", "model=m"]), {})
    with pytest.raises(SurgeonError, match="thinking preset"):
        EvalConfig(model="m", thinking="nope").validate()


def test_lm_eval_task_yamls_load_offline_on_local_jsonl(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from weightsurgeon.recipes.eval import lm_harness

    data = {"aime24": write_jsonl(tmp_path / "a.jsonl", [{"question": "1+1?", "answer": "2"}]),
            "gpqa_diamond": write_jsonl(tmp_path / "g.jsonl", gpqa_rows(2))}
    cfg = EvalConfig(model="m", tasks=["aime24", "gpqa_diamond"], data={k: str(v) for k, v in data.items()},
                     max_tokens=16).validate()
    folder = tmp_path / "yamls"
    folder.mkdir()
    names = lm_harness.write_task_yamls(cfg, folder)
    manager = lm_harness.task_manager(folder)
    assert set(names) <= set(manager.all_tasks)
    loaded = manager.load(names)["tasks"]
    aime = loaded["surgeon_aime24"]
    docs = list(aime.test_docs())
    assert docs[0]["answer"] == "2" and "1+1?" in aime.doc_to_text(docs[0])
    assert aime.process_results(docs[0], ["<think>easy</think> \\boxed{2}"]) == {"accuracy": 1.0}
    assert aime.process_results(docs[0], ["\\boxed{3}"]) == {"accuracy": 0.0}
    gpqa_docs = list(loaded["surgeon_gpqa_diamond"].test_docs())
    expected = tasks.load_problems("gpqa_diamond", str(data["gpqa_diamond"]), seed=0)
    assert [d["answer"] for d in gpqa_docs] == [p.answer for p in expected]
    assert "A) " in loaded["surgeon_gpqa_diamond"].doc_to_text(gpqa_docs[0])
