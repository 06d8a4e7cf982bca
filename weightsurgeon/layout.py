"""Tensor name -> (layer, module, parameter), and the selectors users type.

Architectures are declared as data (a table of name patterns), not a class per model:
Llama, Mistral, Qwen2/2.5, Qwen3 (q_norm/k_norm), Gemma 2/3 (also under the multimodal
``model.language_model.`` prefix), Phi-3 (fused qkv_proj and gate_up_proj), GPT-2 style
(``transformer.h.N``), GPT-NeoX, and MoE (Mixtral ``block_sparse_moe``, Qwen2/3-MoE
``mlp.experts.N``, routers, shared experts). Names nothing matches are ``other``.
"""
from __future__ import annotations

import re
from array import array
from collections.abc import ItemsView, ValuesView
from dataclasses import dataclass
from functools import lru_cache
from sys import intern
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from weightsurgeon.errors import SurgeonError

# Where decoder layers live: "<prefix><layers-word>.<N>.<rest>".
_LAYER = re.compile(
    r"^(?P<prefix>model\.language_model\.|language_model\.model\.|model\.decoder\.|model\.|transformer\.|gpt_neox\.|)"
    r"(?P<word>layers|h|blocks)\.(?P<layer>\d+)\.(?P<rest>.+)$"
)
# Non-language towers of multimodal checkpoints: kept whole, never "other".
_VISION = re.compile(r"^(model\.)?(vision_tower|vision_model|visual|multi_modal_projector|mm_projector|audio_tower|embed_vision)\.")

# Inside a layer: (pattern on the part before the final ".weight"/".bias", canonical module).
LAYER_RULES: tuple[tuple[str, str], ...] = (
    (r"(self_attn|attn|attention)\.(q_proj|wq|query)", "q_proj"),
    (r"(self_attn|attn|attention)\.(k_proj|wk|key)", "k_proj"),
    (r"(self_attn|attn|attention)\.(v_proj|wv|value)", "v_proj"),
    (r"(self_attn|attention|self_attention)\.(o_proj|wo|dense|out_proj)", "o_proj"),
    (r"attn\.(o_proj|c_proj|out_proj|dense)", "o_proj"),
    (r"(self_attn|attn|attention|self_attention)\.(qkv_proj|W_pack|c_attn|query_key_value|Wqkv)", "qkv_proj"),
    # DeepSeek-V2/V3 multi-head latent attention: low-rank q (q_a -> norm -> q_b), joint kv (kv_a -> norm -> kv_b).
    (r"(self_attn|attn|attention)\.q_a_proj", "q_a_proj"),
    (r"(self_attn|attn|attention)\.q_b_proj", "q_b_proj"),
    (r"(self_attn|attn|attention)\.kv_a_proj_with_mqa", "kv_a_proj_with_mqa"),
    (r"(self_attn|attn|attention)\.kv_b_proj", "kv_b_proj"),
    (r"(self_attn|attn|attention)\.q_a_layernorm", "q_a_layernorm"),
    (r"(self_attn|attn|attention)\.kv_a_layernorm", "kv_a_layernorm"),
    (r"self_attn", "sinks"),  # GPT-OSS: per-head attention sink logits, self_attn.sinks
    (r"(self_attn|attn|attention)\.(q_norm|q_layernorm)", "q_norm"),
    (r"(self_attn|attn|attention)\.(k_norm|k_layernorm)", "k_norm"),
    (r"(mlp|block_sparse_moe|feed_forward)\.experts\.(?P<expert>\d+)\.(gate_proj|w1)", "expert_gate_proj"),
    (r"(mlp|block_sparse_moe|feed_forward)\.experts\.(?P<expert>\d+)\.(up_proj|w3)", "expert_up_proj"),
    (r"(mlp|block_sparse_moe|feed_forward)\.experts\.(?P<expert>\d+)\.(down_proj|w2)", "expert_down_proj"),
    (r"(mlp|block_sparse_moe|feed_forward)\.experts\.gate_up_proj", "expert_gate_up_proj"),
    (r"(mlp|block_sparse_moe|feed_forward)\.experts\.down_proj", "expert_down_proj"),
    (r"(mlp|feed_forward)\.shared_experts?\.gate_proj", "shared_expert_gate_proj"),
    (r"(mlp|feed_forward)\.shared_experts?\.up_proj", "shared_expert_up_proj"),
    (r"(mlp|feed_forward)\.shared_experts?\.down_proj", "shared_expert_down_proj"),
    (r"(mlp|feed_forward)\.shared_expert_gate", "shared_expert_router"),
    (r"(mlp|block_sparse_moe|feed_forward)\.(gate|router)", "router"),
    # w1/w2/w3 mean gate/down/up only under feed_forward (Meta/Mistral originals, InternLM2):
    # Qwen-1's mlp.w1/mlp.w2 are two halves of the input projection and stay "other".
    (r"(mlp\.gate_proj|feed_forward\.(gate_proj|w1))", "gate_proj"),
    (r"(mlp\.(up_proj|c_fc|fc1|dense_h_to_4h)|feed_forward\.(up_proj|w3))", "up_proj"),
    (r"(mlp\.(down_proj|c_proj|fc2|dense_4h_to_h)|feed_forward\.(down_proj|w2))", "down_proj"),
    (r"fc1", "up_proj"),  # OPT: the MLP sits directly in the layer
    (r"fc2", "down_proj"),
    (r"self_attn_layer_norm", "input_layernorm"),
    (r"final_layer_norm", "post_attention_layernorm"),
    (r"(mlp|feed_forward)\.gate_up_proj", "gate_up_proj"),
    (r"(input_layernorm|ln_1|attention_norm)", "input_layernorm"),
    (r"(post_attention_layernorm|ln_2|ffn_norm)", "post_attention_layernorm"),
    (r"pre_feedforward_layernorm", "pre_feedforward_layernorm"),
    (r"post_feedforward_layernorm", "post_feedforward_layernorm"),
)
_GLOBAL_PREFIX = r"(model\.language_model\.|language_model\.model\.|model\.decoder\.|model\.|transformer\.|gpt_neox\.|)"
GLOBAL_RULES: tuple[tuple[str, str], ...] = (
    (_GLOBAL_PREFIX + r"(embed_tokens|wte|embed_in|word_embeddings|tok_embeddings)", "embed_tokens"),
    (_GLOBAL_PREFIX + r"(wpe|embed_positions)", "embed_positions"),
    (_GLOBAL_PREFIX + r"(norm|ln_f|final_layernorm|final_layer_norm)", "norm"),
    (r"(language_model\.)?(lm_head|embed_out|output)", "lm_head"),
)
# Experts stored as one 3-D parameter per layer, with no ".weight" (GPT-OSS, transformers 5 MoE):
# "mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias".
# MXFP4 stores them as "..._blocks" and "..._scales" (weightsurgeon.quant reads them as the one weight).
_STACKED_EXPERTS = re.compile(r"^(mlp|block_sparse_moe|feed_forward)\.experts\.(?P<module>gate_up_proj|down_proj)"
                              r"(?:_(?P<suffix>bias|blocks|scales))?$")
