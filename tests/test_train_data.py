"""Training data: loading, chat formatting, n-gram decontamination, lengths, completion-only masking."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from weightsurgeon.errors import SurgeonError
from weightsurgeon.recipes.train import data
from weightsurgeon.recipes.train.config import DataConfig
from weightsurgeon.synth import make_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

AIME_LIKE = "Find the number of ordered pairs of positive integers (m, n) such that m squared plus n squared equals 2024."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    ckpt = make_checkpoint(tmp_path_factory.mktemp("tok") / "m", num_layers=1)
    return AutoTokenizer.from_pretrained(ckpt)


def test_decontamination_drops_8gram_overlaps_and_reports_them() -> None:
    pairs = [
        {"question": "Prove that every even number is a sum of two primes.", "prompt": "", "completion": ""},
        {"question": "Here is a rephrase: " + AIME_LIKE.upper(), "prompt": "", "completion": ""},
        # 7 consecutive shared words only: kept at n=8
        {"question": "Find the number of ordered pairs of cats and dogs.", "prompt": "", "completion": ""},
    ]
    kept, report = data.decontaminate(pairs, [AIME_LIKE, "An unrelated question."], n=8)
    assert [p["question"] for p in kept] == [pairs[0]["question"], pairs[2]["question"]]
    assert report.to_dict()["dropped_count"] == 1 and report.dropped[0]["row"] == 1
    assert report.dropped[0]["eval_text"] == AIME_LIKE and len(report.dropped[0]["ngram"].split()) == 8
    kept7, _ = data.decontaminate(pairs, [AIME_LIKE], n=7)
    assert len(kept7) == 1


def test_decontamination_reads_eval_sets_through_the_task_loaders(tmp_path: Path) -> None:
    aime = tmp_path / "aime.jsonl"
    aime.write_text(json.dumps({"id": "1", "question": AIME_LIKE, "answer": "7"}) + "\n")
    texts = data.eval_texts_for_tasks(["aime24=aime.jsonl"], base_dir=tmp_path)
    assert texts == [AIME_LIKE]
    plain = tmp_path / "q.txt"
    plain.write_text(AIME_LIKE + "\n\n" + json.dumps({"problem": "What is 2+2?"}) + "\n")
    assert data.read_eval_file(plain) == [AIME_LIKE, "What is 2+2?"]


def test_s1k_rows_become_chat_prompt_completion(tokenizer, tmp_path: Path) -> None:
    rows = [{"question": "What is 2+3?", "thinking_trajectories": ["2 plus 3 is 5."], "attempt": "5"}]
    src = tmp_path / "s1k.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = DataConfig(source=str(src), system_prompt="Think step by step.")
    loaded = data.load_rows(cfg)
    assert loaded == rows
    (pair,) = data.to_prompt_completion(loaded, tokenizer, cfg)
    assert pair["prompt"] == ("<|im_start|>system\nThink step by step.<|im_end|>\n"
                              "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert pair["completion"] == "<think>\n2 plus 3 is 5.\n</think>\n\nAnswer: 5<|im_end|>"
    assert pair["question"] == "What is 2+3?"
    with pytest.raises(SurgeonError, match="no column 'attempt'"):
        data.to_prompt_completion([{"question": "q", "thinking_trajectories": "t"}], tokenizer, cfg)


def test_messages_rows_split_at_the_last_assistant_turn(tokenizer) -> None:
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nHello"}]}]
    (pair,) = data.to_prompt_completion(rows, tokenizer, DataConfig(source="x", format="messages"))
    assert pair["prompt"].endswith("<|im_start|>assistant\n")
    assert pair["completion"] == "<think>\nx\n</think>\n\nHello<|im_end|>"
    with pytest.raises(SurgeonError, match="ending with an assistant turn"):
        data.to_prompt_completion([{"messages": [{"role": "user", "content": "Hi"}]}], tokenizer,
                                  DataConfig(source="x", format="messages"))


def test_length_report_counts_truncation(tokenizer) -> None:
    pairs = [{"prompt": "ab", "completion": "c" * 10}, {"prompt": "ab", "completion": "cd"}]
    rep = data.length_report(pairs, tokenizer, max_length=8)
    assert rep["rows"] == 2 and rep["max"] == 12 and rep["truncated_rows"] == 1
    assert rep["completion_tokens_lost"] == 4 and rep["completion_tokens_total"] == 12
    assert rep["prompt_min"] == 2 and rep["rows_without_completion"] == 0
    assert data.length_report(pairs, tokenizer, max_length=2)["rows_without_completion"] == 2


def test_synthetic_and_parquet_sources(tmp_path: Path) -> None:
    rows = data.load_rows(DataConfig(source="synth:5"))
    assert len(rows) == 5 and {"question", "thinking_trajectories", "attempt"} <= set(rows[0])
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert data.load_rows(DataConfig(source=str(tmp_path / "d.parquet"), max_samples=3)) == rows[:3]
    with pytest.raises(SurgeonError, match="not found"):
        data.load_rows(DataConfig(source=str(tmp_path / "missing.jsonl")))


def test_completion_only_masking_on_a_collated_batch(tokenizer, tmp_path: Path) -> None:
    """Labels are -100 on the prompt and on padding, the token ids on the completion."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ckpt = make_checkpoint(tmp_path / "m", num_layers=1)
    cfg = DataConfig(source="synth:3")
    rows = data.load_rows(cfg)
    rows[1]["attempt"] += " And some more words, so that the batch needs padding."
    pairs = data.to_prompt_completion(rows, tokenizer, cfg)
    examples = [{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs]
    args = SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none",
                     completion_only_loss=True, max_length=512)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32), args=args,
                         train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    features = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(features)
    for i, pair in enumerate(pairs):
        n_prompt = len(tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"])
        full = tokenizer(pair["prompt"] + pair["completion"], add_special_tokens=False)["input_ids"]
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        n = int(mask.sum())
        assert n == len(full) and ids[:n].tolist() == full
        assert (labels[:n_prompt] == -100).all()
        assert labels[n_prompt:n].tolist() == full[n_prompt:]
        assert (labels[n:] == -100).all()
    assert tokenizer.decode(full[n_prompt:]).startswith("<think>")
