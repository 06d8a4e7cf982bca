"""The Delta stethoscope: stream tensor pairs of a base and its fine-tunes through the kernel.

Two steps. `plan_pairs` decides, from headers alone, which base tensor is compared with
which tuned tensor: by name, plus the cases real checkpoints throw at us (tied embeddings
on one side only -> compare the effective output head; a fine-tune that added tokens ->
compare the shared rows and report the added ones; dtypes that differ -> compare values;
tensors on one side only or with another shape -> an error, or reported with
``allow_missing``). `diff_checkpoints` then walks the base in its on-disk order, chunk
by chunk, and folds each chunk pair into additive `DeltaStats`. The kernel's threads read
the files themselves, each the part it computes, into buffers that stay in its core's
cache: no large buffer, no copy while computing, and memory stays flat whatever the
model size. Pairs the kernel cannot read itself (mixed widths, F8 ...) are read here into
buffers allocated once.
"""
from __future__ import annotations

import math
import os
import time
from array import array
from contextlib import nullcontext
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from weightsurgeon.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from weightsurgeon.errors import Interrupted, SurgeonError
from weightsurgeon.kernels.dtypes import dtype_info
from weightsurgeon.kernels.stats import PART, check_histogram
from weightsurgeon.layout import MODULE_ID, MODULES, ModelLayout, classify, layout_of, parse_experts, parse_layers, parse_modules, select_names
from weightsurgeon.pairs import Pair, PairTable, numel_of
from weightsurgeon.quant import QuantTensor
from weightsurgeon.smallpairs import SmallPairs

if TYPE_CHECKING:  # numpy and the report classes load when the data is read (run_diff)
    import numpy as np

    from weightsurgeon.report.model import DiffReport, ModelIdentity

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024  # per tensor side and kernel call (and per buffer where Python reads)
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # all read buffers together, whatever the number of tuned models
HIST_BUDGET_BYTES = 16 * 1024 * 1024  # the kernel's per-part histograms in one call
MIN_CHUNK_BYTES = 4096  # a guard only: tests use tiny chunks to cross many chunk boundaries
DECODED_CHUNK_ELEMS = 4 * 1024 * 1024  # elements per slice of a quantized pair (decoded to float32 in numpy)
_SHOWN_MISSING = 4  # mismatches named in the error message


def _side_label(info: TensorInfo, q: QuantTensor | None) -> str:
    return q.label if q is not None else info.dtype


def _side_bytes(info: TensorInfo, q: QuantTensor | None, numel: int) -> int:
    """Bytes read for the first `numel` elements of one side (data and scale of a quantized tensor)."""
    return q.stored_bytes if q is not None else numel * info.itemsize


def _side(ckpt: Checkpoint, name: str) -> tuple[TensorInfo, QuantTensor | None] | None:
    """The stored data of a logical tensor and its quantization; None if absent (scales are no tensors of their own)."""
    q = ckpt.quant.tensors.get(name)
    if q is not None:
        return q.data, q
    info = ckpt.tensors.get(name)
    if info is None or name in ckpt.quant.parts:
        return None
    return info, None


def _logical_names(ckpt: Checkpoint) -> list[str]:
    """Every logical tensor in on-disk order: a quantized tensor once, at its data; scales never."""
    return ckpt.quant.logical_names(ckpt.tensors)


@dataclass
class PairPlan:
    """What one tuned model is compared on, and what could not be paired."""

    pairs: PairTable | list[Pair]  # plan_pairs: a PairTable; adapter pairs: a list
    missing: list[dict]
    notes: list[str]


# ---------------------------------------------------------------------------------------
# Pairing (headers only)
# ---------------------------------------------------------------------------------------

def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _expert_transposed(module: str, base: TensorInfo, other: TensorInfo, base_q: QuantTensor | None,
                       other_q: QuantTensor | None) -> bool:
    """Whether a GPT-OSS stacked-expert pair compares MXFP4 [experts, out, in] with a plain tensor stored
    [experts, in, out], as transformers' GptOssExperts holds (and saves) the dequantized weights.

    The bf16 releases of GPT-OSS were saved that way; down_proj is square in gpt-oss-20b and
    120b (2880 x 2880), so the layout is known from the format, not guessed from the shape.
    """
    if module not in ("expert_gate_up_proj", "expert_down_proj"):
        return False
    quant, plain = (base_q, other) if base_q is not None else (other_q, base)
    if quant is None or quant.scheme != "mxfp4" or (base_q is not None and other_q is not None) or len(quant.shape) != 3:
        return False
    e, rows, cols = quant.shape
    return plain.shape == (e, cols, rows)


def _match(t: int, label: str, name: str, base: TensorInfo, other: TensorInfo, module: str,
           pairs: PairTable | list[Pair], missing: list[dict], notes: list[str], base_q: QuantTensor | None = None,
           other_q: QuantTensor | None = None) -> None:
    """Pair two tensors of the same role (logical shapes: a quantized side's values), or record why they cannot be compared."""
    shape_a = base_q.shape if base_q is not None else base.shape
    shape_b = other_q.shape if other_q is not None else other.shape
    if _expert_transposed(module, base, other, base_q, other_q):
        pairs.append(Pair(t, name, base, other, math.prod(shape_a), base_q=base_q, other_q=other_q, transposed=True))
        return
    if shape_a == shape_b:
        pairs.append(Pair(t, name, base, other, math.prod(shape_a), base_q=base_q, other_q=other_q))
        return
    grew = (module in ("embed_tokens", "lm_head") and len(shape_a) == 2 and len(shape_b) == 2 and base_q is None
            and other_q is None and shape_a[1] == shape_b[1] and shape_b[0] > shape_a[0])
    if grew:
        added = shape_b[0] - shape_a[0]
        pairs.append(Pair(t, name, base, other, base.numel, added_rows=added))
        notes.append(f"{label}: {name} has {added} added row(s) (vocabulary {shape_a[0]} -> {shape_b[0]}): "
                     f"compared the {shape_a[0]} shared rows; the added rows are not in the statistics")
        return
    missing.append({"tuned": label, "name": name, "where": "shape",
                    "detail": f"base {_shape_text(shape_a)} vs tuned {_shape_text(shape_b)}"})


# Prefixes a wrapper adds to every name: torch.compile (`_orig_mod.`), DataParallel and
# DeepSpeed engines (`module.`). A model saved without its head class lacks `model.`.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_MODEL_PREFIX = "model."


def _strip_wrappers(name: str) -> str:
    while True:
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        else:
            return name


def _name_candidates(name: str) -> set[str]:
    """Base names a tuned name may stand for when they differ only by wrapper or `model.` prefixes."""
    core = _strip_wrappers(name)
    out = {core, _MODEL_PREFIX + core}
    if core.startswith(_MODEL_PREFIX):
        out.add(core[len(_MODEL_PREFIX):])
    return out


def prefix_renames(base_names: Sequence[str] | dict, tuned_names: Sequence[str] | dict, label: str) -> tuple[dict[str, str], str | None]:
    """Map tuned names onto base names that differ only by a prefix; ({tuned: base}, one-line note).

    Applies only when some tuned names are not in the base. Every tuned name maps to the one
    base name it can stand for; a tuned name with several candidates, or two tuned names
    claiming one base name, is ambiguous: a SurgeonError lists them.
    """
    base_set = set(base_names)
    if all(n in base_set for n in tuned_names):
        return {}, None
    renames: dict[str, str] = {}
    ambiguous: list[str] = []
    claimed: dict[str, list[str]] = {}
    for name in tuned_names:
        if name in base_set:  # the exact name wins
            claimed.setdefault(name, []).append(name)
            continue
        hits = sorted(c for c in _name_candidates(name) if c in base_set)
        if len(hits) > 1:
            ambiguous.append(f"{name} -> {' or '.join(hits)}")
        elif hits:
            claimed.setdefault(hits[0], []).append(name)
            if hits[0] != name:
                renames[name] = hits[0]
    ambiguous += [f"{' and '.join(sorted(names))} -> {target}" for target, names in sorted(claimed.items()) if len(names) > 1]
    if ambiguous:
        shown = "; ".join(ambiguous[:_SHOWN_MISSING]) + (f" and {len(ambiguous) - _SHOWN_MISSING} more"
                                                          if len(ambiguous) > _SHOWN_MISSING else "")
        raise SurgeonError(f"{label}: tensor names differ from the base's by a prefix, ambiguously: {shown}; "
                           f"rename the tensors so each pairs with one base tensor")
    if not renames:
        return {}, None
    kinds: Counter = Counter()
    for tuned_name, base_name in renames.items():
        core = _strip_wrappers(tuned_name)
        change = [f"'{tuned_name[: len(tuned_name) - len(core)]}' removed"] if core != tuned_name else []
        if base_name == _MODEL_PREFIX + core:
            change.append(f"'{_MODEL_PREFIX}' added")
        elif core == _MODEL_PREFIX + base_name:
            change.append(f"'{_MODEL_PREFIX}' removed")
        kinds[", ".join(change)] += 1
    described = "; ".join(k for k, _ in kinds.most_common(3))
    first = next(iter(renames))
    return renames, (f"{label}: {len(renames)} tensor name(s) paired with the base's by prefix ({described}), "
                     f"e.g. {first} -> {renames[first]}")


