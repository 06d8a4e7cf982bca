"""The diff's pairs (which base tensor is compared with which tuned tensor), held as columns.

A MoE checkpoint holds ~100k tensors. A `Pair` object per comparison with a `TensorInfo`
record of each side cost ~380 bytes a pair (~40 MB through a 100k-tensor diff) and a few
microseconds each to make. Nearly every pair is plain: a base tensor against the tuned
tensor of the same shape, read from the tuned model's file, reported under the base name.
A `PairTable` holds those as four integer columns, 28 bytes a pair: the tuned model's
index, each side's key in its checkpoint's `TensorMap` (shard << 32 | row: the table rows
give name, dtype, shape and offsets without a record) and the element count. The rest
(a quantized side, LoRA, an added vocabulary, an output head compared under another name,
a transposed expert stack) stay `Pair` objects in `special`: a few per model.

The table is a `Sequence[Pair]`: a `Pair` is made on access, so code that looks at a few
pairs reads them as before; the passes over every pair (the plan's checks, the reading
order, the buffer sizes, small-pair batches) read the columns.
"""
from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
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
_SET = tuple(Pair.__dict__[f].__set__ for f in _FIELDS)
_new = object.__new__


def _plain(t: int, name: str, base: TensorInfo, other: TensorInfo, numel: int) -> Pair:
    """Pair(t, name, base, other, numel) with its slots set directly: the frozen dataclass's
    __init__ costs three times as much, and a run over plain pairs makes one per pair."""
    p = _new(Pair)
    for setter, value in zip(_SET, (t, name, base, other, numel, 0, "file", None, None, None, False)):
        setter(p, value)
    return p


class PairTable(Sequence[Pair]):
    """A plan's pairs in plan order: plain ones as columns, the others as `Pair` objects (module docstring).

    `base` is the base checkpoint's TensorMap, `maps[t]` the t-th tuned model's. Row i is
    plain when i is not in `special`: `tuned[i]`, `base_at[i]` / `other_at[i]` (keys of
    `TensorMap.where`), `numel[i]`. A special row keeps its tuned index, its element count and
    its base key (-1 when the base side is not a base tensor) in the columns too, so that
    passes over the columns see every pair.
    """

    __slots__ = ("base", "maps", "tuned", "base_at", "other_at", "numel", "special")

    def __init__(self, base: TensorMap, maps: dict[int, TensorMap] | None = None) -> None:
        self.base = base
        self.maps: dict[int, TensorMap] = dict(maps or {})
        self.tuned, self.base_at, self.other_at, self.numel = array("i"), array("q"), array("q"), array("q")
        self.special: dict[int, Pair] = {}

    # -- building ---------------------------------------------------------------------------
    def add(self, t: int, base_at: int, other_at: int, numel: int) -> None:
        """A plain pair: base key `base_at` against key `other_at` of tuned model `t`, `numel` elements."""
        self.tuned.append(t)
        self.base_at.append(base_at)
        self.other_at.append(other_at)
        self.numel.append(numel)

    def append(self, pair: Pair) -> None:
        """Any pair; one that is plain is kept as columns."""
        base_at = self.base.where(pair.base.name)
        other_map = self.maps.get(pair.tuned)
        other_at = other_map.where(pair.other.name) if other_map is not None and pair.kind == "file" else None
        if base_at is not None and other_at is not None and self._is_plain(pair, base_at, other_at):
            self.add(pair.tuned, base_at, other_at, pair.numel)
            return
        self.special[len(self.tuned)] = pair
        self.add(pair.tuned, -1 if base_at is None else base_at, -1, pair.numel)

    def _is_plain(self, pair: Pair, base_at: int, other_at: int) -> bool:
        return (pair.kind == "file" and not pair.added_rows and not pair.decoded and not pair.transposed
                and pair.lora is None and pair.name == pair.base.name and pair.numel == pair.base.numel
                and self.base.info_at(base_at) == pair.base and self.maps[pair.tuned].info_at(other_at) == pair.other)

    def extend(self, pairs: PairTable | Iterable[Pair]) -> None:
        if isinstance(pairs, PairTable):
            if pairs.base is not self.base:  # internal: one plan has one base
                raise ValueError("pairs of another base")
            offset = len(self.tuned)
            self.maps.update(pairs.maps)
            for mine, theirs in ((self.tuned, pairs.tuned), (self.base_at, pairs.base_at),
                                 (self.other_at, pairs.other_at), (self.numel, pairs.numel)):
                mine.extend(theirs)
            self.special.update((i + offset, p) for i, p in pairs.special.items())
            return
        for p in pairs:
            self.append(p)

    def subset(self, rows: Iterable[int]) -> PairTable:
        """The pairs of `rows` (increasing), in a new table."""
        out = PairTable(self.base, self.maps)
        special = self.special
        for i in rows:
            p = special.get(i)
            if p is not None:
                out.special[len(out.tuned)] = p
            out.add(self.tuned[i], self.base_at[i], self.other_at[i], self.numel[i])
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
        """The name pair i is reported under, without making the pair."""
        p = self.special.get(i)
        if p is not None:
            return p.name
        table, row = self.base.table_of(self.base_at[i])
        return table.names[row]

    def names(self) -> Iterator[str]:
        """Every pair's reported name, in plan order."""
        return (self.name(i) for i in range(len(self.tuned)))

    def plain_rows(self) -> Iterator[int]:
        """The rows held as columns only."""
        special = self.special
        return (i for i in range(len(self.tuned)) if i not in special)


def numel_of(shape: tuple[int, ...], cache: dict[tuple[int, ...], int]) -> int:
    """math.prod(shape), once per distinct shape (tables share equal shapes)."""
    n = cache.get(shape)
    if n is None:
        n = cache[shape] = math.prod(shape)
    return n


__all__: Sequence[str] = ("Pair", "PairTable", "numel_of")