_COMPILED_LAYER = tuple((re.compile(p + r"$"), m) for p, m in LAYER_RULES)
_COMPILED_GLOBAL = tuple((re.compile(p + r"$"), m) for p, m in GLOBAL_RULES)

NORM_MODULES = frozenset({"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                          "post_feedforward_layernorm", "q_norm", "k_norm", "norm", "q_a_layernorm", "kv_a_layernorm"})
EXPERT_MODULES = frozenset({"expert_gate_proj", "expert_up_proj", "expert_down_proj", "expert_gate_up_proj"})
SHARED_EXPERT_MODULES = frozenset({"shared_expert_gate_proj", "shared_expert_up_proj", "shared_expert_down_proj"})
MLP_MODULES = frozenset({"gate_proj", "up_proj", "down_proj", "gate_up_proj", "router", "expert_gate_proj",
                         "expert_up_proj", "expert_down_proj", "expert_gate_up_proj", "shared_expert_gate_proj",
                         "shared_expert_up_proj", "shared_expert_down_proj", "shared_expert_router"})
GROUPS: dict[str, frozenset[str]] = {
    "attn": frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa",
                       "kv_b_proj", "sinks"}),
    "qkv": frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj"}),
    "mlp": MLP_MODULES,
    "norm": NORM_MODULES,
    "emb": frozenset({"embed_tokens", "embed_positions"}),
    "head": frozenset({"lm_head"}),
    "experts": EXPERT_MODULES,  # routed experts
    "shared_experts": SHARED_EXPERT_MODULES | {"shared_expert_router"},
    "router": frozenset({"router", "shared_expert_router"}),  # DeepSeek's gate carries e_score_correction_bias
}
# "mtp": DeepSeek-V3's multi-token-prediction layers, stored as layers num_hidden_layers.. (see layout_of).
MODULES = tuple(sorted({m for _, m in LAYER_RULES} | {m for _, m in GLOBAL_RULES} | EXPERT_MODULES)) + ("mtp", "vision", "other")
# Selecting one of these names part of a fused tensor when the model stores the fused one.
FUSED_PARTS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a tensor sits in the model: decoder layer (or None), canonical module, parameter."""

    layer: int | None
    module: str
    param: str
    expert: int | None = None

    @property
    def group(self) -> str:
        for group in ("head", "emb", "norm", "attn", "mlp"):
            if self.module in GROUPS[group]:
                return group
        return self.module  # "vision" or "other"


def split_layer(name: str) -> tuple[int, str] | None:
    """``(layer, rest)`` of a decoder-layer tensor name ("model.layers.3.mlp.up_proj.weight" ->
    (3, "mlp.up_proj.weight")), None for names outside decoder layers (and vision towers)."""
    if _VISION.match(name):
        return None
    m = _LAYER.match(name)
    return (int(m.group("layer")), m.group("prefix") + "|" + m.group("rest")) if m else None


@lru_cache(maxsize=1 << 14)
def _layer_module(rest_stem: str) -> tuple[str, int | None]:
    """(module, expert) of a name inside a decoder layer, without the layer prefix.

    Cached: a MoE checkpoint repeats the same few thousand stems ("mlp.experts.17.up_proj")
    in every layer, and trying the rules one by one on each of 100k names cost more than
    reading the tensors.
    """
    for pattern, module in _COMPILED_LAYER:
        hit = pattern.match(rest_stem)
        if hit:
            expert = hit.groupdict().get("expert")
            return module, int(expert) if expert is not None else None
    return "other", None


def _fields(name: str) -> tuple[int | None, str, str, int | None]:
    """(layer, module, param, expert) of a tensor name: what `classify` returns, without the object."""
    if _VISION.match(name):
        return None, "vision", name.rsplit(".", 1)[-1], None
    stem, _, param = name.rpartition(".")
    if not stem:
        return None, "other", name, None
    m = _LAYER.match(name)
    if m:
        layer = int(m.group("layer"))
        stacked = _STACKED_EXPERTS.match(m.group("rest"))
        if stacked:
            return layer, "expert_" + stacked.group("module"), stacked.group("suffix") or "weight", None
        rest_stem, _, rest_param = m.group("rest").rpartition(".")
        module, expert = _layer_module(rest_stem)
        return layer, module, rest_param, expert
    for pattern, module in _COMPILED_GLOBAL:
        if pattern.match(stem):
            return None, module, param, None
    return None, "other", param, None


def classify(name: str) -> Location:
    """Map a tensor name to its Location; unknown names are module 'other'."""
    layer, module, param, expert = _fields(name)
    return Location(layer, module, intern(param), expert)  # one "weight" for 100k locations


# ---------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleSelector:
    """A parsed --take/--module value: canonical modules, and regexes on full names."""

    spec: str
    modules: frozenset[str]
    explicit: frozenset[str]  # modules named directly (not through a group): fused checks apply
    patterns: tuple[re.Pattern, ...]

    def matches(self, name: str, loc: Location) -> bool:
        return loc.module in self.modules or any(p.search(name) for p in self.patterns)


def parse_modules(spec: str) -> ModuleSelector:
    """Parse 'o_proj', 'attn,norm', 'q_proj,k_proj', 're:mlp\\.experts\\.0\\.' ..."""
    if spec is None or not str(spec).strip():
        raise SurgeonError("empty module selector: name modules (o_proj, q_proj, ...) or groups (attn, qkv, mlp, norm, emb, head)")
    modules: set[str] = set()
    explicit: set[str] = set()
    patterns: list[re.Pattern] = []
    for token in _split_selector(spec):
        if token.startswith("re:"):
            try:
                patterns.append(re.compile(token[3:]))
            except re.error as e:
                raise SurgeonError(f"bad regex in module selector {token!r}: {e}") from e
        elif token in GROUPS:
            modules |= GROUPS[token]
        elif token == "final_norm":
            modules.add("norm")
            explicit.add("norm")
        elif token in MODULES:
            modules.add(token)
            explicit.add(token)
        else:
            known = ", ".join(sorted(GROUPS)) + "; modules: " + ", ".join(m for m in MODULES if m not in ("vision", "other"))
            raise SurgeonError(f"unknown module {token!r} (groups: {known}; or re:REGEX)")
    return ModuleSelector(spec=spec, modules=frozenset(modules), explicit=frozenset(explicit), patterns=tuple(patterns))


def _split_selector(spec: str) -> list[str]:
    """Split on commas, except inside a trailing ``re:`` token (regexes may contain commas)."""
    tokens: list[str] = []
    rest = spec.strip()
    while rest:
        if rest.startswith("re:"):
            tokens.append(rest)
            break
        head, _, rest = rest.partition(",")
        if head.strip():
            tokens.append(head.strip())
        rest = rest.strip()
    return tokens


def parse_layers(spec: str | None, num_layers: int) -> frozenset[int] | None:
    """'5-30' (inclusive), '0,2,5-9', 'all' or None (= every layer) -> layer indices."""
    if spec is None or str(spec).strip().lower() == "all":
        return None
    layers: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            raise SurgeonError(f"bad layer list {spec!r}: empty item; write layers as 5-30, 0,2,5-9 or all")
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise SurgeonError(f"bad layer list {spec!r}: {part!r} is not N or N-M")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SurgeonError(f"bad layer range {part!r}: the end is before the start")
        if hi >= num_layers:
            raise SurgeonError(f"layer {hi} is out of range: the model has {num_layers} layers (0-{num_layers - 1})")
        layers.update(range(lo, hi + 1))
    return frozenset(layers)


def parse_experts(spec: str | None) -> frozenset[int] | None:
    """'0-7', '0,3,8-15' or 'all'/None -> routed expert indices (no upper bound: models differ)."""
    if spec is None or str(spec).strip().lower() == "all":
        return None
    return parse_layers(spec, 1 << 30)


def select_names(names: Iterable[str], modules: str | ModuleSelector, layers: str | None | frozenset[int],
                 num_layers: int, flag: str = "--take", layout: "ModelLayout | None" = None,
                 experts: frozenset[int] | None = None) -> list[str]:
    """Names (in the given order) that the selectors pick; errors when nothing or part of a fused tensor is picked.

    With a layer selection, only per-layer tensors are picked (embeddings and head have no layer).
    `layout` (from layout_of) knows what the config says, such as which layers are DeepSeek's
    multi-token-prediction layers; without it names are classified alone. `experts` keeps
    only those routed experts (tensors of other modules are unaffected); experts stored
    stacked in one tensor (GPT-OSS) cannot be split, and selecting some of them is an error.
    """
    names = list(names)
    selector = parse_modules(modules) if isinstance(modules, str) else modules
    layer_set = parse_layers(layers, num_layers) if (layers is None or isinstance(layers, str)) else layers
    known = layout.locations if layout is not None else {}
    locations = {n: known.get(n) or classify(n) for n in names}
    if experts is not None:
        stacked = next((n for n, loc in locations.items() if loc.module in EXPERT_MODULES and loc.expert is None
                        and selector.matches(n, loc)), None)
        if stacked is not None:
            raise SurgeonError(f"--experts: {stacked} holds every expert in one tensor; it cannot be split by expert")
        locations = {n: loc for n, loc in locations.items() if loc.expert is None or loc.expert in experts}
        names = [n for n in names if n in locations]
    present = {loc.module for loc in locations.values()}
    for part in sorted(selector.explicit):
        fused = FUSED_PARTS.get(part)
        if fused and part not in present and fused in present:
            example = next(n for n, loc in locations.items() if loc.module == fused)
            raise SurgeonError(f"{flag} {part}: this model stores {part} fused into {fused} (e.g. {example}); select {fused} instead")
    picked = [n for n in names if selector.matches(n, locations[n])
              and (layer_set is None or locations[n].layer in layer_set)]
    if not picked:
        where = "" if layer_set is None else f" in layers {layers if isinstance(layers, str) else sorted(layer_set)}"
        have = ", ".join(sorted(m for m in present if m not in ("other",)))
        raise SurgeonError(f"{flag} {selector.spec!r} matched no tensor{where} (modules present: {have})")
    return picked


# ---------------------------------------------------------------------------------------
# A whole model's layout
# ---------------------------------------------------------------------------------------

MODULE_ID = {module: i for i, module in enumerate(MODULES)}  # a module's id in Locations.module_ids
_NONE = -1  # "no layer" / "no expert" in the integer columns
_BIG = (1 << 63) - 1


# ---------------------------------------------------------------------------------------
# Classifying many names: once per template
# ---------------------------------------------------------------------------------------
#
# A MoE checkpoint's 100k names are a few dozen templates ("model.layers.#.mlp.experts.#.up_proj.weight")
# filled with numbers. Every rule above sees a dotted part made only of digits (a "slot") through
# `\d+` between dots or through `.`: names that differ only in their slots' digits get the same
# module and param, and their layer and expert are the numbers in the same slots. So one name
# per template is classified by the rules, its slots numbered 0, 1, 2 ... so that the layer and
# expert it returns say which slot holds them, and every name of the template is read by slicing.

_ASCII_DIGITS_TO_ZERO = str.maketrans("123456789", "000000000")
_DIGIT_RUN = re.compile(r"0+")
_MAX_SLOT_DIGITS = 18  # a longer number may not fit the 64-bit columns: such names are classified one by one


def _template(name: str, key: str) -> tuple[int, slice | None, slice | None, str] | None:
    """How every name with the coarse key `key` (its digits all "0") is classified, from `name`, one of them:
    (module id, layer slot, expert slot, param) with slots as (start, stop) slices of the name, or None
    when the names must be classified one by one (a digit inside a word, such as fc1 or ln_2, tells
    templates apart that this key merges; a number as the param; a number too long for the columns)."""
    slots: list[tuple[int, int]] = []
    for run in _DIGIT_RUN.finditer(key):
        a, b = run.span()
        if (a and key[a - 1] != ".") or (b < len(key) and key[b] != "."):
            return None  # a digit inside a word
        slots.append((a, b))
    if slots and slots[-1][1] == len(key):
        return None  # the last part, the param, is a number
    canonical, at = [], 0
    for k, (a, b) in enumerate(slots):
        canonical += (name[at:a], str(k))
        at = b
    canonical.append(name[at:])
    layer, module, param, expert = _fields("".join(canonical))
    layer_slot = slice(*slots[layer]) if layer is not None else None
    expert_slot = slice(*slots[expert]) if expert is not None else None
    if any(s is not None and s.stop - s.start > _MAX_SLOT_DIGITS for s in (layer_slot, expert_slot)):
        return None
    if _fields(name) != (None if layer_slot is None else int(name[layer_slot]), module, param,
                         None if expert_slot is None else int(name[expert_slot])):
        return None  # internal: the template disagrees with the rules on its own name (never seen): be exact
    return MODULE_ID[module], layer_slot, expert_slot, param


def _classify_columns(names: Sequence[str]) -> tuple[Any, Any, Any, array, list[str]]:
    """(module ids, layers, experts, param ids, params) of `names`, as `Locations` holds them, each name's
    the same as `_fields` gives it: classified once per template (see above), read by slicing."""
    joined = "\n".join(names)
    if not names or not joined.isascii() or joined.count("\n") != len(names) - 1:
        # no names, or a name with a line break or beyond ASCII (\d matches other digits too): one by one
        return _classify_known(names, {})
    keys = joined.translate(_ASCII_DIGITS_TO_ZERO).split("\n")
    del joined
    params: list[str] = []
    param_id: dict[str, int] = {}
    # Per template, in order of first appearance: (module id, param id, layer slot, expert slot), or None.
    found: list[tuple[int, int, slice | None, slice | None] | None] = []
    for key, name in dict(zip(keys, names)).items():  # one name of each key (the last)
        t = _template(name, key)
        if t is not None:
            pid = param_id.setdefault(t[3], len(params))
            if pid == len(params):
                params.append(intern(t[3]))
            t = (t[0], pid, t[1], t[2])
        found.append(t)
    ids = dict(zip(dict.fromkeys(keys), range(len(found))))
    rows = list(map(ids.__getitem__, keys))  # each name's template
    del keys, ids
    module_ids = array("B", (0 if t is None else t[0] for t in found))
    module_ids = array("B", map(module_ids.__getitem__, rows))
    param_ids = array("I", (0 if t is None else t[1] for t in found))
    param_ids = array("I", map(param_ids.__getitem__, rows))
    slots = [None if t is None else t[2] for t in found]
    layers: Any = [_NONE if s is None else int(name[s]) for name, s in zip(names, map(slots.__getitem__, rows))]
    slots = [None if t is None else t[3] for t in found]
    experts: Any = [_NONE if s is None else int(name[s]) for name, s in zip(names, map(slots.__getitem__, rows))]
    if None in found:  # the names classified one by one
        for i, row in enumerate(rows):
            if found[row] is None:
                layer, module, param, expert = _fields(names[i])
                pid = param_id.setdefault(param, len(params))
                if pid == len(params):
                    params.append(intern(param))
                module_ids[i], param_ids[i] = MODULE_ID[module], pid
                layers[i] = _NONE if layer is None else layer
                experts[i] = _NONE if expert is None else expert
    if max(layers) <= _BIG and max(experts) <= _BIG:  # else a damaged name: Python ints
        layers, experts = array("q", layers), array("q", experts)
    return module_ids, layers, experts, param_ids, params


def _classify_known(names: Sequence[str], known: Mapping[str, Location]) -> tuple[Any, Any, Any, array, list[str]]:
    """The columns of `names`, each row taken from `known` where it is there, else classified by the rules."""
    module_ids, layers, experts, param_ids = array("B"), array("q"), array("q"), array("I")
    params: list[str] = []
    param_id: dict[str, int] = {}
    same = known if isinstance(known, Locations) else None  # rows copied from its columns, no object made
    mtp = MODULE_ID["mtp"]
    for name in names:
        if same is not None:
            r = same.row(name)
            if r is not None and same.module_ids[r] != mtp:  # MTP layers depend on the config: classified again
                layer, expert = same.layers[r], same.experts[r]
                layer, module, param, expert = (None if layer == _NONE else layer, MODULES[same.module_ids[r]],
                                                same.params[same.param_ids[r]], None if expert == _NONE else expert)
            else:
                layer, module, param, expert = _fields(name)
        else:
            loc = known.get(name)
            layer, module, param, expert = ((loc.layer, loc.module, loc.param, loc.expert) if loc is not None
                                            else _fields(name))
        pid = param_id.get(param)
        if pid is None:
            pid = param_id[param] = len(params)
            params.append(intern(param))
        layer = _NONE if layer is None else layer
        expert = _NONE if expert is None else expert
        if (layer > _BIG or expert > _BIG) and isinstance(layers, array):
            layers, experts = list(layers), list(experts)  # a number beyond 64 bits (a damaged name): ints from here
        module_ids.append(MODULE_ID[module])
        layers.append(layer)
        experts.append(expert)
        param_ids.append(pid)
    return module_ids, layers, experts, param_ids, params


class Locations(Mapping[str, Location]):
    """Every tensor's Location, classified once, held as columns; a `Location` is made on access.

    A MoE checkpoint has ~100k names, and a diff used to classify each about four times and
    keep a Location object (plus a dict entry) per name: ~100 bytes a name. Here a name costs
    21 bytes of columns, row i describing ``names[i]``:

    - ``module_ids``: array('B'), ids into ``MODULES`` (``MODULE_ID[name]`` gives one);
    - ``layers`` and ``experts``: array('q'), -1 for None (lists, should a damaged name hold a number beyond 64 bits);
    - ``param_ids``: array('I'), ids into ``params`` (a short list: "weight", "bias", ...).

    ``row(name)`` is a name's row (None if absent); when the names are a checkpoint's
    TensorMap, rows are its positions (``TensorMap.position``) and no index of our own is built.
    The mapping API (``[name]``, ``get``, ``items``, ``values``, iteration in the names'
    order) is a dict's, read-only.
    """

    __slots__ = ("names", "row", "module_ids", "layers", "experts", "param_ids", "params")

    def __init__(self, names: Sequence[str], row: Callable[[str], int | None], module_ids: array, layers: array,
                 experts: array, param_ids: array, params: list[str]) -> None:
        self.names, self.row = names, row
        self.module_ids, self.layers, self.experts, self.param_ids, self.params = (module_ids, layers, experts,
                                                                                   param_ids, params)

    @classmethod
    def classify_all(cls, names: Iterable[str], known: Mapping[str, Location] | None = None) -> "Locations":
        """Classify each name once (``known``: locations already classified, taken as they are); without
        ``known``, once per template (see _classify_columns)."""
        position = getattr(names, "position", None)  # a TensorMap: its own index serves
        names = names.keys() if isinstance(names, Mapping) else names
        ordered: Sequence[str] = list(names)
        if known is None:
            module_ids, layers, experts, param_ids, params = _classify_columns(ordered)
        else:
            module_ids, layers, experts, param_ids, params = _classify_known(ordered, known)
        if position is not None:
            row = position
        else:
            index = {name: i for i, name in enumerate(ordered)}
            if len(index) != len(ordered):  # internal: callers pass a checkpoint's (unique) names
                raise ValueError("names given twice to Locations")
            row = index.get
        return cls(ordered, row, module_ids, layers, experts, param_ids, params)

    def location(self, i: int) -> Location:
        """The Location of row `i`."""
        layer, expert = self.layers[i], self.experts[i]
        return Location(None if layer == _NONE else layer, MODULES[self.module_ids[i]], self.params[self.param_ids[i]],
                        None if expert == _NONE else expert)

    def __getitem__(self, name: str) -> Location:
        i = self.row(name)
        if i is None:
            raise KeyError(name)
        return self.location(i)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        i = self.row(name)
        return default if i is None else self.location(i)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.row(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def values(self) -> ValuesView[Location]:
        return _LocationValues(self)

    def items(self) -> ItemsView[str, Location]:
        return _LocationItems(self)

    def modules(self) -> set[str]:
        """The modules present, from the columns."""
        return {MODULES[m] for m in set(self.module_ids)}

    def layers_present(self) -> list[int]:
        """The decoder layers that hold a tensor, sorted."""
        return sorted(set(self.layers) - {_NONE})

    def names_of(self, module: str) -> list[str]:
        """Names of one module, in order."""
        wanted = MODULE_ID[module]
        return [n for n, m in zip(self.names, self.module_ids) if m == wanted]

    def weight_of(self, module: str) -> str | None:
        """The first ``weight`` outside decoder layers of a module (embed_tokens, lm_head), or None."""
        wanted = MODULE_ID[module]
        for i, m in enumerate(self.module_ids):
            if m == wanted and self.layers[i] == _NONE and self.params[self.param_ids[i]] == "weight":
                return self.names[i]
        return None

    def module_of(self, name: str) -> str:
        """A name's module (classified on the spot if it is not among these names)."""
        i = self.row(name)
        return classify(name).module if i is None else MODULES[self.module_ids[i]]

    def to_mtp(self, num_layers: int) -> None:
        """DeepSeek-V3's multi-token-prediction layers (num_layers and beyond) as module "mtp", no layer."""
        mtp = MODULE_ID["mtp"]
        for i, layer in enumerate(self.layers):
            if layer >= num_layers:
                self.module_ids[i], self.layers[i], self.experts[i] = mtp, _NONE, _NONE

    def __repr__(self) -> str:
        return f"Locations({len(self)} names)"