def plan_pairs(base: Checkpoint, other: Checkpoint, t: int, label: str,
               base_layout: ModelLayout | None = None) -> PairPlan:
    """Pair every base tensor with its counterpart in `other`, from the headers alone.

    Names that differ from the base's only by a wrapper prefix are paired (see prefix_renames).
    """
    base_layout = base_layout or layout_of(base.tensors, base.config)
    pairs = PairTable(base.tensors, {t: other.tensors})
    missing: list[dict] = []
    notes: list[str] = []
    base_names, other_names = _logical_names(base), _logical_names(other)
    renames, note = prefix_renames(base_names, other_names, label)
    back = {base_name: tuned_name for tuned_name, base_name in renames.items()}
    # the tuned model's names in the base's terms (the checkpoint's own map when nothing is renamed: no records made)
    other_tensors = {renames.get(n, n): info for n, info in other.tensors.items()} if renames else other.tensors
    if note:
        notes.append(note)
    consumed: set[str] = set()  # tuned names used by an effective-head pair
    base_emb, base_head = base_layout.locations.weight_of("embed_tokens"), base_layout.locations.weight_of("lm_head")
    if not renames and other_names == base_names:  # the same names in the same order: the base's layout answers
        other_emb, other_head, other_tied = base_emb, base_head, base_layout.tied_under(other.config)
    else:
        # the tuned model's layout, for its head and tying only: the base's rows reused for the names they share; not kept
        other_layout = layout_of(other_tensors, other.config, known=base_layout.locations)
        other_emb, other_head = other_layout.locations.weight_of("embed_tokens"), other_layout.locations.weight_of("lm_head")
        other_tied = other_layout.tied_embeddings
        del other_layout
    head: tuple[str, TensorInfo, TensorInfo] | None = None  # (reported name, base side, tuned side)
    if base_head is None and other_head is not None and base_emb is not None and base_layout.tied_embeddings:
        head = (other_head, base.tensors[base_emb], other_tensors[other_head])
        consumed.add(other_head)
        notes.append(f"{label}: tied embeddings on the base only: compared base {base_emb} (its effective output head) "
                     f"against tuned {other_head}")
    elif base_head is not None and other_head is None and other_emb is not None and other_tied:
        head = (base_head, base.tensors[base_head], other_tensors[other_emb])
        notes.append(f"{label}: tied embeddings on the tuned model only: compared base {base_head} against tuned "
                     f"{other_emb} (its effective output head)")

    module_of = base_layout.locations.module_of
    quantized = base.quant.tensors or base.quant.parts or other.quant.tensors or other.quant.parts
    skip = head[0] if head is not None else None  # the base's own head, paired below with the tuned model's embedding
    if quantized:
        for name in base_names:
            if name == skip:
                continue
            info, base_q = _side(base, name)  # type: ignore[misc]
            twin = _side(other, back.get(name, name))
            if twin is None:
                missing.append({"tuned": label, "name": name, "where": "base_only", "detail": "not in the tuned model"})
                continue
            _match(t, label, name, info, twin[0], module_of(name), pairs, missing, notes, base_q, twin[1])  # type: ignore[arg-type]
        mixed: Counter = Counter()
    else:
        mixed = _plain_pairs(base, other, t, label, back, skip, module_of, pairs, missing, notes)
    if head is not None:  # streamed in the base tensor's on-disk place (see _order_pairs)
        row = len(pairs)
        _match(t, label, head[0], head[1], head[2], "lm_head", pairs, missing, notes)  # type: ignore[arg-type]
        if not quantized and len(pairs) > row and row not in pairs.special and head[1].dtype != head[2].dtype:
            mixed[(head[1].dtype, head[2].dtype)] += 1  # a plain row: not among the special ones counted below
    known = set(base_names)
    for name in (renames.get(n, n) for n in other_names):
        if name not in known and name not in consumed:
            missing.append({"tuned": label, "name": name, "where": "tuned_only", "detail": "not in the base model"})

    special = pairs.special.values()
    transposed = sum(1 for p in special if p.transposed)
    if transposed:
        notes.append(f"{label}: {transposed} stacked expert tensor(s) are MXFP4 [experts, out, in] on one side and "
                     f"[experts, in, out] on the other (transformers' GptOssExperts layout): compared element by "
                     f"element across the transposition")
    if quantized:  # plain rows of a model with quantized tensors: labels from records (a quantized model has ~46k)
        special = list(pairs)
    mixed.update((_side_label(p.base, p.base_q), _side_label(p.other, p.other_q)) for p in special
                 if _side_label(p.base, p.base_q) != _side_label(p.other, p.other_q))
    for (da, db), n in sorted(mixed.items()):
        notes.append(f"{label}: {n} tensor(s) stored as {da} in the base and {db} in the tuned model: values compared "
                     f"after exact decoding")
    for side, key in (("base", "base_q"), ("tuned", "other_q")):
        kinds = Counter(getattr(p, key).label for p in pairs.special.values() if getattr(p, key) is not None)
        for kind, n in sorted(kinds.items()):
            notes.append(f"{label}: {n} {side} tensor(s) stored as {kind} were dequantized (value = decode(weight) x "
                         f"scale, in float32); their scale tensors are read with them, not reported")
    arch_a = base.config_view.architecture
    arch_b = other.config_view.architecture
    if arch_a and arch_b and arch_a != arch_b:
        notes.append(f"{label}: architectures differ (base {arch_a}, tuned {arch_b}); compared tensors by name")
    return PairPlan(pairs, missing, notes)


