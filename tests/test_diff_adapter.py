"""`surgeon diff BASE ADAPTER/`: a PEFT LoRA adapter measured unmerged, exactly.

Adapters are written by PEFT itself on a tiny model. Each report row must equal the
statistics of W + scaling * B @ A computed here in float64 from the base and the adapter's
A and B (to 1e-9), and agree with the diff of the model PEFT merges (merge_and_unload in
float32, saved) within float32 rounding. LoRA, rsLoRA and rank_pattern/alpha_pattern
adapters, and modules_to_save as whole replacements, in one run beside a full fine-tune.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from weightsurgeon.kernels.reference import reference_delta_stats
from weightsurgeon.report.model import stats_fields
from weightsurgeon.synth import make_checkpoint

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")

TINY = dict(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, vocab_size=300)
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]
VARIANTS = {
    "lora": dict(r=4, lora_alpha=8),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
    "pattern": dict(r=4, lora_alpha=8, rank_pattern={"o_proj": 2, "model.layers.1.self_attn.q_proj": 6},
                    alpha_pattern={"down_proj": 3}),
    "saved": dict(r=4, lora_alpha=8, modules_to_save=["lm_head"]),
}
FIELDS = ("l2_delta", "l2_base", "l2_tuned", "rel_l2", "cosine", "max_abs_delta", "mean_delta")


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The base, and per variant a PEFT-written adapter and its merge_and_unload'ed model (float32)."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    out = {"base": make_checkpoint(root / "base", arch="llama", dtype="f32", **TINY)}
    for k, (name, kw) in enumerate(VARIANTS.items()):
        torch.manual_seed(k)
        model = get_peft_model(_load(out["base"]), LoraConfig(target_modules=TARGETS, init_lora_weights=False, **kw))
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if "modules_to_save" in pname:
                    param.add_(0.01 * torch.randn_like(param))
        model.save_pretrained(str(root / f"{name}-adapter"))
        model.merge_and_unload().save_pretrained(str(root / f"{name}-merged"), safe_serialization=True)
        out[name] = root / f"{name}-adapter"
        out[f"{name}-merged"] = root / f"{name}-merged"
    return out


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _reference(base: Path, adapter: Path) -> dict[str, tuple[dict, np.ndarray, int | None]]:
    """Per base tensor: the float64 statistics of its tuned value under the adapter, and the rank."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    weights = _tensors(adapter)
    out = {}
    for name, w in _tensors(base).items():
        w64 = w.astype(np.float64)
        module, param = name.rsplit(".", 1)
        a = weights.get(f"base_model.model.{module}.lora_A.weight")
        rank = None
        if a is not None and param == "bias":  # lora_B.bias: the bias moves by scaling * lora_B.bias
            rank = a.shape[0]
            scaling = cfg["lora_alpha"] / rank
            t64 = w64 + scaling * weights[f"base_model.model.{module}.lora_B.bias"].astype(np.float64)
        elif a is not None:
            b = weights[f"base_model.model.{module}.lora_B.weight"]
            rank = a.shape[0]
            leaf = module.rsplit(".", 1)[-1]
            alpha = next((v for k, v in cfg["alpha_pattern"].items() if module.endswith(k)), cfg["lora_alpha"])
            assert rank == next((v for k, v in cfg["rank_pattern"].items() if module.endswith(k)), cfg["r"]), leaf
            scaling = alpha / math.sqrt(rank) if cfg["use_rslora"] else alpha / rank
            t64 = w64 + scaling * (b.astype(np.float64) @ a.astype(np.float64))
        elif f"base_model.model.{name}" in weights:  # modules_to_save: a whole replacement, as a full fine-tune's
            stats = reference_delta_stats(w.ravel(), weights[f"base_model.model.{name}"].ravel(), "F32", "F32")
            out[name] = (stats_fields(stats), stats.hist, None)
            continue
        else:
            t64 = w64
        stats = reference_delta_stats(w64.ravel(), t64.ravel(), "F64", "F64")
        out[name] = (stats_fields(stats), stats.hist, rank)
    return out


