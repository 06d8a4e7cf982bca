"""The diff's pairs (which base tensor is compared with which tuned tensor), held as columns.

A MoE checkpoint holds ~100k tensors. A `Pair` object per comparison with a `TensorInfo`
record of each side cost ~380 bytes a pair (~40 MB through a 100k-tensor diff) and a few
microseconds each to make. Nearly every pair is plain: a base tensor against the tuned
tensor of the same shape, read from the tuned model's file, reported under the base name.
A `PairTable` holds those as four integer columns, 28 bytes a pair: the tuned model's
index, each side's key in its checkpoint's `TensorMap` (shard << 32 | row: the table rows
give name, dtype, shape and offsets without a record) and the element count. The rest
(LoRA, an added vocabulary, an output head compared under another name, a transposed
expert stack, MXFP4) stay `Pair` objects in `special`: a few per model. An FP8 pair (46k of
them in a DeepSeek-V3 diff) is a row of the same columns plus a 2-byte code naming the
encoding of each side (quant.QuantKind): it is listed in `special` like the others, but its
`Pair`, records and QuantTensors are made when it is read (~500 bytes a pair held before).

The table is a `Sequence[Pair]`: a `Pair` is made on access, so code that looks at a few
pairs reads them as before; the passes over every pair (the plan's checks, the reading
order, the buffer sizes, small-pair batches) read the columns.
"""
from __future__ import annotations

import math
import weakref
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weightsurgeon.checkpoint import TensorMap
    from weightsurgeon.format import TensorInfo
    from weightsurgeon.quant import QuantTensor


@dataclass(frozen=True, slots=True)
class Pair:
    """One comparison: the first `numel` elements of a base tensor against those of a tuned tensor."""

    tuned: int  # index into the tuned list
    name: str  # the name reported
    base: TensorInfo
    other: TensorInfo
    numel: int
    added_rows: int = 0
    kind: str = "file"  # "file": `other` read from the tuned file; "same": the base tensor is its own tuned value; "lora": W + s * B @ A
    lora: Any = None  # adapter_diff.LoraFactors for kind "lora"
    base_q: QuantTensor | None = None  # set where that side is quantized (FP8 + scale, MXFP4): `base`/`other` is its data
    other_q: QuantTensor | None = None
    transposed: bool = False  # the plain side of an MXFP4 pair holds each expert as [in, out] (see diff._expert_transposed)

    @property
    def decoded(self) -> bool:
        """Whether this pair is dequantized on the way (read here, slice by slice, not by the file kernel)."""
        return self.base_q is not None or self.other_q is not None


_FIELDS = ("tuned", "name", "base", "other", "numel", "added_rows", "kind", "lora", "base_q", "other_q", "transposed")
_NO_QUANT: tuple = (None, None)  # code 0 of PairTable.quant: no side quantized
_SET = tuple(Pair.__dict__[f].__set__ for f in _FIELDS)
_new = object.__new__


def _plain(t: int, name: str, base: TensorInfo, other: TensorInfo, numel: int, base_q: Any = None,
           other_q: Any = None) -> Pair:
    """Pair(t, name, base, other, numel, base_q=.., other_q=..) with its slots set directly: the frozen
    dataclass's __init__ costs three times as much, and a run over plain pairs makes one per pair."""
    p = _new(Pair)
    for setter, value in zip(_SET, (t, name, base, other, numel, 0, "file", None, base_q, other_q, False)):
        setter(p, value)
    return p


def _fp8_side(q: Any, info: TensorInfo, tensors: TensorMap) -> bool:
    """Whether a quantized side can be made again from its data record and kind alone: FP8, whose
    logical name and shape are its data's, held by that checkpoint's TensorMap."""
    return q.kind.data_suffix == "" and q.name == info.name and q.shape == info.shape and q.stored is tensors


class _Special(Mapping[int, Pair]):
    """A PairTable's rows that are not plain, by row: the `Pair` objects kept (`kept`) and the
    FP8 rows (a nonzero `quant` code), whose Pair is made on access."""

    __slots__ = ("table", "kept")

    def __init__(self, table: PairTable) -> None:
        self.table = weakref.proxy(table)  # no cycle: a table made for one tuned model is freed once merged
        self.kept: dict[int, Pair] = {}

    def __getitem__(self, i: int) -> Pair:
        p = self.kept.get(i)
        if p is not None:
            return p
        code = self.table.quant[i] if 0 <= i < len(self.table.quant) else 0
        if not code:
            raise KeyError(i)
        return self.table._quantized(i, code)

    def get(self, i: int, default: Any = None) -> Any:  # type: ignore[override]
        p = self.kept.get(i)
        if p is not None:
            return p
        quant = self.table.quant
        code = quant[i] if 0 <= i < len(quant) else 0
        return self.table._quantized(i, code) if code else default

    def __contains__(self, i: object) -> bool:
        quant = self.table.quant
        return i in self.kept or (isinstance(i, int) and 0 <= i < len(quant) and quant[i] != 0)

    def __setitem__(self, i: int, p: Pair) -> None:
        self.kept[i] = p

    def __iter__(self) -> Iterator[int]:
        import numpy as np

        rows = np.flatnonzero(np.frombuffer(self.table.quant, dtype=np.uint16))  # by numpy: 100k rows, a few special
        if self.kept:
            rows = np.union1d(rows, np.fromiter(self.kept, dtype=np.int64))
        return iter(rows.tolist())

    def __len__(self) -> int:
        import numpy as np

        return len(self.kept) + int(np.count_nonzero(np.frombuffer(self.table.quant, dtype=np.uint16)))


