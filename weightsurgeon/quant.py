"""Which stored tensors are quantized, with which scale, in which scheme: from headers and config.

A quantized weight is two stored tensors that mean one logical tensor:

| scheme | data | scale | who writes it |
| --- | --- | --- | --- |
| ``fp8-block`` | ``W.weight`` F8_E4M3 [r, c] | ``W.weight_scale_inv`` (F32 or BF16) [ceil(r/br), ceil(c/bc)] | DeepSeek-V3/R1, Qwen3-*-FP8 (``quant_method: fp8``, ``weight_block_size``) |
| ``fp8-channel`` | ``W.weight`` F8_E4M3 [r, c] | ``W.weight_scale`` [r, 1] | compressed-tensors / llm-compressor |
| ``fp8-tensor`` | ``W.weight`` F8_E4M3 | ``W.weight_scale`` [] or [1] | compressed-tensors, AutoFP8 |
| ``mxfp4`` | ``X_blocks`` U8 [..., g, 16] | ``X_scales`` U8 [..., g] | GPT-OSS (``quant_method: mxfp4``) |

value = decode(data) x scale (kernels/quant.py). A tensor is FP8-quantized only when its
data is one byte wide and it has a scale sibling: an F32 scalar named like a scale beside
a BF16 weight is an ordinary tensor. The checks run once, when a checkpoint is opened: a
scale whose shape does not fit its weight's blocks, or an F8 weight of an FP8-quantized
model without its scale, is an error there.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightsurgeon.errors import SurgeonError

if TYPE_CHECKING:
    from weightsurgeon.format import TensorInfo

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
FP8_SCALE_SUFFIXES = ("_scale_inv", "_scale")  # the first that exists wins
SCALE_DTYPES = ("F32", "BF16", "F16")
MX_SUFFIXES = ("_blocks", "_scales")
DEFAULT_BLOCK = (128, 128)
# quantization_config.quant_method values whose weights the engine decodes.
DECODED_METHODS = ("fp8", "mxfp4", "compressed-tensors")


@dataclass(frozen=True, slots=True)
class QuantKind:
    """What the quantized tensors of one encoding share: a checkpoint has a handful of kinds and up to 46k tensors."""

    scheme: str  # fp8-block | fp8-channel | fp8-tensor | mxfp4
    block: tuple[int, int]  # elements (rows, cols) one scale covers; MXFP4: (1, 32); fp8-tensor: see QuantTensor.block
    data_dtype: str
    scale_dtype: str
    data_suffix: str  # appended to the logical name to name the data: "" (FP8) or "_blocks" (MXFP4)
    scale_suffix: str  # appended to the logical name to name the scale: "_scale_inv", "_scale" or "_scales"
    scale_leaf: str  # the scale name's last dotted part, as reports show it ("weight_scale_inv")
    label: str = ""  # how reports name the encoding (set from the fields: every report row asks for it)

    def __post_init__(self) -> None:
        label = "MXFP4"
        if self.scheme != "mxfp4":
            kind = {"fp8-block": f"block {self.block[0]}x{self.block[1]}", "fp8-channel": "per-channel",
                    "fp8-tensor": "per-tensor"}[self.scheme]
            label = f"{self.data_dtype} {kind} ({self.scale_dtype} {self.scale_leaf})"
        object.__setattr__(self, "label", label)  # 'F8_E4M3 block 128x128 (F32 weight_scale_inv)', 'MXFP4' ...


class QuantTensor:
    """One logical quantized tensor: its stored data and scale, scheme and logical shape.

    Made on access from the checkpoint's columns (see Quantization), and small: a name, a
    shape (the header table's own tuple for FP8), a shared kind. The records of its two
    stored tensors are made when asked for, so a diff holding one per pair of a 46k-weight
    FP8 model holds no TensorInfo for them.
    """

    __slots__ = ("name", "shape", "kind", "stored")

    def __init__(self, name: str, shape: tuple[int, ...], kind: QuantKind, tensors: Any) -> None:
        self.name = name  # the logical name: the weight's (FP8) or the blocks' without "_blocks" (MXFP4)
        self.shape = shape  # logical shape
        self.kind = kind
        self.stored = tensors  # the checkpoint's TensorMap, which holds its data and scale

    @property
    def data(self) -> "TensorInfo":
        return self.stored[self.name + self.kind.data_suffix]

    @property
    def scale(self) -> "TensorInfo":
        return self.stored[self.name + self.kind.scale_suffix]

    @property
    def scheme(self) -> str:
        return self.kind.scheme

    @property
    def block(self) -> tuple[int, int]:
        """Elements (rows, cols) one scale covers: a per-tensor scale covers every row."""
        if self.kind.scheme == "fp8-tensor":
            shape = self.shape
            rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
            return (max(rows, 1), shape[-1] if shape else 1)
        return self.kind.block

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def cols(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def quantum(self) -> int:
        """Elements a streamed slice must be a multiple of: whole rows (FP8), whole groups (MXFP4)."""
        if self.kind.scheme == "mxfp4":
            return 32
        if self.kind.scheme == "fp8-tensor":
            return 1
        return self.cols

    @property
    def label(self) -> str:
        return self.kind.label

    @property
    def stored_bytes(self) -> int:
        return self.data.nbytes + self.scale.nbytes

    def _key(self) -> tuple:
        return (self.name, self.shape, self.kind, self.data, self.scale)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, QuantTensor) else NotImplemented

    def __hash__(self) -> int:
        return hash((self.name, self.shape, self.kind))

    def __repr__(self) -> str:
        return f"QuantTensor({self.name!r}, {self.kind.scheme}, {list(self.shape)})"


def dequantized_shape(q: QuantTensor) -> tuple[int, ...]:
    """The shape a dequantized copy holds, as transformers' bf16 models expect it.

    MXFP4 expert stacks are stored [experts, out, in] (GPT-OSS ``gate_up_proj_blocks``
    [E, 2 x intermediate, hidden / 32, 16]), while transformers' bf16 GptOssExperts holds
    ``gate_up_proj`` [E, hidden, 2 x intermediate] and ``down_proj`` [E, intermediate, hidden]
    (its loader, integrations/mxfp4.convert_moe_packed_tensors, ends in transpose(1, 2)); gate
    and up stay interleaved, as the bf16 forward reads them ([..., ::2], [..., 1::2]).
    FP8 weights keep their shape.
    """
    if q.scheme == "mxfp4" and len(q.shape) == 3:
        return (q.shape[0], q.shape[2], q.shape[1])
    return q.shape


# The scheme `surgeon cast --dtype fp8` writes when neither the model nor --like has one:
# DeepSeek-V3/R1's (quantization_config as published, F32 weight_scale_inv per 128 x 128 block).
DEFAULT_FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                      "weight_block_size": list(DEFAULT_BLOCK)}
DEFAULT_SCALE = ("_scale_inv", "F32")


class Quantization:
    """The quantized tensors of one checkpoint, as two columns over its TensorMap's positions.

    A DeepSeek-V3 checkpoint holds 46k FP8 weights and their 46k scales. A QuantTensor,
    two TensorInfo records and two dict entries per weight cost about 280 bytes each; here
    each stored tensor costs 2 bytes (which kind it belongs to, and whether it is the data
    or the scale), and `tensors` (logical name -> QuantTensor) and `parts` (stored name ->
    logical name) are read-only mappings that derive their answers from the names: a scale
    is named by its weight's name plus the kind's suffix.
    """

    __slots__ = ("tensors", "parts", "method", "_map", "_codes", "_kinds", "_count", "_mx")

    def __init__(self, tensors_map: Any = None, codes: Any = None, kinds: tuple[QuantKind, ...] = (), count: int = 0,
                 method: str | None = None) -> None:
        self._map, self._codes, self._kinds, self._count = tensors_map, codes, kinds, count
        self._mx = any(k.data_suffix for k in kinds)  # some logical names are not stored names (MXFP4)
        self.method = method  # quantization_config.quant_method, if any
        self.tensors: Mapping[str, QuantTensor] = _Tensors(self)
        self.parts: Mapping[str, str] = _Parts(self)  # stored name (data or scale) -> logical name

    # code of a stored position: 0 not a part; 2k + 1 the data, 2k + 2 the scale of a tensor of kind k
    def _code(self, stored: str) -> int:
        if self._map is None:
            return 0
        pos = self._map.position(stored)
        return 0 if pos is None else self._codes[pos]

    def _strip(self, stored: str, code: int) -> str:
        kind = self._kinds[(code - 1) >> 1]
        suffix = kind.data_suffix if code & 1 else kind.scale_suffix
        return stored[:len(stored) - len(suffix)] if suffix else stored

    def _make(self, logical: str, kind: QuantKind) -> QuantTensor:
        shape = self._map[logical + kind.data_suffix].shape
        if kind.scheme == "mxfp4":
            shape = shape[:-2] + (shape[-2] * 32,)
        return QuantTensor(logical, shape, kind, self._map)

    def get(self, logical: str) -> QuantTensor | None:
        code = self._code(logical)
        if code & 1 and not self._kinds[code >> 1].data_suffix:
            return self._make(logical, self._kinds[code >> 1])
        if self._mx:
            code = self._code(logical + MX_SUFFIXES[0])
            if code & 1 and self._kinds[code >> 1].data_suffix:
                return self._make(logical, self._kinds[code >> 1])
        return None

    def stored(self) -> Iterator[tuple[str, int]]:
        """(stored name, code) of every part, in the map's order."""
        if self._map is None:
            return
        codes = self._codes
        for pos, name in enumerate(self._map):
            if codes[pos]:
                yield name, codes[pos]

    def logical_names(self, tensors: Any) -> list[str]:
        """Every logical tensor of the checkpoint (`tensors`: its TensorMap) in on-disk order: a quantized
        tensor once, at its data; scales never."""
        if self._map is None:
            return list(tensors)
        kinds, out = self._kinds, []
        for name, code in zip(tensors, self._codes):
            if not code:
                out.append(name)
            elif code & 1:
                out.append(self._strip(name, code) if kinds[code >> 1].data_suffix else name)
        return out

    @property
    def scales(self) -> frozenset[str]:
        return frozenset(name for name, code in self.stored() if not code & 1)

    def logical(self, stored: str) -> str:
        code = self._code(stored)
        return self._strip(stored, code) if code else stored

    def __repr__(self) -> str:
        return f"Quantization({self._count} tensors, method {self.method!r})"


class _Tensors(Mapping[str, QuantTensor]):
    """Logical name -> QuantTensor, made on access, in the on-disk order of the data."""

    __slots__ = ("_q",)

    def __init__(self, q: Quantization) -> None:
        self._q = q

    def __getitem__(self, logical: str) -> QuantTensor:
        got = self._q.get(logical)
        if got is None:
            raise KeyError(logical)
        return got

    def get(self, logical: str, default: Any = None) -> Any:  # type: ignore[override]
        got = self._q.get(logical)
        return default if got is None else got

    def __contains__(self, logical: object) -> bool:
        return isinstance(logical, str) and self._q.get(logical) is not None

    def __iter__(self) -> Iterator[str]:
        q = self._q
        return (q._strip(name, code) for name, code in q.stored() if code & 1)

    def __len__(self) -> int:
        return self._q._count


class _Parts(Mapping[str, str]):
    """Stored name of a data or scale tensor -> its logical name."""

    __slots__ = ("_q",)

    def __init__(self, q: Quantization) -> None:
        self._q = q

    def __getitem__(self, stored: str) -> str:
        code = self._q._code(stored)
        if not code:
            raise KeyError(stored)
        return self._q._strip(stored, code)

    def get(self, stored: str, default: Any = None) -> Any:  # type: ignore[override]
        code = self._q._code(stored)
        return self._q._strip(stored, code) if code else default

    def __contains__(self, stored: object) -> bool:
        return isinstance(stored, str) and self._q._code(stored) != 0

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._q.stored())

    def __len__(self) -> int:
        return 2 * self._q._count


