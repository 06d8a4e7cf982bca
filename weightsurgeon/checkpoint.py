"""Open a checkpoint: resolve the source, validate every header and the index, read in chunks.

Validation happens once, here, at the boundary (the safetensors habit): what leaves this
module is a `Checkpoint` of immutable `TensorInfo` records that the rest of the engine
trusts. Tensor bytes are read only on demand, in bounded chunks, into buffers the caller
reuses, so reading a 2.5 GB embedding costs one chunk of memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import ItemsView, Mapping, ValuesView
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import ShardHeader, TensorInfo, TensorTable, json_bomb_reason, parse_header
from weightsurgeon.layout import ConfigView
from weightsurgeon.quant import NONE as NOT_QUANTIZED, Quantization, refusal as quant_refusal, scan as scan_quantized
from weightsurgeon.source import ByteSource, LocalFile, open_sequential, pread_into  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # numpy is imported where data is read: opening and planning need none
    import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
# A Hub id, optionally pinned to a revision: ORG/NAME@REVISION (a branch, tag or commit hash).
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


_ROW_BITS = 32  # a TensorMap value: shard index << _ROW_BITS | row in the shard's table


class TensorMap(Mapping[str, TensorInfo]):
    """Every tensor of a checkpoint by name, in shard order then on-disk order: a read-only
    mapping over the shards' TensorTables.

    It holds one int per name (which shard, which row) and no record: `TensorInfo` is made
    on access, so a million-tensor checkpoint costs its tables plus this index (see
    format.TensorTable), not a million objects. A name stored in two shards is refused.
    """

    __slots__ = ("_tables", "_where", "_starts")

    def __init__(self, tables: list[TensorTable]) -> None:
        self._tables = tables
        where: dict[str, int] = {}
        self._starts = starts = []  # each table's first position in the map's order
        for s, table in enumerate(tables):
            starts.append(len(where))
            before = len(where)
            start = s << _ROW_BITS
            where.update(zip(table.names, range(start, start + len(table))))
            if len(where) != before + len(table):
                _refuse_duplicate(tables, s)
        self._where = where

    def __getitem__(self, name: str) -> TensorInfo:
        at = self._where[name]
        return self._tables[at >> _ROW_BITS].info(at & _ROW_MASK)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def values(self) -> ValuesView[TensorInfo]:
        return _Values(self)

    def items(self) -> ItemsView[str, TensorInfo]:
        return _Items(self)

    def position(self, name: str) -> int | None:
        """`name`'s place in the map's order (0 .. len - 1), or None: a row number other
        columns over the same names share (layout.Locations)."""
        at = self._where.get(name)
        return None if at is None else self._starts[at >> _ROW_BITS] + (at & _ROW_MASK)

    def where(self, name: str) -> int | None:
        """`name`'s key in this map: shard index << 32 | row in that shard's table (keys sort in the
        map's order), or None; `table_of` and `info_at` read it back without a name lookup."""
        return self._where.get(name)

    def table_of(self, at: int) -> tuple[TensorTable, int]:
        """(the shard's table, the row) of a key from `where`."""
        return self._tables[at >> _ROW_BITS], at & _ROW_MASK

    def position_at(self, at: int) -> int:
        """The place in the map's order (see `position`) of a key from `where`."""
        return self._starts[at >> _ROW_BITS] + (at & _ROW_MASK)

    def info_at(self, at: int) -> TensorInfo:
        """The record of a key from `where`."""
        return self._tables[at >> _ROW_BITS].info(at & _ROW_MASK)

    @property
    def tables(self) -> list[TensorTable]:
        """The shards' tables in the map's order (table s holds keys s << 32 | row)."""
        return self._tables

    def file_of(self, name: str) -> Path | None:
        """The shard file storing `name`, or None."""
        at = self._where.get(name)
        return None if at is None else self._tables[at >> _ROW_BITS].file

    def infos(self) -> Iterator[TensorInfo]:
        """Every record, shard by shard in on-disk order (what iterating the values gives)."""
        return chain.from_iterable(self._tables)

    def __repr__(self) -> str:
        return f"TensorMap({len(self)} tensors in {len(self._tables)} shard(s))"


_ROW_MASK = (1 << _ROW_BITS) - 1


class _Values(ValuesView):
    def __iter__(self) -> Iterator[TensorInfo]:
        return self._mapping.infos()


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, TensorInfo]]:
        return ((info.name, info) for info in self._mapping.infos())


