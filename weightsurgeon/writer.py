"""Carry out a surgery `Plan`: stream it into a new checkpoint folder, atomically.

The plan knows every output tensor's dtype and shape, so each shard's header is written
first and the data follows in plan order. Unchanged tensors are copied as raw bytes, never
decoded: runs of tensors that sit back to back in the same input file become one
``os.copy_file_range`` (in-kernel copy, no user-space buffer), else one bounded buffer
allocated once and reused. Generated, cast and interpolated tensors are computed chunk by
chunk. Everything happens inside `atomic_output_dir`: the temporary folder is re-opened
and checked against the plan before it is renamed into place, and removed on any error,
full disk, SIGINT or SIGTERM.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from weightsurgeon._version import __version__
from weightsurgeon.atomic import atomic_output_dir, check_output_path
from weightsurgeon.card import write_card
from weightsurgeon.cast_values import CAST_KINDS
from weightsurgeon.checkpoint import INDEX_NAME, Checkpoint, TensorMap, open_checkpoint
from weightsurgeon.source import ByteSource
from weightsurgeon.errors import SurgeonError
from weightsurgeon.exactreads import ExactReads, RunAhead
from weightsurgeon.format import build_header, tensor_table
from weightsurgeon.kernels.decode import storage_dtype
from weightsurgeon.kernels.dtypes import itemsize
from weightsurgeon.progress import ByteProgress
from weightsurgeon.surgery import Plan, PlannedTensor, Source, gaussian_key, gaussian_values, input_paths
from weightsurgeon.writeback import WriteBehind

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000
CHUNK_ELEMS = 1 << 21  # elements per computed chunk: enough parts for every thread of the Gaussian
COPY_SLICE = 64 * 1024 * 1024  # bytes per copy_file_range call: progress and signals between calls
COPY_BUFFER = 16 * 1024 * 1024  # the fallback copy's one buffer
EXACT_SLICE = 16 * 1024 * 1024  # bytes per copy_file_range call with exact read-ahead: the next ones are asked for between calls
# copy_file_range unsupported here (old kernel, cross-device, odd file system): use the buffer.
_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM,
                    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
# Loader-relevant files copied beside the weights (from BASE, or DONOR with --tokenizer-from donor).
AUX_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
             "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json")
AUX_SUFFIXES = (".tiktoken",)


@dataclass(frozen=True)
class WriteOptions:
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    force: bool = False
    verify: bool = False
    quiet: bool = False
    chunk_elems: int = CHUNK_ELEMS
    use_copy_file_range: bool = True
    fsync: bool = True
    checksums: bool = False  # sha256 of every file written, into surgeon.json: off by default (it costs more than 5%)


@dataclass
class WriteResult:
    output: Path
    shards: list[str]
    total_bytes: int
    copied_bytes: int = 0
    computed_bytes: int = 0
    verified: bool = False
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256 of its bytes as written
    # --verify with a remote input: (shard, position, length, sha256, first tensor) of every output
    # range made from fetched bytes, hashed as it was written; verify compares the output with
    # these instead of fetching the sources a second time
    fetched: list[tuple[str, int, int, str, str]] = field(default_factory=list)

    @property
    def verified_fetched_bytes(self) -> int:
        return sum(length for _, _, length, _, _ in self.fetched) if self.verified else 0

    def to_dict(self) -> dict:
        return {"output": str(self.output), "shards": self.shards, "bytes": self.total_bytes,
                "copied_bytes": self.copied_bytes, "computed_bytes": self.computed_bytes,
                "verified": self.verified, "verified_against_fetched_bytes": self.verified_fetched_bytes,
                "seconds": round(self.seconds, 3), "warnings": self.warnings}


@dataclass(frozen=True)
class WrittenFile:
    """A file as the writer meant it: its size and the sha256 of its first ``head`` bytes (a shard's
    header, or all of the index). The check before the rename compares the disk with these
    instead of parsing again what was just built from the plan."""

    path: Path
    size: int
    head: int
    sha256: str

    @classmethod
    def of(cls, path: Path, head: bytes, size: int | None = None) -> "WrittenFile":
        return cls(path, len(head) if size is None else size, len(head), hashlib.sha256(head).hexdigest())


class _Both:
    """Feeds one stream of bytes to several hashes (the shard's checksum and a fetched range's)."""

    def __init__(self, *digests: "hashlib._Hash | None") -> None:
        self.digests = [d for d in digests if d is not None]

    def update(self, data: object) -> None:
        for d in self.digests:
            d.update(data)


def reads_fetched(src: Source, remote_roles: set[str]) -> bool:
    """Whether an output tensor's bytes are made from a remote input's (fetched) bytes."""
    if not remote_roles or src.kind in ("zeros", "gaussian"):
        return False
    if src.kind in ("copy", "cast", "quantize", "dequantize"):
        return src.role in remote_roles
    return True  # interpolate, lora: made from several inputs


def shard_names(count: int) -> list[str]:
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def assign_shards(tensors: list[PlannedTensor], max_bytes: int,
                  shard_of: dict[str, int] | None = None) -> list[list[PlannedTensor]]:
    """Greedy, in plan order; a tensor larger than the limit gets a shard of its own (as Hugging Face does).

    With `shard_of` (a plan that keeps its input's sharding), tensor t goes to shard shard_of[t],
    empty shards left out."""
    if shard_of is not None:
        groups: dict[int, list[PlannedTensor]] = {}
        for t in tensors:
            groups.setdefault(shard_of[t.name], []).append(t)
        return [groups[k] for k in sorted(groups)]
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


# ---------------------------------------------------------------------------------------
# Sources -> bytes
# ---------------------------------------------------------------------------------------

class SourceReader:
    """Produces a planned tensor's bytes chunk by chunk, with buffers allocated once and reused."""

    def __init__(self, inputs: dict[str, Checkpoint], chunk_elems: int = CHUNK_ELEMS) -> None:
        if chunk_elems <= 0:
            raise SurgeonError("internal: chunk_elems must be positive")  # internal: callers pass the module's constant or a test's
        self.inputs = inputs
        self.chunk_elems = chunk_elems
        self._buffers: dict[str, bytearray] = {}
        self._turns: dict[str, int] = {}
        self.cache: dict[object, object] = {}  # small per-tensor state of a computed source (an adapter's A and B)

    def buffer(self, slot: str, nbytes: int) -> memoryview:
        buf = self._buffers.get(slot)
        if buf is None or len(buf) < nbytes:
            buf = bytearray(max(nbytes, self.chunk_elems * 8))
            self._buffers[slot] = buf
        return memoryview(buf)[:nbytes]

    def rotating(self, slot: str, nbytes: int) -> memoryview:
        """One of two buffers that take turns: a chunk computed into one may still be on its way to the
        disk (OverlappedWrites) while the next is computed into the other."""
        turn = self._turns.get(slot, 0) ^ 1
        self._turns[slot] = turn
        return self.buffer(f"{slot}/{turn}", nbytes)

    def _read(self, slot: str, role: str, name: str, start: int, count: int) -> np.ndarray:
        ckpt = self.inputs[role]
        info = ckpt[name]
        view = self.buffer(slot, count * info.itemsize)
        ckpt.read_into(info, start * info.itemsize, view)
        return np.frombuffer(view, dtype=storage_dtype(info.dtype))

    def values(self, t: PlannedTensor, start: int, count: int) -> np.ndarray | memoryview:
        """Stored-representation bytes of elements [start, start+count) of `t`."""
        from weightsurgeon.kernels.decode import decode_to_float32, encode_from_float32

        src = t.source
        if src.kind == "copy":
            return self._read("a", src.role, src.name, start, count)
        if src.kind == "zeros":
            view = self.buffer("zeros", count * itemsize(t.dtype))
            return view  # never written to: bytearray starts as zeros
        if src.kind == "gaussian":
            return self._gaussian(t, start, count)
        if src.kind == "cast":
            info = self.inputs[src.role][src.name]
            return encode_from_float32(decode_to_float32(self._read("a", src.role, src.name, start, count), info.dtype), t.dtype)
        if src.kind == "interpolate":
            a_info = self.inputs["base"][src.name]
            b_info = self.inputs["donor"][src.donor_name]
            a = decode_to_float32(self._read("a", "base", src.name, start, count), a_info.dtype)
            b = decode_to_float32(self._read("b", "donor", src.donor_name, start, count), b_info.dtype)
            a *= np.float32(1.0 - src.alpha)
            b *= np.float32(src.alpha)
            a += b
            return encode_from_float32(a, t.dtype)
        if src.kind == "lora":
            from weightsurgeon.adapter_merge import lora_values

            return lora_values(self, t, start, count)
        if src.kind in CAST_KINDS:
            from weightsurgeon import cast_values

            return cast_values.values(self, t, start, count)
        # internal: the planners build every Source from the kinds handled above
        raise SurgeonError(f"internal: unknown source kind {src.kind!r} for {t.name}")

    def _gaussian(self, t: PlannedTensor, start: int, count: int) -> np.ndarray:
        """Reinit values in the tensor's dtype; BF16 is rounded inside the kernel, part by part."""
        from weightsurgeon.kernels.decode import encode_from_float32
        from weightsurgeon.kernels.gaussian import gaussian_fill

        src = t.source
        values = np.frombuffer(self.buffer("gauss32", count * 4), dtype=np.float32)
        if t.dtype == "BF16":
            bits = np.frombuffer(self.buffer("gauss16", count * 2), dtype=np.uint16)
            return gaussian_fill(values, gaussian_key(src.seed, t.name), start, src.mean, src.std, bf16=bits)
        gaussian_values(src.seed, t.name, src.mean, src.std, start, count, out=values)
        return values if t.dtype == "F32" else encode_from_float32(values, t.dtype)

    def chunks(self, t: PlannedTensor) -> Iterator[tuple[int, np.ndarray | memoryview]]:
        """(element offset, bytes) over the whole tensor; each chunk is valid until the next one."""
        step = self.chunk_elems
        if t.source.kind in CAST_KINDS:  # whole rows, groups or block rows
            from weightsurgeon import cast_values

            step = cast_values.step(self, t)
        for start in range(0, t.numel, step):
            yield start, self.values(t, start, min(step, t.numel - start))


class RawCopier:
    """Copies byte ranges into the output: copy_file_range from a local file where it works, a
    remote file's fetched pieces written out from the fetch buffers (no copy), else through
    one reused buffer. A local run is read with read-ahead that stops at the run's end
    (exactreads.py): the bytes between runs (a spliced-out or zeroed tensor, a removed layer)
    are never read."""

    def __init__(self, use_copy_file_range: bool = True) -> None:
        self.use_cfr = use_copy_file_range and hasattr(os, "copy_file_range")
        self._buffer: bytearray | None = None
        self._exact = ExactReads()

    def copy(self, src: ByteSource, src_off: int, dst_fd: int, dst_off: int, length: int,
             progress: "WriteBehind | ByteProgress", digest: "hashlib._Hash | None" = None) -> None:
        """With ``digest``, the bytes pass through the one buffer and are hashed on their way (no
        copy_file_range); a source with no local descriptor (a remote file) always passes through it."""
        src_fd = src.fileno()
        fd, ahead, slice_ = src_fd, None, COPY_SLICE
        if digest is None and src_fd is not None and self.use_cfr:
            twin = self._exact.twin(src_fd)
            if twin is not None:
                fd, ahead, slice_ = twin[0], RunAhead(twin[0], twin[1], src_off, src_off + length), EXACT_SLICE
        done = 0
        while done < length:
            want = min(slice_, length - done)
            if digest is not None or src_fd is None:
                n = self._copy_buffered(src, src_off + done, dst_fd, dst_off + done, want, digest)
            elif self.use_cfr:
                if ahead is not None:
                    ahead.before_copy(src_off + done, want)
                try:
                    n = os.copy_file_range(fd, dst_fd, want, src_off + done, dst_off + done)
                except OSError as e:
                    if e.errno in _FALLBACK_ERRNOS:
                        self.use_cfr = False
                        continue
                    raise
            else:
                n = self._copy_buffered(src, src_off + done, dst_fd, dst_off + done, want)
            if n == 0:
                raise SurgeonError(f"{src.name}: file is shorter than its header says (read past the end while copying)")
            done += n
            progress.advance(n)

    def _copy_buffered(self, src: ByteSource, src_off: int, dst_fd: int, dst_off: int, want: int,
                       digest: "hashlib._Hash | None" = None) -> int:
        span, ok = src.lendable(src_off)
        span = min(want, span)
        if span and ok:  # a fetched remote piece: written out from where it landed
            view = src.lend(src_off, span)
            if digest is not None:
                digest.update(view)
            pwrite_all(dst_fd, view, dst_off)
            del view
            src.give_back(src_off, span)
            return span
        if self._buffer is None:
            self._buffer = bytearray(COPY_BUFFER)
        view = memoryview(self._buffer)[:min(want, len(self._buffer))]
        got = src.read_into(src_off, view)
        if got:
            if digest is not None:
                digest.update(view[:got])
            pwrite_all(dst_fd, view[:got], dst_off)
        return got

    def close(self) -> None:
        self._buffer = None  # the sources' descriptors belong to their checkpoints; their twins are ours
        self._exact.close()


def pwrite_all(fd: int, data: object, pos: int) -> int:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return done


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

class OverlappedWrites:
    """Writes computed chunks on a thread of their own, one at a time, while the caller computes the next.

    `surgeon cast` is CPU-bound on two cores when the FP8 loop and the pwrite that copies its output
    into the page cache take turns: each leaves a core idle. ``put`` returns as soon as the previous
    write is done, and the chunk handed over must stay untouched until the next ``put`` or ``wait``
    returns (the cast's output buffers take turns, SourceReader.rotating). Everything else is written
    in order after ``wait``, so the output's bytes and WriteBehind's windows follow the file front to back.
    """

    def __init__(self, fd: int, path: Path, behind: "WriteBehind") -> None:
        self.fd, self.path, self.behind = fd, path, behind
        self._pool = None
        self._pending = None  # (future, bytes, tensor name)

    def put(self, data: object, pos: int, name: str) -> int:
        self.wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="surgeon-write")
        view = memoryview(data).cast("B")
        self._pending = (self._pool.submit(pwrite_all, self.fd, view, pos), len(view), name)
        return len(view)

    def wait(self) -> None:
        if self._pending is None:
            return
        future, n, name = self._pending
        self._pending = None
        try:
            future.result()
            self.behind.advance(n)  # may flush a window: EIO, ENOSPC
        except OSError as e:
            raise SurgeonError(f"{self.path}: writing failed in {name}: {e.strerror or e}") from e

    def close(self) -> None:
        """Let the write in flight end before the descriptor closes, whatever stopped the shard."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = None


def _check_plan(plan: Plan) -> None:
    seen: set[str] = set()
    for t in plan.tensors:
        if t.name in seen:
            raise SurgeonError(f"internal: the plan writes {t.name!r} twice")  # internal: planners key outputs by name
        seen.add(t.name)
        src = t.source
        if src.kind in ("copy", "cast"):
            info = plan.inputs[src.role][src.name]
            if tuple(info.shape) != tuple(t.shape) or (src.kind == "copy" and info.dtype != t.dtype):
                # internal: planners copy shape and dtype from the source they name
                raise SurgeonError(f"internal: plan for {t.name} does not match its source {src.name}")
        elif src.kind == "dequantize":
            q = plan.inputs[src.role].quant.tensors.get(src.name)
            if q is None or math.prod(q.shape) != t.numel:
                # internal: cast plans dequantize sources found by quant.scan, with their logical shape
                raise SurgeonError(f"internal: plan for {t.name} does not match the quantized tensor {src.name}")
    if not plan.tensors:
        held = sum(len(c.tensors) for c in plan.inputs.values())
        raise SurgeonError(f"nothing to write: the plan holds no tensor (the input(s) hold {held}); check the inputs and "
                           "the selection (--take, --module, --layers)")


def _write_shard(path: Path, tensors: list[PlannedTensor], plan: Plan, reader: SourceReader, copier: RawCopier,
                 progress: ByteProgress, result: WriteResult, write_behind: bool = True, checksum: bool = False,
                 remote_roles: set[str] | None = None, expected: list[WrittenFile] | None = None) -> None:
    """Write one shard front to back; with ``checksum`` its sha256 is taken from the bytes as they are written.
    Ranges made from the inputs named in ``remote_roles`` are hashed on their way too (result.fetched).
    The header and the size it meant to write go to ``expected`` (see check_written)."""
    prefix, sizes = build_header([(t.name, t.dtype, t.shape) for t in tensors], {"format": "pt"})
    if expected is not None:
        expected.append(WrittenFile.of(path, prefix, len(prefix) + sum(sizes)))
    digest = hashlib.sha256() if checksum else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    writes: OverlappedWrites | None = None
    try:
        pos = pwrite_all(fd, prefix, 0)
        if digest is not None:
            digest.update(prefix)
        behind = WriteBehind(fd, pos, progress, enabled=write_behind)
        writes = OverlappedWrites(fd, path, behind)
        i = 0
        while i < len(tensors):
            t = tensors[i]
            overlap = False
            if t.source.kind == "dequantize":
                from weightsurgeon.cast_values import (batchable, file_castable, overlappable, write_cast_file_run,
                                                       write_dequant_run)

                run = None
                if digest is None and file_castable(reader, t):  # file to file in compiled code (no hashing there)
                    writes.wait()
                    run = lambda: write_cast_file_run(tensors[i:], reader, fd, pos, behind, path)  # noqa: E731
                elif batchable(reader, t):
                    run = lambda: write_dequant_run(tensors[i:], reader, writes, pos, digest)  # noqa: E731
                if run is not None:
                    try:
                        taken, n = run()
                    except OSError as e:
                        raise SurgeonError(f"{path}: writing failed in {t.name}: {e.strerror or e}") from e
                    pos += n
                    result.computed_bytes += n
                    i += taken
                    continue
                overlap = overlappable(reader, t)
            if t.source.kind == "copy":
                info = plan.inputs[t.source.role][t.source.name]
                length = info.nbytes
                j = i + 1
                while j < len(tensors) and tensors[j].source.kind == "copy" and tensors[j].source.role == t.source.role:
                    nxt = plan.inputs[t.source.role][tensors[j].source.name]
                    if nxt.file != info.file or nxt.begin != info.begin + length:
                        break
                    length += nxt.nbytes
                    j += 1
                fetched = hashlib.sha256() if remote_roles and reads_fetched(t.source, remote_roles) else None
                writes.wait()
                try:
                    copier.copy(plan.inputs[t.source.role].byte_source(info.file), info.begin, fd, pos, length, behind,
                                _Both(digest, fetched) if fetched is not None else digest)
                except OSError as e:
                    raise SurgeonError(f"{path}: writing failed while copying {t.name}: {e.strerror or e}") from e
                if fetched is not None:
                    result.fetched.append((path.name, pos, length, fetched.hexdigest(), t.name))
                pos += length
                result.copied_bytes += length
                i = j
                continue
            fetched = hashlib.sha256() if remote_roles and reads_fetched(t.source, remote_roles) else None
            first = pos
            try:
                for _start, data in reader.chunks(t):
                    for d in (digest, fetched):
                        if d is not None:
                            d.update(memoryview(data).cast("B"))
                    if overlap:
                        n = writes.put(data, pos, t.name)
                    else:
                        writes.wait()
                        n = pwrite_all(fd, data, pos)
                        behind.advance(n)
                    pos += n
                    result.computed_bytes += n
            except OSError as e:
                raise SurgeonError(f"{path}: writing failed in {t.name}: {e.strerror or e}") from e
            if fetched is not None:
                result.fetched.append((path.name, first, pos - first, fetched.hexdigest(), t.name))
            i += 1
        writes.wait()
        if pos != len(prefix) + sum(sizes):
            # internal: every source yields exactly its planned bytes; a short input file raises before this
            raise SurgeonError(f"internal: {path.name} has {pos} bytes, the plan says {len(prefix) + sum(sizes)}")
    finally:
        if writes is not None:
            writes.close()
        os.close(fd)
    if digest is not None:
        result.checksums[path.name] = digest.hexdigest()


def _check_inputs_unchanged(plan: Plan) -> None:
    for ckpt in plan.inputs.values():
        ckpt.check_unchanged()


def index_json(total_size: int, mapping: dict[str, str]) -> bytes:
    """model.safetensors.index.json's text, exactly as ``json.dumps(..., indent=2)`` writes it, from json's C
    encoder: with an indent json encodes in Python, 0.1 s for a DeepSeek-sized weight map."""
    entries = json.dumps(mapping, ensure_ascii=False, separators=(",\n    ", ": "))[1:-1]  # a JSON string holds no raw newline
    body = f"{{\n    {entries}\n  }}" if mapping else "{}"
    return f'{{\n  "metadata": {{\n    "total_size": {int(total_size)}\n  }},\n  "weight_map": {body}\n}}\n'.encode("utf-8")


def _write_json(path: Path, obj: object) -> bytes:
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    path.write_bytes(data)
    return data


def _root_of(ckpt: Checkpoint) -> Path:
    return ckpt.root if ckpt.root is not None else ckpt.path.parent


def _write_side_files(plan: Plan, tmp: Path, mapping: dict[str, str], expected: list[WrittenFile] | None = None) -> dict:
    """The index, config.json and tokenizer files; returns surgeon.json's document, written last (_write_provenance).
    The index's bytes go to ``expected`` (see check_written)."""
    index = index_json(plan.total_bytes, mapping)
    (tmp / INDEX_NAME).write_bytes(index)
    if expected is not None:
        expected.append(WrittenFile.of(tmp / INDEX_NAME, index))
    base = plan.inputs["base"]
    if plan.config is not None:
        if plan.config_edits or not _copy_side_file(base, "config.json", tmp):  # byte for byte: nothing to change
            _write_json(tmp / "config.json", plan.config)
    if plan.files_from is not None:
        for name in _side_file_names(plan.inputs[plan.files_from]):
            if name in AUX_FILES or name.endswith(AUX_SUFFIXES):
                _copy_side_file(plan.inputs[plan.files_from], name, tmp)
    doc = provenance(plan)
    return doc


