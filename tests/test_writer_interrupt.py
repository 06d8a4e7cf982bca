"""Nothing lost: a splice interrupted by SIGINT/SIGTERM at random moments, or failing under a
file-size limit (ulimit -f), leaves either no output folder or a complete, verified one —
never a temporary folder — and the inputs bitwise unchanged; a failure is one `error:` line.

These run the real command line in subprocesses and send real signals.
"""
from __future__ import annotations

import hashlib
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weightsurgeon.atomic import TEMP_PREFIX
from weightsurgeon.synth import make_checkpoint

SPLICE = ["splice", "--take", "mlp,attn", "--alpha", "0.5", "--max-shard-size", "40MB", "--verify", "-q"]


def digest_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in skip:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            out[p.name] = h.hexdigest()
    return out


def no_temp_left(parent: Path) -> bool:
    return not [p.name for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ~130 MB f32 pair: a splice with interpolation and --verify takes a second or two."""
    root = tmp_path_factory.mktemp("interrupt")
    base = make_checkpoint(root / "base", arch="llama", num_layers=8, hidden_size=640, intermediate_size=1792,
                           num_heads=10, num_kv_heads=5, vocab_size=8192, dtype="f32", shard_bytes=60_000_000)
    donor = make_checkpoint(root / "donor", arch="llama", num_layers=8, hidden_size=640, intermediate_size=1792,
                            num_heads=10, num_kv_heads=5, vocab_size=8192, dtype="f32", shard_bytes=45_000_000, seed=4)
    reference = root / "reference"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "weightsurgeon", SPLICE[0], str(base), str(donor), *SPLICE[1:], "-o", str(reference)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    duration = time.monotonic() - t0
    inputs = {"base": digest_files(base), "donor": digest_files(donor)}
    return root, base, donor, digest_files(reference, skip=("surgeon.json", "README.md")), inputs, duration


def wait_for_temp(parent: Path, proc: subprocess.Popen) -> None:
    while proc.poll() is None and no_temp_left(parent):
        time.sleep(0.002)


def check_outcome(proc_rc: int, stderr: str, out: Path, reference: dict[str, str], one_line: bool = True) -> str:
    assert no_temp_left(out.parent), f"temporary folder left behind: {list(out.parent.iterdir())}"
    if out.exists():
        # Complete: identical to the uninterrupted run, and `surgeon verify` accepts it.
        assert digest_files(out, skip=("surgeon.json", "README.md")) == reference
        check = subprocess.run([sys.executable, "-m", "weightsurgeon", "verify", str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        return "complete"
    if proc_rc == 1 and one_line:
        lines = [l for l in stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert "Traceback" not in stderr
        return "clean error"
    if not one_line:
        return "stopped"
    # Killed by the default signal action before the interpreter reached our code: nothing was created.
    assert proc_rc in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 130), (proc_rc, stderr)
    return "killed before start"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_random_interrupts_leave_nothing_or_a_complete_output(models, sig, tmp_path):
    root, base, donor, reference, inputs, duration = models
    rng = random.Random(1234 + int(sig))
    outcomes = []
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "weightsurgeon", SPLICE[0], str(base), str(donor), *SPLICE[1:], "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt == 0:  # the first signal lands mid-write: as soon as the temporary folder exists
            wait_for_temp(tmp_path, proc)
        else:  # the others anywhere from start-up to (now and then) after completion
            time.sleep(rng.uniform(0.2, max(0.5, duration * 1.1)))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        outcomes.append(check_outcome(proc.returncode, stderr, out, reference))
        if outcomes[-1] == "clean error":
            assert "interrupted" in stderr
    assert "clean error" in outcomes, f"no run was interrupted mid-write: {outcomes} (splice took {duration:.2f} s)"
    assert digest_files(base) == inputs["base"] and digest_files(donor) == inputs["donor"]


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000_000, 30_000_000))


def test_write_failure_under_file_size_limit(models, tmp_path):
    root, base, donor, reference, inputs, _ = models
    out = tmp_path / "out"
    for extra in ([], ["--take", "o_proj", "--alpha", "1"]):  # computed path, then the raw copy_file_range path
        args = SPLICE[1:] if not extra else ["--take", "o_proj", "--max-shard-size", "5GB", "-q"]
        proc = subprocess.run([sys.executable, "-m", "weightsurgeon", "splice", str(base), str(donor), *args, "-o", str(out)],
                              capture_output=True, text=True, preexec_fn=_limit_file_size)
        assert proc.returncode == 1, proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "File too large" in lines[0], proc.stderr
        assert not out.exists() and no_temp_left(tmp_path)
    assert digest_files(base) == inputs["base"] and digest_files(donor) == inputs["donor"]


def test_repeated_ctrl_c_still_cleans_up(models, tmp_path):
    """Users press Ctrl-C more than once: the second signal must not cut the cleanup short."""
    root, base, donor, reference, inputs, duration = models
    for attempt, when in enumerate((0.4, 0.7)):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "weightsurgeon", SPLICE[0], str(base), str(donor), *SPLICE[1:], "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt == 0:
            wait_for_temp(tmp_path, proc)
        else:
            time.sleep(duration * when)
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            if proc.poll() is None:
                proc.send_signal(sig)
            time.sleep(0.005)
        _, stderr = proc.communicate(timeout=120)
        # No temporary folder, and no output or a complete one. (A signal landing after our cleanup, while
        # the interpreter exits with the default handlers back in place, may still add to stderr or set the status.)
        check_outcome(proc.returncode, stderr, out, reference, one_line=False)


def _disk_usage(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_sigkill_leftovers_are_removed_by_the_next_run(models, tmp_path):
    """SIGKILL cannot be caught: the temporary folder stays, and the next run writing beside it removes it
    (its lock is no longer held), says so in one line with the space freed, and leaves only the output."""
    root, base, donor, reference, inputs, duration = models
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "weightsurgeon", SPLICE[0], str(base), str(donor), *SPLICE[1:], "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
        if temps and _disk_usage(temps[0]) > 8_000_000:
            break
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the splice finished before it could be killed"
    left = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(left) == 1 and not out.exists()
    leftover = _disk_usage(left[0])
    assert leftover > 8_000_000
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    lines = [l for l in again.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "removed 1 temporary folder" in lines[0], again.stderr
    assert left[0].name in lines[0] and " MB freed" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert _disk_usage(tmp_path) == _disk_usage(out)
    assert digest_files(out, skip=("surgeon.json", "README.md")) == reference
    assert digest_files(base) == inputs["base"] and digest_files(donor) == inputs["donor"]