def _refuse_duplicate(tables: list[TensorTable], upto: int) -> None:
    """Name the tensor stored twice among tables[:upto + 1] (the slow path, only on failure)."""
    seen: dict[str, Path] = {}
    for table in tables[:upto + 1]:
        for name in table.names:
            if name in seen:
                raise SurgeonError(f"{table.file}: tensor {name!r} is also stored in {seen[name].name}; "
                                   "two files of the model hold it: remove the stray one")
            seen[name] = table.file


@dataclass
class Checkpoint:
    """A validated set of safetensors shards plus the JSON files beside them."""

    source: str
    root: Path | None
    shards: tuple[ShardHeader, ...]
    tensors: TensorMap
    config: dict | None
    index: dict | None  # model.safetensors.index.json as checked, without its weight_map (see _checked_index)
    warnings: list[str] = field(default_factory=list)
    surgeon: dict | None = None
    quant: Quantization = NOT_QUANTIZED  # FP8/MXFP4 weights and their scales (weightsurgeon.quant)
    # Each file read, as it was when opened (see check_unchanged).
    identities: dict[Path, FileIdentity] = field(default_factory=dict, repr=False)
    # Where the bytes come from: None for local files, else a remote.HubRepo (read by range).
    remote: Any = None
    # "local" (a path), "cache" (a Hub id found in the local cache) or "remote" (read from the Hub).
    origin: str = "local"
    _sources: dict[Path, ByteSource] = field(default_factory=dict, repr=False)

    # -- container protocol -------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    def __len__(self) -> int:
        return len(self.tensors)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.shards]

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    @property
    def location(self) -> str:
        """Where the checkpoint is, for messages and reports: a folder, a file, or hf://REPO@COMMIT."""
        return self.remote.label if self.remote is not None else str(self.path)

    @property
    def total_bytes(self) -> int:
        return sum(s.tensors.nbytes for s in self.shards)

    @property
    def is_partial(self) -> bool:
        """True for a folder written by ``surgeon extract`` (it holds only some tensors)."""
        return bool(self.surgeon and self.surgeon.get("partial"))

    @property
    def path(self) -> Path:
        """The folder, or the file of a single-file checkpoint: what messages and provenance name."""
        return self.root if self.root is not None else self.shards[0].path

    @property
    def config_view(self) -> ConfigView:
        """config.json through the one view of it (``text_config`` resolved, typed lookups)."""
        return ConfigView(self.config)

    def check_unchanged(self) -> None:
        """Fail if a file of this checkpoint changed since it was opened.

        A checkpoint that a training job or a download is still writing would give a result
        made of bytes that never existed together. Runs call this on each new shard and once
        more before anything is written; a few ``stat`` calls, no reading.
        """
        for path, before in self.identities.items():
            now = file_identity(path)
            if now != before:
                raise SurgeonError(f"{path}: {before.change_to(now)} while this run was reading it; the result would "
                                   "mix bytes that never existed together, so nothing was written: rerun once it is complete")

    def header_digest(self, shard: ShardHeader) -> str:
        """sha256 of a shard's header bytes: names the layout (names, dtypes, shapes, offsets), not the weights."""
        head = bytearray(shard.data_start)
        try:
            got = self.byte_source(shard.path).read_into(0, memoryview(head))
        except OSError as e:
            raise SurgeonError(f"{shard.path}: cannot read ({e.strerror or e}); check the file's permissions and the disk") from e
        if got != len(head):
            raise SurgeonError(f"{shard.path}: file shrank below its header while this run was reading it; rerun once nothing writes it")
        return hashlib.sha256(head).hexdigest()

    # -- reading --------------------------------------------------------------------------
    def byte_source(self, path: Path) -> ByteSource:
        """The source of one shard's bytes (a local file, or a Hub file read by range), opened once."""
        src = self._sources.get(path)
        if src is None:
            src = self._sources[path] = self.remote.source(path) if self.remote is not None else LocalFile(path)
        return src

    def locate(self, info: TensorInfo) -> tuple[int, int] | None:
        """(open descriptor of the tensor's shard, byte position of its data) for readers of our own (the
        diff kernel); None where the bytes have no local descriptor (a remote file): use read_into."""
        fd = self.byte_source(info.file).fileno()
        return None if fd is None else (fd, info.begin)

    def lendable(self, info: TensorInfo, offset: int) -> tuple[int, bool]:
        """(bytes of the tensor from ``offset`` in the fetched piece holding them, whether its source
        can lend them in place, aligned to the element width); see ByteSource.lendable."""
        span, ok = self.byte_source(info.file).lendable(info.begin + offset, info.itemsize)
        return min(span, info.nbytes - offset), ok

    def lend(self, info: TensorInfo, offset: int, nbytes: int) -> memoryview:
        return self.byte_source(info.file).lend(info.begin + offset, nbytes)

    def give_back(self, info: TensorInfo, offset: int, nbytes: int) -> None:
        self.byte_source(info.file).give_back(info.begin + offset, nbytes)

    def read_into(self, info: TensorInfo, offset: int, out: memoryview | bytearray | np.ndarray) -> None:
        """Fill ``out`` with the tensor's bytes starting ``offset`` bytes into the tensor."""
        view = memoryview(out).cast("B")
        if offset < 0 or offset + len(view) > info.nbytes:
            # internal: every caller reads within the tensor it names (offsets come from its header entry)
            raise SurgeonError(f"internal: read of {len(view)} bytes at {offset} outside tensor {info.name!r}")
        try:
            done = self.byte_source(info.file).read_into(info.begin + offset, view)
        except OSError as e:
            raise SurgeonError(f"{info.file}: read failed in tensor {info.name!r} ({e.strerror or e}); check the disk and rerun") from e
        if done != len(view):
            raise SurgeonError(f"{info.file}: file is shorter than its header says (truncated while reading {info.name!r}); "
                               "download the model again")

    def iter_chunks(self, info: TensorInfo, chunk_bytes: int = DEFAULT_CHUNK_BYTES, buffer: bytearray | None = None) -> Iterator[np.ndarray]:
        """Yield the tensor as 1-D arrays of its stored dtype (BF16 as uint16 bits).

        Every chunk is a view of one reused buffer: consume it before asking for the next.
        """
        import numpy as np

        from weightsurgeon.kernels.decode import storage_dtype

        size = info.itemsize
        step = max(size, chunk_bytes - chunk_bytes % size)
        if buffer is None:
            buffer = bytearray(min(step, max(info.nbytes, size)))
        elif len(buffer) < size:
            raise SurgeonError("internal: read buffer smaller than one element")  # internal: callers size buffers in chunks
        step = min(step, len(buffer) - len(buffer) % size)
        dtype = storage_dtype(info.dtype)
        offset = 0
        while offset < info.nbytes:
            n = min(step, info.nbytes - offset)
            view = memoryview(buffer)[:n]
            self.read_into(info, offset, view)
            yield np.frombuffer(view, dtype=dtype)
            offset += n

    def read_tensor(self, name: str) -> np.ndarray:
        """The whole tensor, shaped, in its stored dtype. Memory = tensor size: for small tensors and tests."""
        import numpy as np

        from weightsurgeon.kernels.decode import storage_dtype

        info = self.tensors[name]
        out = np.empty(info.numel, dtype=storage_dtype(info.dtype))
        if info.nbytes:
            self.read_into(info, 0, out)
        return out.reshape(info.shape)

    def close(self) -> None:
        for src in self._sources.values():
            src.close()
        self._sources.clear()
        if self.remote is not None:
            self.remote.close()


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What says a file is still the one that was opened: device, inode, size, modification time."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    def change_to(self, now: "FileIdentity | None") -> str:
        if now is None:
            return "was deleted"
        if (now.device, now.inode) != (self.device, self.inode):
            return "was replaced by another file"
        if now.size != self.size:
            return f"changed size ({self.size} -> {now.size} bytes)"
        return "was modified"