class _LocationValues(ValuesView):
    def __iter__(self) -> Iterator[Location]:
        locs = self._mapping
        return (locs.location(i) for i in range(len(locs)))


class _LocationItems(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, Location]]:
        locs = self._mapping
        return ((name, locs.location(i)) for i, name in enumerate(locs.names))


@dataclass(frozen=True)
class ModelLayout:
    """Per-name locations of one checkpoint (classified once, as columns), and facts derived from them."""

    locations: Locations
    num_layers: int
    tied_embeddings: bool
    other: tuple[str, ...]
    classified: frozenset[int] = frozenset()  # module ids of the names as classified, before any MTP relabel

    def modules_present(self) -> list[str]:
        return sorted(self.locations.modules())

    def tied_under(self, config: dict | None) -> bool:
        """Whether a checkpoint with these very names and `config` ties its embeddings (a fine-tune's
        layout, judged from its base's without classifying its names again)."""
        return _tied(ConfigView(config), self.classified)


def _tied(view: "ConfigView", classified: frozenset[int] | set[int]) -> bool:
    """The output head is the input embedding: no lm_head stored, and the config says so (or says
    nothing while an embedding is stored)."""
    has_head, has_emb = MODULE_ID["lm_head"] in classified, MODULE_ID["embed_tokens"] in classified
    tie = view.lookup("tie_word_embeddings")
    return (not has_head and has_emb) if tie is None else bool(tie) and not has_head