def _write_provenance(tmp: Path, doc: dict, checksums: dict[str, str] | None) -> None:
    """surgeon.json, the last file: with checksums it lists the sha256 of every file before it (the
    shards' taken while writing them; the small files beside them are read back to hash them)."""
    if checksums is not None:
        from weightsurgeon.verify import sha256_file

        small = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.name not in checksums}
        doc = {**doc, "files": {name: {"sha256": digest} for name, digest in sorted({**checksums, **small}.items())}}
    _write_json(tmp / "surgeon.json", doc)


def _side_file_names(ckpt: Checkpoint) -> list[str]:
    """The files beside a checkpoint's weights: its folder's, or the top of its Hub repository's."""
    if ckpt.is_remote:
        return sorted(n for n in ckpt.remote.files if "/" not in n)
    root = _root_of(ckpt)
    return sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []


def _copy_side_file(ckpt: Checkpoint, name: str, folder: Path) -> bool:
    """Copy one side file byte for byte (fetched whole from the Hub for a remote input); False if there is none."""
    if ckpt.is_remote:
        data = ckpt.remote.fetch(name)
        if data is None:
            return False
        (folder / name).write_bytes(data)
        return True
    src = _root_of(ckpt) / name
    if not src.is_file():
        return False
    shutil.copyfile(src, folder / name)
    return True


