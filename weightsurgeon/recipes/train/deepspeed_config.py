"""The DeepSpeed config a recipe implies, generated rather than hand-kept per recipe.

Batch sizes, clipping and optimiser values are ``auto``: HF ``Trainer`` fills them from
its own arguments, so the recipe stays the one source of truth. ZeRO-3 gathers the
16-bit weights on save, so the output is a plain safetensors checkpoint rather than
sharded optimizer state that needs ``zero_to_fp32``.
"""
from __future__ import annotations

from typing import Any

from .config import RecipeConfig


def deepspeed_config(cfg: RecipeConfig) -> dict[str, Any]:
    dist = cfg.distributed
    zero: dict[str, Any] = {"stage": dist.zero_stage}
    if dist.zero_stage >= 2:
        zero.update({"overlap_comm": False, "contiguous_gradients": True})
    if dist.zero_stage == 3:
        zero.update(
            {
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "reduce_bucket_size": "auto",
            }
        )
        if dist.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if dist.offload_optimizer and dist.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    precision = cfg.train.precision
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
