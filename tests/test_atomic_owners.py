"""Temporary folders know their owner: a live run's folder is kept and its output is not written twice
at once; a dead run's folder is removed by the next run or by `surgeon clean`, which says what it freed."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from weightsurgeon.atomic import LOCK_NAME, TEMP_PREFIX, UNLOCKED_GRACE_S, atomic_output_dir, temp_folders


def _leftover(parent: Path, name: str, owner: dict | None, size: int = 3_000_000, age: float = 0.0) -> Path:
    """A temporary folder as a killed run leaves it: data, and a lock file nobody holds (or none)."""
    folder = parent / f"{TEMP_PREFIX}{name}"
    folder.mkdir()
    (folder / "model-00001-of-00001.safetensors").write_bytes(os.urandom(size))
    if owner is not None:
        (folder / LOCK_NAME).write_text(json.dumps(owner))
    if age:
        old = time.time() - age
        for p in (*folder.iterdir(), folder):
            os.utime(p, (old, old))
    return folder


def _dead_owner(output: Path) -> dict:
    return {"pid": 999999, "host": socket.gethostname(), "output": str(output.resolve()), "started": "2026-01-01T00:00:00+00:00"}


def test_a_live_run_owns_its_folder_and_its_output(tiny_model, tmp_path, surgeon):
    model = tiny_model(name="m")
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        owner = json.loads((tmp / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["output"] == str(out.resolve())
        # A second run to the same output refuses, naming the first; the live folder is left alone.
        r = surgeon("zero", model, "--module", "o_proj", "-o", out, "--force", "-q")
        assert r.code == 1 and len(r.err_lines) == 1, r.stderr
        assert "another surgeon run" in r.stderr and f"pid {os.getpid()}" in r.stderr and "wait for it" in r.stderr
        assert tmp.is_dir()
        # A run to another output beside it works, and keeps the live folder too.
        r = surgeon("zero", model, "--module", "o_proj", "-o", tmp_path / "other", "-q")
        assert r.code == 0 and "removed" not in r.stderr, r.stderr
        r = surgeon("clean", tmp_path)
        assert r.code == 0 and "kept: " in r.stdout and "in use by a running surgeon" in r.stdout
        assert tmp.is_dir()
    # Finished: the output holds no lock file, and nothing temporary is left.
    assert not (out / LOCK_NAME).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_clean_removes_dead_runs_and_keeps_the_rest(tmp_path, surgeon):
    dead = _leftover(tmp_path, "a-111111", _dead_owner(tmp_path / "a"))
    foreign = _leftover(tmp_path, "b-222222", {**_dead_owner(tmp_path / "b"), "host": "elsewhere.example"})
    legacy = _leftover(tmp_path, "c-333333", None, age=UNLOCKED_GRACE_S + 60)  # an older version's, untouched for long
    recent = _leftover(tmp_path, "d-444444", None)  # no lock yet: a run that is starting
    r = surgeon("clean", tmp_path, "--dry-run")
    assert r.code == 0 and dead.is_dir() and legacy.is_dir()
    assert r.stdout.count("stale: ") == 2 and "would be freed" in r.stdout
    r = surgeon("clean", tmp_path, "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    actions = {Path(f["folder"]).name: f["action"] for f in doc["folders"]}
    assert actions == {dead.name: "removed", foreign.name: "kept", legacy.name: "removed", recent.name: "kept"}
    assert doc["freed_bytes"] >= 6_000_000
    assert not dead.exists() and not legacy.exists() and foreign.is_dir() and recent.is_dir()
    states = {f.path.name: f.state for f in temp_folders(tmp_path)}
    assert states == {foreign.name: "foreign", recent.name: "recent"}


def test_clean_refuses_a_file(tmp_path, surgeon):
    f = tmp_path / "file"
    f.write_text("x")
    r = surgeon("clean", f)
    assert r.code == 1 and r.err_lines == [f"error: {f}: not a directory; give the folder that holds the outputs"]


def test_every_run_removes_leftovers_beside_its_output(tiny_model, tmp_path, surgeon):
    model = tiny_model(name="m")
    dead = _leftover(tmp_path, "out-555555", _dead_owner(tmp_path / "out"))
    r = surgeon("diff", model, model, "-o", tmp_path / "report", "--no-plots", "-q")
    assert r.code == 0, r.stderr
    assert not dead.exists()
    assert f"removed 1 temporary folder(s) left by killed or crashed runs ({dead.name}): 3.0 MB freed" in r.stderr


def test_an_output_that_is_a_file_or_link_gets_the_true_message_first(tiny_model, tmp_path, surgeon):
    """The first message must already say what --force cannot do, not suggest it."""
    model = tiny_model(name="m")
    f = tmp_path / "file"
    f.write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    for force in ((), ("--force",)):
        r = surgeon("zero", model, "--module", "o_proj", "-o", f, "-q", *force)
        assert r.code == 1 and r.err_lines == [f"error: {f}: exists and is not a directory; --force replaces only a "
                                               "folder: remove it or choose another path"], r.stderr
        r = surgeon("diff", model, model, "-o", link, "-q", *force)
        assert r.code == 1 and r.err_lines == [f"error: {link}: is a symbolic link; outputs never replace a link (even "
                                               "with --force): choose another path"], r.stderr
    assert f.read_text() == "keep me" and link.resolve() == (tmp_path / "elsewhere").resolve()


def test_messages_say_what_to_do(tiny_model, tmp_path, surgeon):
    model = tiny_model(name="m")
    r = surgeon("zero", model, "--module", "o_proj", "-o", tmp_path / "no" / "out", "-q")
    assert r.err_lines == [f"error: {tmp_path / 'no'}: the output's parent directory does not exist; create it first"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = surgeon("inspect", empty)
    assert r.err_lines == [f"error: {empty}: no .safetensors files found; give the model's folder (model.safetensors, "
                           "or model-*-of-*.safetensors with model.safetensors.index.json)"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        r = surgeon("zero", model, "--module", "o_proj", "-o", locked / "out", "-q")
        assert r.err_lines == [f"error: {locked}: not writable; choose an output folder you can write to"]