def provenance(plan: Plan) -> dict:
    """surgeon.json: what was done, to what, by which version.

    Each input carries its layout (the header digests: names, dtypes, shapes, offsets; a base and
    its fine-tune share them) and, where it costs nothing, the weights' own identity: the Hub
    repository, commit and each shard's LFS sha256 (see identity.py).
    """
    from weightsurgeon.identity import hub_identity

    inputs = []
    for role, ckpt in plan.inputs.items():
        hub = hub_identity(ckpt)
        inputs.append({
            "role": role,
            "source": ckpt.source,
            "path": ckpt.location if ckpt.is_remote else str(ckpt.path.resolve()),
            "origin": ckpt.origin,
            "repo": hub["repo"],
            "commit": hub["commit"],
            "partial": ckpt.is_partial,
            "shards": [{"file": s.path.name, "header_sha256": ckpt.header_digest(s), "sha256": h["sha256"]}
                       for s, h in zip(ckpt.shards, hub["shards"])],
        })
    doc = {
        "schema_version": 1,
        "tool": "weightsurgeon",
        "version": __version__,
        "operation": plan.operation,
        "arguments": plan.arguments,
        "partial": plan.partial,
        "created_utc": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "inputs": inputs,
        "plan": plan.summary(),
    }
    doc.update(plan.provenance)
    return doc