def _rows(data: dict, label: str) -> dict[str, dict]:
    return {t["name"]: t for t in data["tensors"] if t["tuned"] == label}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_adapter_diff_equals_float64_reference_and_the_merged_model(models, variant: str, surgeon) -> None:
    base, adapter, merged = models["base"], models[variant], models[f"{variant}-merged"]
    res = surgeon("diff", base, merged, adapter, "--json", "--label", "merged", "--label", "adapter",
                  "--chunk-mb", "1")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    got, via_merge = _rows(data, "adapter"), _rows(data, "merged")
    want = _reference(base, adapter)
    assert set(got) == set(want) == set(via_merge)
    adapted = {n for n, (_, _, rank) in want.items() if rank is not None}
    assert len(adapted) == 4 * TINY["num_layers"]
    for name, (fields, hist, rank) in want.items():
        row = got[name]
        assert row["lora_rank"] == rank, name
        for f in FIELDS:
            assert row[f] == pytest.approx(fields[f], rel=1e-9, abs=1e-12), (name, f)
        assert row["hist"] == hist.tolist(), name
        # The merged model's diff: the same numbers within float32 rounding of the stored weights.
        for f in ("l2_delta", "l2_tuned", "rel_l2"):
            assert via_merge[name][f] == pytest.approx(row[f], rel=2e-5, abs=1e-6), (name, f)
        flips = np.abs(np.array(via_merge[name]["hist"]) - np.array(row["hist"])).sum()
        assert flips <= 2 + 1e-3 * row["numel"], (name, flips)
    changed = {n for n, row in got.items() if row["l2_delta"] > 0}
    saved = {"lm_head.weight"} if variant == "saved" else set()
    assert changed == adapted | saved
    note = [n for n in data["notes"] if n.startswith("adapter: PEFT")]
    assert len(note) == 1 and ("rsLoRA" in note[0]) == (variant == "rslora")
    if variant == "pattern":
        ranks = {n: got[n]["lora_rank"] for n in adapted}
        assert ranks["model.layers.0.self_attn.o_proj.weight"] == 2
        assert ranks["model.layers.1.self_attn.q_proj.weight"] == 6
        assert ranks["model.layers.0.self_attn.q_proj.weight"] == 4


def test_adapter_report_folder_and_csv_name_the_rank(models, tmp_path: Path, surgeon) -> None:
    import csv

    out = tmp_path / "report"
    res = surgeon("diff", models["base"], models["lora"], "-o", out, "--no-plots")
    assert res.code == 0, res.stderr
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ranks = {r["name"]: r["lora_rank"] for r in rows}
    assert ranks["model.layers.0.self_attn.q_proj.weight"] == "4" and ranks["model.norm.weight"] == ""


def test_adapter_that_does_not_fit_the_base_is_one_error_line(models, tmp_path: Path, surgeon) -> None:
    other = make_checkpoint(tmp_path / "other", arch="llama", dtype="f32", **{**TINY, "hidden_size": 32})
    res = surgeon("diff", other, models["lora"], "--json")
    assert res.code == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: lora-adapter: ") and "adapter B@A" in lines[0]


def test_lora_bias_moves_the_base_bias(tmp_path: Path, surgeon) -> None:
    """PEFT's lora_bias (a lora_B.bias per module) on Qwen2's q/v projections, which have biases."""
    from peft import LoraConfig, get_peft_model

    base = make_checkpoint(tmp_path / "base", arch="qwen2", dtype="f32", **TINY)
    torch.manual_seed(7)
    model = get_peft_model(_load(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False, lora_bias=True))
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "lora_B" in pname and pname.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(str(tmp_path / "adapter"))
    res = surgeon("diff", base, tmp_path / "adapter", "--json")
    assert res.code == 0, res.stderr
    got = _rows(json.loads(res.stdout), "adapter")
    want = _reference(base, tmp_path / "adapter")
    moved = {n for n, row in got.items() if row["l2_delta"] > 0}
    assert moved == {n for n, (_, _, rank) in want.items() if rank is not None}
    assert "model.layers.0.self_attn.q_proj.bias" in moved
    for name, (fields, hist, rank) in want.items():
        for f in FIELDS:
            assert got[name][f] == pytest.approx(fields[f], rel=1e-9, abs=1e-12), (name, f)
        assert got[name]["hist"] == hist.tolist() and got[name]["lora_rank"] == rank