def _plain_pairs(base: Checkpoint, other: Checkpoint, t: int, label: str, back: dict[str, str], skip: str | None,
                 module_of: Any, pairs: PairTable, missing: list[dict], notes: list[str]) -> Counter:
    """plan_pairs' loop where neither model holds quantized tensors, on the header tables' columns: the pairs
    of equal shapes become rows of `pairs` in bulk, by numpy (a Python step per pair cost ~4 us: 0.4 CPU-s
    at 100k tensors), with no record made; other shapes go through _match, each in its place.
    Returns the count of pairs per (base dtype, tuned dtype) that differ (the mixed-dtype note)."""
    import numpy as np

    from weightsurgeon.format import DTYPE_NAMES

    where = other.tensors.where
    shape_id: dict[tuple[int, ...], int] = {}  # a shape -> its number across both models' tables

    def shape_numbers(table: Any) -> np.ndarray:
        return np.array([shape_id.setdefault(x, len(shape_id)) for x in table.columns()[2]], dtype=np.int64)

    def column(values: array) -> np.ndarray:  # an unsigned column of a header table (dtype codes, shape ids)
        return np.frombuffer(values, dtype=f"u{values.itemsize}")

    twins = [(shape_numbers(table), column(table.columns()[1]), column(table.columns()[0]))
             for table in other.tensors.tables]
    skip_at = base.tensors.where(skip) if skip is not None else None
    codes_mixed: Counter = Counter()
    for s, table in enumerate(base.tensors.tables):
        names = table.names
        found = list(map(where, (back.get(n, n) for n in names) if back else names))
        if None in found:
            found = [-1 if at is None else at for at in found]
        at = np.array(found, dtype=np.int64).reshape(-1)
        del found
        shape_a = shape_numbers(table)[column(table.columns()[1])]
        code_a = column(table.columns()[0]).astype(np.int64)
        shape_b, code_b = np.full(len(names), -1, dtype=np.int64), np.zeros(len(names), dtype=np.int64)
        shard_b, row_b = at >> 32, at & 0xFFFFFFFF
        for o in np.flatnonzero(np.bincount(shard_b[at >= 0])).tolist():  # the tuned shards these names are in
            mine = (at >= 0) & (shard_b == o)
            numbers, sids, codes = twins[o]
            shape_b[mine] = numbers[sids[row_b[mine]]]
            code_b[mine] = codes[row_b[mine]]
        plain = (at >= 0) & (shape_a == shape_b)
        if skip_at is not None and skip_at >> 32 == s:
            plain[skip_at & 0xFFFFFFFF] = False
        numels = np.array([math.prod(x) for x in shape_id], dtype=np.int64)
        mixed = plain & (code_a != code_b)
        for packed, n in zip(*np.unique(code_a[mixed] * 256 + code_b[mixed], return_counts=True)):
            codes_mixed[(int(packed) // 256, int(packed) % 256)] += int(n)
        done = 0
        for row in np.flatnonzero(~plain).tolist() + [len(names)]:  # the rest in their places, in order
            if done < row:
                keys = np.arange(done, row, dtype=np.int64) | (s << 32)
                pairs.add_rows(t, keys, at[done:row], numels[shape_a[done:row]])
            done = row + 1
            if row == len(names) or names[row] == skip:
                continue
            if at[row] < 0:
                missing.append({"tuned": label, "name": names[row], "where": "base_only", "detail": "not in the tuned model"})
                continue
            twin, r = other.tensors.table_of(int(at[row]))
            _match(t, label, names[row], table.info(row), twin.info(r), module_of(names[row]), pairs, missing, notes)  # type: ignore[arg-type]
    return Counter({(DTYPE_NAMES[a], DTYPE_NAMES[b]): n for (a, b), n in codes_mixed.items()})


class _Work:
    """The pairs grouped by base tensor, in the base's on-disk order (sequential reads): iterating
    gives (base tensor, its pairs), groups made as they are asked for.

    Held as integer columns: each pair's base key (a PairTable's own `base_at` column, shared)
    and the pairs' reading order, 8 bytes a pair: a list of 100k groups and a dict of them by
    name cost ~150 bytes a pair for the whole run.
    """

    def __init__(self, pairs: Sequence[Pair], base: Checkpoint) -> None:
        if isinstance(pairs, PairTable):
            at = pairs.base_at
        else:
            where = base.tensors.where
            at = array("q", (-1 if (k := where(p.base.name)) is None else k for p in pairs))
        import numpy as np

        self.pairs, self.at = pairs, at
        keys = np.frombuffer(at, dtype=np.int64)
        rows = np.flatnonzero(keys >= 0)
        self.order = array("q")
        self.order.frombytes(rows[np.argsort(keys[rows], kind="stable")].tobytes())

    def __iter__(self) -> Iterator[tuple[TensorInfo, list[Pair]]]:
        pairs, at = self.pairs, self.at
        group: list[Pair] = []
        current = -1
        for i in self.order:
            if at[i] != current:
                if group:
                    yield group[0].base, group
                group, current = [], at[i]
            group.append(pairs[i])
        if group:
            yield group[0].base, group

    def groups(self) -> Iterator[tuple[int, list[int]]]:
        """(base key, the rows of its pairs) in reading order: what the run loop walks, no pair made."""
        at = self.at
        rows: list[int] = []
        current = -1
        for i in self.order:
            if at[i] != current:
                if rows:
                    yield current, rows
                rows, current = [], at[i]
            rows.append(i)
        if rows:
            yield current, rows

    def sizes(self) -> tuple[int, int, int, int]:
        """(most pairs of one base tensor, widest base element, widest tuned element, largest base tensor's
        elements), from the columns: no pair made (see _chunk_plan)."""
        import numpy as np

        from weightsurgeon.format import DTYPE_WIDTHS
        from weightsurgeon.pairs import key_columns

        pairs = self.pairs
        if not isinstance(pairs, PairTable):
            return _group_sizes(self)
        if not self.order:
            return 0, 0, 0, 0
        widths = np.array(DTYPE_WIDTHS, dtype=np.int64)
        keys = np.frombuffer(self.at, dtype=np.int64)[np.frombuffer(self.order, dtype=np.int64)]  # grouped, in order
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        consumers = int(np.diff(np.r_[starts, len(keys)]).max())
        codes, numels = key_columns(pairs.base, keys[starts])
        base_isz, largest = int(widths[codes].max()), int(numels.max())
        other_isz = max((p.other.itemsize for p in pairs.special.kept.values()), default=0)  # FP8 rows: in the columns
        tuned, other_at = np.frombuffer(pairs.tuned, dtype=np.int32), np.frombuffer(pairs.other_at, dtype=np.int64)
        plain = other_at >= 0
        for t, tensors in pairs.maps.items():
            mine = other_at[plain & (tuned == t)]
            if len(mine):
                other_isz = max(other_isz, int(widths[key_columns(tensors, mine)[0]].max()))
        return consumers, base_isz, other_isz, largest


def _group_sizes(work: Iterable[tuple[TensorInfo, list[Pair]]]) -> tuple[int, int, int, int]:
    """_Work.sizes over groups of Pair objects."""
    consumers = base_isz = other_isz = largest = 0
    for info, pairs in work:
        consumers, base_isz, largest = max(consumers, len(pairs)), max(base_isz, info.itemsize), max(largest, info.numel)
        other_isz = max(other_isz, max(p.other.itemsize for p in pairs))
    return consumers, base_isz, other_isz, largest


def _order_pairs(pairs: Sequence[Pair], base: Checkpoint) -> _Work:
    """Group pairs by base tensor, in the base's on-disk order (sequential reads); see _Work."""
    return _Work(pairs, base)


def _missing_error(missing: list[dict]) -> SurgeonError:
    shown = []
    for m in missing[:_SHOWN_MISSING]:
        what = {"base_only": "only in the base", "tuned_only": "only in the tuned model"}.get(m["where"], m["detail"])
        shown.append(f"{m['name']} ({what})")
    more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
    labels = sorted({m["tuned"] for m in missing})
    return SurgeonError(f"{', '.join(labels)}: {len(missing)} tensor(s) do not pair with the base: {'; '.join(shown)}{more}; "
                        f"pass --allow-missing to compare the rest and list these in the report")


# ---------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------

def identify(ckpt: Checkpoint, label: str | None = None, layout: ModelLayout | None = None) -> ModelIdentity:
    """The report's identity of one input: its layout digest, and its Hub identity where that is known.
    `layout`: the checkpoint's, when the caller has it (classifying 100k names again costs time and memory)."""
    from weightsurgeon.identity import hub_identity, layout_digest
    from weightsurgeon.report.model import ModelIdentity

    by_dtype: Counter = Counter()
    for shard in ckpt.shards:
        by_dtype.update(shard.tensors.bytes_by_dtype())
    num_layers = ckpt.config_view.num_layers  # what layout_of takes from the config; the names decide only without it
    if num_layers is None or num_layers < 0:
        num_layers = (layout or layout_of(ckpt.tensors, ckpt.config)).num_layers
    arch = ckpt.config_view.architecture
    path = ckpt.location if ckpt.is_remote else str(ckpt.path.resolve())
    hub = hub_identity(ckpt)
    return ModelIdentity(source=ckpt.source, path=path, layout_digest=layout_digest(ckpt), architecture=arch,
                         num_layers=num_layers, dtype=by_dtype.most_common(1)[0][0] if by_dtype else None,
                         label=label, origin=ckpt.origin, repo=hub["repo"], commit=hub["commit"], shards=hub["shards"])


def default_label(ckpt: Checkpoint) -> str:
    """The folder name; for a Hub id (a snapshot folder named by a commit hash) the repo name."""
    if not Path(ckpt.source).expanduser().exists() and "/" in ckpt.source:
        return ckpt.source.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
    if ckpt.root is not None:
        return ckpt.root.name or str(ckpt.root)
    return Path(ckpt.files[0]).stem


def unique_labels(wanted: Sequence[str]) -> list[str]:
    """Make labels unique by suffixing -2, -3 ... (two fine-tunes in folders of the same name)."""
    seen: Counter = Counter()
    out = []
    for label in wanted:
        seen[label] += 1
        candidate = label if seen[label] == 1 else f"{label}-{seen[label]}"
        while candidate in out:
            seen[label] += 1
            candidate = f"{label}-{seen[label]}"
        out.append(candidate)
    return out


# ---------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------

def _decoded_chunk(pairs: list[Pair]) -> int:
    """Elements per slice of a group with a quantized side: whole FP8 rows and MXFP4 groups on every side."""
    quantum = 1
    for p in pairs:
        if p.transposed:  # one expert at a time: the plain side is read whole and transposed
            return p.numel // (p.base_q or p.other_q).shape[0]  # type: ignore[union-attr]
        for q in (p.base_q, p.other_q):
            if q is not None:
                quantum = math.lcm(quantum, q.quantum)
    return max(quantum, DECODED_CHUNK_ELEMS // quantum * quantum)


def _chunks(info: TensorInfo, pairs: list[Pair], chunk_elems: int) -> Iterator[tuple[int, int]]:
    """One base tensor's chunks in reading order: (first element, end element).

    Elements are logical ones: a quantized tensor's values, whose slices hold whole rows or groups.
    """
    numel, step = info.numel, chunk_elems
    if any(p.decoded for p in pairs):
        numel, step = pairs[0].numel, _decoded_chunk(pairs)
    for start in range(0, numel, step):
        yield start, min(numel, start + step)


def _signal_cause(error: BaseException) -> BaseException | None:
    """The Interrupted/KeyboardInterrupt a signal handler raised, wrapped by numba in SystemErrors."""
    seen = 0
    cause = error.__cause__ or error.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, (SurgeonError, Interrupted, KeyboardInterrupt)):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _surfacing_signals(fn: Any, *args: Any) -> Any:
    """fn(*args), with a Ctrl-C/SIGTERM that arrived inside compiled code surfaced as itself."""
    try:
        return fn(*args)
    except SystemError as e:
        cause = _signal_cause(e)
        if cause is None:
            raise
        raise cause from None


def _chunk_plan(work: _Work, chunk_bytes: int, bins: int, bounded: bool = False) -> tuple[int, int, int, int]:
    """(chunk elements, base buffer bytes, tuned buffer bytes, tuned buffers), the buffers bounded in total.

    A chunk is `chunk_bytes` of each side: the kernel reads the files itself, into no buffer of
    ours, and a chunk of the several-tuned-models diff cut to fit the buffers (16 MiB a side with
    three) left the O_DIRECT lanes too few spans per call to overlap reading and computing. Only
    the pairs read here (other dtypes, a failed kernel read) use the buffers, a piece at a time
    (_ChunkReader._run_buffered). `bounded`: chunks no longer than the buffers (remote inputs,
    whose fetched pieces are lent straight to the kernel beside local sides read into them).
    """
    consumers, base_isz, other_isz, largest = work.sizes()
    # Keep every buffer together under MAX_BUFFER_BYTES (many tuned models), and the
    # kernel's per-part histograms of one call under HIST_BUDGET_BYTES (--bins 100000).
    per_elem = base_isz + consumers * other_isz
    parts = max(1, HIST_BUDGET_BYTES // (8 * bins))
    elems = max(1, min(chunk_bytes // max(base_isz, other_isz), parts * PART, max(largest, 1)))
    buffered = max(1, min(elems, MAX_BUFFER_BYTES // per_elem))
    return (buffered if bounded else elems), buffered * base_isz, buffered * other_isz, consumers


class _ChunkReader:
    """Computes one chunk of a base tensor against each paired tuned tensor.

    Where both stored dtypes allow it the kernel reads the files itself (see
    kernels.accumulate_delta_from_files); otherwise, or when the kernel's read fails, the
    chunk is read here into buffers allocated on first need and reused, which also turns a
    failed read into the right error message.
    """

    def __init__(self, base: Checkpoint, others: list[Checkpoint], base_bytes: int, other_bytes: int,
                 consumers: int, histogram: tuple[int, float] = (200, 1.0)) -> None:
        from weightsurgeon.kernels.delta import accumulate_delta, accumulate_delta_from_files, reads_files

        self.base, self.others = base, others
        self.lends = base.is_remote or any(c.is_remote for c in others)  # fetched pieces computed in place
        self.lora_blocks: Any = None  # adapter_diff.LoraBlocks on the first adapted tensor
        self.sizes = (base_bytes, other_bytes, consumers)
        self.buffers: tuple[np.ndarray, list[np.ndarray]] | None = None
        self.batch: Any = None  # quant_diff.PartBatch, on the first quantized pair
        self.histogram = histogram
        self.accumulate, self.from_files, self.reads_files = accumulate_delta, accumulate_delta_from_files, reads_files
        from weightsurgeon.directreads import DirectReads

        self.direct = DirectReads()  # O_DIRECT for the kernel's reads of ranges the page cache lacks

    def _buffers(self) -> tuple[np.ndarray, list[np.ndarray]]:
        import numpy as np

        if self.buffers is None:
            base_bytes, other_bytes, consumers = self.sizes
            self.buffers = (np.empty(base_bytes, dtype=np.uint8), [np.empty(other_bytes, dtype=np.uint8) for _ in range(consumers)])
        return self.buffers

    def _scratch(self, key: str, nbytes: int) -> np.ndarray:
        """A reused byte buffer for the decoded path (one per role, grown when a larger slice needs it)."""
        import numpy as np

        if not hasattr(self, "scratch"):
            self.scratch: dict[str, np.ndarray] = {}
        buf = self.scratch.get(key)
        if buf is None or buf.size < nbytes:
            buf = self.scratch[key] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return buf[:nbytes]

    def _values(self, ckpt: Checkpoint, info: TensorInfo, q: QuantTensor | None, start: int, stop: int, wide: bool,
                role: str, transposed: bool = False) -> tuple[np.ndarray, int]:
        """Elements [start, stop) of one side as float32 (float64 when `wide`) values, and the bytes read
        (`transposed`: [start, stop) is one expert of a plain side stored [in, out], see _expert_transposed)."""
        import numpy as np

        from weightsurgeon.kernels.decode import decode_to_float32, decode_to_float64
        from weightsurgeon.kernels.quant import dequantize_fp8, dequantize_mxfp4

        if q is None:
            raw = self._scratch(role, (stop - start) * info.itemsize)
            ckpt.read_into(info, start * info.itemsize, raw)
            if transposed:  # one expert stored [in, out]: its values in [out, in] order, as the MXFP4 side's
                _, rows, cols = info.shape
                raw = np.ascontiguousarray(raw.view(f"V{info.itemsize}").reshape(rows, cols).T).view(np.uint8).reshape(-1)
            return (decode_to_float64 if wide else decode_to_float32)(raw, info.dtype), raw.size
        scale = q.scale  # made on access (quant.QuantTensor): once per slice
        if q.scheme == "mxfp4":
            g0, g1 = start // 32, stop // 32
            blocks, scales = self._scratch(role, (g1 - g0) * 16), self._scratch(role + "s", g1 - g0)
            ckpt.read_into(info, g0 * 16, blocks)
            ckpt.read_into(scale, g0, scales)
            values = dequantize_mxfp4(blocks, scales, self._scratch(role + "v", (stop - start) * 4).view(np.float32))
        else:
            codes = self._scratch(role, stop - start)
            ckpt.read_into(info, start, codes)
            if q.scheme == "fp8-tensor":
                scale_raw = self._scratch(role + "s", scale.nbytes)
                ckpt.read_into(scale, 0, scale_raw)
                scales = decode_to_float32(scale_raw, scale.dtype).reshape(1, 1)
                values = dequantize_fp8(codes, info.dtype, scales, (1 << 62, 1), 0, 1,
                                        self._scratch(role + "v", (stop - start) * 4).view(np.float32))
            else:
                br = q.block[0]
                r0, r1 = start // q.cols, stop // q.cols
                s0, s1 = r0 // br, -(-r1 // br)
                scols = scale.shape[-1]
                width = scale.itemsize
                scale_raw = self._scratch(role + "s", (s1 - s0) * scols * width)
                ckpt.read_into(scale, s0 * scols * width, scale_raw)
                scales = decode_to_float32(scale_raw, scale.dtype).reshape(s1 - s0, scols)
                values = dequantize_fp8(codes, info.dtype, scales, q.block, r0, q.cols,
                                        self._scratch(role + "v", (stop - start) * 4).view(np.float32))
            blocks = codes
        nbytes = blocks.size + scale.nbytes * (stop - start) // max(q.numel, 1)
        return (values.astype(np.float64) if wide else values), nbytes

    def run_decoded(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int,
                    stats: dict[tuple[int, str], Any], groups: dict[tuple[int, str], Any]) -> int:
        """`run` for a group with a quantized side: queued for the kernel, which reads and decodes both
        sides itself (quant_diff.PartBatch); pairs it cannot read (a remote side, a float64 side)
        are decoded to values here, then the kernel runs on the values."""
        nbytes = 0
        base_values: dict[tuple[bool, bool], np.ndarray] = {}
        batch = self._batch()
        counted_base = False
        for p in pairs:
            if batch.accepts(p):
                base_bytes, other_bytes = batch.add(p, start, stop, stats[(p.tuned, p.name)], groups.get((p.tuned, p.name)))
                nbytes += other_bytes + (base_bytes if not counted_base else 0)
                counted_base = True
                continue
            wide = ((p.base_q is None and dtype_info(p.base.dtype).work == "f8")
                    or (p.other_q is None and dtype_info(p.other.dtype).work == "f8"))
            key = (wide, p.transposed and p.base_q is None)
            if key not in base_values:
                first = not base_values
                base_values[key], n = self._values(self.base, p.base, p.base_q, start, stop, wide, "base" + str(key), key[1])
                nbytes += n if first and not counted_base else 0
            other, n = self._values(self.others[p.tuned], p.other, p.other_q, start, stop, wide, "other",
                                    p.transposed and p.other_q is None)
            nbytes += n
            work = "F64" if wide else "F32"
            self.accumulate(stats[(p.tuned, p.name)], base_values[key], other, work, work,
                            groups.get((p.tuned, p.name)), start)
        return nbytes

    def _batch(self) -> Any:
        """The queue of parts the kernel decodes itself (created on the first quantized pair)."""
        if self.batch is None:
            from weightsurgeon.quant_diff import PartBatch

            self.batch = PartBatch(self.base, self.others, *self.histogram)
        return self.batch

    def close(self) -> None:
        """Close the O_DIRECT descriptors."""
        self.direct.close()

    def flush(self) -> None:
        """Compute whatever is still queued: every statistic is complete afterwards."""
        if self.batch is not None:
            self.batch.flush()

    def then(self, callback: Any, *args: Any) -> None:
        """callback(*args) once the statistics of every chunk handed to `run` so far are complete
        (quantized pairs are computed in batches: see quant_diff.PartBatch.then)."""
        if self.batch is None:
            callback(*args)
        else:
            self.batch.then(callback, *args)

    def run(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int, stats: dict[tuple[int, str], Any],
            groups: dict[tuple[int, str], Any], lend: bool = True) -> int:
        """Fold elements [start, stop) of every pair into its stats (and its per-head/expert
        sums where `groups` has them); returns bytes read."""
        if any(p.decoded for p in pairs):
            return self.run_decoded(info, pairs, start, stop, stats, groups)
        count = stop - start
        nbytes = count * info.itemsize
        if lend and self.lends and all(p.kind == "file" for p in pairs):
            self._run_lent(info, pairs, start, stop, stats, groups)
            return nbytes + sum(count * p.other.itemsize for p in pairs)
        together = self._run_together(pairs, start, count, stats, groups) if len(pairs) > 1 else ()
        here: list[int] = []  # pairs read into our buffers
        for k, p in enumerate(pairs):
            target = stats[(p.tuned, p.name)]
            units = groups.get((p.tuned, p.name))
            if k in together:
                nbytes += count * p.other.itemsize
                continue
            if p.kind == "lora":
                from weightsurgeon.adapter_diff import LoraBlocks

                self.lora_blocks = self.lora_blocks or LoraBlocks()
                self.lora_blocks.run(target, self.base, self.others[p.tuned], info, p.lora, start, stop, self.accumulate, units)
                continue
            nbytes += 0 if p.kind == "same" else count * p.other.itemsize
            source = self.base if p.kind == "same" else self.others[p.tuned]
            if self.reads_files(p.base.dtype, p.other.dtype):
                at_a, at_b = self.base.locate(p.base), source.locate(p.other)
                if at_a is not None and at_b is not None and self.from_files(
                        target, at_a[0], at_a[1] + start * info.itemsize, p.base.dtype,
                        at_b[0], at_b[1] + start * p.other.itemsize, p.other.dtype, count, units, start, self.direct):
                    continue
            here.append(k)
        if here:
            self._run_buffered(info, [pairs[k] for k in here], start, stop, stats, groups, here)
        return nbytes

    def _run_buffered(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int,
                      stats: dict[tuple[int, str], Any], groups: dict[tuple[int, str], Any], slots: list[int]) -> None:
        """`run` for the pairs the kernel does not read itself: read here into the reused buffers, a
        piece of whole kernel parts at a time when the chunk is longer than the buffers, each pair's
        per-part rows folded once for the chunk (kernels.fold_rows), so the numbers are those of one
        kernel call on the whole chunk. slots[i]: pairs[i]'s buffer."""
        from weightsurgeon.kernels.delta import chunk_rows, fold_rows

        base_buf, other_bufs = self._buffers()
        room = min(len(base_buf) // info.itemsize, min(len(other_bufs[k]) // p.other.itemsize for k, p in zip(slots, pairs)))
        step = room // PART * PART if room >= PART else max(1, room)
        pieces: list[list[tuple]] = [[] for _ in pairs]
        for at in range(start, stop, step):
            end = min(stop, at + step)
            base_view = base_buf[:(end - at) * info.itemsize]
            self.base.read_into(info, at * info.itemsize, base_view)
            for i, (k, p) in enumerate(zip(slots, pairs)):
                source = self.base if p.kind == "same" else self.others[p.tuned]
                view = other_bufs[k][:(end - at) * p.other.itemsize]
                source.read_into(p.other, at * p.other.itemsize, view)
                target = stats[(p.tuned, p.name)]
                rows = chunk_rows(base_view, view, p.base.dtype, p.other.dtype, target.bins, target.clip,
                                  groups.get((p.tuned, p.name)), at)
                if rows is not None:
                    pieces[i].append(rows)
        for p, rows in zip(pairs, pieces):
            if rows:
                fold_rows(stats[(p.tuned, p.name)], rows, groups.get((p.tuned, p.name)))


    def _run_together(self, pairs: list[Pair], start: int, count: int, stats: dict[tuple[int, str], Any],
                      groups: dict[tuple[int, str], Any]) -> set[int]:
        """Several tuned models against one base tensor (`surgeon diff BASE T1 T2 ...`): the pairs the file
        kernel can read, computed in one launch that reads and decodes each base part once for all of
        them (kernels.accumulate_tuned_from_files) instead of once per tuned model. Returns the indices
        into `pairs` it computed; the rest (and all of them after a failed read) go one by one."""
        from weightsurgeon.kernels.delta import accumulate_tuned_from_files
        from weightsurgeon.kernels.decode import work_dtype

        picked: list[int] = []
        key = None
        for k, p in enumerate(pairs):
            if p.kind != "file" or p.base != pairs[0].base or not self.reads_files(p.base.dtype, p.other.dtype):
                continue
            units = groups.get((p.tuned, p.name))
            this = (work_dtype(p.base.dtype, p.other.dtype), None if units is None else (units.run, units.count))
            if key is None:
                key = this
            if this == key and self.others[p.tuned].locate(p.other) is not None:
                picked.append(k)
        at_a = self.base.locate(pairs[0].base)
        if len(picked) < 2 or at_a is None:
            return set()
        itemsize = pairs[0].base.itemsize
        sides = []
        for k in picked:
            p = pairs[k]
            fd, pos = self.others[p.tuned].locate(p.other)
            sides.append((fd, pos + start * p.other.itemsize, p.other.dtype))
        ok = accumulate_tuned_from_files([stats[(pairs[k].tuned, pairs[k].name)] for k in picked], at_a[0],
                                         at_a[1] + start * itemsize, pairs[0].base.dtype, sides, count,
                                         [groups.get((pairs[k].tuned, pairs[k].name)) for k in picked], start,
                                         self.direct)
        return set(picked) if ok else set()

    def _run_lent(self, info: TensorInfo, pairs: list[Pair], start: int, stop: int,
                  stats: dict[tuple[int, str], Any], groups: dict[tuple[int, str], Any]) -> None:
        """`run` on the remote sides' fetch buffers in place (no copy), where every remote side lends
        its bytes; local sides are read as usual. Where a side cannot lend (a piece nobody
        fetched yet, an element cut by a piece's end), up to the end of that piece is read
        into our buffers instead."""
        import numpy as np

        sides = [(self.base, info)] + [(self.others[p.tuned], p.other) for p in pairs]
        while start < stop:
            n, unlent = stop - start, 0
            for ckpt, t in sides:
                if ckpt.is_remote:
                    span, ok = ckpt.lendable(t, start * t.itemsize)
                    whole = span // t.itemsize if ok else 0
                    if not whole:
                        unlent = max(unlent, -(-span // t.itemsize))
                    n = min(n, whole)
            if n == 0:
                step = min(stop, start + unlent) if unlent else stop
                self.run(info, pairs, start, step, stats, groups, lend=False)
                start = step
                continue
            arrays = []
            for k, (ckpt, t) in enumerate(sides):
                if ckpt.is_remote:
                    arrays.append(np.frombuffer(ckpt.lend(t, start * t.itemsize, n * t.itemsize), dtype=np.uint8))
                else:
                    base_buf, other_bufs = self._buffers()
                    view = (base_buf if k == 0 else other_bufs[k - 1])[:n * t.itemsize]
                    ckpt.read_into(t, start * t.itemsize, view)
                    arrays.append(view)
            for p, other in zip(pairs, arrays[1:]):
                self.accumulate(stats[(p.tuned, p.name)], arrays[0], other, p.base.dtype, p.other.dtype,
                                groups.get((p.tuned, p.name)), start)
            del arrays
            for ckpt, t in sides:
                if ckpt.is_remote:
                    ckpt.give_back(t, start * t.itemsize, n * t.itemsize)
            start += n


def _check_unchanged(base: Checkpoint, others: list[Checkpoint]) -> None:
    for ckpt in (base, *others):
        ckpt.check_unchanged()


def _fetches(work: Iterable[tuple[TensorInfo, list[Pair]]], base: Checkpoint,
             others: list[Checkpoint]) -> Iterator[tuple[Checkpoint, Path, int, int]]:
    """(checkpoint, file, begin, end) of every read, in reading order: what a remote input prefetches."""
    for info, pairs in work:
        yield base, info.file, info.begin, info.end
        for p in pairs:
            yield others[p.tuned], p.other.file, p.other.begin, p.other.begin + p.numel * p.other.itemsize


def _prefetch(work: Iterable[tuple[TensorInfo, list[Pair]]], base: Checkpoint, others: list[Checkpoint]):
    """Remote inputs fetch what the loop will read ahead of it, a bounded window in flight (remote.Prefetch)."""
    if not (base.is_remote or any(c.is_remote for c in others)):
        return nullcontext()
    from weightsurgeon.remote import prefetching

    return prefetching(_fetches(work, base, others))


# ---------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------

def _as_checkpoint(source: Any, opened: list[Checkpoint]) -> Checkpoint:
    if isinstance(source, Checkpoint):
        return source
    ckpt = open_checkpoint(source)
    opened.append(ckpt)
    return ckpt


def _check_histogram(bins: int, clip: float) -> tuple[int, float]:
    try:
        return check_histogram(bins, clip)
    except ValueError as e:
        raise SurgeonError(f"--{e}") from e  # the option the user typed: --bins, --clip


@dataclass
class DiffPlan:
    """Everything decided before a byte of tensor data is read: pairs, mismatches, notes, options."""

    base: Checkpoint
    others: list[Checkpoint]
    labels: list[str]
    pairs: PairTable | list[Pair]  # plan_pairs: a PairTable; adapter pairs: a list
    missing: list[dict]
    notes: list[str]
    warnings: list[str]
    options: dict
    layout: ModelLayout | None = None  # the base's, from its config (DeepSeek's MTP layers are not decoder layers)

    @property
    def total_bytes(self) -> int:
        """Bytes the diff reads: each paired base tensor once, plus every tuned side."""
        base: dict[str, int] = {}
        total = 0
        pairs = self.pairs
        for i, p in _special_rows(pairs):
            base[p.base.name] = _side_bytes(p.base, p.base_q, p.base.numel)
            total += _side_bytes(p.other, p.other_q, p.numel) if p.kind == "file" else 0
        if isinstance(pairs, PairTable):
            plain = _PlainBytes(pairs)
            # a base tensor counted once, whether its pairs are special or plain rows
            total += plain.base_unique - sum(plain.base_bytes_of(pairs.base.where(name)) for name in base)
            total += int(plain.other.sum())
        total += sum(base.values())
        if self.options.get("spectrum"):
            from weightsurgeon.spectrum import spectrum_pairs

            total += sum(p.numel * (p.base.itemsize + p.other.itemsize) for p in spectrum_pairs(self, self.options["spectrum"]))
        return total

    def read_bytes(self) -> dict[int, int]:
        """Bytes each input reads: -1 the base (each paired base tensor once), i the i-th tuned model."""
        per: dict[int, int] = {}
        seen: set[str] = set()
        pairs = self.pairs
        for i, p in _special_rows(pairs):
            if p.base.name not in seen:
                seen.add(p.base.name)
                per[-1] = per.get(-1, 0) + p.base.nbytes
            per[p.tuned] = per.get(p.tuned, 0) + p.numel * p.other.itemsize
        if isinstance(pairs, PairTable):
            plain = _PlainBytes(pairs)
            # a base tensor counted once, whether its pairs are special or plain rows
            shared = sum(plain.base_bytes_of(pairs.base.where(name)) for name in seen)
            if plain.rows.size:
                per[-1] = per.get(-1, 0) + plain.base_unique - shared
            for t, nbytes in plain.per_tuned().items():
                per[t] = per.get(t, 0) + nbytes
        return per


def _special_rows(pairs: Sequence[Pair]) -> Iterator[tuple[int, Pair]]:
    """(row, Pair) of every pair of a list, or of a PairTable's special rows only (its plain rows: _PlainBytes)."""
    if not isinstance(pairs, PairTable):
        return enumerate(pairs)  # type: ignore[arg-type]
    special = pairs.special
    return ((i, special[i]) for i in special)


class _PlainBytes:
    """Bytes of a PairTable's plain rows, by numpy over the header columns (a Python pass over
    100k pairs cost ~0.4 CPU-s): `rows`, each row's tuned model (`tuned`) and tuned-side bytes
    (`other`), and the base side's bytes with each base tensor counted once (`base_unique`)."""

    def __init__(self, pairs: PairTable) -> None:
        import numpy as np

        plain = np.frombuffer(pairs.quant, np.uint16) == 0  # FP8 rows carry a nonzero code
        if pairs.special.kept:
            plain[np.fromiter(pairs.special.kept, np.int64)] = False
        self.rows = np.flatnonzero(plain)
        self.tuned = np.frombuffer(pairs.tuned, np.int32)[self.rows]
        numel = np.frombuffer(pairs.numel, np.int64)[self.rows]
        other_at = np.frombuffer(pairs.other_at, np.int64)[self.rows]
        self.other = np.zeros(self.rows.size, np.int64)
        for t in np.unique(self.tuned):
            sel = self.tuned == t
            self.other[sel] = numel[sel] * _key_columns(pairs.maps[int(t)], other_at[sel], widths=True)
        self._base = pairs.base
        self._base_keys = np.unique(np.frombuffer(pairs.base_at, np.int64)[self.rows])
        self.base_unique = int(_key_columns(pairs.base, self._base_keys, widths=False).sum())

    def base_bytes_of(self, key: int | None) -> int:
        """The stored bytes of base key `key` if a plain row reads it, else 0."""
        import numpy as np

        if key is None or not self._base_keys.size:
            return 0
        at = int(np.searchsorted(self._base_keys, key))
        if at == self._base_keys.size or self._base_keys[at] != key:
            return 0
        return _nbytes(self._base, key)

    def per_tuned(self) -> dict[int, int]:
        import numpy as np

        return {int(t): int(self.other[self.tuned == t].sum()) for t in np.unique(self.tuned)}


def _key_columns(tensors: Any, keys: Any, widths: bool) -> Any:
    """Per TensorMap key (shard << 32 | row): its element width (`widths`) or its stored bytes."""
    import numpy as np

    from weightsurgeon.format import DTYPE_WIDTHS

    out = np.zeros(len(keys), np.int64)
    shard, row = keys >> 32, keys & 0xFFFFFFFF
    tables = tensors.tables
    width_of = np.asarray(DTYPE_WIDTHS, np.int64)
    for s in np.unique(shard):
        sel = shard == s
        codes, _, _, begins, ends = tables[int(s)].columns()
        r = row[sel]
        if widths:
            out[sel] = width_of[np.frombuffer(codes, np.uint8)[r]]
        else:
            out[sel] = np.frombuffer(ends, np.int64)[r] - np.frombuffer(begins, np.int64)[r]
    return out


def _nbytes(tensors: Any, at: int) -> int:
    """Stored bytes of the tensor at key `at` of a TensorMap."""
    table, row = tensors.table_of(at)
    _, _, _, begins, ends = table.columns()
    return ends[row] - begins[row]


def _uncomparable_dtypes(base: Checkpoint, others: Sequence[Checkpoint]) -> bool:
    """Whether any input stores a dtype whose values cannot be compared (complex), from the dtype columns."""
    from weightsurgeon.format import DTYPE_NAMES

    bad = {code for code, name in enumerate(DTYPE_NAMES) if dtype_info(name).work is None}
    return bool(bad) and any(not bad.isdisjoint(table.columns()[0]) for c in (base, *others) for table in c.tensors.tables)


def plan_diff(base: Checkpoint, others: Sequence[Checkpoint], modules: str | None = None, layers: str | None = None,
              bins: int = 200, clip: float = 1.0, allow_missing: bool = False, labels: Sequence[str] | None = None,
              every: int = 5, experts: str | None = None, spectrum: str | None = None,
              adapters: Sequence[Any] | None = None) -> DiffPlan:
    """Pair, select and check, from headers only; raises SurgeonError on mismatches unless allow_missing.

    `adapters`, one per tuned model, holds the `adapter.Adapter` of a tuned model that is a
    PEFT LoRA adapter (its Checkpoint is then the adapter's weights file), else None.
    """
    bins, clip = _check_histogram(bins, clip)
    others = list(others)
    if not others:
        raise SurgeonError("nothing to compare: give at least one tuned model")
    if labels is not None and len(labels) != len(others):
        raise SurgeonError(f"{len(labels)} label(s) for {len(others)} tuned model(s): give one label per tuned model")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise SurgeonError(f"--every must be a positive integer, got {every!r}")
    adapters = list(adapters) if adapters is not None else [None] * len(others)
    names = unique_labels(list(labels) if labels is not None else
                          [a.root.resolve().name if a is not None else default_label(c) for c, a in zip(others, adapters)])
    base_layout = layout_of(base.tensors, base.config)
    selector = parse_modules(modules) if modules is not None else None
    layer_set = parse_layers(layers, base_layout.num_layers) if layers is not None else None

    pairs = PairTable(base.tensors, {t: c.tensors for t, c in enumerate(others)})
    missing: list[dict] = []
    notes: list[str] = []
    for t, (ckpt, label) in enumerate(zip(others, names)):
        if adapters[t] is not None:
            from weightsurgeon.adapter_diff import plan_adapter_pairs

            plan = plan_adapter_pairs(base, ckpt, adapters[t], t, label, base_layout)
        else:
            plan = plan_pairs(base, ckpt, t, label, base_layout)
        pairs.extend(plan.pairs)
        missing += plan.missing
        notes += plan.notes
    expert_set = parse_experts(experts)
    if selector is not None or layer_set is not None or expert_set is not None:
        pair_names = list(pairs.names())
        candidates = list(dict.fromkeys(pair_names + [m["name"] for m in missing]))
        chosen = set(select_names(candidates, selector or parse_modules("re:."), layer_set, base_layout.num_layers,
                                  flag="--module" if selector is not None else "--layers", layout=base_layout,
                                  experts=expert_set))
        pairs = pairs.subset(i for i, name in enumerate(pair_names) if name in chosen)
        del pair_names
        missing = [m for m in missing if m["name"] in chosen]
    if missing and not allow_missing:
        raise _missing_error(missing)
    if any(a is not None for a in adapters) and any(p.decoded for p in pairs.special.values()):
        raise SurgeonError("a LoRA adapter and a quantized (FP8/MXFP4) model cannot be diffed in one run: "
                           "diff them against the base separately")
    if not pairs:
        raise SurgeonError("no tensor pairs to compare: the models share no tensor of the same shape; "
                           "diff models of one architecture and size")
    if _uncomparable_dtypes(base, others):  # only then a record per pair, to name the first such tensor
        for p in pairs:
            for side, info in (("base", p.base), (names[p.tuned], p.other)):
                if dtype_info(info.dtype).work is None:
                    raise SurgeonError(f"{side}: tensor {info.name!r} is {info.dtype}: complex values cannot be "
                                       f"compared (select other modules with --module)")
    warnings = list(base.warnings) + [w for c in others for w in c.warnings]
    if base_layout.other:
        warnings.append(f"{len(base_layout.other)} base tensor name(s) not recognised as a known module, "
                        f"reported as module 'other' (e.g. {base_layout.other[0]!r})")
    options = {"bins": bins, "clip": clip, "modules": modules, "layers": layers, "experts": experts, "every": every,
               "allow_missing": allow_missing, "spectrum": spectrum}
    plan = DiffPlan(base, others, names, pairs, missing, notes, warnings, options, base_layout)
    if spectrum is not None:
        from weightsurgeon.spectrum import spectrum_pairs

        if not spectrum_pairs(plan, spectrum):
            raise SurgeonError(f"--spectrum {spectrum}: selects no 2-D tensor among the compared ones")
    return plan


def _unit_groups(plan: DiffPlan) -> dict[tuple[int, str], Any]:
    """Per-head / per-stacked-expert accumulators of the pairs that have units (see units.py)."""
    import numpy as np

    from weightsurgeon.kernels.delta import Groups
    from weightsurgeon.units import HEAD_MODULES, units_of

    out = {}
    locations = plan.layout.locations if plan.layout is not None else None
    with_units = [MODULE_ID[m] for m in MODULES if m in HEAD_MODULES or m.startswith("expert_")]
    pairs = plan.pairs
    candidates = np.arange(len(pairs), dtype=np.int64)
    if _columnar(locations):  # a plain pair's name is its base tensor's: the layout's row is the base position
        plain = pairs.plain_mask(candidates)
        at = _positions(pairs.base, _column(pairs.base_at)[plain])
        # the common case, decided on the columns: a layer's tensor with no units, or an expert stored on its own
        no_units = (_column(locations.layers)[at] >= 0) & (~np.isin(_column(locations.module_ids)[at], with_units)
                                                           | (_column(locations.experts)[at] >= 0))
        candidates = np.sort(np.concatenate([candidates[~plain], candidates[plain][~no_units]]))
    for i in candidates.tolist():
        p = pairs[i]
        row = None if locations is None else locations.row(p.name)
        if row is None or locations.layers[row] < 0:  # type: ignore[union-attr]  # the name's own classification (DeepSeek's MTP layers included)
            loc = classify(p.name)
        elif locations.module_ids[row] not in with_units or locations.experts[row] >= 0:  # type: ignore[union-attr]
            continue  # no heads, or an expert stored as a tensor of its own (its rows are its units)
        else:
            loc = locations.location(row)  # type: ignore[union-attr]
        # a quantized side's units are those of its values (logical shape), streamed in logical order
        shape = p.base_q.shape if p.base_q is not None else p.base.shape
        units = units_of(loc, shape, plan.base.config) if not p.added_rows else None
        if units is not None:
            out[(p.tuned, p.name)] = Groups(units.run, units.count, units.kind)
    return out


def _positions(tensors: Any, keys: Any) -> Any:
    """The TensorMap positions (the layout's rows) of keys (numpy int64, shard << 32 | row)."""
    import numpy as np

    starts = np.array([tensors.position_at(s << 32) for s in range(len(tensors.tables))], dtype=np.int64)
    return starts[keys >> 32] + (keys & 0xFFFFFFFF)


def _column(values: Any) -> Any:
    """A numpy view of an array.array column (no copy)."""
    import numpy as np

    return np.frombuffer(values, dtype=values.typecode)


def _columnar(locations: Any) -> bool:
    """Whether a layout's rows can be read by numpy (a damaged name's layer beyond 64 bits makes its column a list)."""
    from weightsurgeon.layout import Locations

    return isinstance(locations, Locations) and all(isinstance(c, array) for c in (
        locations.layers, locations.experts, locations.module_ids, locations.param_ids))


class _LazyStats(dict):
    """Per-pair DeltaStats, made when a pair's first chunk arrives and dropped when its row is
    taken: a 100k-tensor diff never holds 100k histograms."""

    def __init__(self, bins: int, clip: float) -> None:
        super().__init__()
        from weightsurgeon.kernels.stats import DeltaStats

        self.empty = lambda: DeltaStats.empty(bins, clip)

    def __missing__(self, key: tuple[int, str]) -> Any:
        value = self[key] = self.empty()
        return value


class _Rows:
    """Each pair's row once its last chunk is done: into the module totals, and streamed to
    report.csv + histograms.safetensors in `folder` (or kept in memory when there is none).

    Rows travel in blocks (kernels/stats.StatsColumns): a batch of small pairs arrives as
    one (`done_block`); rows computed one at a time (`done`) wait in a short queue that
    becomes a block, ahead of the next batch so that the order stays the order of completion.
    """

    QUEUE = 1024  # rows computed one at a time that make a block

    def __init__(self, plan: DiffPlan, stats: _LazyStats, groups: dict[tuple[int, str], Any], folder: Path | None) -> None:
        from weightsurgeon.report.model import ModuleTotals
        from weightsurgeon.report.rows import RowWriter
        from weightsurgeon.report.units import UnitTotals

        self.plan, self.stats, self.groups = plan, stats, groups
        self.bins, self.clip = plan.options["bins"], plan.options["clip"]
        self.locations = plan.layout.locations if plan.layout is not None else {}
        self.totals = ModuleTotals(self.bins, self.clip)
        self.kept: list[Any] = []  # TensorDiff rows when nothing is streamed
        self.units = UnitTotals()
        self.flagged: set[tuple[int, str]] = set()  # pairs holding NaN/Inf
        self.queue: list[tuple[int, Any]] = []  # (PairTable row, DeltaStats)
        self.writer = None if folder is None else RowWriter(folder, len(plan.pairs), self.bins,
                                                            max(plan.pairs.numel))

    def done(self, rows: list[int]) -> None:
        """Pairs (rows of the plan's PairTable) whose DeltaStats (in `stats`) are complete."""
        pairs = self.plan.pairs
        for i in rows:
            stats = self.stats.pop((pairs.tuned[i], pairs.name(i)), None)
            self.queue.append((i, stats if stats is not None else self.stats.empty()))
        if len(self.queue) >= self.QUEUE:
            self.close()

    def done_block(self, rows: list[int], columns: Any) -> None:
        """Pairs computed together, their statistics as columns (row j: pair rows[j])."""
        self.close()
        self._block(rows, columns)

    def close(self) -> None:
        """Take the queued rows: every row handed over so far is in the totals and the files."""
        if self.queue:
            from weightsurgeon.kernels.stats import StatsColumns

            queue, self.queue = self.queue, []
            self._block([i for i, _ in queue], StatsColumns.of([s for _, s in queue], self.bins))

    def _meta(self, p: Pair, loc: Any) -> tuple:
        """The row's report/rows.META tuple (`loc`: the name's Location)."""
        return (self.plan.labels[p.tuned], p.name, loc.layer, loc.module, loc.param, _side_label(p.base, p.base_q),
                _side_label(p.other, p.other_q), p.base_q.shape if p.base_q is not None else p.base.shape, p.numel,
                p.added_rows, p.lora.rank if p.lora is not None else None)

    def _metas(self, rows: Any) -> Any:
        """The rows' META as columns (report/rows.RowMeta), with each row's expert number.

        A plain pair's row comes from the columns, gathered by numpy: its name, shape and dtypes
        from the header tables, its place from the layout's columns (its name is a base name: the
        layout's row is the base position). A special one from its Pair and the name's Location."""
        import numpy as np

        from weightsurgeon.format import DTYPE_NAMES
        from weightsurgeon.kernels._floattext import NULL
        from weightsurgeon.report.rows import RowMeta

        pairs, locations = self.plan.pairs, self.locations
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        plain = pairs.plain_mask(rows) if _columnar(locations) else np.zeros(n, dtype=bool)
        meta = RowMeta(list(self.plan.labels), _column(pairs.tuned)[rows].astype(np.int64), [""] * n,
                       np.full(n, -1, dtype=np.int64), list(MODULES), np.zeros(n, dtype=np.int64),
                       list(locations.params) if plain.any() else [], np.zeros(n, dtype=np.int64), list(DTYPE_NAMES),
                       np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), [], np.zeros(n, dtype=np.int64),
                       _column(pairs.numel)[rows], np.zeros(n, dtype=np.int64), np.full(n, NULL, dtype=np.int64),
                       np.full(n, -1, dtype=np.int64))
        if plain.any():
            self._plain_metas(meta, np.flatnonzero(plain), rows[plain])
        coded: dict[int, dict] = {}  # a special row's text -> its code, per column
        for j in np.flatnonzero(~plain).tolist():
            i = int(rows[j])
            p = pairs.special.get(i)
            p = p if p is not None else pairs[i]
            loc = locations.get(p.name)
            own = loc if loc is not None and loc.layer is not None else classify(p.name)  # DeepSeek's MTP layers
            tuned, name, layer, module, param, dtype, dtype_tuned, shape, numel, added_rows, lora_rank = self._meta(
                p, loc if loc is not None else own)
            meta.names[j] = name
            meta.layer[j] = -1 if layer is None else layer
            meta.added_rows[j], meta.lora_rank[j] = added_rows, NULL if lora_rank is None else lora_rank
            meta.expert[j] = -1 if own.expert is None else own.expert
            for column, names, value in ((meta.module, meta.modules, module), (meta.param, meta.params, param),
                                         (meta.dtype, meta.dtypes, dtype), (meta.dtype_tuned, meta.dtypes, dtype_tuned),
                                         (meta.shape, meta.shapes, shape)):
                codes = coded.get(id(names))
                if codes is None:  # the names so far, the first of equal ones winning
                    codes = coded[id(names)] = {v: k for k, v in reversed(list(enumerate(names)))}
                if value not in codes:
                    codes[value] = len(names)
                    names.append(value)
                column[j] = codes[value]
        return meta

    def _plain_metas(self, meta: Any, at: Any, rows: Any) -> None:
        """Fill rows `at` of `meta` with plain pairs `rows`: numpy over the header and layout columns."""
        import numpy as np

        pairs, locations = self.plan.pairs, self.locations
        keys = _column(pairs.base_at)[rows]
        for s in np.unique(keys >> 32).tolist():  # base shards
            table = pairs.base.tables[s]
            dtypes, shape_ids, shapes, _, _ = table.columns()
            mine = np.flatnonzero(keys >> 32 == s)
            r = keys[mine] & 0xFFFFFFFF  # TensorMap keys: shard << 32 | row
            meta.dtype[at[mine]] = _column(dtypes)[r]
            shape_ids = _column(shape_ids)[r]
            used, local = np.unique(shape_ids, return_inverse=True)
            meta.shape[at[mine]] = len(meta.shapes) + local.reshape(-1)
            meta.shapes.extend(shapes[k] for k in used.tolist())
            names, got = table.names, meta.names
            for j, k in zip(at[mine].tolist(), r.tolist()):
                got[j] = names[k]
        others, tuned = _column(pairs.other_at)[rows], meta.tuned[at]
        for t, s in set(zip(tuned.tolist(), (others >> 32).tolist())):  # (tuned model, its shard)
            mine = np.flatnonzero((tuned == t) & (others >> 32 == s))
            meta.dtype_tuned[at[mine]] = _column(pairs.maps[t].tables[s].columns()[0])[others[mine] & 0xFFFFFFFF]
        positions = _positions(pairs.base, keys)
        layer = _column(locations.layers)[positions]
        meta.layer[at] = layer
        meta.module[at] = _column(locations.module_ids)[positions]
        meta.param[at] = _column(locations.param_ids)[positions]
        meta.expert[at] = _column(locations.experts)[positions]
        for j in at[layer == -1].tolist():  # the name's own classification where the layout gives no layer
            expert = classify(meta.names[j]).expert
            meta.expert[j] = -1 if expert is None else expert

    def _block(self, rows: Any, columns: Any) -> None:
        import numpy as np

        groups = self.groups
        meta = self._metas(rows)
        self.totals.add_block(meta, columns)
        grouped = ([j for j, key in enumerate(zip(meta.tuned.tolist(), meta.names)) if key in groups]
                   if groups else [])
        experts = meta.expert >= 0
        experts[grouped] = False
        start = 0
        for j in grouped + [len(meta)]:  # experts and grouped sums into the unit rows in row order
            between = start + np.flatnonzero(experts[start:j])
            self.units.add_experts(meta, between, columns.sum_sq_delta[between], columns.sum_sq_a[between])
            if j < len(meta):
                t = int(meta.tuned[j])
                layer = int(meta.layer[j])
                self.units.add_groups(meta.labels[t], None if layer < 0 else layer, meta.modules[meta.module[j]],
                                      groups[(t, meta.names[j])])
            start = j + 1
        for j in np.flatnonzero(columns.n_nonfinite).tolist():
            self.flagged.add((int(meta.tuned[j]), meta.names[j]))
        if self.writer is not None:
            self.writer.add_block(meta, columns, self.clip)
            return
        from weightsurgeon.report.model import TensorDiff

        for i, m in enumerate(meta.tuples()):
            tuned, name, layer, module, param, dtype, dtype_tuned, shape, numel, added_rows, lora_rank = m
            self.kept.append(TensorDiff(tuned=tuned, name=name, layer=layer, module=module, param=param, dtype=dtype,
                                        dtype_tuned=dtype_tuned, shape=shape, numel=numel,
                                        stats=columns.row(i, self.bins, self.clip), added_rows=added_rows,
                                        lora_rank=lora_rank))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _last_chunk(info: TensorInfo, pairs: list[Pair], stop: int) -> bool:
    """Whether a chunk of _chunks is its tensor's last one."""
    return stop >= (pairs[0].numel if any(p.decoded for p in pairs) else info.numel)


def run_diff(plan: DiffPlan, chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: Any = None,
             rows_folder: Path | None = None) -> DiffReport:
    """Stream every pair of the plan through the kernel, chunk by chunk in the base's
    on-disk order, and build the report. The kernel's threads read the files themselves
    (see _ChunkReader); `progress` gets ``advance(nbytes)`` calls. With `rows_folder`,
    each tensor's row goes to report.csv and histograms.safetensors there as soon as the
    tensor is done and the report keeps the module rows only (report.tensor_files)."""
    import numpy as np

    from weightsurgeon.report.model import DiffReport, sort_key

    bins, clip = plan.options["bins"], plan.options["clip"]
    stats = _LazyStats(bins, clip)
    groups = _unit_groups(plan)
    work = _order_pairs(plan.pairs, plan.base)
    started = time.perf_counter()
    reader_lends = plan.base.is_remote or any(c.is_remote for c in plan.others)
    if reader_lends:
        from weightsurgeon.remote import CHUNK_BYTES

        chunk_bytes = min(chunk_bytes, CHUNK_BYTES)  # the fetch window holds the rest
    elems, base_bytes, other_bytes, consumers = _chunk_plan(work, max(MIN_CHUNK_BYTES, int(chunk_bytes)), bins,
                                                            bounded=reader_lends)
    reader = _ChunkReader(plan.base, plan.others, base_bytes, other_bytes, consumers, (bins, clip))
    rows = _Rows(plan, stats, groups, rows_folder)

    table = plan.pairs

    def one(info: TensorInfo, pairs: list[Pair], keys: list[int], start: int, stop: int) -> int:
        nbytes = reader.run(info, pairs, start, stop, stats, groups)
        if _last_chunk(info, pairs, stop):  # quantized pairs: once the reader's batch holding them is computed
            reader.then(rows.done, keys)
        return nbytes

    def alone(i: int) -> int:  # a pair of a small batch whose read failed: read here, which names the error
        p = table[i]
        return one(p.base, [p], [i], 0, p.base.numel)

    small = SmallPairs(plan.base, plan.others, table, bins, clip, groups, alone, rows.done_block)
    bytes_read = 0
    try:
        with _prefetch(work, plan.base, plan.others):
            runs = small.judge(work.order, elems)
            starts, keys = runs.starts, runs.keys
            shards = keys >> 32
            new_shard = np.r_[True, shards[1:] != shards[:-1]] if len(keys) else np.zeros(0, dtype=bool)
            # the groups where a run of batchable base tensors stops: a new base shard or one to decide alone
            stops = np.flatnonzero(new_shard | ~runs.batchable).tolist()
            g = 0
            for stop in stops + [len(keys)]:
                if g < stop:  # base tensors g .. stop - 1: small, plain, in one shard, queued as column slices
                    nbytes = _surfacing_signals(small.take_run, runs, g, stop)
                    if progress is not None:
                        progress.advance(nbytes)
                    bytes_read += nbytes
                if stop == len(keys):
                    break
                if new_shard[stop]:  # a new base shard: did any input change so far?
                    _surfacing_signals(small.flush)
                    _check_unchanged(plan.base, plan.others)
                    if runs.batchable[stop]:
                        g = stop
                        continue
                g = stop + 1
                group = runs.rows[starts[stop]:starts[stop + 1]].tolist()
                nbytes = _surfacing_signals(small.take, int(keys[stop]), group, elems)
                if nbytes is None:  # not small: the queued ones first, in reading order, then chunk by chunk
                    pairs = [table[i] for i in group]
                    info = pairs[0].base
                    chunks = list(_chunks(info, pairs, elems))  # none for an empty tensor: no row, nothing flushed
                    if chunks:
                        _surfacing_signals(small.flush)
                    nbytes = 0
                    for start, stop_at in chunks:
                        n = _surfacing_signals(one, info, pairs, group, start, stop_at)
                        nbytes += n
                        if progress is not None:
                            progress.advance(n)
                elif progress is not None:
                    progress.advance(nbytes)
                bytes_read += nbytes
            _surfacing_signals(small.flush)
            _surfacing_signals(reader.flush)
            del runs, starts, keys  # the run's columns, not held through the report
        spectra = []
        if plan.options.get("spectrum"):
            from weightsurgeon.spectrum import measure_spectra

            spectra = measure_spectra(plan, plan.options["spectrum"], progress)
        rows.close()
        seconds = time.perf_counter() - started
        nonfinite = _nonfinite_tensors(plan, rows.flagged)
        _check_unchanged(plan.base, plan.others)  # the last shard too: no report of bytes that never existed together
        tensor_files = rows.writer.close() if rows.writer is not None else None
    except BaseException:
        rows.abort()
        raise
    finally:
        reader.close()

    index = {label: i for i, label in enumerate(plan.labels)}
    kept = sorted(rows.kept, key=lambda r: sort_key(index[r.tuned], r.layer, r.module, r.name))
    units = rows.units.result(plan.labels)
    return DiffReport(
        base=identify(plan.base, layout=plan.layout),
        tuned=[identify(c, label) for c, label in zip(plan.others, plan.labels)],
        options=dict(plan.options),
        tensors=kept,
        tensor_files=tensor_files,
        modules=rows.totals.result(plan.labels),
        units=units,
        spectra=spectra,
        notes=list(plan.notes),
        missing=list(plan.missing),
        warnings=list(plan.warnings),
        nonfinite=nonfinite,
        timing={"seconds": round(seconds, 6), "bytes_read": bytes_read,
                "gb_per_s": round(bytes_read / seconds / 1e9, 4) if seconds > 0 else None},
    )


def _nonfinite_tensors(plan: DiffPlan, flagged: set[tuple[int, str]]) -> list[dict]:
    """Which model holds the NaN/Inf the kernel left out, tensor by tensor.

    The kernel leaves out (and counts) every element where either side is NaN or Inf; to say
    which side, the tensors it flagged are read again here, each side once. Only flagged
    tensors: nothing is read again for a finite pair.
    """
    from weightsurgeon.verify import count_nonfinite_in

    found: list[dict] = []
    seen: set[tuple[str, str]] = set()
    pairs = plan.pairs
    for i in range(len(pairs) if flagged else 0):  # names only: a pair is made for the flagged ones
        if (pairs.tuned[i], pairs.name(i)) not in flagged:
            continue
        p = pairs[i]
        tuned_ckpt = plan.others[p.tuned] if p.kind == "file" else plan.base  # an adapter's other tensors are the base's
        for model, ckpt, info in (("base", plan.base, p.base), (plan.labels[p.tuned], tuned_ckpt, p.other)):
            if (model, info.name) in seen:
                continue
            seen.add((model, info.name))
            count = count_nonfinite_in(ckpt, info)
            if count:
                found.append({"model": model, "name": info.name, "count": count, "numel": info.numel,
                              "file": str(info.file)})
    return found


def open_tuned(source: Any, remote: bool = False) -> tuple[Checkpoint, Any]:
    """(Checkpoint, Adapter or None): a local PEFT LoRA adapter folder opens as its weights file plus its config."""
    from weightsurgeon.adapter import is_adapter_dir, open_adapter

    if not isinstance(source, Checkpoint) and is_adapter_dir(source):
        adapter = open_adapter(source, whole_modules=True)
        return open_checkpoint(adapter.weights), adapter
    return (source if isinstance(source, Checkpoint) else open_checkpoint(source, remote=remote)), None


def diff_checkpoints(base: Any, tuned: Any, modules: str | None = None, layers: str | None = None, bins: int = 200,
                     clip: float = 1.0, allow_missing: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     progress: Any = None, labels: Sequence[str] | None = None, every: int = 5,
                     spectrum: str | None = None) -> DiffReport:
    """Compare a base checkpoint with one or more fine-tunes, streaming; returns the DiffReport.

    `base` and each of `tuned` are paths, Hub ids in the local cache, or open Checkpoints
    (a single path or Checkpoint is accepted for `tuned`). `modules`/`layers` select what
    is compared (the CLI's --module/--layers syntax); `bins`/`clip` shape the
    relative-change histogram; `progress` gets ``advance(nbytes)`` calls.
    """
    if isinstance(tuned, (str, os.PathLike, Checkpoint)):
        tuned = [tuned]
    opened: list[Checkpoint] = []
    try:
        base_ckpt = _as_checkpoint(base, opened)
        others, adapters = [], []
        for t in tuned:
            ckpt, adapter = open_tuned(t)
            if ckpt is not t:
                opened.append(ckpt)
            others.append(ckpt)
            adapters.append(adapter)
        plan = plan_diff(base_ckpt, others, modules=modules, layers=layers, bins=bins, clip=clip,
                         allow_missing=allow_missing, labels=labels, every=every, spectrum=spectrum, adapters=adapters)
        return run_diff(plan, chunk_bytes=chunk_bytes, progress=progress)
    finally:
        for c in opened:
            c.close()