def layout_of(names: Iterable[str], config: dict | None, known: Mapping[str, Location] | None = None) -> ModelLayout:
    """Classify every tensor once; read num_layers and tying from the config, else from the tensors.

    ``names``: a checkpoint's TensorMap (its index serves the locations), or any names.
    ``known``: locations of some of these names already classified (an input's layout, for an output
    that keeps its names), taken as they are: a DeepSeek-sized model is 92k names to classify."""
    locations = Locations.classify_all(names, known)
    max_layer = max(locations.layers, default=_NONE)
    view = ConfigView(config)
    num_layers = view.num_layers
    if num_layers is None or num_layers < 0:
        num_layers = max_layer + 1
    present = frozenset(locations.module_ids)
    mtp = view.int_value("num_nextn_predict_layers")
    if mtp is not None and mtp > 0 and max_layer >= num_layers:
        # DeepSeek-V3: layers num_hidden_layers.. are multi-token-prediction modules (a decoder block
        # plus enorm/hnorm/eh_proj/shared_head), not decoder layers.
        locations.to_mtp(num_layers)
    other = tuple(locations.names_of("other")) if MODULE_ID["other"] in present else ()
    return ModelLayout(locations=locations, num_layers=num_layers, tied_embeddings=_tied(view, present), other=other,
                       classified=present)