def file_identity(path: Path) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SurgeonError(f"{path}: cannot access ({e.strerror or e}); check the path and its permissions") from e
    return FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identities(files: list[Path]) -> dict[Path, FileIdentity]:
    """Taken before the files are parsed: a change during parsing is caught too."""
    return {f: ident for f in files if (ident := file_identity(f)) is not None}




# ---------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------

def open_checkpoint(source: str | os.PathLike, remote: bool = False, revision: str | None = None) -> Checkpoint:
    """Open a model directory, a single .safetensors file, or a Hub id (ORG/NAME[@REVISION]).

    A Hub id is read from the local cache when it is there. Otherwise, with `remote`, it is
    opened on the Hub: config, index and shard headers are fetched (tens of kB per shard),
    and tensor bytes are read by range later, only those a command asks for.
    """
    text = str(source)
    if not text.strip() or "\x00" in text:
        raise SurgeonError(f"{text!r}: not a path or Hub id; give a model folder, a .safetensors file or ORG/NAME")
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # a name too long, a permission problem on a parent
        raise SurgeonError(f"{text}: cannot access ({e.strerror or e}); check the path and its permissions") from e
    if exists:
        if path.is_dir():
            return _open_directory(text, path)
        return _open_single_file(text, path)
    ref = _HUB_REF.match(text)
    if ref and not text.endswith((".safetensors", ".json")):
        repo_id, rev = ref.group("repo"), ref.group("rev")
        if rev is not None and revision is not None and rev != revision:
            raise SurgeonError(f"{text}: names revision {rev!r} and --revision says {revision!r}: give one")
        rev = rev or revision
        cached = _resolve_hub_id(repo_id, rev, missing_ok=remote)
        if cached is not None:
            ckpt = _open_directory(text, cached)
            ckpt.origin = "cache"
            return ckpt
        from weightsurgeon.remote import open_remote

        return open_remote(text, repo_id, rev)
    raise SurgeonError(f"{text}: no such file or directory (and not a Hub id like 'Qwen/Qwen2.5-Math-1.5B')")


