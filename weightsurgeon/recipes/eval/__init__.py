"""Evaluation recipes: `surgeon eval`, `surgeon eval compare`, `surgeon probe`.

backends.py   one small interface over transformers `generate` (hf) and vLLM (vllm)
parallel.py   data parallel replicas of a backend, one process each
budget.py     s1 budget forcing ("Wait" N times, then force the answer), written once
grading.py    s1 answer extraction, math-verify equivalence, AIME integers, GPQA letters
metrics.py    accuracy with a 95% interval, token averages
runner.py     load tasks, prompt, generate, grade, write results.json + samples JSONL
lm_harness.py the same tasks through lm_eval.simple_evaluate (task YAMLs in lm_eval_tasks/)
levels.py     output levels I-IV with their evidence; probe.py runs them on a model
tables.py     terminal tables (summary, compare) and CSV
"""