def plan_reads(plan: Plan, shards: list[list[PlannedTensor]] | None = None) -> Iterator[tuple[Checkpoint, Path, int, int]]:
    """(input, file, begin, end) of every input tensor the writer reads, in the order it reads them, each once
    (a LoRA extract's A and B come from one delta: DONOR's tensor, then BASE's)."""
    seen: set[tuple[str, str]] = set()
    for shard in shards if shards is not None else [plan.tensors]:
        for t in shard:
            src = t.source
            roles = {"copy": [(src.role, src.name)], "cast": [(src.role, src.name)], "quantize": [(src.role, src.name)],
                     "interpolate": [("base", src.name), ("donor", src.donor_name)],
                     "lowrank": [("donor", src.name), ("base", src.name)]}.get(src.kind, [])
            for role, name in roles:
                if (role, name) in seen:
                    continue
                seen.add((role, name))
                ckpt = plan.inputs[role]
                info = ckpt[name]
                yield ckpt, info.file, info.begin, info.end
            if src.kind == "dequantize":
                ckpt = plan.inputs[src.role]
                q = ckpt.quant.tensors[src.name]
                for info in (q.data, q.scale):
                    yield ckpt, info.file, info.begin, info.end


def prefetch(plan: Plan, shards: list[list[PlannedTensor]] | None = None):
    """Remote inputs fetch what the plan reads ahead of the writer (a bounded window); nothing for local ones."""
    if not any(c.is_remote for c in plan.inputs.values()):
        return contextlib.nullcontext()
    from weightsurgeon.remote import prefetching

    return prefetching(plan_reads(plan, shards))


