"""Attention heads and experts inside tensors: which elements of a tensor belong to which unit.

The diff measures ||B - A|| per head and per expert without a second read: the kernel adds
d^2 and A^2 of every run of `run` consecutive elements to group (k // run) % count, where
k is the element's index in the tensor (row-major). Each unit below is such a periodic
pattern:

- q_proj / k_proj / v_proj weight [heads * head_dim, hidden]: a head is head_dim rows, one
  run of head_dim * hidden elements; the bias [heads * head_dim]: runs of head_dim. k and v
  have num_key_value_heads heads (grouped-query attention), q num_attention_heads.
- qkv_proj (fused, Phi-3): rows of the q heads, then the k heads, then the v heads: one
  group per head of the three, numbered in that order.
- o_proj weight [hidden, heads * head_dim]: a head is head_dim *columns*: runs of head_dim,
  group (k // head_dim) % heads, so the per-column sums never need a column accumulator.
- stacked experts [experts, ...] (``mlp.experts.gate_up_proj`` and the like): one run per expert.

Experts stored one tensor each (``mlp.experts.N.down_proj``) need no grouping: their rows
are already per tensor, and the layout names the expert. Tensors whose shape does not fit
the config (a head count that does not divide) get no per-head numbers rather than wrong ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from weightsurgeon.layout import Location

HEAD_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")


@dataclass(frozen=True)
class Units:
    """How one tensor splits into units: `count` groups of runs of `run` elements."""

    kind: str  # "head" or "expert"
    run: int
    count: int


def _config_int(config: dict | None, key: str) -> int | None:
    if not isinstance(config, dict):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = text.get(key, config.get(key))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def heads(config: dict | None) -> tuple[int, int] | None:
    """(attention heads, key/value heads) from config.json, or None when it does not say."""
    h = _config_int(config, "num_attention_heads") or _config_int(config, "n_head")
    if h is None:
        return None
    return h, _config_int(config, "num_key_value_heads") or h


def units_of(loc: Location, shape: tuple[int, ...], config: dict | None) -> Units | None:
    """The units of one tensor, or None (not a head or stacked-expert tensor, or a shape that does not fit)."""
    numel = prod(shape)
    if loc.module.startswith("expert_") and loc.expert is None and len(shape) >= 2 and shape[0] > 1:
        return Units("expert", numel // shape[0], shape[0])
    counts = heads(config)
    if counts is None or loc.module not in HEAD_MODULES or not shape or numel == 0:
        return None
    h, kv = counts
    if loc.module == "o_proj":
        if loc.param != "weight" or len(shape) != 2 or shape[1] % h:
            return None
        return Units("head", shape[1] // h, h)
    n = {"q_proj": h, "k_proj": kv, "v_proj": kv, "qkv_proj": h + 2 * kv}[loc.module]
    rows = shape[0]
    if rows % n:
        return None
    return Units("head", (rows // n) * (numel // rows), n)