# ---------------------------------------------------------------------------------------
# The one view of config.json, and the architecture facts the engine relies on
# ---------------------------------------------------------------------------------------

# Config keys holding one entry per decoder layer (remove keeps the kept layers' entries; verify counts them).
PER_LAYER_LISTS = ("layer_types", "mlp_layer_types", "no_rope_layers")
# Config keys holding decoder-layer *indices* (remove renumbers them and drops removed layers).
LAYER_INDEX_LISTS = ("mlp_only_layers", "moe_layers")
# model_type -> how Qwen-style configs derive a layer's attention type from max_window_layers
# (transformers 5: configuration_qwen2.py / qwen3 / qwen2_moe __post_init__).
WINDOW_RULES = {"qwen2": "above", "qwen3": "above", "qwen3_moe": "above", "qwen2_vl": "above",
                "qwen2_5_vl": "above", "qwen2_moe": "odd_below"}
# model_types whose per-layer behaviour never derives from the layer index beyond the Qwen
# max_window_layers rule above: no need to ask transformers how it expands their config.
NO_DERIVED_LISTS = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3",
                              "granite", "olmo2", "deepseek_v3", "qwen2_vl", "qwen2_5_vl"})
# Linear weights are [out, in]: these read the residual stream (in == hidden_size) ...
READS_HIDDEN = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj"})
# ... and these write it (out == hidden_size).
WRITES_HIDDEN = frozenset({"o_proj", "down_proj"})
# Scalar keys a loader reads as integers: a string or float there is a broken config.
# (Not intermediate_size: Gemma 3n gives one per layer.)
INT_KEYS = ("num_hidden_layers", "n_layer", "hidden_size", "word_embed_proj_dim", "vocab_size",
            "num_attention_heads", "num_key_value_heads", "num_nextn_predict_layers")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ConfigView:
    """config.json as the engine reads it; every command asks it instead of the raw dict.

    Multimodal configs keep the language model's keys under ``text_config``: `text` is that
    dict (else the whole config), `lookup` falls back to the top level for keys some
    releases keep there (the layer count, tying), and `owner` says which dict an edit
    belongs in, so a written config keeps its original shape.
    """

    def __init__(self, config: dict | None) -> None:
        self.raw: dict = config if isinstance(config, dict) else {}
        inner = self.raw.get("text_config")
        self.text: dict = inner if isinstance(inner, dict) else self.raw

    def get(self, key: str, default: object = None) -> object:
        """A language-model key, from ``text`` only."""
        return self.text.get(key, default)

    def lookup(self, key: str) -> object:
        """A language-model key from ``text``, else from the top level."""
        return self.text.get(key, self.raw.get(key))

    def int_value(self, key: str) -> int | None:
        """An integer key from ``text``, None when absent or not an integer (`wrong_types` names those)."""
        value = self.text.get(key)
        return value if _is_int(value) else None

    @property
    def num_layers(self) -> int | None:
        """The declared decoder layer count (``n_layer``: GPT-2 style configs), None when not an integer."""
        value = self.text.get("num_hidden_layers", self.raw.get("num_hidden_layers", self.text.get("n_layer")))
        return value if _is_int(value) else None

    @property
    def architecture(self) -> str | None:
        """``architectures[0]``, tolerating whatever a hand-written config holds there."""
        value = self.raw.get("architectures")
        if isinstance(value, list) and value and isinstance(value[0], str):
            return value[0]
        return value if isinstance(value, str) else None

    @property
    def model_type(self) -> str | None:
        value = self.raw.get("model_type")
        return value if isinstance(value, str) else None

    def wrong_types(self) -> list[str]:
        """Integer keys holding anything else (a loader would fail or miscount): one message per key."""
        return [f"{key} must be an integer, not {type(value).__name__} {value!r:.40}"
                for key in INT_KEYS if (value := self.text.get(key)) is not None and not _is_int(value)]

    def owner(self, key: str) -> tuple[dict, str]:
        """The dict an edit of ``key`` goes to, and its dotted path: ``text_config`` when it holds the key
        (or the top level does not), else the top level."""
        inner = self.raw.get("text_config")
        if isinstance(inner, dict) and (key in inner or key not in self.raw):
            return inner, f"text_config.{key}"
        return self.raw, key