def check_free_space(plan: Plan, output: Path, shards: int) -> None:
    """Refuse early when the output's file system cannot hold the plan (plus headers and side files)."""
    parent = Path(output).expanduser().resolve().parent
    need = plan.total_bytes + shards * (64 * 1024 + 16 * len(plan.tensors)) + 4 * 1024 * 1024
    free = shutil.disk_usage(parent).free
    if free < need:
        raise SurgeonError(f"{parent}: not enough free space: the output needs {need / 1e9:.2f} GB, "
                           f"the file system has {free / 1e9:.2f} GB free")


def write_plan(plan: Plan, output: str | os.PathLike, options: WriteOptions = WriteOptions()) -> WriteResult:
    """Write the plan's checkpoint to `output` (atomically); with options.verify re-read and compare every byte."""
    started = time.perf_counter()
    output = Path(output).expanduser()
    inputs = input_paths(plan)
    check_output_path(output, inputs, options.force)
    _check_plan(plan)
    shards = assign_shards(plan.tensors, options.max_shard_bytes, plan.shard_of)
    names = shard_names(len(shards))
    check_free_space(plan, output, len(shards))
    mapping = {t.name: fname for fname, shard in zip(names, shards) for t in shard}
    result = WriteResult(output=output, shards=names, total_bytes=plan.total_bytes)
    reader = SourceReader(plan.inputs, options.chunk_elems)
    copier = RawCopier(options.use_copy_file_range)
    remote_roles = {role for role, c in plan.inputs.items() if c.is_remote} if options.verify else set()
    expected: list[WrittenFile] = []  # what each file was meant to hold (check_written)
    try:
        # atomic_output_dir holds signals pending until its cleanup is armed, and ignores repeats during cleanup.
        with atomic_output_dir(output, inputs, force=options.force, fsync=options.fsync) as tmp:
            with prefetch(plan, shards), \
                    ByteProgress(plan.total_bytes, f"{plan.operation}: writing", quiet=options.quiet) as progress:
                for fname, shard in zip(names, shards):
                    progress.describe(f"{plan.operation}: {fname}")
                    _check_inputs_unchanged(plan)
                    _write_shard(tmp / fname, shard, plan, reader, copier, progress, result, write_behind=options.fsync,
                                 checksum=options.checksums, remote_roles=remote_roles, expected=expected)
            doc = _write_side_files(plan, tmp, mapping, expected)
            write_card(tmp, {**doc, "output": str(output)})
            _write_provenance(tmp, doc, result.checksums if options.checksums else None)
            result.warnings.extend(check_written(plan, tmp, mapping, expected, shards))
            if options.verify:
                with ByteProgress(plan.total_bytes, f"{plan.operation}: verifying", quiet=options.quiet) as progress:
                    compare_written(plan, tmp, reader, progress, remote_roles, result.fetched, mapping)
                result.verified = True
            _check_inputs_unchanged(plan)  # last, before the rename: an input written to meanwhile gives no output
    finally:
        copier.close()
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------
# Checking what was written
# ---------------------------------------------------------------------------------------