NONE = Quantization()


def quant_config(config: dict | None) -> dict | None:
    """quantization_config, read through the one view of config.json (text_config, else the top level)."""
    from weightsurgeon.layout import ConfigView

    qc = ConfigView(config).lookup("quantization_config")
    return qc if isinstance(qc, dict) else None


def refusal(config: dict | None) -> str | None:
    """Why a quantization_config means weights the engine cannot decode, or None."""
    qc = quant_config(config)
    if qc is None:
        return None
    method = str(qc.get("quant_method", "unknown"))[:40]
    if method == "compressed-tensors":
        fmt = str(qc.get("format", ""))
        if fmt in ("float-quantized", "naive-quantized", "dense", ""):
            return None
        return f"compressed-tensors format {fmt[:40]!r} (decoded: float-quantized FP8)"
    if method in DECODED_METHODS:
        return None
    return f"quantization_config: {method} (decoded: fp8 block/channel/tensor scaled, mxfp4)"


def _block_size(config: dict | None) -> tuple[int, int] | None:
    qc = quant_config(config) or {}
    block = qc.get("weight_block_size")
    if isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block):
        return (block[0], block[1])
    return None


def _fp8(where: str, w: "TensorInfo", s: "TensorInfo", block_cfg: tuple[int, int] | None) -> tuple[str, tuple[int, int]]:
    """(scheme, block) of an FP8 weight and its scale; raises where the scale does not fit the weight."""
    if s.dtype not in SCALE_DTYPES:
        raise SurgeonError(f"{where}: scale {s.name!r} of FP8 weight {w.name!r} is {s.dtype}; expected one of "
                           f"{', '.join(SCALE_DTYPES)}")
    shape = w.shape
    per_tensor = s.numel == 1 and (len(s.shape) <= 1 or len(s.shape) == len(shape))
    if per_tensor and (block_cfg is None or len(shape) != 2):
        return "fp8-tensor", (0, 0)
    if len(shape) != 2:
        raise SurgeonError(f"{where}: FP8 weight {w.name!r} {list(shape)} has scale {s.name!r} {list(s.shape)}: "
                           f"block and channel scales are read for 2-D weights only")
    rows, cols = shape
    if block_cfg is None and s.shape == (rows, 1):
        return "fp8-channel", (1, cols)
    br, bc = block_cfg or DEFAULT_BLOCK
    want = (-(-rows // br), -(-cols // bc))
    if s.shape != want:
        raise SurgeonError(f"{where}: scale {s.name!r} has shape {list(s.shape)}, but FP8 weight {w.name!r} "
                           f"{list(shape)} in blocks of {br}x{bc} needs {list(want)}")
    return "fp8-block", (br, bc)


def _mxfp4(where: str, b: "TensorInfo", s: "TensorInfo") -> tuple[str, tuple[int, int]]:
    if b.dtype != "U8" or s.dtype not in ("U8", "F8_E8M0") or len(b.shape) < 2 or b.shape[-1] != 16 \
            or s.shape != b.shape[:-1]:
        raise SurgeonError(f"{where}: MXFP4 {b.name!r} {b.dtype}{list(b.shape)} and {s.name!r} {s.dtype}{list(s.shape)} "
                           f"do not fit: expected U8 [..., g, 16] blocks and U8 [..., g] scales")
    return "mxfp4", (1, 32)


def scan(tensors: Any, config: dict | None, where: str) -> Quantization:
    """Find every quantized tensor of a checkpoint (`tensors`: its checkpoint.TensorMap; see the module
    docstring); raises on broken pairs.

    Only rows whose dtype can hold quantized data (one-byte FP8, U8 blocks) are looked at, found
    from each table's dtype column: a plain 100k-tensor model makes no record and reads no name.
    """
    from array import array

    qc = quant_config(config)
    method = str(qc.get("quant_method")) if qc else None
    block_cfg = _block_size(config)
    kinds: dict[QuantKind, int] = {}
    codes: Any = None
    count = 0
    for pos, name, table, row in _candidates(tensors):
        info = table.info(row)
        if info.dtype in FP8_DTYPES:
            suffix = FP8_SCALE_SUFFIXES[0]  # the first that exists wins
            scale = tensors.get(name + suffix)
            if scale is None:
                suffix = FP8_SCALE_SUFFIXES[1]
                scale = tensors.get(name + suffix)
            if scale is None:
                if method in ("fp8", "compressed-tensors"):
                    raise SurgeonError(f"{where}: FP8 weight {name!r} has no scale ({name}_scale_inv or "
                                       f"{name}_scale) in a {method}-quantized checkpoint")
                continue  # plain F8 values: decoded as they are
            scheme, block = _fp8(where, info, scale, block_cfg)
            data_suffix = ""
        else:  # U8 blocks (see _candidates)
            logical = name[: -len(MX_SUFFIXES[0])]
            data_suffix, suffix = MX_SUFFIXES
            scale = tensors.get(logical + suffix)
            if scale is None:
                if method == "mxfp4":
                    raise SurgeonError(f"{where}: MXFP4 blocks {name!r} have no scales ({logical}_scales)")
                continue
            if logical in tensors:
                raise SurgeonError(f"{where}: {logical!r} is stored both plain and as MXFP4 blocks")
            scheme, block = _mxfp4(where, info, scale)
        kind = QuantKind(scheme, block, info.dtype, scale.dtype, data_suffix, suffix, scale.name.rsplit(".", 1)[-1])
        k = kinds.setdefault(kind, len(kinds))
        if codes is None:
            codes = array("H", bytes(2 * len(tensors)))
        at = tensors.position(scale.name)
        if codes[at]:
            # internal: a scale's name is its weight's name plus a suffix (_scale_inv, _scale, _scales) and a
            # scale's dtype is never a weight's, so two weights cannot name one scale; kept as a guard
            raise SurgeonError(f"internal: {where}: scale {scale.name!r} belongs to two weights")
        codes[pos], codes[at] = 2 * k + 1, 2 * k + 2
        count += 1
    if not count and not method:
        return NONE
    return Quantization(tensors if count else None, codes, tuple(kinds), count, method)


def _candidates(tensors: Any) -> Iterator[tuple[int, str, Any, int]]:
    """(position, name, its format.TensorTable, row) of every stored tensor that may be quantized data
    (one-byte FP8, or U8 named like MXFP4 blocks), in the map's order; the other rows are skipped by
    their dtype codes alone."""
    from weightsurgeon.format import DTYPE_NAMES

    fp8 = bytes(code for code, dtype in enumerate(DTYPE_NAMES) if dtype in FP8_DTYPES)
    u8 = DTYPE_NAMES.index("U8")
    others = bytes(code for code in range(256) if code not in fp8 and code != u8)
    start = 0
    for table in tensors.tables:
        dtypes = table.columns()[0]
        if bytes(dtypes).translate(None, others):  # a table without one of them costs one C pass
            names = table.names
            for row, code in enumerate(dtypes):
                if code in fp8 or (code == u8 and names[row].endswith(MX_SUFFIXES[0])):
                    yield start + row, names[row], table, row
        start += len(table)