def _resolve_hub_id(repo_id: str, revision: str | None = None, missing_ok: bool = False) -> Path | None:
    """Find a Hub repo in the local cache, offline; None if it is not there and `missing_ok`. Never downloads."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - core dependency
        raise SurgeonError("huggingface_hub is not installed: pass a local path instead of a Hub id") from e
    shown = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        folder = Path(snapshot_download(repo_id=repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as e:
        if missing_ok:
            return None
        raise SurgeonError(f"{shown}: no such directory, and not in the local Hugging Face cache; download it first "
                           f"with `hf download {repo_id}`, or pass --remote to fetch only the bytes the command needs") from e
    except Exception as e:  # invalid ids and cache oddities: report, never crash
        raise SurgeonError(f"{shown}: cannot resolve from the local Hugging Face cache ({type(e).__name__}: {str(e)[:120]}); "
                           "check the cache folder (HF_HUB_CACHE) or pass a local path") from e
    if missing_ok and not any(folder.glob("*.safetensors")):
        return None  # a snapshot with side files only (config, README): the weights are not cached
    return folder


def _open_single_file(text: str, path: Path) -> Checkpoint:
    if path.suffix in PICKLE_SUFFIXES:
        raise _pickle_error(path)
    if path.name == INDEX_NAME:
        return _open_directory(str(path.parent), path.parent)
    identities = _identities([path, path.parent / "config.json"])
    header = parse_header(path)
    _refuse_quantised(header)
    config = _read_config(path.parent)
    tensors = _tensor_infos([header])
    return Checkpoint(source=text, root=None, shards=(header,), tensors=tensors, config=config, index=None,
                      identities=identities, quant=scan_quantized(tensors, config, str(path)))


def _open_directory(text: str, root: Path) -> Checkpoint:
    warnings: list[str] = []
    index_path = root / INDEX_NAME
    index: dict | None = None
    if index_path.exists():
        index = _read_json_if_present(index_path)
        shard_names = validate_index(index_path, index)
        files = [root / n for n in shard_names]
        for f in files:
            if not f.exists():
                raise SurgeonError(f"{index_path}: names shard {f.name!r}, which does not exist; the download is "
                                   "incomplete: download the model again")
        listed = set(shard_names)
        for extra in sorted(p.name for p in root.glob("*.safetensors")):
            if extra not in listed and extra != "adapter_model.safetensors":
                warnings.append(f"{root / extra}: not listed in {INDEX_NAME}; ignored")
    elif (root / SINGLE_NAME).exists():
        files = [root / SINGLE_NAME]
        for extra in sorted(p.name for p in root.glob("*.safetensors")):
            if extra not in (SINGLE_NAME, "adapter_model.safetensors"):
                warnings.append(f"{root / extra}: ignored (the folder has {SINGLE_NAME} and no {INDEX_NAME})")
    else:
        files = sorted(p for p in root.glob("*.safetensors") if p.name != "adapter_model.safetensors")
        if not files:
            raise _empty_directory_error(root)
    identities = _identities([*files, index_path, root / "config.json"])
    headers = []
    for f in files:
        if not f.is_file():
            raise SurgeonError(f"{f}: is not a regular file; a shard must be a file (or a link to one)")
        headers.append(parse_header(f))
    tensors = _tensor_infos(headers)
    if index is not None:
        _cross_check_index(index_path, index, headers, tensors, warnings)
        index = _checked_index(index)
    for h in headers:
        _refuse_quantised(h)
    config = _read_config(root)
    surgeon = _read_json_if_present(root / "surgeon.json")
    if surgeon is not None and not isinstance(surgeon, dict):
        surgeon = None
    return Checkpoint(source=text, root=root, shards=tuple(headers), tensors=tensors, config=config, index=index,
                      warnings=warnings, surgeon=surgeon, identities=identities,
                      quant=scan_quantized(tensors, config, str(root)))


def assemble_checkpoint(text: str, where: Path, headers: list[ShardHeader], index: dict | None, config: object,
                        surgeon: object, remote: Any) -> Checkpoint:
    """A checkpoint from headers and side files read elsewhere (the Hub), with a folder's checks.

    `where` names the checkpoint in messages; `remote` reads the bytes (a remote.HubRepo).
    """
    warnings: list[str] = []
    tensors = _tensor_infos(headers)
    if index is not None:
        _cross_check_index(where / INDEX_NAME, index, headers, tensors, warnings)
        index = _checked_index(index)
    for h in headers:
        _refuse_quantised(h)
    check_config(where / "config.json", config)
    return Checkpoint(source=text, root=None, shards=tuple(headers), tensors=tensors,
                      config=config if isinstance(config, dict) else None, index=index, warnings=warnings,
                      surgeon=surgeon if isinstance(surgeon, dict) else None, remote=remote, origin="remote",
                      quant=scan_quantized(tensors, config if isinstance(config, dict) else None, str(where)))


def _checked_index(index: dict) -> dict:
    """The index as a checkpoint keeps it once checked against the headers: without its weight_map.

    The headers say where each tensor is; the weight_map said it again, as a name and a file
    name string per tensor (about 20 MiB for a 92k-tensor model, held for the whole run).
    """
    return {key: value for key, value in index.items() if key != "weight_map"}


def _tensor_infos(headers: list[ShardHeader]) -> TensorMap:
    return TensorMap([h.tensors for h in headers])


def _read_config(root: Path) -> dict | None:
    """config.json beside the weights: must be an object; a quantization_config the engine cannot decode is refused."""
    path = root / "config.json"
    config = _read_json_if_present(path)
    check_config(path, config)
    return config


def check_config(path: Path, config: object) -> None:
    """config.json must be an object; a quantization_config is refused."""
    if config is not None and not isinstance(config, dict):
        raise SurgeonError(f"{path}: must be a JSON object, got {type(config).__name__}; {REDOWNLOAD}")
    why = quant_refusal(config) if isinstance(config, dict) else None
    if why:
        raise SurgeonError(f"{path.parent}: quantized checkpoint ({why}); the engine decodes FP8 and MXFP4 weights only: dequantize it first")


def _read_json_if_present(path: Path) -> object | None:
    if not path.exists():
        return None
    if not path.is_file():  # a directory, a FIFO (would block), a device
        raise SurgeonError(f"{path}: not a regular file; it must be a JSON file (or a link to one)")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise SurgeonError(f"{path}: cannot read ({e.strerror or e}); check the file's permissions and the disk") from e
    return parse_json_file(path, raw)


MAX_JSON_BYTES = 64 * 1024 * 1024
# What to do about a damaged side-car JSON file (config.json, the index).
REDOWNLOAD = "the file is damaged: download the model again"


def parse_json_file(path: Path, raw: bytes) -> object:
    """A side-car JSON file's bytes (config, index, surgeon.json), with the size and JSON-bomb checks."""
    if len(raw) > MAX_JSON_BYTES:
        raise SurgeonError(f"{path}: larger than 64 MB, so not a checkpoint JSON file; {REDOWNLOAD}")
    bomb = json_bomb_reason(raw)
    if bomb:
        raise SurgeonError(f"{path}: not a checkpoint JSON file: {bomb}; {REDOWNLOAD}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SurgeonError(f"{path}: not valid JSON ({str(e)[:100]}); {REDOWNLOAD}") from e


def _plain_file_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not os.path.isabs(name) and name.endswith(".safetensors"))