def check_written(plan: Plan, folder: Path, mapping: dict[str, str], expected: list[WrittenFile],
                  shards: list[list[PlannedTensor]]) -> list[str]:
    """Compare the output with what the writer meant to write, then check it as a model.

    Each shard's header was built from the plan; its bytes on disk are compared with the bytes
    written (sha256), and every file's size with the size planned; the index the same way. The
    model checks (config against tensors, complete layers, shapes alike) run on the tensors those
    headers hold, taken from the plan: parsing again a header just built from the plan would only
    read the plan back, and cost 2 s of DeepSeek-V3's 92k tensors. ``--verify`` parses the output
    again and compares every byte (compare_written)."""
    from weightsurgeon.layout import layout_of
    from weightsurgeon.verify import verify_checkpoint

    for w in expected:
        try:
            with open(w.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(w.head)
        except OSError as e:
            raise SurgeonError(f"{w.path}: cannot read back what was written: {e.strerror or e}") from e
        if size != w.size:
            raise SurgeonError(f"{w.path}: holds {size} bytes after writing, the plan says {w.size}")
        if hashlib.sha256(head).hexdigest() != w.sha256:
            raise SurgeonError(f"{w.path}: its first {w.head} bytes (the header) differ from those written")
    names = set(mapping.values())
    stray = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in names)
    if stray or len(names) != sum(1 for w in expected if w.path.name in names):
        raise SurgeonError(f"{folder}: the shards written differ from the plan (unexpected {stray[:3]})")
    out = Checkpoint(source=str(folder), root=folder, shards=(), tensors=_written_tensors(folder, mapping, expected, shards),
                     config=plan.config, index=None, surgeon={"partial": plan.partial})
    layout = layout_of(out.tensors, plan.config, known=plan.locations)
    return verify_checkpoint(out, require_config=plan.config is not None, layout=layout).warnings


