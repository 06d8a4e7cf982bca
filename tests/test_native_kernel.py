"""The native file kernel (weightsurgeon/kernels/native.py): numba's machine code, loaded without numba.

It must give numba's delta_file results bit for bit, never run code from a damaged or
foreign cache file, never take the process down (LLVM aborts on an unresolved symbol),
and let a diff run without importing numba at all.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_kernels import FILE_PAIRS, stored, tricky_pair, write_pair_file

from weightsurgeon.kernels import abi, native
from weightsurgeon.kernels.delta import _file_code, _histogram_constants
from weightsurgeon.kernels.dtypes import ITEMSIZE
from weightsurgeon.kernels.reference import work_dtype

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def kernel():
    """The process's native kernel, loaded from the cache or built into it once."""
    native.reset()
    loaded = native.kernel()
    assert loaded is not None, native.status()
    yield loaded
    native.reset()


def cache_file() -> Path:
    _llvm, cpu, features = native._host()
    name = f"native-{native.cache_key(cpu, features)}.bin"
    for folder in native.cache_dirs():
        if (folder / name).exists():
            return folder / name
    raise AssertionError("no native cache file")


def numba_delta_file(width, fd_a, pos_a, code_a, fd_b, pos_b, code_b, n, consts, edges):
    import numba

    from weightsurgeon.kernels import _compiled

    like = np.empty(0, {2: np.uint16, 4: np.uint32, 8: np.uint64}[width])
    return _compiled.delta_file(fd_a, pos_a, like, code_a, fd_b, pos_b, like, code_b, n, consts, edges,
                                numba.get_num_threads())


@pytest.mark.parametrize("dtype_a,dtype_b", FILE_PAIRS)
@pytest.mark.parametrize("bins", [200, 7])
def test_native_equals_numba_bit_for_bit(kernel, tmp_path, dtype_a, dtype_b, bins):
    a, b = tricky_pair(300_007, seed=17)
    sa, sb = stored(a, dtype_a), stored(b, dtype_b)
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb, lead=7, gap=3)
    dt = work_dtype(dtype_a, dtype_b)
    wide = dt is np.float64
    consts, edges = _histogram_constants(bins, 0.5, dt)
    code_a, code_b, width = _file_code(dtype_a, wide), _file_code(dtype_b, wide), ITEMSIZE[dtype_a]
    with open(tmp_path / "pair.bin", "rb") as f:
        args = (width, f.fileno(), pos_a, code_a, f.fileno(), pos_b, code_b, sa.size, consts, edges)
        want = numba_delta_file(*args)
        try:
            for threads in (1, 2, 5):
                kernel.set_threads(threads)
                got = kernel.file_delta(*args)
                for g, w in zip(got[:3], want[:3]):
                    assert g.dtype == w.dtype and g.shape == w.shape
                    assert g.tobytes() == w.tobytes()  # bit for bit, float sums included
                assert got[3] == want[3] == 0
        finally:
            kernel.set_threads(native.threads_default())


def test_a_failed_read_is_reported_not_computed(kernel, tmp_path):
    a, b = tricky_pair(150_000, seed=2)
    sa, sb = stored(a, "BF16"), stored(b, "BF16")
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    consts, edges = _histogram_constants(200, 1.0, np.float32)
    with open(tmp_path / "pair.bin", "r+b") as f:
        f.truncate(pos_b + sb.nbytes - 2)
        *_, failed = kernel.file_delta(2, f.fileno(), pos_a, abi.CODE_BF16, f.fileno(), pos_b, abi.CODE_BF16, sa.size,
                                       consts, edges)
    assert failed == 1  # the last part only
    *_, failed = kernel.file_delta(2, 987_654, 0, abi.CODE_BF16, 987_654, 0, abi.CODE_BF16, 10, consts, edges)
    assert failed == 1  # not an open descriptor


