"""Shared fixtures: tiny synthetic models, raw safetensors files, and the `surgeon` CLI.

Kept small and generic so every test module can use them:

- ``tiny_model(**kw)``: a synthetic checkpoint in a fresh temp folder (kwargs of
  `weightsurgeon.synth.make_checkpoint`; ``name=`` picks the folder name).
- ``run_cli(*args)``: the real console entry point in a subprocess
  (``python -m weightsurgeon ...``, offline); returns a CompletedProcess with text output.
- ``surgeon(*args)``: the same entry point in-process (fast); returns ``CliResult``.
- ``write_raw(path, header, data)``: a .safetensors file from a header (dict, str or
  bytes) and data bytes, for malformed-file tests. Importable: ``from conftest import write_raw``.
- ``one_error(result, *words)``: asserts the error contract on a ``surgeon(...)`` result (exit 1,
  one ``error:`` line, holding ``words``). Importable like ``write_raw``.
- ``cachestat(fd, offset, length)``: (pages cached, pages dirty) of a file range, or None where
  the kernel has no cachestat(2). Importable like ``write_raw``.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)


def write_raw(path: Path | str, header: dict | str | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """Write ``<u64 length><header><data>``; ``length`` overrides the declared header length."""
    if isinstance(header, dict):
        blob = json.dumps(header).encode()
    elif isinstance(header, str):
        blob = header.encode("utf-8", "surrogatepass")
    else:
        blob = header
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob) if length is None else length))
        f.write(blob)
        f.write(data)
    return path


def tensor_entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def rewrite_checkpoint(src: Path, dst: Path | None = None, drop: Callable[[str], bool] = lambda name: False,
                       patch: dict[str, Callable[[bytearray], None]] | None = None) -> Path:
    """Rewrite a checkpoint as one model.safetensors (in place unless ``dst``), dropping tensors
    and editing raw bytes (``patch[name](bytearray)``); JSON files beside are kept."""
    import shutil

    from weightsurgeon.checkpoint import open_checkpoint
    from weightsurgeon.format import build_header

    src = Path(src)
    patch = patch or {}
    with open_checkpoint(src) as ckpt:
        kept = [t for t in ckpt if not drop(t.name)]
        blobs = []
        for t in kept:
            raw = bytearray(ckpt.read_tensor(t.name).tobytes())
            if t.name in patch:
                patch[t.name](raw)
            blobs.append(bytes(raw))
        meta = ckpt.shards[0].metadata
    dst = Path(dst) if dst is not None else src
    dst.mkdir(parents=True, exist_ok=True)
    if dst != src:
        for f in src.iterdir():
            if f.suffix == ".json" and f.name != "model.safetensors.index.json":
                shutil.copy(f, dst / f.name)
    for f in list(dst.glob("*.safetensors")) + list(dst.glob("model.safetensors.index.json")):
        f.unlink()
    prefix, _ = build_header([(t.name, t.dtype, t.shape) for t in kept], meta)
    (dst / "model.safetensors").write_bytes(prefix + b"".join(blobs))
    return dst


def edit_json(path: Path, **changes: object) -> None:
    """Set (or, with value ``...``, delete) top-level keys of a JSON file."""
    data = json.loads(Path(path).read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    Path(path).write_text(json.dumps(data))


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.pop("SURGEON_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``surgeon ARGS`` as a user would (a fresh interpreter), offline.

    The timeout only catches hangs: the first run compiles the kernels, and a loaded machine is slow.
    """
    return subprocess.run([sys.executable, "-m", "weightsurgeon", *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=cwd)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def one_error(res: CliResult, *words: str) -> str:
    """The error contract: exit 1 and one `error:` line, the last on stderr (a progress notice or a printed
    command may come before it), holding every one of `words`. Returns the line."""
    errors = [line for line in res.err_lines if line.startswith("error: ")]
    assert res.code == 1 and len(errors) == 1 and res.err_lines[-1] == errors[0], res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def surgeon(capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """Call the `surgeon` entry point in-process (fast) and capture its exit code and output."""
    from weightsurgeon.cli import main

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke


@pytest.fixture(name="run_cli")
def run_cli_fixture() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_model(arch="llama", tied=True, dtype="bf16", shard_bytes=4096, name="m")``."""
    from weightsurgeon.synth import make_checkpoint

    counter = iter(range(10_000))

    def make(name: str | None = None, **kw) -> Path:
        return make_checkpoint(tmp_path / (name or f"model{next(counter)}"), **kw)

    return make


# Peak resident memory of the *current* process, for child scripts (prepend PEAK_RSS to them).
# Not ru_maxrss: subprocess starts children with vfork, and on exec Linux carries the parent's
# high-water mark into the child's ru_maxrss, so a child of a pytest that holds torch (~1 GB)
# would report at least that, and a growth measured from it could hide a real regression.
# /proc/self/status VmHWM belongs to the child's own address space.
PEAK_RSS = """
def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource, sys
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
"""


def hf_cache_entry(cache: Path, model: Path, repo: str = "someone/tiny",
                   commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A model folder laid out as huggingface_hub's cache holds it; returns the snapshot folder.

    Blobs are named by their etag (an LFS file's sha256, a git file's sha1), the snapshot's
    files are relative links to them (outside the snapshot folder), refs/main names the commit.
    """
    folder = cache / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for f in sorted(model.iterdir()):
        digest = hashlib.sha256 if f.suffix == ".safetensors" else hashlib.sha1
        etag = digest(f.read_bytes()).hexdigest()
        shutil.copyfile(f, folder / "blobs" / etag)
        (snap / f.name).symlink_to(Path("../../blobs") / etag)
    return snap


def report_rows(folder: Path) -> list[dict]:
    """The tensor rows of a saved report folder as dicts (report.json's schema-3 'tensors'), read
    back through DiffReport from report.csv and histograms.safetensors, where schema 4 keeps them."""
    from weightsurgeon.report.model import DiffReport

    return [t.to_dict() for t in DiffReport.from_json(Path(folder) / "report.json").tensors]


def report_units(folder: Path) -> list[dict]:
    """The head and expert rows of a saved report folder (schema 4 keeps them in report_heads.csv)."""
    from weightsurgeon.report.model import DiffReport

    return [u.to_dict() for u in DiffReport.from_json(Path(folder) / "report.json").units]


def cachestat(fd: int, offset: int, length: int) -> tuple[int, int] | None:
    """(pages cached, pages dirty) of a range, by cachestat(2) (Linux 6.5+) as the engine's direct
    reads ask it; None where there is none."""
    from weightsurgeon.directreads import CACHESTAT, _load_cachestat

    loaded = _load_cachestat()
    if not loaded:
        return None
    call, Range, Stat = loaded
    r, s = Range(offset, length), Stat()
    if call(CACHESTAT, fd, ctypes.byref(r), ctypes.byref(s), 0) != 0:
        return None
    return s.cache, s.dirty


# The benchmarks' own helper: fsync, then POSIX_FADV_DONTNEED on each file (no root needed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from benchmodels import drop_cached  # noqa: E402,F401  (re-exported for the tests)