def validate_index(index_path: Path, index: object) -> list[str]:
    """The index's shape and file names; returns shard names sorted (model-00001-of-N first)."""
    if not isinstance(index, dict):
        raise SurgeonError(f"{index_path}: must be a JSON object, got {type(index).__name__}; {REDOWNLOAD}")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SurgeonError(f"{index_path}: missing or empty 'weight_map'; the index is damaged: download it again")
    names: dict[str, None] = {}
    for tensor, file in weight_map.items():
        if not _plain_file_name(file):
            raise SurgeonError(f"{index_path}: tensor {tensor[:80]!r} maps to {str(file)[:80]!r}, which is not a plain .safetensors file name inside the model directory")
        names.setdefault(file, None)
    return sorted(names)


def _cross_check_index(index_path: Path, index: dict, headers: list[ShardHeader], tensors: TensorMap,
                       warnings: list[str]) -> None:
    weight_map = index["weight_map"]
    for tensor, file in weight_map.items():
        stored = tensors.file_of(tensor)
        if stored is None:
            raise SurgeonError(f"{index_path}: lists tensor {tensor[:80]!r} in {file}, but no shard listed in the index "
                               "contains it; the index and the shards disagree: download the model again")
        if stored.name != file:
            raise SurgeonError(f"{index_path}: lists tensor {tensor[:80]!r} in {file}, but it is stored in {stored.name}; "
                               "the index and the shards disagree: download the model again")
    if len(tensors) > len(weight_map):
        unlisted = [n for n in tensors if n not in weight_map]
        warnings.append(f"{index_path}: {len(unlisted)} tensor(s) in shards are not in the weight_map (e.g. {unlisted[0]!r}); transformers would ignore them")
    total = index.get("metadata", {}).get("total_size") if isinstance(index.get("metadata"), dict) else None
    actual_total = sum(h.tensors.nbytes for h in headers)
    if isinstance(total, int) and total != actual_total:
        warnings.append(f"{index_path}: metadata.total_size is {total} but the tensors hold {actual_total} bytes")