class PairTable(Sequence[Pair]):
    """A plan's pairs in plan order: plain ones as columns, the others as `Pair` objects (module docstring).

    `base` is the base checkpoint's TensorMap, `maps[t]` the t-th tuned model's. Row i is
    plain when i is not in `special`: `tuned[i]`, `base_at[i]` / `other_at[i]` (keys of
    `TensorMap.where`), `numel[i]`. A special row keeps its tuned index, its element count and
    its base key (-1 when the base side is not a base tensor) in the columns too, so that
    passes over the columns see every pair.
    """

    __slots__ = ("base", "maps", "tuned", "base_at", "other_at", "numel", "quant", "kinds", "special", "__weakref__")

    def __init__(self, base: TensorMap, maps: dict[int, TensorMap] | None = None) -> None:
        self.base = base
        self.maps: dict[int, TensorMap] = dict(maps or {})
        self.tuned, self.base_at, self.other_at, self.numel = array("i"), array("q"), array("q"), array("q")
        self.quant = array("H")  # 0, or an FP8 row's index into `kinds`: (base QuantKind or None, tuned's)
        self.kinds: list[tuple] = [_NO_QUANT]
        self.special = _Special(self)

    # -- building ---------------------------------------------------------------------------
    def add(self, t: int, base_at: int, other_at: int, numel: int, quant: int = 0) -> None:
        """A plain pair: base key `base_at` against key `other_at` of tuned model `t`, `numel` elements
        (`quant`: an FP8 pair's code, see `kinds`)."""
        self.tuned.append(t)
        self.base_at.append(base_at)
        self.other_at.append(other_at)
        self.numel.append(numel)
        self.quant.append(quant)

    def add_rows(self, t: int, base_at: Any, other_at: Any, numel: Any) -> None:
        """Plain pairs of tuned model `t` in bulk: `add` for each row of the numpy columns given."""
        import numpy as np

        n = len(base_at)
        self.tuned.frombytes(np.full(n, t, dtype=np.int32).tobytes())
        self.base_at.frombytes(np.ascontiguousarray(base_at, dtype=np.int64).tobytes())
        self.other_at.frombytes(np.ascontiguousarray(other_at, dtype=np.int64).tobytes())
        self.numel.frombytes(np.ascontiguousarray(numel, dtype=np.int64).tobytes())
        self.quant.frombytes(bytes(2 * n))

    def plain_mask(self, rows: Any) -> Any:
        """Which of `rows` (numpy row numbers) are plain pairs, read from their columns alone:
        not kept as a `Pair` (LoRA, added rows, a renamed head...) and not FP8."""
        import numpy as np

        plain = np.frombuffer(self.quant, dtype=np.uint16)[rows] == 0
        kept = self.special.kept
        if kept:
            plain &= ~np.isin(rows, np.fromiter(kept, dtype=np.int64, count=len(kept)))
        return plain

    def _code(self, kinds: tuple) -> int:
        try:
            return self.kinds.index(kinds)
        except ValueError:
            self.kinds.append(kinds)
            return len(self.kinds) - 1

    def append(self, pair: Pair) -> None:
        """Any pair; one that is plain is kept as columns."""
        base_at = self.base.where(pair.base.name)
        other_map = self.maps.get(pair.tuned)
        other_at = other_map.where(pair.other.name) if other_map is not None and pair.kind == "file" else None
        if base_at is not None and other_at is not None and self._is_plain(pair, base_at, other_at):
            self.add(pair.tuned, base_at, other_at, pair.numel)
            return
        if base_at is not None and other_at is not None and self._is_fp8(pair, base_at, other_at):
            kinds = (pair.base_q.kind if pair.base_q is not None else None,
                     pair.other_q.kind if pair.other_q is not None else None)
            self.add(pair.tuned, base_at, other_at, pair.numel, self._code(kinds))
            return
        self.special[len(self.tuned)] = pair
        self.add(pair.tuned, -1 if base_at is None else base_at, -1, pair.numel)

    def _is_plain(self, pair: Pair, base_at: int, other_at: int) -> bool:
        return (pair.kind == "file" and not pair.added_rows and not pair.decoded and not pair.transposed
                and pair.lora is None and pair.name == pair.base.name and pair.numel == pair.base.numel
                and self.base.info_at(base_at) == pair.base and self.maps[pair.tuned].info_at(other_at) == pair.other)

    def _is_fp8(self, pair: Pair, base_at: int, other_at: int) -> bool:
        other_map = self.maps[pair.tuned]
        return (pair.kind == "file" and not pair.added_rows and pair.decoded and not pair.transposed
                and pair.lora is None and pair.name == pair.base.name and pair.numel == pair.base.numel
                and (pair.base_q is None or _fp8_side(pair.base_q, pair.base, self.base))
                and (pair.other_q is None or _fp8_side(pair.other_q, pair.other, other_map))
                and self.base.info_at(base_at) == pair.base and other_map.info_at(other_at) == pair.other)

    def _quantized(self, i: int, code: int) -> Pair:
        """The Pair of FP8 row i: its records and QuantTensors made now (quant.QuantTensor)."""
        from weightsurgeon.quant import QuantTensor

        kind_a, kind_b = self.kinds[code]
        t = self.tuned[i]
        other_map = self.maps[t]
        base, other = self.base.info_at(self.base_at[i]), other_map.info_at(self.other_at[i])
        return _plain(t, base.name, base, other, self.numel[i],
                      QuantTensor(base.name, base.shape, kind_a, self.base) if kind_a is not None else None,
                      QuantTensor(other.name, other.shape, kind_b, other_map) if kind_b is not None else None)

    def extend(self, pairs: PairTable | Iterable[Pair]) -> None:
        if isinstance(pairs, PairTable):
            if pairs.base is not self.base:  # internal: one plan has one base
                raise ValueError("pairs of another base")
            offset = len(self.tuned)
            self.maps.update(pairs.maps)
            for mine, theirs in ((self.tuned, pairs.tuned), (self.base_at, pairs.base_at),
                                 (self.other_at, pairs.other_at), (self.numel, pairs.numel)):
                mine.extend(theirs)
            codes = [self._code(kinds) for kinds in pairs.kinds]  # their code -> ours
            self.quant.extend(codes[c] for c in pairs.quant)
            self.special.kept.update((i + offset, p) for i, p in pairs.special.kept.items())
            return
        for p in pairs:
            self.append(p)

    def subset(self, rows: Iterable[int]) -> PairTable:
        """The pairs of `rows` (increasing), in a new table."""
        out = PairTable(self.base, self.maps)
        out.kinds = list(self.kinds)
        kept = self.special.kept
        for i in rows:
            p = kept.get(i)
            if p is not None:
                out.special[len(out.tuned)] = p
            out.add(self.tuned[i], self.base_at[i], self.other_at[i], self.numel[i], self.quant[i])
        return out

    # -- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tuned)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.tuned)))]
        if i < 0:
            i += len(self.tuned)
        if not 0 <= i < len(self.tuned):
            raise IndexError("pair index out of range")
        p = self.special.get(i)
        if p is not None:
            return p
        t = self.tuned[i]
        base = self.base.info_at(self.base_at[i])
        return _plain(t, base.name, base, self.maps[t].info_at(self.other_at[i]), self.numel[i])

    def __iter__(self) -> Iterator[Pair]:
        for i in range(len(self.tuned)):
            yield self[i]

    def name(self, i: int) -> str:
        """The name pair i is reported under, without making the pair (an FP8 row's is its base tensor's)."""
        p = self.special.kept.get(i)
        if p is not None:
            return p.name
        table, row = self.base.table_of(self.base_at[i])
        return table.names[row]

    def names(self) -> Iterator[str]:
        """Every pair's reported name, in plan order."""
        return (self.name(i) for i in range(len(self.tuned)))

    def plain_rows(self) -> Iterator[int]:
        """The rows held as columns only (FP8 rows are special: see _Special)."""
        special = self.special
        return (i for i in range(len(self.tuned)) if i not in special)