def _written_tensors(folder: Path, mapping: dict[str, str], expected: list[WrittenFile],
                     shards: list[list[PlannedTensor]]) -> TensorMap:
    """The tensors of the headers written, as the plan says them: shard by shard, back to back after each header."""
    heads = {w.path.name: w.head for w in expected}
    tables = []
    for shard in shards:
        fname = mapping[shard[0].name]
        ends = list(itertools.accumulate((t.nbytes for t in shard), initial=heads[fname]))
        tables.append(tensor_table(folder / fname, ((t.name, t.dtype, t.shape, begin, end)
                                                    for t, begin, end in zip(shard, ends, ends[1:]))))
    return TensorMap(tables)


def _check_headers(plan: Plan, folder: Path, out: Checkpoint, mapping: dict[str, str] | None) -> None:
    """The output's headers, parsed again, against the plan: every tensor, its dtype, shape and shard (--verify)."""
    planned = {t.name for t in plan.tensors}
    if set(out.tensors) != planned:
        extra = sorted(set(out.tensors) - planned)[:3]
        lost = sorted(planned - set(out.tensors))[:3]
        raise SurgeonError(f"{folder}: written tensors differ from the plan (unexpected {extra}, missing {lost})")
    for t in plan.tensors:
        info = out[t.name]
        shard = info.file.name if mapping is None else mapping[t.name]
        if info.dtype != t.dtype or tuple(info.shape) != tuple(t.shape) or info.file.name != shard:
            raise SurgeonError(f"{info.file}: {t.name} is {info.dtype}{list(info.shape)} in {info.file.name}, "
                               f"the plan says {t.dtype}{list(t.shape)} in {shard}")
    for shard in out.shards:
        if shard.metadata.get("format") != "pt":
            raise SurgeonError(f"{shard.path}: __metadata__ lacks format: pt")
    if out.index is None or out.index.get("metadata", {}).get("total_size") != plan.total_bytes:
        raise SurgeonError(f"{folder / INDEX_NAME}: metadata.total_size does not match the plan")
    if out.warnings:
        raise SurgeonError(f"{folder}: output inconsistent: {out.warnings[0]}")


