"""`surgeon probe MODEL --sweep`: Table 3 from one model load.

The in-memory destructions must be bit for bit what `surgeon zero` / `reinit` / `remove`
write (loaded back with safetensors), undoing them must restore the model exactly, and the
paper's sweep must give a 15-row table with every generation kept.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from weightsurgeon.recipes.eval.sweep import Cell, apply_cell, load_sweep, paper_layers, plan_for  # noqa: E402
from weightsurgeon.synth import make_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # bf16 with q/k/v biases (qwen2), untied, and an explicit layer_types list that remove must edit
    return make_checkpoint(tmp_path_factory.mktemp("sweep") / "m", arch="qwen2", num_layers=6, dtype="bf16",
                           layer_types=True)


def _written(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a,
                                                                     b.view(torch.int16) if b.dtype == torch.bfloat16 else b)


CELLS = [
    (Cell("zero", "o_proj", "2-4"), ["zero", "--module", "o_proj", "--layers", "2-4"]),
    (Cell("reinit", "qkv", "1-5"), ["reinit", "--module", "qkv", "--layers", "1-5"]),
    (Cell("zero", "emb", "all"), ["zero", "--module", "emb"]),
    (Cell("remove", None, "1,3-4"), ["remove", "--layers", "1,3-4"]),
]


@pytest.mark.parametrize("cell,args", CELLS, ids=[c.label for c, _ in CELLS])
def test_in_memory_destruction_equals_what_the_command_writes(model_dir, surgeon, tmp_path, cell, args):
    from transformers import AutoModelForCausalLM

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.recipes.eval.sweep import REINIT_DEFAULTS

    out = tmp_path / "out"
    res = surgeon(args[0], model_dir, *args[1:], "-o", out, "-q")
    assert res.code == 0, res.stderr
    written = _written(out)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    assert model.dtype == torch.bfloat16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with open_checkpoint(model_dir) as ckpt:
        restore = apply_cell(model, plan_for(ckpt, cell, REINIT_DEFAULTS))
    state = model.state_dict()
    assert set(written) <= set(state) and set(state) - set(written) <= {"lm_head.weight"}
    changed = [n for n in written if not _same_bits(written[n], before.get(n, written[n].new_zeros(0)))]
    assert changed, "the destruction changed nothing"
    for name, value in written.items():
        assert _same_bits(state[name], value), name
    if cell.method == "remove":
        assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3
        with torch.no_grad():  # the shortened model runs, with its cache renumbered
            model.generate(torch.tensor([[256, 72, 105]]), max_new_tokens=3, do_sample=False)
    restore()
    for name, value in model.state_dict().items():
        assert _same_bits(value, before[name]), name
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6


def test_paper_sweep_gives_a_15_row_table_with_every_generation(model_dir, surgeon, tmp_path):
    out = tmp_path / "table3"
    res = surgeon("probe", model_dir, "--sweep", "paper", "--max-new-tokens", "2", "-o", out)
    assert res.code == 0, res.stderr
    with open(out / "table3.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15
    assert [(r["method"], r["module"]) for r in rows[:7]] == [("zero", m) for m in
                                                            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    assert rows[-1]["method"] == "remove" and {r["layers"] for r in rows} == {"5"}  # 5-30 clipped to a 6-layer model
    for r in rows:
        counts = [int(r[k]) for k in r if k.split(" ")[0] in ("I", "II", "III", "IV")]
        assert sum(counts) == 10 and r["level"] in ("I", "II", "III", "IV")
    md = (out / "table3.md").read_text().splitlines()
    assert sum(1 for line in md if line.startswith("| zero") or line.startswith("| reinit") or line.startswith("| remove")) == 15
    assert (out / "table3.png").stat().st_size > 5000
    doc = json.loads((out / "probe.json").read_text())
    assert len(doc["cells"]) == 15 and doc["baseline"]["rows"]
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 16 * 10 and {"output", "prompt", "level", "reason"} <= set(gens[0])
    assert "remove" in res.stdout and "reinit" in res.stdout


def test_yaml_sweeps_and_their_errors(model_dir, surgeon, tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("methods: [zero, remove]\nmodules: [o_proj, mlp]\nlayers: ['1-2', '4']\n")
    sweep = load_sweep(str(spec), 6)
    assert [c.label for c in sweep.cells] == ["zero o_proj 1-2", "zero o_proj 4", "zero mlp 1-2", "zero mlp 4",
                                              "remove 1-2", "remove 4"]
    assert paper_layers(64) == "5-30" and paper_layers(2) == "1"
    res = surgeon("probe", model_dir, "--sweep", spec, "--max-new-tokens", "1", "--json")
    assert res.code == 0, res.stderr
    assert len(json.loads(res.stdout)["cells"]) == 6
    bad = tmp_path / "bad.yaml"
    for text, msg in (("methods: [melt]\nlayers: '1'\n", "unknown method"), ("methods: [zero]\nlayers: '1'\n", "modules is required"),
                      ("methods: [zero]\nmodules: [o_proj]\nlayers: '9'\n", "9"), ("nope: 1\n", "unknown key")):
        bad.write_text(text)
        res = surgeon("probe", model_dir, "--sweep", bad, "-o", tmp_path / "x")
        assert res.code == 1 and len(res.err_lines) == 1 and msg in res.stderr, res.stderr
        assert not (tmp_path / "x").exists()
    res = surgeon("probe", model_dir, model_dir, "--sweep", "paper")
    assert res.code == 1 and "one MODEL" in res.stderr


def test_merge_sweep_in_memory_equals_splice_and_scores_a_task(model_dir, surgeon, tmp_path):
    """Table 1: the donor's o_proj / qkv / mlp in memory, bit for bit the splice, scored through eval's loop."""
    from transformers import AutoModelForCausalLM

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.recipes.eval.sweep import REINIT_DEFAULTS

    donor = make_checkpoint(tmp_path / "donor", arch="qwen2", num_layers=6, dtype="bf16", layer_types=True, seed=5)
    assert surgeon("splice", model_dir, donor, "--take", "qkv", "-o", tmp_path / "spliced", "-q").code == 0
    written = _written(tmp_path / "spliced")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with open_checkpoint(model_dir) as ckpt, open_checkpoint(donor) as d:
        restore = apply_cell(model, plan_for(ckpt, Cell("splice", "qkv", "all"), REINIT_DEFAULTS, d))
    state = model.state_dict()
    assert all(_same_bits(state[n], v) for n, v in written.items())
    restore()
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in (("1+1?", "2"), ("2+3?", "5"))))
    out = tmp_path / "table1"
    res = surgeon("probe", model_dir, "--sweep", "merge", "--donor", donor, "--tasks", "math500", "--data",
                  f"math500={data}", "--limit", "2", "--max-new-tokens", "2", "-o", out)
    assert res.code == 0, res.stderr
    with open(out / "table1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["module"]) for r in rows] == [("splice", "o_proj"), ("splice", "qkv"), ("splice", "mlp")]
    assert all(r["math500 acc %"] in ("0.0", "50.0", "100.0") for r in rows)
    doc = json.loads((out / "probe.json").read_text())
    assert doc["donor"] == str(donor) and len(doc["cells"][0]["samples"]["math500"]) == 2
    assert doc["baseline"]["tasks"]["math500"]["problems"] == 2
    res = surgeon("probe", model_dir, "--sweep", "merge")
    assert res.code == 1 and "--donor" in res.stderr