def key_columns(tensors: TensorMap, keys: Any) -> tuple[Any, Any]:
    """(dtype codes, element counts) of the tensors at `keys` (a numpy int64 array of TensorMap keys,
    none negative), gathered from the header tables' columns in one numpy pass per shard."""
    import numpy as np

    codes, numels = np.zeros(len(keys), dtype=np.uint8), np.zeros(len(keys), dtype=np.int64)
    shard, rows = keys >> 32, keys & 0xFFFFFFFF
    for s, table in enumerate(tensors.tables):
        mask = shard == s
        if not mask.any():
            continue
        dtypes, shape_ids, shapes, _, _ = table.columns()
        r = rows[mask]
        codes[mask] = np.asarray(dtypes, dtype=np.uint8)[r]
        numels[mask] = np.array([math.prod(x) for x in shapes], dtype=np.int64)[np.asarray(shape_ids, dtype=np.int64)[r]]
    return codes, numels


def numel_of(shape: tuple[int, ...], cache: dict[tuple[int, ...], int]) -> int:
    """math.prod(shape), once per distinct shape (tables share equal shapes)."""
    n = cache.get(shape)
    if n is None:
        n = cache[shape] = math.prod(shape)
    return n


__all__: Sequence[str] = ("Pair", "PairTable", "key_columns", "numel_of")
