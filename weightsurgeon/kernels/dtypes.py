"""The one dtype table: every safetensors dtype the reader accepts, and what each one is.

The header parser (format.py), the reader and writer, verify, surgery, the diff and the
kernels all read this table, so a dtype is either handled by a command or refused by it
by name, never half-known. Plain data, no numpy: the numpy conversions live in decode.py.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """Facts about one stored dtype.

    `storage` is the numpy dtype a chunk is read as: the values themselves where numpy has
    the type, unsigned bit patterns where it has none (BF16, FP8). `work` is the precision
    values are compared in: "f4" where float32 holds every value exactly, "f8" where only
    float64 does, None where values are not real numbers (complex). `nan` is (mask, value):
    an element is NaN or Inf exactly when its bits under mask equal value; None where no
    bit pattern is (integers) or no single pattern says it (complex: either half).
    `f8` is (exponent bits, mantissa bits, bias, style) of the 8-bit float formats.
    """

    name: str
    width: int
    kind: str  # "float", "int", "uint", "bool", "complex"
    storage: str
    work: str | None
    nan: tuple[int, int] | None = None
    f8: tuple[int, int, int, str] | None = None

    @property
    def is_float(self) -> bool:
        """NaN/Inf can occur: verify scans it (complex included)."""
        return self.kind in ("float", "complex")

    @property
    def encodable(self) -> bool:
        """Real float values can be rounded into it (cast, interpolate, reinit). E8M0 is a
        scale format (powers of two, no zero, no sign): nothing rounds into it meaningfully."""
        return self.kind == "float" and self.name != "F8_E8M0"

    @property
    def computes(self) -> bool:
        """Values may be computed with (interpolation, LoRA factors and merges): 16-bit and
        wider real floats. 8-bit floats are storage formats that round each result away."""
        return self.encodable and self.f8 is None

    @property
    def has_zero(self) -> bool:
        """All-zero bytes are the value 0 (`surgeon zero` writes zero bytes). E8M0's are 2**-127."""
        return self.name != "F8_E8M0"


def _f8(name: str, ebits: int, mbits: int, bias: int, style: str, nan: tuple[int, int]) -> DType:
    return DType(name, 1, "float", "u1", "f4", nan, (ebits, mbits, bias, style))


# Styles of the 8-bit formats: "ieee" (Inf at the top exponent, NaN above it), "fn" (no
# Inf, NaN = S.1111.111), "fnuz" (no Inf, no negative zero: the one NaN is 0x80),
# "e8m0" (unsigned powers of two 2**(e - 127), 0xFF is NaN).
TABLE: dict[str, DType] = {t.name: t for t in (
    DType("BOOL", 1, "bool", "?", "f4"),
    DType("U8", 1, "uint", "u1", "f4"),
    DType("I8", 1, "int", "i1", "f4"),
    DType("I16", 2, "int", "<i2", "f4"),
    DType("U16", 2, "uint", "<u2", "f4"),
    DType("I32", 4, "int", "<i4", "f8"),
    DType("U32", 4, "uint", "<u4", "f8"),
    DType("I64", 8, "int", "<i8", "f8"),
    DType("U64", 8, "uint", "<u8", "f8"),
    DType("F16", 2, "float", "<f2", "f4", (0x7C00, 0x7C00)),
    DType("BF16", 2, "float", "<u2", "f4", (0x7F80, 0x7F80)),
    DType("F32", 4, "float", "<f4", "f4", (0x7F800000, 0x7F800000)),
    DType("F64", 8, "float", "<f8", "f8", (0x7FF0000000000000, 0x7FF0000000000000)),
    DType("C64", 8, "complex", "<c8", None),
    _f8("F8_E4M3", 4, 3, 7, "fn", (0x7F, 0x7F)),
    _f8("F8_E5M2", 5, 2, 15, "ieee", (0x7C, 0x7C)),
    _f8("F8_E4M3FNUZ", 4, 3, 8, "fnuz", (0xFF, 0x80)),
    _f8("F8_E5M2FNUZ", 5, 2, 16, "fnuz", (0xFF, 0x80)),
    _f8("F8_E8M0", 8, 0, 127, "e8m0", (0xFF, 0xFF)),
)}

# Packed sub-byte dtypes safetensors knows (MXFP4/MXFP6 payloads): named clearly when refused.
SUBBYTE_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})


def dtype_info(dtype: str) -> DType:
    """The table's entry for a safetensors dtype name; ValueError naming the known ones."""
    entry = TABLE.get(dtype)
    if entry is None:
        raise ValueError(f"unsupported dtype {dtype!r} (known: {', '.join(sorted(TABLE))})")
    return entry


def itemsize(dtype: str) -> int:
    """Bytes per element."""
    return dtype_info(dtype).width
