"""The diff's file kernel as machine code that loads without numba: a faster start.

Why: a warm `surgeon diff` of a 2.6 GB pair took 0.72 s, of which importing numba took
0.12 s and loading its cached kernel 0.09 s, before a byte was compared. The machine
code numba produces for `_compiled.file_lane` does not need numba to run: it calls
libc's pread and nothing of numba's (its arrays are views of our buffers, which numba's
reference counting leaves alone). So, once per machine, numba compiles one entry point
per stored width around file_lane, and this module keeps the linked object file in a
cache of its own. Later processes load it with llvmlite's JIT linker (MCJIT: 0.025 s
with the import) and run one lane per core on Python threads; ctypes releases the GIL
for the call. The code is numba's own, so results equal delta_file's bit for bit.

Why not numba.pycc (its ahead-of-time compiler): it builds a CPython extension with a C
compiler at install time, is deprecated, and leaves numba's runtime in the loop; and a
shared library would need a linker on the user's machine. llvmlite is a dependency of
numba already.

Safety, since a bad object file would take the process down rather than raise:
- the cache file is named by a key over our kernel sources, the numba and llvmlite
  versions and the host CPU (name and features), so code is never run on a machine or
  with sources it was not built for;
- its bytes are checked against the SHA-256 recorded beside them before LLVM sees them;
- every symbol the object needs from outside (recorded at build time from its symbol
  table) is resolved before loading, since an unresolved one makes LLVM abort;
- the entry point checks the buffer sizes it is given against its own constants;
- any failure means no native kernel (`kernel()` returns None) and the caller runs
  numba's delta_file instead. SURGEON_NATIVE=0 turns the native kernel off.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from weightsurgeon.kernels import abi

MAGIC = b"weightsurgeon-native-1\n"
HERE = Path(__file__).resolve().parent
SOURCES = ("_compiled.py", "abi.py", "histogram.py", "native.py")  # what the machine code is built from

# Stored width -> (bit-pattern dtype, work dtype): one entry point each. These cover every
# pair delta.reads_files accepts: BF16/F16 pairs, F32 pairs, F64 pairs.
VARIANTS: dict[int, tuple[type, type]] = {2: (np.uint16, np.float32), 4: (np.uint32, np.float32), 8: (np.uint64, np.float64)}
# int64 arguments (fds, positions, codes, counts, lane, lanes, nbins, buffer lengths), then pointers.
N_INTS = 16
N_POINTERS = 12
DTOR = "NRT_MemInfo_call_dtor"  # numba's runtime: reached only for arrays numba allocated, never here


def enabled() -> bool:
    """On unless SURGEON_NATIVE is 0, no, off or false."""
    return os.environ.get("SURGEON_NATIVE", "1").strip().lower() not in ("0", "no", "off", "false")


def symbol(width: int) -> str:
    return f"weightsurgeon_file_lane_u{8 * width}"


# ---------------------------------------------------------------------------------------
# Where the object lives, and under which key
# ---------------------------------------------------------------------------------------

def _package_version_text(name: str) -> bytes:
    """The bytes of a package's _version.py, found without importing the package (numba's import is what we avoid)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return b"absent"
    try:
        return (Path(spec.origin).parent / "_version.py").read_bytes()
    except OSError:
        return b"unknown"


def cache_key(cpu: str, features: str) -> str:
    """Everything the machine code depends on: our sources, numba and llvmlite, the CPU."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    for package in ("numba", "llvmlite"):
        h.update(package.encode() + b"\0" + _package_version_text(package) + b"\0")
    h.update(f"{sys.platform}\0{cpu}\0{features}".encode())
    return h.hexdigest()[:32]


def cache_dirs() -> list[Path]:
    """Where to look and write, in order: SURGEON_NATIVE_CACHE if set, else NUMBA_CACHE_DIR
    if set (the user's choice for numba's cache), else the kernels' __pycache__ (where
    numba puts its own), else the user's cache folder (a read-only install)."""
    ours = os.environ.get("SURGEON_NATIVE_CACHE")
    if ours:
        return [Path(ours)]
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return [Path(configured) / "weightsurgeon"]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weightsurgeon"
    return [HERE / "__pycache__", user]


# ---------------------------------------------------------------------------------------
# The cache file: MAGIC, 8-byte length, JSON metadata, object bytes
# ---------------------------------------------------------------------------------------

