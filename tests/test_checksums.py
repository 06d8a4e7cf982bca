"""Outputs a user can check later: surgeon.json records the sha256 of every file written (taken while
writing), `surgeon verify --deep` checks them and names a file that changed since; a shard in the
Hugging Face cache is checked against its blob name (the sha256 of an LFS file)."""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from conftest import hf_cache_entry

SMALL = dict(arch="qwen2", num_layers=2, hidden_size=64, intermediate_size=160, num_heads=4, num_kv_heads=2,
             vocab_size=300, dtype="bf16")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_first_data_byte(shard: Path) -> None:
    """Change one bit of the first tensor's first element: the file stays a valid checkpoint."""
    with open(shard, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        b = f.read(1)
        f.seek(8 + n)
        f.write(bytes([b[0] ^ 1]))


@pytest.mark.parametrize("command", [["splice", "{base}", "{donor}", "--take", "o_proj"],  # raw copies (copy_file_range)
                                     ["splice", "{base}", "{donor}", "--take", "mlp", "--alpha", "0.5"],  # computed
                                     ["reinit", "{base}", "--module", "attn"]])
def test_surgeon_json_lists_the_sha256_of_every_file(tiny_model, tmp_path, surgeon, command):
    base = tiny_model(name="base", shard_bytes=40_000, **SMALL)
    donor = tiny_model(name="donor", seed=3, **SMALL)
    out = tmp_path / "out"
    args = [a.format(base=base, donor=donor) for a in command]
    r = surgeon(*args, "--checksums", "--max-shard-size", "60KB", "-o", out, "-q")
    assert r.code == 0, r.stderr
    files = json.loads((out / "surgeon.json").read_text())["files"]
    on_disk = sorted(p.name for p in out.iterdir() if p.name != "surgeon.json")
    assert sorted(files) == on_disk and len([n for n in on_disk if n.endswith(".safetensors")]) >= 2
    assert {n: e["sha256"] for n, e in files.items()} == {n: sha256(out / n) for n in on_disk}
    r = surgeon("verify", out, "--deep")
    assert r.code == 0 and f"{len(files)} file(s) match the sha256 of their surgeon.json" in r.stdout, r.stdout


def test_verify_deep_names_a_file_changed_since_it_was_written(tiny_model, tmp_path, surgeon):
    base = tiny_model(name="base", shard_bytes=40_000, **SMALL)
    out = tmp_path / "out"
    assert surgeon("zero", base, "--module", "o_proj", "--checksums", "--max-shard-size", "60KB", "-o", out, "-q").code == 0
    assert surgeon("verify", out).code == 0  # structure alone cannot see it
    shard = sorted(out.glob("*.safetensors"))[1]
    flip_first_data_byte(shard)
    r = surgeon("verify", out, "--deep")
    assert r.code == 1 and len(r.err_lines) == 1, r.stderr
    assert r.err_lines[0].startswith(f"error: {shard}: sha256 is ") and "that surgeon.json recorded when surgeon wrote it: " \
        "the file changed since; restore it or write the output again" in r.err_lines[0]
    config = out / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    r = surgeon("verify", out, "--deep")
    assert r.code == 1 and "(and 1 more file(s) changed)" in r.stderr, r.stderr
    (out / "tokenizer.json").unlink()
    r = surgeon("verify", out, "--deep")
    assert r.code == 1 and "(and 2 more file(s) changed)" in r.stderr


def test_without_checksums_none_are_recorded(tiny_model, tmp_path, surgeon):
    """Off by default: hashing costs more than 5% of a splice (tools/bench_surgery.py)."""
    base = tiny_model(name="base", **SMALL)
    out = tmp_path / "out"
    assert surgeon("zero", base, "--module", "o_proj", "-o", out, "-q").code == 0
    assert "files" not in json.loads((out / "surgeon.json").read_text())
    r = surgeon("verify", out, "--deep")
    assert r.code == 0 and "sha256" not in r.stdout


def test_verify_deep_checks_hub_cache_shards_against_their_blob_names(tiny_model, tmp_path, run_cli):
    model = tiny_model(name="m", shard_bytes=40_000, **SMALL)
    cache = tmp_path / "hub"
    snap = hf_cache_entry(cache, model)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = run_cli("verify", "someone/tiny", "--deep", env=env)
    shards = len(list(model.glob("*.safetensors")))
    assert r.returncode == 0 and f"{shards} file(s) match the sha256 of their blob name" in r.stdout, r.stderr
    shard = sorted(snap.glob("*.safetensors"))[0]
    flip_first_data_byte(shard.resolve())  # a download that went wrong in the blob it links to
    r = run_cli("verify", "someone/tiny", "--deep", env=env)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {shard}: sha256 is ") and "as its Hugging Face cache blob name says: a corrupted " \
        "or incomplete download; delete it and download again (hf download someone/tiny)" in lines[0]
