"""The safetensors file format: strict header parsing, header building (dtypes: kernels/dtypes.py).

One place knows the format's rules, so the reader (checkpoint.py), the writer
(writer.py) and the synthetic generator (synth.py) cannot disagree. Parsing follows the
rules of huggingface/safetensors (tests compare every decision with `safe_open`):

- accepted as the library accepts them: a header ``{}`` with no data (a valid, empty file),
  ``__metadata__: null``, unknown extra fields in a tensor entry, an empty tensor name,
  empty tensors at ``[n, n]`` offsets, header padding with spaces;
- stricter than the library: duplicate names are refused even when identical (the library
  keeps the last), packed sub-byte dtypes (F4, F6_*) are refused as unsupported, and a
  header over 1 MB that is far denser in JSON values than any tensor table is refused as a
  JSON bomb before it can cost gigabytes of memory.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import sub
from pathlib import Path

from weightsurgeon.errors import SurgeonError
from weightsurgeon.kernels.dtypes import SUBBYTE_DTYPES, TABLE, itemsize

MAX_HEADER_BYTES = 100_000_000
HEADER_ALIGN = 8

# safetensors stores shapes and offsets as usize: anything from 2**64 up is not a valid value.
MAX_USIZE = 2**64 - 1

# What a user can do about a damaged header; every message about a file's bytes ends with it.
DAMAGED = "the file is damaged or not safetensors: download or save it again"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One stored tensor as its header declares it; metadata only, no data.

    Made once, by the parser, after every check: the engine passes it inward and trusts
    it. ``begin``/``end`` are absolute offsets in ``file``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def itemsize(self) -> int:
        return itemsize(self.dtype)


_new_object = object.__new__
_SET_FIELDS = tuple(TensorInfo.__dict__[f].__set__ for f in ("name", "dtype", "shape", "file", "begin", "end"))


def _record(name: str, dtype: str, shape: tuple[int, ...], file: Path, begin: int, end: int) -> TensorInfo:
    """TensorInfo(name, dtype, shape, file, begin, end) at twice the speed of the frozen dataclass's
    __init__ (its slots set directly): tables make a record on every access, 100k per pass."""
    info = _new_object(TensorInfo)
    set_name, set_dtype, set_shape, set_file, set_begin, set_end = _SET_FIELDS
    set_name(info, name)
    set_dtype(info, dtype)
    set_shape(info, shape)
    set_file(info, file)
    set_begin(info, begin)
    set_end(info, end)
    return info


# Dtype codes of a TensorTable's dtype column: the table's order, one byte per tensor.
DTYPE_NAMES: tuple[str, ...] = tuple(TABLE)
_DTYPE_CODE = {name: code for code, name in enumerate(DTYPE_NAMES)}
DTYPE_WIDTHS: tuple[int, ...] = tuple(TABLE[name].width for name in DTYPE_NAMES)  # bytes per element, by code


class TensorTable(Sequence[TensorInfo]):
    """One shard's tensors in on-disk order, held as columns; a `TensorInfo` is made on access.

    A MoE checkpoint holds about 100k tensors and a header may hold a million. One frozen
    object per tensor (a name, a dtype string, a shape tuple, two offsets, the record) cost
    about 400 bytes each, twice over for the pair of a diff. Here a tensor costs its name
    (a str, shared with every caller that iterates), one dtype byte, a shape id (equal
    shapes are stored once: a MoE layer repeats a few shapes thousands of times) and two
    8-byte offsets: under 40 bytes beyond the name. Records are plain and short-lived, so
    the engine still passes immutable TensorInfo inward.
    """

    __slots__ = ("file", "names", "_dtypes", "_shape_ids", "_shapes", "_begins", "_ends")

    def __init__(self, file: Path, names: list[str], dtypes: array, shape_ids: array, shapes: list[tuple[int, ...]],
                 begins: array, ends: array) -> None:
        self.file = file
        self.names = names  # in on-disk order
        self._dtypes, self._shape_ids, self._shapes = dtypes, shape_ids, shapes
        self._begins, self._ends = begins, ends  # absolute byte offsets in `file`

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.info(j) for j in range(*i.indices(len(self.names)))]
        if i < 0:
            i += len(self.names)
        if not 0 <= i < len(self.names):
            raise IndexError("tensor index out of range")
        return self.info(i)

    def info(self, i: int) -> TensorInfo:
        """The record of row `i` (0 <= i < len)."""
        return _record(self.names[i], DTYPE_NAMES[self._dtypes[i]], self._shapes[self._shape_ids[i]], self.file,
                       self._begins[i], self._ends[i])

    def shape(self, i: int) -> tuple[int, ...]:
        """Row `i`'s shape (the table's shared tuple: equal shapes are one object), no record made."""
        return self._shapes[self._shape_ids[i]]

    def dtype_code(self, i: int) -> int:
        """Row `i`'s dtype as its index in DTYPE_NAMES."""
        return self._dtypes[i]

    def columns(self) -> tuple[array, array, list[tuple[int, ...]], array, array]:
        """(dtype codes, shape ids, shapes, begins, ends): the rows as columns, for passes over a
        whole table that make no record (the diff's plan and its run)."""
        return self._dtypes, self._shape_ids, self._shapes, self._begins, self._ends

    def __iter__(self) -> Iterator[TensorInfo]:
        shapes, file = self._shapes, self.file
        for name, code, sid, begin, end in zip(self.names, self._dtypes, self._shape_ids, self._begins, self._ends):
            yield _record(name, DTYPE_NAMES[code], shapes[sid], file, begin, end)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (TensorTable, tuple, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TensorTable({os.path.basename(self.file)}, {len(self)} tensors)"

    @property
    def nbytes(self) -> int:
        """Data bytes of every tensor (the shard's data section: offsets are contiguous)."""
        return sum(self._ends) - sum(self._begins)

    def bytes_by_dtype(self) -> dict[str, int]:
        """Data bytes per dtype name (in order of first appearance), without a record per tensor."""
        codes = dict.fromkeys(self._dtypes)
        if len(codes) == 1:
            return {DTYPE_NAMES[next(iter(codes))]: self.nbytes}
        sizes = list(map(sub, self._ends, self._begins))
        return {DTYPE_NAMES[code]: sum(compress(sizes, map(code.__eq__, self._dtypes))) for code in codes}


class _Columns:
    """A TensorTable being filled, entry by entry, in header order (see _finish_table)."""

    __slots__ = ("names", "dtypes", "shape_ids", "shapes", "shape_id", "begins", "ends")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.dtypes, self.shape_ids = array("B"), array("I")
        self.shapes: list[tuple[int, ...]] = []
        self.shape_id: dict = {}  # shape (or its header text) -> index in `shapes`
        self.begins, self.ends = array("q"), array("q")

    def shape_index(self, key: object, shape: tuple[int, ...]) -> int:
        sid = self.shape_id.get(key)
        if sid is None:
            sid = self.shape_id[key] = len(self.shapes)
            self.shapes.append(shape)
        return sid

    def add(self, name: str, dtype: str, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.names.append(name)
        self.dtypes.append(_DTYPE_CODE[dtype])
        self.shape_ids.append(self.shape_index(shape, shape))
        self.begins.append(begin)
        self.ends.append(end)


@dataclass(frozen=True)
class ShardHeader:
    """A validated header: tensors in on-disk order, metadata, where data starts."""

    path: Path
    file_size: int
    data_start: int
    metadata: dict[str, str]
    tensors: TensorTable


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen = dict(pairs)  # C speed: headers of real models hold up to ~100k objects
    if len(seen) != len(pairs):
        keys: set[str] = set()
        for key, _ in pairs:
            if key in keys:
                raise _Duplicate(key)
            keys.add(key)
    return seen


class _Duplicate(Exception):
    pass


# A \uD800-\uDFFF escape: the only way a decoded header can hold a (lone) surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_utf8(text: str) -> None:
    """Python's json accepts lone surrogate escapes ("\\ud800"); UTF-8 (and safetensors) does not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"string with a lone surrogate escape: {text[:40]!r}") from None


def _reject_constant(token: str) -> float:
    raise ValueError(f"non-standard JSON constant {token}")


# The metadata object of a compact header: the strict path's hooks (no duplicates, no NaN, no floats needed).
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


# Width bombs: 100 MB of "[],[],..." or "{},{},..." parse into GBs of Python objects. A real
# header spends >= ~50 bytes per tensor entry on one object, two lists, a few ints and five
# strings; a header far denser in structure than that is refused before (or while) parsing.
# The allowances are generous: they only bite on large, pathological headers.
_BOMB_CHECK_BYTES = 1 << 20
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: twice as fast as (?:[^"\\]|\\.)*
_SLACK = 65536


def json_bomb_reason(raw: bytes) -> str | None:
    """Why a large side-car JSON file (config, index) is too dense in values to be parsed safely, or None.

    Real config.json and index files are a few small values per 15+ bytes ("name": "file",).
    """
    if len(raw) <= _BOMB_CHECK_BYTES:
        return None
    skeleton, strings = _STRING.subn(b"", raw)
    values = skeleton.count(b",") + skeleton.count(b"{") + skeleton.count(b"[")
    if values > len(raw) // 12 + _SLACK or strings > len(raw) // 12 + _SLACK:
        return f"{values} values and {strings} strings in {len(raw)} bytes (a JSON bomb?)"
    return None


# Integer tokens outside strings that break the usize rule: a sign (even "-0"), or 20+ digits.
_NEGATIVE_INT = re.compile(rb"(?<![\d.eE])-\d+(?![\d.eE])")
_LONG_INT = re.compile(rb"(?<![\d.eE+-])\d{20,}(?![\d.eE])")
_INT = re.compile(rb"(?<![\d.eE+-])-?\d+(?![\d.eE])")


def check_numbers(raw: bytes) -> None:
    """The header rules on numbers and structure, checked on the bytes before json builds objects.

    Every integer is a usize: no sign (not even -0), below 2**64. And a header far denser in
    structure than any tensor table is a width bomb (100 MB of "[],[]," parse into GBs of
    Python objects), refused here. Done with regular expressions over the header with its
    strings removed, at C speed: a hook per integer cost more than the rest of the parse for
    a 100k-tensor header. Raises ValueError.
    """
    big = len(raw) > _BOMB_CHECK_BYTES
    # Names such as "blocks-1" hold these patterns inside strings; only then are the strings removed.
    if not big and not _NEGATIVE_INT.search(raw) and not _LONG_INT.search(raw):
        return
    skeleton, strings = _STRING.subn(b"", raw)
    hit = _NEGATIVE_INT.search(skeleton)
    if hit:
        raise ValueError(f"it holds a negative integer ({hit.group().decode()[:40]}): every number in a "
                         "safetensors header, shapes and offsets included, is unsigned")
    for hit in _LONG_INT.finditer(skeleton):
        if int(hit.group()) > MAX_USIZE:
            raise ValueError(f"integer {hit.group().decode()[:40]} does not fit in 64 bits")
    if not big:
        return
    objects, lists = skeleton.count(b"{"), skeleton.count(b"[")
    if objects > len(raw) // 32 + _SLACK or lists > 3 * objects + _SLACK or strings > 8 * objects + _SLACK:
        raise ValueError(f"{objects} objects, {lists} arrays and {strings} strings in {len(raw)} bytes: "
                         "far denser than any tensor table (a JSON bomb?)")
    allowed = 12 * objects + _SLACK
    # Every integer is a value of its own, after a comma or an opening bracket: count them only when that bound is loose.
    if skeleton.count(b",") + lists + 1 > allowed and len(_INT.findall(skeleton)) > allowed:
        raise ValueError("far more integers than a tensor table holds (a JSON bomb?)")


def parse_header(path: Path) -> ShardHeader:
    """Read and validate one .safetensors file's header without reading tensor data."""
    where = str(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise SurgeonError(f"{where}: not a regular file; give a .safetensors file or a model folder")
        with open(path, "rb") as f:
            file_size = _file_size(f)
            if file_size < 8:
                raise SurgeonError(f"{where}: not a safetensors file (only {file_size} bytes; need an 8-byte header length); {DAMAGED}")
            header_len = header_length(where, f.read(8), file_size)
            raw = f.read(header_len)
    except OSError as e:
        raise SurgeonError(f"{where}: cannot read ({e.strerror or e}); check the file's permissions and the disk") from e
    if len(raw) != header_len:
        raise SurgeonError(f"{where}: file shrank while reading its header; is something still writing it? rerun once it is complete")
    text = _header_text(where, raw)
    del raw  # a million-tensor header is 100 MB: not held twice while its table is built
    return _validate_header(path, text, 8 + header_len, file_size)


def header_length(where: str, first8: bytes, file_size: int) -> int:
    """The JSON header's length from a file's first 8 bytes, checked against the limit and the file size."""
    if file_size < 8 or len(first8) < 8:
        raise SurgeonError(f"{where}: not a safetensors file (only {file_size} bytes; need an 8-byte header length); {DAMAGED}")
    (header_len,) = struct.unpack("<Q", first8[:8])
    if header_len > MAX_HEADER_BYTES:
        raise SurgeonError(f"{where}: header length {header_len} exceeds the 100 MB limit; {DAMAGED}")
    if 8 + header_len > file_size:
        raise SurgeonError(f"{where}: header length {header_len} runs past the end of the file ({file_size} bytes); {DAMAGED}")
    return header_len


def header_from_bytes(path: Path, head: bytes, file_size: int) -> ShardHeader:
    """Validate a header read elsewhere (by range from the Hub): `head` holds at least the file's first 8+N bytes.

    The same checks as parse_header, on the same code: a remote file gets no second parser.
    """
    header_len = header_length(str(path), head, file_size)
    if len(head) < 8 + header_len:
        # internal: the Hub reader fetches 8 + the declared length (checked above) before it calls this
        raise SurgeonError(f"internal: {path}: {len(head)} header bytes, need {8 + header_len}")
    return _validate_header(path, _header_text(str(path), memoryview(head)[8:8 + header_len]), 8 + header_len, file_size)


def _file_size(f) -> int:
    return os.fstat(f.fileno()).st_size


# One entry exactly as the safetensors library (and build_header) writes it: no whitespace, keys in
# this order, a name without escapes or control characters, integers without sign or leading zeros.
_COMPACT_ENTRY = re.compile(r'"([^"\\\x00-\x1f]*)":\{"dtype":"([A-Z0-9_]{1,16})","shape":\[((?:0|[1-9][0-9]{0,18})'
                            r'(?:,(?:0|[1-9][0-9]{0,18}))*)?\],"data_offsets":\[(0|[1-9][0-9]{0,18}),(0|[1-9][0-9]{0,18})\]\}([,}])')
_PADDING = re.compile(r"[ \t\n\r]*")


def _compact_entries(text: str, data_start: int, data_size: int) -> tuple[dict, _Columns] | None:
    """The header as written by safetensors itself, scanned into columns without a JSON object per tensor; else None.

    json.loads builds a dict, two lists and five strings per tensor at once (about 1 KB per
    tensor of transient peak: a gigabyte for a million tensors). This path takes only the
    exact form the library writes, keeps per tensor only its name and the column entries,
    and checks every rule of the strict path (integers of at most 19 digits are below
    2**64); anything else (spaces, another key order, escapes, a wrong size, a duplicate)
    returns None and the strict path decides, with its messages.
    """
    metadata: dict = {}
    pos = 1
    if not text.startswith("{"):
        return None
    if text.startswith('{"__metadata__":'):
        try:
            metadata, pos = _DECODER.raw_decode(text, len('{"__metadata__":'))
        except (ValueError, _Duplicate, RecursionError):
            return None
        if not isinstance(metadata, dict) or not all(type(v) is str for v in metadata.values()) \
                or "\\" in text[:pos] or not text.startswith(",", pos):
            return None
        pos += 1
    elif text.startswith("{}"):
        return None  # the strict path handles an empty table
    cols = _Columns()
    names, dtypes, shape_ids, begins, ends = cols.names, cols.dtypes, cols.shape_ids, cols.begins, cols.ends
    shape_id, numels = cols.shape_id, []
    codes, widths = _DTYPE_CODE, DTYPE_WIDTHS
    match = _COMPACT_ENTRY.match
    while True:
        m = match(text, pos)
        if m is None:
            return None
        name, dtype, shape_text, begin, end, closing = m.groups()
        code = codes.get(dtype)
        sid = shape_id.get(shape_text)
        if sid is None:
            shape = tuple(map(int, shape_text.split(","))) if shape_text else ()
            sid = cols.shape_index(shape_text, shape)
            numels.append(math.prod(shape))
        begin, end = int(begin), int(end)
        if code is None or end < begin or end > data_size or numels[sid] * widths[code] != end - begin \
                or name == "__metadata__":
            return None
        names.append(name)
        dtypes.append(code)
        shape_ids.append(sid)
        begins.append(data_start + begin)
        ends.append(data_start + end)
        pos = m.end()
        if closing == "}":
            break
    if _PADDING.match(text, pos).end() != len(text) or len(set(names)) != len(names):
        return None
    return dict(metadata), cols


def _strict_entries(where: str, text: str, data_start: int, data_size: int) -> tuple[dict, _Columns]:
    """Every header rule in turn, through json: any header, with a message naming what is wrong."""
    try:
        check_numbers(text.encode("utf-8"))  # the header's bytes again (valid UTF-8 round-trips exactly)
    except ValueError as e:  # valid JSON, but not a valid header: say which rule, not "not valid JSON"
        raise SurgeonError(f"{where}: header refused: {e}; {DAMAGED}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except _Duplicate as e:
        raise SurgeonError(f"{where}: header names tensor {str(e.args[0])[:80]!r} twice; {DAMAGED}") from e
    except (ValueError, RecursionError) as e:
        raise SurgeonError(f"{where}: header is not valid JSON ({str(e)[:120]}); {DAMAGED}") from e
    if _SURROGATE_ESCAPE.search(text):  # rare: pay for a full check only when an escape is there
        try:
            _check_utf8(json.dumps(obj, ensure_ascii=False))
        except ValueError as e:
            raise SurgeonError(f"{where}: header is not valid JSON ({e}); {DAMAGED}") from None
    if not isinstance(obj, dict):
        raise SurgeonError(f"{where}: header must be a JSON object, got {type(obj).__name__}; {DAMAGED}")

    metadata = obj.pop("__metadata__", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SurgeonError(f"{where}: __metadata__ must map strings to strings; {DAMAGED}")
    # A lone surrogate in a metadata value is an escape in the text: the whole-header check above refused it.
    cols = _Columns()
    for name, spec in obj.items():
        _validate_entry(where, cols, name, spec, data_start, data_size)
    return metadata, cols


def tensor_table(path: Path, rows: Iterable[tuple[str, str, tuple[int, ...], int, int]]) -> TensorTable:
    """A table of records known already, (name, dtype, shape, begin, end) in on-disk order: the header
    the writer built from its plan, which it has just compared with the disk byte for byte; nothing
    is parsed or checked again."""
    cols = _Columns()
    for row in rows:
        cols.add(*row)
    return TensorTable(path, cols.names, cols.dtypes, cols.shape_ids, cols.shapes, cols.begins, cols.ends)


def _header_text(where: str, raw: bytes | memoryview) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as e:
        raise SurgeonError(f"{where}: header is not valid UTF-8 (byte {e.start}); {DAMAGED}") from e


def _validate_header(path: Path, text: str, data_start: int, file_size: int) -> ShardHeader:
    where = str(path)
    data_size = file_size - data_start
    compact = _compact_entries(text, data_start, data_size)
    metadata, cols = compact if compact is not None else _strict_entries(where, text, data_start, data_size)
    return ShardHeader(path=path, file_size=file_size, data_start=data_start, metadata=dict(metadata),
                       tensors=_finish_table(where, path, cols, data_start, file_size))


def _contiguous(begins: array, ends: array, cursor: int) -> bool:
    """Each tensor starts where the one before ends, the first at `cursor` (array comparisons, at C speed)."""
    return not begins or (begins[0] == cursor and begins[1:] == ends[:-1])


def _finish_table(where: str, path: Path, cols: _Columns, data_start: int, file_size: int) -> TensorTable:
    """The columns in on-disk order (sorted by offsets where the header lists them otherwise),
    checked to cover the data section exactly: no gap, no overlap, nothing after."""
    if not _contiguous(cols.begins, cols.ends, data_start):
        begins, ends = cols.begins, cols.ends
        order = sorted(range(len(cols.names)), key=lambda i: (begins[i], ends[i]))
        cols.names = [cols.names[i] for i in order]
        for column in ("dtypes", "shape_ids", "begins", "ends"):
            old = getattr(cols, column)
            setattr(cols, column, array(old.typecode, (old[i] for i in order)))
        del order
        if not _contiguous(cols.begins, cols.ends, data_start):
            _refuse_gap(where, cols, data_start)
    cursor = cols.ends[-1] if cols.names else data_start
    if cursor != file_size:  # never past it: every entry was checked to end within the data section
        raise SurgeonError(f"{where}: {file_size - cursor} trailing bytes after the last tensor (data section must end at end of file); {DAMAGED}")
    return TensorTable(path, cols.names, cols.dtypes, cols.shape_ids, cols.shapes, cols.begins, cols.ends)


def _refuse_gap(where: str, cols: _Columns, data_start: int) -> None:
    """Name the first tensor that does not start where the one before ends (columns in on-disk order)."""
    cursor = data_start
    for name, begin, end in zip(cols.names, cols.begins, cols.ends):
        if begin != cursor:
            if begin < cursor:
                raise SurgeonError(f"{where}: tensor {name!r} overlaps the previous tensor's bytes; {DAMAGED}")
            raise SurgeonError(f"{where}: gap of {begin - cursor} bytes before tensor {name!r} (offsets must be contiguous); {DAMAGED}")
        cursor = end


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_entry(where: str, cols: _Columns, name: str, spec: object, data_start: int, data_size: int) -> None:
    # An empty name and unknown extra fields in an entry are accepted, as safetensors does.
    # Written for speed (type() is, one pass over the shape): it runs once per tensor, 100k times for a MoE model.
    if type(spec) is dict:
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        entry = TABLE.get(dtype) if type(dtype) is str else None
        if entry is not None and type(shape) is list and type(offsets) is list and len(offsets) == 2:
            begin, end = offsets
            numel = 1
            for d in shape:  # Python ints cannot overflow: no wrap-around tricks get through.
                if type(d) is not int or d < 0:
                    break
                numel *= d
            else:
                if type(begin) is int and type(end) is int and 0 <= begin <= end <= data_size \
                        and numel * entry.width == end - begin:
                    cols.add(name, dtype, tuple(shape), data_start + begin, data_start + end)
                    return
    raise _entry_error(where, name, spec, data_size)


def _entry_error(where: str, name: str, spec: object, data_size: int) -> SurgeonError:
    """What is wrong with an entry `_validate_entry` refused (the slow path: every rule in turn)."""
    shown = name if len(name) <= 120 else name[:117] + "..."
    if not isinstance(spec, dict):
        return SurgeonError(f"{where}: tensor {shown!r}: entry must be an object with dtype, shape, data_offsets; {DAMAGED}")
    missing = {"dtype", "shape", "data_offsets"} - set(spec)
    if missing:
        return SurgeonError(f"{where}: tensor {shown!r}: its entry is missing {', '.join(sorted(missing))}; {DAMAGED}")
    dtype = spec["dtype"]
    if isinstance(dtype, str) and dtype in SUBBYTE_DTYPES:
        return SurgeonError(f"{where}: tensor {shown!r}: packed sub-byte dtype {dtype} is not supported: "
                            "convert the model to BF16, F16 or F32 first")
    if not isinstance(dtype, str) or dtype not in TABLE:
        return SurgeonError(f"{where}: tensor {shown!r} has an unknown dtype {str(dtype)[:40]!r}; {DAMAGED}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return SurgeonError(f"{where}: tensor {shown!r}: shape must be a list of non-negative integers; {DAMAGED}")
    offsets = spec["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        return SurgeonError(f"{where}: tensor {shown!r}: data_offsets must be two integers; {DAMAGED}")
    begin, end = offsets
    if begin < 0 or end < begin:
        return SurgeonError(f"{where}: tensor {shown!r}: invalid data_offsets [{begin}, {end}]; {DAMAGED}")
    if end > data_size:
        return SurgeonError(f"{where}: tensor {shown!r}: data ends at byte {end} but the data section has {data_size} bytes (truncated?); {DAMAGED}")
    numel = math.prod(shape)
    return SurgeonError(
        f"{where}: tensor {shown!r}: {dtype}{list(shape)} needs {numel * itemsize(dtype)} bytes but data_offsets span {end - begin}; {DAMAGED}"
    )


def build_header(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> tuple[bytes, list[int]]:
    """Serialise a header for tensors written back to back in the given order.

    Returns the full prefix (8-byte length + JSON padded with spaces to a multiple of 8,
    so that tensor data is aligned) and each tensor's byte size.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    sizes: list[int] = []
    offset = 0
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        size = n * itemsize(dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
        sizes.append(size)
    if len(header) != len(tensors) + (1 if metadata else 0):
        raise SurgeonError("internal: duplicate tensor names in a planned shard")  # internal: plans key tensors by name
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % HEADER_ALIGN)
    return struct.pack("<Q", len(blob)) + blob, sizes