def _pack(meta: dict, obj: bytes) -> bytes:
    head = json.dumps({**meta, "sha256": hashlib.sha256(obj).hexdigest(), "size": len(obj)}, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + obj


def _unpack(data: bytes) -> tuple[dict, bytes] | None:
    """(metadata, object bytes), or None for anything but an intact file."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        return None
    (length,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    if length > len(data) - start:
        return None
    try:
        meta = json.loads(data[start:start + length])
    except ValueError:
        return None
    obj = data[start + length:]
    if not isinstance(meta, dict) or meta.get("size") != len(obj) or meta.get("sha256") != hashlib.sha256(obj).hexdigest():
        return None
    return meta, obj


def _write_atomically(path: Path, data: bytes) -> None:
    """Temporary sibling + rename, so a concurrent reader never sees half a file. Not
    weightsurgeon.atomic.replace_file: the kernels import nothing of the engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".native-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def undefined_elf_symbols(obj: bytes) -> list[str] | None:
    """Names an ELF64 little-endian object needs from outside (undefined in its symbol table),
    or None when it is not such an object (then the build's own list stands)."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    names: list[str] = []
    for sh_name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        strtab = sections[link]
        strings = obj[strtab[4]:strtab[4] + strtab[5]]
        for k in range(1, size // entsize):
            st_name, _info_b, _other, st_shndx, _value, _size = struct.unpack_from("<IBBHQQ", obj, offset + k * entsize)
            if st_shndx == 0 and st_name:
                names.append(strings[st_name:strings.index(b"\0", st_name)].decode())
    return sorted(set(names))


# ---------------------------------------------------------------------------------------
# Building (numba needed): once per machine and version
# ---------------------------------------------------------------------------------------

def _entry_for(bits: type, work: type) -> Callable:
    """The Python source of one entry point: raw buffers in, file_lane on views of them."""
    from numba import carray

    from weightsurgeon.kernels._compiled import file_lane

    part, n_consts, n_sums, n_counts = abi.PART, abi.N_CONSTS, abi.N_SUMS, abi.N_COUNTS

    def entry(fd_a, pos_a, code_a, fd_b, pos_b, code_b, n, lane, lanes, nbins, rows,
              part_len, scratch_len, codes_len, sub_len, acc_len,
              consts_p, edges_p, sums_p, counts_p, hists_p, failed_p, a_p, b_p, scratch_p, codes_p, sub_p, acc_p):
        if lanes < 1 or lane < 0 or lane >= lanes or nbins < 1 or rows * part < n:
            return 2
        consts = carray(consts_p, (n_consts,), work)
        edges = carray(edges_p, (nbins + 1,), work)
        sums = carray(sums_p, (rows, n_sums), np.float64)
        counts = carray(counts_p, (rows, n_counts), np.int64)
        hists = carray(hists_p, (rows, nbins), np.int64)
        failed = carray(failed_p, (rows,), np.int64)
        a = carray(a_p, (part_len,), bits)
        b = carray(b_p, (part_len,), bits)
        scratch = carray(scratch_p, (scratch_len,), work)
        codes = carray(codes_p, (codes_len,), np.int32)
        sub = carray(sub_p, (sub_len,), np.int32)
        acc = carray(acc_p, (acc_len,), np.float64)
        return file_lane(fd_a, pos_a, a, code_a, fd_b, pos_b, b, code_b, n, lane, lanes, consts, edges,
                         sums, counts, hists, failed, scratch, codes, sub, acc)

    entry.__name__ = entry.__qualname__ = f"native_entry_u{8 * np.dtype(bits).itemsize}"
    return entry


def _c_wrapper(cres: Any, name: str) -> Any:
    """An LLVM module with `int64 name(args)`: numba's native function behind a plain C
    signature, -1 when it reports an exception (numba's own C wrapper would reach into
    the Python C API and numba's helpers to print it)."""
    from llvmlite import ir

    ctx, fndesc = cres.target_context, cres.fndesc
    module = ctx.create_module(name)
    callee = ir.Function(module, ctx.call_conv.get_function_type(fndesc.restype, fndesc.argtypes), fndesc.llvm_func_name)
    wrapty = ir.FunctionType(ctx.get_value_type(fndesc.restype), [ctx.get_value_type(t) for t in fndesc.argtypes])
    wrapper = ir.Function(module, wrapty, name)
    builder = ir.IRBuilder(wrapper.append_basic_block("entry"))
    status, out = ctx.call_conv.call_function(builder, callee, fndesc.restype, fndesc.argtypes, wrapper.args)
    builder.ret(builder.select(status.is_error, ir.Constant(wrapty.return_type, -1), out))
    return module


def build() -> tuple[dict, bytes]:
    """Compile the entry points with numba and link them into one object file: (metadata, bytes)."""
    from weightsurgeon.kernels import _compiled  # noqa: F401  (first: it imports numba its own way)

    from numba import njit, types
    from numba.core.compiler_lock import global_compiler_lock

    signature = types.int64(*([types.int64] * N_INTS + [types.voidptr] * N_POINTERS))
    compiled = []
    for width, (bits, work) in VARIANTS.items():
        dispatcher = njit(signature, nogil=True, error_model="numpy", no_cpython_wrapper=True)(_entry_for(bits, work))
        compiled.append((width, dispatcher.overloads[signature.args]))
    ctx = compiled[0][1].target_context
    with global_compiler_lock:  # numba's codegen requires it for linking
        library = ctx.codegen().create_library("weightsurgeon_native")
        for width, cres in compiled:
            library.add_ir_module(_c_wrapper(cres, symbol(width)))
            library.add_linking_library(cres.library)
        library.finalize()
        module = library._final_module
        declared = sorted(f.name for f in module.functions if f.is_declaration and not f.name.startswith("llvm."))
        obj = library._codegen._tm.emit_object(module)
    undefined = undefined_elf_symbols(obj)
    meta = {
        "symbols": {str(width): symbol(width) for width in VARIANTS},
        # libc's memory functions: what LLVM may lower its memset/memcpy intrinsics to
        "externals": undefined if undefined is not None else sorted(set(declared) | {"memset", "memcpy", "memmove"}),
    }
    return meta, obj


# ---------------------------------------------------------------------------------------
# Loading (llvmlite only) and running
# ---------------------------------------------------------------------------------------

_PROTOTYPE = ctypes.CFUNCTYPE(ctypes.c_int64, *([ctypes.c_int64] * N_INTS + [ctypes.c_void_p] * N_POINTERS))


def _host() -> tuple[Any, str, str]:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def _load_object(llvm: Any, cpu: str, features: str, meta: dict, obj: bytes) -> tuple[Any, dict[int, Any]] | None:
    """MCJIT with the object added: (engine, {width: C function}), or None when a symbol it
    needs cannot be found (LLVM would abort the process on it)."""
    process = ctypes.CDLL(None)  # the C library and everything else loaded, as dlsym sees it
    for name in meta.get("externals", []):
        # DTOR is called by numba's decref only for memory numba allocated (a non-null
        # meminfo); our arrays have none. Should it ever run, abort() beats a corruption.
        found = getattr(process, "abort" if name == DTOR else name, None)
        if found is None:
            return None
        llvm.add_symbol(name, ctypes.cast(found, ctypes.c_void_p).value)
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu=cpu, features=features, opt=3, reloc="static", codemodel="jitdefault",
                                           jit=True)
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    functions = {}
    for width, name in meta["symbols"].items():
        address = engine.get_function_address(name)
        if not address:
            return None
        functions[int(width)] = _PROTOTYPE(address)
    return engine, functions


def threads_default() -> int:
    """numba's rule: NUMBA_NUM_THREADS if set, else one per core this process may use."""
    configured = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _LaneBuffers:
    """One lane's reused buffers for one (width, bins): nothing is allocated per call."""

    def __init__(self, width: int, work: type, nbins: int) -> None:
        self.a = np.empty(abi.PART * width, dtype=np.uint8)
        self.b = np.empty(abi.PART * width, dtype=np.uint8)
        self.scratch = np.empty(abi.SCRATCH_SIZE, dtype=work)
        self.codes = np.empty(abi.CODES_SIZE, dtype=np.int32)
        self.sub = np.empty(abi.sub_size(nbins), dtype=np.int32)
        self.acc = np.empty(abi.ACC_SIZE, dtype=np.float64)


class NativeKernel:
    """The loaded entry points, the lanes' buffers and the threads that run them.

    Not for concurrent use: callers serialise launches (delta._LAUNCH), since the lanes'
    buffers are shared between calls.
    """

    def __init__(self, engine: Any, functions: dict[int, Any], threads: int | None = None) -> None:
        self._engine = engine  # keeps the machine code mapped
        self._functions = functions
        self._lanes: dict[tuple[int, int], list[_LaneBuffers]] = {}  # (width, bins) -> one per lane
        self._outputs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pool: Any = None
        self._pool_size = 0
        self._pool_pid = 0
        self.threads = max(1, threads or threads_default())

    def set_threads(self, threads: int) -> None:
        """Lanes per call from now on (results do not depend on it)."""
        self.threads = max(1, int(threads))

    def _lane_buffers(self, width: int, nbins: int, lanes: int) -> list[_LaneBuffers]:
        key = (width, nbins)
        held = self._lanes.get(key)
        if held is None:
            if len(self._lanes) >= 8:  # many --bins values in one process: keep memory bounded
                self._lanes.clear()
            held = self._lanes[key] = []
        while len(held) < lanes:
            held.append(_LaneBuffers(width, VARIANTS[width][1], nbins))
        return held[:lanes]

    def _out(self, nbins: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Result rows, reused while large enough: the kernel writes every row of a part it reads."""
        held = self._outputs.get(nbins)
        if held is None or held[0].shape[0] < rows:
            if len(self._outputs) >= 8:
                self._outputs.clear()
            held = self._outputs[nbins] = (np.empty((rows, abi.N_SUMS)), np.empty((rows, abi.N_COUNTS), dtype=np.int64),
                                           np.empty((rows, nbins), dtype=np.int64), np.empty(rows, dtype=np.int64))
        return held

    def _executor(self, workers: int) -> Any:
        """The lanes' threads; a new pool after a fork (the child has none of the parent's threads)."""
        if self._pool is None or self._pool_size < workers or self._pool_pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="surgeon-kernel")
            self._pool_size, self._pool_pid = workers, os.getpid()
        return self._pool

    def file_delta(self, width: int, fd_a: int, pos_a: int, code_a: int, fd_b: int, pos_b: int, code_b: int, n: int,
                   consts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """delta_file's results for n elements at byte positions pos_a/pos_b of two open files:
        (sums, counts, hists, parts whose read failed). The arrays are views of reused buffers,
        valid until the next call."""
        nbins = edges.size - 1
        rows = (n + abi.PART - 1) // abi.PART
        lanes = max(1, min(self.threads, rows))
        sums, counts, hists, failed = self._out(nbins, rows)
        failed[:rows] = 0
        function = self._functions[width]
        head = (fd_a, pos_a, code_a, fd_b, pos_b, code_b, n)
        shared = (consts.ctypes.data, edges.ctypes.data, sums.ctypes.data, counts.ctypes.data, hists.ctypes.data,
                  failed.ctypes.data)
        calls = [(*head, lane, lanes, nbins, sums.shape[0], abi.PART, buf.scratch.size, buf.codes.size, buf.sub.size,
                  buf.acc.size, *shared, buf.a.ctypes.data, buf.b.ctypes.data, buf.scratch.ctypes.data,
                  buf.codes.ctypes.data, buf.sub.ctypes.data, buf.acc.ctypes.data)
                 for lane, buf in enumerate(self._lane_buffers(width, nbins, lanes))]
        futures = [self._executor(lanes - 1).submit(function, *args) for args in calls[1:]]
        statuses: list[int] = []
        try:
            statuses.append(function(*calls[0]))
        finally:  # no lane may still write into the shared buffers once we return, even on Ctrl-C
            statuses += [f.result() for f in futures]
        if any(statuses):
            raise RuntimeError(f"native delta kernel refused its buffers (status {statuses}): the compiled code and "
                               f"weightsurgeon.kernels.abi disagree; delete {cache_dirs()[0]} and retry")
        return sums[:rows], counts[:rows], hists[:rows], int(failed[:rows].sum())


# ---------------------------------------------------------------------------------------
# The process's kernel: loaded, else built and loaded, else None
# ---------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}
_STATE_LOCK = threading.Lock()


def kernel() -> NativeKernel | None:
    """The native kernel of this process, or None where there is none (turned off, no
    pread, a failed build or load: `status()` says why). The first call loads it from the
    cache, or builds and caches it (numba compiles: seconds, once per machine)."""
    with _STATE_LOCK:
        if "kernel" not in _STATE:
            if not enabled():
                _STATE["kernel"], _STATE["why"] = None, "off (SURGEON_NATIVE=0)"
            elif not hasattr(os, "pread"):
                _STATE["kernel"], _STATE["why"] = None, "no pread on this platform"
            else:
                _STATE["kernel"] = _open()
        return _STATE["kernel"]


def status() -> str:
    """What the file kernel runs on in this process: "native", "numba (<why>)", or "not used" (yet)."""
    if "kernel" not in _STATE:
        return "not used"
    return "native" if _STATE["kernel"] is not None else f"numba ({_STATE.get('why', 'no native kernel')})"


def _open() -> NativeKernel | None:
    try:
        llvm, cpu, features = _host()
        name = f"native-{cache_key(cpu, features)}.bin"
        for folder in cache_dirs():
            try:
                unpacked = _unpack((folder / name).read_bytes())
            except OSError:
                continue
            if unpacked is not None:
                return _kernel_from(llvm, cpu, features, *unpacked)
        meta, obj = build()
        for folder in cache_dirs():
            try:
                _write_atomically(folder / name, _pack(meta, obj))
                break
            except OSError:
                continue
        return _kernel_from(llvm, cpu, features, meta, obj)
    except Exception as e:  # noqa: BLE001  (any failure: numba's kernel serves instead)
        _STATE["why"] = f"{type(e).__name__}: {e}"
        return None


def _kernel_from(llvm: Any, cpu: str, features: str, meta: dict, obj: bytes) -> NativeKernel | None:
    loaded = _load_object(llvm, cpu, features, meta, obj)
    if loaded is None:
        _STATE["why"] = "a symbol the native code needs is missing"
        return None
    return NativeKernel(*loaded)


def reset() -> None:
    """Forget this process's kernel (tests)."""
    with _STATE_LOCK:
        _STATE.clear()
