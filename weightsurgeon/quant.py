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
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


@dataclass(frozen=True)
class QuantTensor:
    """One logical quantized tensor: its stored data and scale, scheme and logical shape."""

    name: str  # the logical name: the weight's (FP8) or the blocks' without "_blocks" (MXFP4)
    data: "TensorInfo"
    scale: "TensorInfo"
    scheme: str  # fp8-block | fp8-channel | fp8-tensor | mxfp4
    shape: tuple[int, ...]  # logical shape
    block: tuple[int, int]  # elements (rows, cols) one scale covers; MXFP4: (1, 32)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def cols(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def quantum(self) -> int:
        """Elements a streamed slice must be a multiple of: whole rows (FP8), whole groups (MXFP4)."""
        if self.scheme == "mxfp4":
            return 32
        if self.scheme == "fp8-tensor":
            return 1
        return self.cols

    @property
    def label(self) -> str:
        """How reports name the encoding: 'F8_E4M3 block 128x128', 'MXFP4' ..."""
        if self.scheme == "mxfp4":
            return "MXFP4"
        kind = {"fp8-block": f"block {self.block[0]}x{self.block[1]}", "fp8-channel": "per-channel",
                "fp8-tensor": "per-tensor"}[self.scheme]
        return f"{self.data.dtype} {kind} ({self.scale.dtype} {self.scale.name.rsplit('.', 1)[-1]})"

    @property
    def stored_bytes(self) -> int:
        return self.data.nbytes + self.scale.nbytes


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


@dataclass(frozen=True)
class Quantization:
    """The quantized tensors of one checkpoint: by logical name, and every stored name that belongs to one."""

    tensors: dict[str, QuantTensor]
    parts: dict[str, str]  # stored name (data or scale) -> logical name
    method: str | None  # quantization_config.quant_method, if any

    @property
    def scales(self) -> frozenset[str]:
        return frozenset(q.scale.name for q in self.tensors.values())

    def logical(self, stored: str) -> str:
        return self.parts.get(stored, stored)


NONE = Quantization({}, {}, None)


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


def _fp8(where: str, w: "TensorInfo", s: "TensorInfo", block_cfg: tuple[int, int] | None) -> QuantTensor:
    if s.dtype not in SCALE_DTYPES:
        raise SurgeonError(f"{where}: scale {s.name!r} of FP8 weight {w.name!r} is {s.dtype}; expected one of "
                           f"{', '.join(SCALE_DTYPES)}")
    shape = w.shape
    per_tensor = s.numel == 1 and (len(s.shape) <= 1 or len(s.shape) == len(shape))
    if per_tensor and (block_cfg is None or len(shape) != 2):
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        return QuantTensor(w.name, w, s, "fp8-tensor", shape, (max(rows, 1), shape[-1] if shape else 1))
    if len(shape) != 2:
        raise SurgeonError(f"{where}: FP8 weight {w.name!r} {list(shape)} has scale {s.name!r} {list(s.shape)}: "
                           f"block and channel scales are read for 2-D weights only")
    rows, cols = shape
    if block_cfg is None and s.shape == (rows, 1):
        return QuantTensor(w.name, w, s, "fp8-channel", shape, (1, cols))
    br, bc = block_cfg or DEFAULT_BLOCK
    want = (-(-rows // br), -(-cols // bc))
    if s.shape != want:
        raise SurgeonError(f"{where}: scale {s.name!r} has shape {list(s.shape)}, but FP8 weight {w.name!r} "
                           f"{list(shape)} in blocks of {br}x{bc} needs {list(want)}")
    return QuantTensor(w.name, w, s, "fp8-block", shape, (br, bc))


def _mxfp4(where: str, b: "TensorInfo", s: "TensorInfo", logical: str) -> QuantTensor:
    if b.dtype != "U8" or s.dtype not in ("U8", "F8_E8M0") or len(b.shape) < 2 or b.shape[-1] != 16 \
            or s.shape != b.shape[:-1]:
        raise SurgeonError(f"{where}: MXFP4 {b.name!r} {b.dtype}{list(b.shape)} and {s.name!r} {s.dtype}{list(s.shape)} "
                           f"do not fit: expected U8 [..., g, 16] blocks and U8 [..., g] scales")
    shape = b.shape[:-2] + (b.shape[-2] * 32,)
    return QuantTensor(logical, b, s, "mxfp4", shape, (1, 32))


def scan(tensors: dict[str, "TensorInfo"], config: dict | None, where: str) -> Quantization:
    """Find every quantized tensor of a checkpoint (see the module docstring); raises on broken pairs."""
    qc = quant_config(config)
    method = str(qc.get("quant_method")) if qc else None
    block_cfg = _block_size(config)
    found: dict[str, QuantTensor] = {}
    parts: dict[str, str] = {}
    for name, info in tensors.items():
        if info.dtype in FP8_DTYPES:
            scale = tensors.get(name + FP8_SCALE_SUFFIXES[0])  # the first that exists wins
            if scale is None:
                scale = tensors.get(name + FP8_SCALE_SUFFIXES[1])
            if scale is None:
                if method in ("fp8", "compressed-tensors"):
                    raise SurgeonError(f"{where}: FP8 weight {name!r} has no scale ({name}_scale_inv or "
                                       f"{name}_scale) in a {method}-quantized checkpoint")
                continue  # plain F8 values: decoded as they are
            q = _fp8(where, info, scale, block_cfg)
        elif name.endswith("_blocks") and info.dtype == "U8":
            logical = name[: -len("_blocks")]
            scale = tensors.get(logical + "_scales")
            if scale is None:
                if method == "mxfp4":
                    raise SurgeonError(f"{where}: MXFP4 blocks {name!r} have no scales ({logical}_scales)")
                continue
            if logical in tensors:
                raise SurgeonError(f"{where}: {logical!r} is stored both plain and as MXFP4 blocks")
            q = _mxfp4(where, info, scale, logical)
        else:
            continue
        if q.scale.name in parts:
            # internal: a scale's name is its weight's name plus a suffix (_scale_inv, _scale, _scales) and a
            # scale's dtype is never a weight's, so two weights cannot name one scale; kept as a guard
            raise SurgeonError(f"internal: {where}: scale {q.scale.name!r} belongs to two weights")
        found[q.name] = q
        parts[q.data.name] = q.name
        parts[q.scale.name] = q.name
    return Quantization(found, parts, method) if found or method else NONE
