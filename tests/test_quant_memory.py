"""An opened FP8 checkpoint costs bounded memory per quantized tensor (issue 15: `surgeon diff` of the
DeepSeek-V3-shaped pair, 46k FP8 weights and their scales per model, in < 300 MiB).

The test writes an FP8 block-scaled checkpoint of N tiny expert weights (each an F8_E4M3 [4, 4]
and its F32 weight_scale_inv [1, 1], in one shard with an index, as DeepSeek-V3 stores them),
then measures with tracemalloc in a fresh process what stays held: the quantization found by
quant.scan, the whole opened checkpoint, a QuantTensor made on access, and a diff's plan of two
such models (pairs.PairTable: an FP8 pair is a row of columns, its Pair made when read).
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

LAYERS, EXPERTS = 20, 250  # x 3 matrices: 15,000 FP8 weights, 30,000 stored tensors
N = LAYERS * EXPERTS * 3
# quant.scan's result: a QuantTensor (a dataclass with its __dict__), two TensorInfo records and
# three dict entries per weight cost ~280 bytes; two 2-byte codes per weight cost 4.
SCAN_PER_WEIGHT = 16
# The opened checkpoint per stored tensor: its name (~60 B here), the TensorMap's entry (~70 B) and
# the header columns (~40 B). The index's weight_map (a name and a file name per tensor, ~200 B)
# and the quantization (~140 B per stored tensor) are no longer held.
OPEN_PER_TENSOR = 260
# A QuantTensor made for a pair (and the list entry holding it): four slots, its records made on access.
QUANT_TENSOR_BYTES = 96
# The plan per FP8 pair, its layout's columns included: with a Pair, two TensorInfo records, two
# QuantTensors and a dict entry per pair ~700 bytes; as a row of the PairTable's columns (with its
# 2-byte encoding code) ~90.
PLAN_PER_FP8_PAIR = 150


def _write(folder: Path) -> None:
    folder.mkdir(parents=True)
    names = []
    for layer in range(LAYERS):
        for e in range(EXPERTS):
            for m in ("down_proj", "gate_proj", "up_proj"):
                w = f"model.layers.{layer}.mlp.experts.{e}.{m}.weight"
                names += [(w, "F8_E4M3", [4, 4], 16), (w + "_scale_inv", "F32", [1, 1], 4)]
    entries, at = [], 0
    for name, dtype, shape, size in names:
        entries.append(f'"{name}":{{"dtype":"{dtype}","shape":{json.dumps(shape, separators=(",", ":"))},'
                       f'"data_offsets":[{at},{at + size}]}}')
        at += size
    blob = ('{"__metadata__":{"format":"pt"},' + ",".join(entries) + "}").encode()
    blob += b" " * (-len(blob) % 8)
    shard = "model-00001-of-00001.safetensors"
    with open(folder / shard, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + bytes(at))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": at}, "weight_map": {n: shard for n, *_ in names}}, indent=2))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": LAYERS,
        "first_k_dense_replace": 0, "n_routed_experts": EXPERTS,
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                "weight_block_size": [128, 128]}}))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8")
    _write(folder / "model")
    _write(folder / "tuned")
    return folder / "model"


_MEASURE = r"""
import gc, json, sys, tracemalloc
from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.quant import scan
out = {}
open_checkpoint(sys.argv[1])  # imports and compiled patterns, once
gc.collect()
tracemalloc.start()
ckpt = open_checkpoint(sys.argv[1])
gc.collect()
out["open"] = tracemalloc.get_traced_memory()[0]
out["stored"] = len(ckpt.tensors)
tracemalloc.stop()
tracemalloc.start()
found = scan(ckpt.tensors, ckpt.config, "model")
out["scan"] = tracemalloc.get_traced_memory()[0]
out["quantized"] = len(found.tensors)
tracemalloc.stop()
tracemalloc.start()
kept = [found.tensors[n] for n in found.tensors]
out["made"] = tracemalloc.get_traced_memory()[0]
out["kept"] = len(kept)
tracemalloc.stop()
from weightsurgeon.diff import _logical_names
out["logical"] = len(_logical_names(ckpt))
out["index"] = sorted(ckpt.index)
del kept
from weightsurgeon.diff import plan_diff
tuned = open_checkpoint(sys.argv[2])
plan_diff(ckpt, [tuned])  # the layout's compiled patterns, once
gc.collect()
tracemalloc.start()
plan = plan_diff(ckpt, [tuned])
gc.collect()
out["plan"] = tracemalloc.get_traced_memory()[0]
out["pairs"] = len(plan.pairs)
out["decoded"] = sum(1 for p in plan.pairs if p.decoded and p.base_q.stored is ckpt.tensors)
print(json.dumps(out))
"""


def test_an_opened_fp8_checkpoint_holds_a_few_bytes_per_quantized_weight(model):
    got = subprocess.run([sys.executable, "-c", _MEASURE, str(model), str(model.parent / "tuned")], capture_output=True,
                         text=True, check=True)
    out = json.loads(got.stdout)
    assert out["quantized"] == N and out["stored"] == 2 * N and out["kept"] == N and out["logical"] == N
    assert out["scan"] / N < SCAN_PER_WEIGHT, f"quant.scan holds {out['scan'] / N:.0f} bytes per FP8 weight"
    assert out["open"] / (2 * N) < OPEN_PER_TENSOR, f"an opened checkpoint holds {out['open'] / (2 * N):.0f} B a tensor"
    assert out["made"] / N < QUANT_TENSOR_BYTES, f"a QuantTensor holds {out['made'] / N:.0f} bytes"
    assert out["index"] == ["metadata"]  # the weight_map is checked against the headers, then dropped
    assert out["pairs"] == out["decoded"] == N
    assert out["plan"] / N < PLAN_PER_FP8_PAIR, f"the plan holds {out['plan'] / N:.0f} bytes per FP8 pair"


def test_quantized_tensors_made_on_access_read_as_the_records_say(model):
    from weightsurgeon.checkpoint import open_checkpoint

    ckpt = open_checkpoint(model)
    name = "model.layers.3.mlp.experts.7.up_proj.weight"
    q = ckpt.quant.tensors[name]
    assert q.data == ckpt.tensors[name] and q.scale == ckpt.tensors[name + "_scale_inv"]
    assert (q.scheme, q.block, q.shape, q.label) == ("fp8-block", (128, 128), (4, 4),
                                                    "F8_E4M3 block 128x128 (F32 weight_scale_inv)")
    assert ckpt.quant.parts[name + "_scale_inv"] == name == ckpt.quant.logical(name)
    assert name + "_scale_inv" not in ckpt.quant.tensors and name + "_scale_inv" in ckpt.quant.parts
    assert ckpt.quant.tensors.get(name + "_scale_inv") is None and "nope" not in ckpt.quant.parts
    assert len(ckpt.quant.scales) == N and len(ckpt.quant.parts) == 2 * N
    assert list(ckpt.quant.tensors)[:2] == ["model.layers.0.mlp.experts.0.down_proj.weight",
                                            "model.layers.0.mlp.experts.0.gate_proj.weight"]