_GPTQ_SUFFIXES = (".qweight", ".qzeros", ".g_idx")
_BNB_SUFFIXES = (".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4", ".SCB")


def _refuse_quantised(header: ShardHeader) -> None:
    names = header.tensors.names
    joined = "\n".join(names) + "\n"  # one search per suffix over every name at once
    if not any(suffix + "\n" in joined for suffix in _GPTQ_SUFFIXES + _BNB_SUFFIXES):
        return
    for name in names:  # one may be there (or a name holds a line break): say which
        if name.endswith(_GPTQ_SUFFIXES):
            raise SurgeonError(f"{header.path}: GPTQ/AWQ-quantized weights ({name}); the engine works on plain float weights: use the unquantized model")
        if name.endswith(_BNB_SUFFIXES):
            raise SurgeonError(f"{header.path}: bitsandbytes-quantized weights ({name}); use the unquantized model")


def _pickle_error(path: Path) -> SurgeonError:
    return SurgeonError(
        f"{path}: pickle checkpoints are never opened (they can run code); convert to safetensors first, e.g. "
        "`python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('IN').save_pretrained('OUT')\"` in a trusted environment"
    )


def _empty_directory_error(root: Path) -> SurgeonError:
    if (root / "adapter_model.safetensors").exists() or (root / "adapter_config.json").exists():
        return SurgeonError(f"{root}: a LoRA/PEFT adapter (adapter_model.safetensors), not a full model; merge it into its base first (peft: merge_and_unload) and save with safetensors")
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES) if root.is_dir() else []
    if pickles:
        return _pickle_error(root / pickles[0])
    return SurgeonError(f"{root}: no .safetensors files found; give the model's folder (model.safetensors, or "
                        "model-*-of-*.safetensors with model.safetensors.index.json)")