def test_the_entry_refuses_buffers_smaller_than_its_code_needs(kernel):
    """Raw pointers: the compiled code checks every length against its own constants."""
    consts, edges = _histogram_constants(200, 1.0, np.float32)
    lane = native._LaneBuffers(2, np.float32, 200)
    sums, counts = np.zeros((4, abi.N_SUMS)), np.zeros((4, abi.N_COUNTS), np.int64)
    hists, failed = np.zeros((4, 200), np.int64), np.zeros(4, np.int64)
    function = kernel._functions[2]

    def call(n=1000, lanes=1, rows=4, part=abi.PART, scratch=abi.SCRATCH_SIZE, codes=abi.CODES_SIZE,
             sub=abi.sub_size(200), acc=abi.ACC_SIZE):
        return function(-1, 0, 0, -1, 0, 0, n, 0, lanes, 200, rows, part, scratch, codes, sub, acc,
                        consts.ctypes.data, edges.ctypes.data, sums.ctypes.data, counts.ctypes.data,
                        hists.ctypes.data, failed.ctypes.data, lane.a.ctypes.data, lane.b.ctypes.data,
                        lane.scratch.ctypes.data, lane.codes.ctypes.data, lane.sub.ctypes.data, lane.acc.ctypes.data)

    assert call() == 0 and failed[0] == 1  # well-formed: the read of fd -1 fails, and says so
    failed[:] = 0
    for bad in ({"scratch": abi.SCRATCH_SIZE - 1}, {"codes": 10}, {"sub": abi.sub_size(200) - 1}, {"acc": 3},
                {"part": abi.PART - 1}):
        assert call(**bad) == 1, bad
    for bad in ({"lanes": 0}, {"rows": 0}, {"n": 4 * abi.PART + 1}):
        assert call(**bad) == 2, bad
    assert not failed.any()  # refused calls touched nothing


def test_the_object_needs_only_libc_from_outside(kernel):
    meta, obj = native._unpack(cache_file().read_bytes())
    assert set(meta["externals"]) <= {"pread", "memset", "memcpy", "memmove", native.DTOR}, meta["externals"]
    assert native.undefined_elf_symbols(obj) == meta["externals"]
    assert meta["symbols"] == {str(w): native.symbol(w) for w in native.VARIANTS}


def test_cache_files_are_checked_before_llvm_sees_them():
    obj = bytes(range(256)) * 10
    packed = native._pack({"symbols": {}, "externals": []}, obj)
    assert native._unpack(packed) == ({"symbols": {}, "externals": [], "sha256": native.hashlib.sha256(obj).hexdigest(),
                                       "size": len(obj)}, obj)
    flipped = bytearray(packed)
    flipped[-100] ^= 1
    assert native._unpack(bytes(flipped)) is None  # a changed byte of code
    assert native._unpack(packed[:-1]) is None  # truncated
    assert native._unpack(packed + b"x") is None  # grown
    assert native._unpack(b"not a cache file at all") is None
    assert native._unpack(packed[:len(native.MAGIC) + 3]) is None
    huge = native.MAGIC + native.struct.pack("<Q", 1 << 60) + b"{}"
    assert native._unpack(huge) is None


def test_the_key_names_sources_cpu_and_features():
    key = native.cache_key("znver3", "+avx2,+fma")
    assert key == native.cache_key("znver3", "+avx2,+fma")
    assert key != native.cache_key("skylake", "+avx2,+fma")
    assert key != native.cache_key("znver3", "+avx2,-fma")