def compare_written(plan: Plan, folder: Path, reader: SourceReader, progress: ByteProgress | None = None,
                    remote_roles: set[str] = frozenset(), fetched: list[tuple[str, int, int, str, str]] = (),
                    mapping: dict[str, str] | None = None) -> None:
    """Parse the output's headers again and check them against the plan, then re-read every output
    tensor and compare its bytes with what its source says they must be.

    Tensors made from a remote input's bytes are not fetched again: their output ranges are
    compared with the sha256 of the same ranges taken while they were written (`fetched`).
    That proves the output holds the bytes that arrived, not that the Hub still serves them.
    """
    for fname, pos, length, want, name in fetched:
        got = hashlib.sha256()
        with open(folder / fname, "rb") as f:
            f.seek(pos)
            left = length
            while left:
                view = reader.buffer("verify", min(left, COPY_BUFFER))
                n = f.readinto(view)
                if not n:
                    break
                got.update(view[:n])
                left -= n
        if left or got.hexdigest() != want:
            raise SurgeonError(f"--verify: {folder / fname}: the bytes of {name!r} (and any tensors written after it "
                               f"in one piece) differ from those fetched from the Hub while writing")
        if progress is not None:
            progress.advance(length)
    with open_checkpoint(folder) as out:
        _check_headers(plan, folder, out, mapping)
        for t in plan.tensors:
            if reads_fetched(t.source, set(remote_roles)):
                continue
            info = out[t.name]
            for start, expected in reader.chunks(t):
                exp = np.frombuffer(memoryview(expected).cast("B"), dtype=np.uint8)
                view = reader.buffer("verify", len(exp))
                out.read_into(info, start * info.itemsize, view)
                got = np.frombuffer(view, dtype=np.uint8)
                if not np.array_equal(exp, got):
                    where = int(np.flatnonzero(exp != got)[0]) + start * info.itemsize
                    raise SurgeonError(f"--verify: {info.file}: tensor {t.name!r} differs from its source "
                                       f"({t.source.describe()}) at byte {where} of the tensor")
                if progress is not None:
                    progress.advance(len(exp))
