"""The reader against transformers: every tensor transformers loads from a synthetic model has
exactly the bytes `Checkpoint.read_tensor` returns (qwen2 and llama, tied and untied, bf16/f16/f32)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from weightsurgeon.checkpoint import open_checkpoint

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _bits(t) -> np.ndarray:
    """A torch tensor's stored bits as the reader returns them (bf16 as uint16)."""
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.contiguous().numpy()


@pytest.mark.parametrize("arch,tied,dtype,shard_bytes", [
    ("qwen2", False, "bf16", None),
    ("qwen2", True, "f32", 60_000),
    ("llama", False, "f16", 60_000),
    ("llama", True, "bf16", None),
])
def test_reader_matches_transformers(tiny_model, arch: str, tied: bool, dtype: str, shard_bytes) -> None:
    path = tiny_model(arch=arch, tied=tied, dtype=dtype, shard_bytes=shard_bytes)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    state = model.state_dict()
    expected_dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    with open_checkpoint(path) as ckpt:
        assert set(ckpt.tensors) == set(state) - ({"lm_head.weight"} if tied else set())
        for name, info in ckpt.tensors.items():
            assert state[name].dtype == expected_dtype and tuple(state[name].shape) == info.shape
            np.testing.assert_array_equal(ckpt.read_tensor(name), _bits(state[name]), err_msg=name)
        if tied:
            assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
            from weightsurgeon.layout import layout_of

            assert layout_of(ckpt.tensors, ckpt.config).tied_embeddings


def test_transformers_saved_checkpoint_is_valid(tiny_model, tmp_path, surgeon) -> None:
    """A folder written by save_pretrained (sharded, its own index and metadata) passes verify --deep."""
    path = tiny_model(arch="llama", dtype="f32")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    out = tmp_path / "saved"
    model.save_pretrained(str(out), max_shard_size="100KB")
    result = surgeon("verify", "--deep", out)
    assert result.code == 0, result.stderr
    with open_checkpoint(out) as saved, open_checkpoint(path) as original:
        assert len(saved.shards) > 1
        for name in original.tensors:
            np.testing.assert_array_equal(saved.read_tensor(name), original.read_tensor(name))