def run_python(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_a_damaged_cache_file_is_rebuilt_never_run(kernel, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    target = folder / cache_file().name
    shutil.copy(cache_file(), target)
    data = bytearray(target.read_bytes())
    data[-200] ^= 0xFF  # one byte of machine code
    target.write_bytes(bytes(data))
    code = ("import sys\nfrom weightsurgeon.kernels import native\n"
            "k = native.kernel()\nprint(native.status())\n")
    res = run_python(code, {"SURGEON_NATIVE_CACHE": str(folder)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "native"
    assert native._unpack(target.read_bytes()) is not None  # rebuilt in place
    assert target.read_bytes() != bytes(data)


def test_a_missing_symbol_means_no_kernel_not_a_crash(kernel):
    """LLVM aborts the whole process on an unresolved symbol: it must be caught before."""
    code = f"""
from pathlib import Path
from weightsurgeon.kernels import native
meta, obj = native._unpack(Path({str(cache_file())!r}).read_bytes())
meta["externals"] = meta["externals"] + ["weightsurgeon_no_such_symbol"]
llvm, cpu, features = native._host()
print(native._load_object(llvm, cpu, features, meta, obj))
"""
    res = run_python(code, {})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"


def test_a_diff_runs_without_numba(kernel, tmp_path):
    from weightsurgeon.synth import make_checkpoint, make_tuned

    base = make_checkpoint(tmp_path / "base", num_layers=2, dtype="bf16")
    tuned = make_tuned(base, tmp_path / "tuned")
    code = f"""
import sys
from weightsurgeon.cli import main
try:
    main(["diff", {str(base)!r}, {str(tuned)!r}, "-o", {str(tmp_path / 'report')!r}, "--no-plots", "-q"])
except SystemExit as e:
    assert not e.code, e.code
print(sorted(m for m in ("numba", "llvmlite.binding") if m in sys.modules))
"""
    res = run_python(code, {})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "['llvmlite.binding']"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["timing"]["kernel"] == "native"
    off = run_python(code.replace(str(tmp_path / "report"), str(tmp_path / "report-numba")), {"SURGEON_NATIVE": "0"})
    assert off.returncode == 0, off.stderr
    assert "'numba'" in off.stdout.strip().splitlines()[-1]
    numba_report = json.loads((tmp_path / "report-numba" / "report.json").read_text())
    assert numba_report["timing"]["kernel"] == "numba (off (SURGEON_NATIVE=0))"
    assert numba_report["tensors"] == report["tensors"]  # the same numbers, bit for bit


def test_ctrl_c_while_the_kernel_loads_interrupts_the_diff(tmp_path, monkeypatch, surgeon):
    """The signal handler raises between any two bytecodes; the native kernel's fallback
    (`except Exception`: use numba instead) once swallowed it, and the diff went on to exit 0."""
    import os
    import signal

    from weightsurgeon.errors import Interrupted
    from weightsurgeon.synth import make_checkpoint, make_tuned

    assert not issubclass(Interrupted, Exception)
    base = make_checkpoint(tmp_path / "base", num_layers=1, dtype="bf16")
    tuned = make_tuned(base, tmp_path / "tuned")
    real_host = native._host

    def host_interrupted():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while the kernel loads
        return real_host()

    monkeypatch.setattr(native, "_host", host_interrupted)
    native.reset()
    try:
        result = surgeon("diff", base, tuned, "-o", tmp_path / "report", "-q", "--no-plots")
    finally:
        native.reset()
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stderr.strip() == "error: interrupted by SIGINT; nothing was written"
    assert not (tmp_path / "report").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "tuned"]  # no temporary folder left either


def test_a_failed_build_falls_back_to_numba_and_says_why(tmp_path, monkeypatch):
    from weightsurgeon.kernels import DeltaStats, accumulate_delta_from_files, reference_delta_stats

    def broken_build():
        raise RuntimeError("no compiler today")

    monkeypatch.setenv("SURGEON_NATIVE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(native, "build", broken_build)
    native.reset()
    try:
        assert native.kernel() is None
        assert native.status() == "numba (RuntimeError: no compiler today)"
        a, b = tricky_pair(70_000, seed=5)
        sa, sb = stored(a, "BF16"), stored(b, "BF16")
        pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
        stats = DeltaStats.empty()
        with open(tmp_path / "pair.bin", "rb") as f:
            assert accumulate_delta_from_files(stats, f.fileno(), pos_a, "BF16", f.fileno(), pos_b, "BF16", sa.size)
        want = reference_delta_stats(sa, sb, "BF16", "BF16")
        assert stats.n == want.n and np.array_equal(stats.hist, want.hist)
    finally:
        native.reset()


def test_a_cache_that_cannot_be_written_still_gives_a_kernel(kernel, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SURGEON_NATIVE_CACHE", str(blocker / "cache"))  # mkdir fails: NotADirectoryError
    native.reset()
    try:
        assert native.kernel() is not None, native.status()
        assert native.status() == "native"
    finally:
        native.reset()


def test_a_forked_child_gets_threads_of_its_own(kernel, tmp_path):
    """After a fork the child has none of the parent's pool threads: waiting on them would hang."""
    import os

    a, b = tricky_pair(300_000, seed=9)
    sa, sb = stored(a, "BF16"), stored(b, "BF16")
    pos_a, pos_b = write_pair_file(tmp_path / "pair.bin", sa, sb)
    consts, edges = _histogram_constants(200, 1.0, np.float32)
    kernel.set_threads(2)
    try:
        status = _fork_and_compute(kernel, tmp_path / "pair.bin", pos_a, pos_b, sa.size, consts, edges)
    finally:
        kernel.set_threads(native.threads_default())
    assert os.waitstatus_to_exitcode(status) == 0


def _fork_and_compute(kernel, path, pos_a, pos_b, n, consts, edges) -> int:
    """Compute in this process (its pool starts), then in a forked child; the child's wait status."""
    import os
    import time

    with open(path, "rb") as f:
        args = (2, f.fileno(), pos_a, abi.CODE_BF16, f.fileno(), pos_b, abi.CODE_BF16, n, consts, edges)
        want = kernel.file_delta(*args)[2].sum()  # the parent's pool exists now
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if kernel.file_delta(*args)[2].sum() == want else 3)
            except BaseException:
                os._exit(4)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                raise AssertionError("the forked child hung on the parent's pool")
            time.sleep(0.05)
    return status
