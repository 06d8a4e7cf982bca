"""Every refusal of reading a model from the Hub by range (remote.py), as a user meets it: the stand-in
Hub on 127.0.0.1 (tests/hubserver.py) answers wrongly one way per case, and `surgeon inspect` runs in a
subprocess (huggingface_hub reads HF_ENDPOINT when it is imported). Each case: exit 1 and one
``error:`` line naming the repository (and the file) and what is wrong.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from hubserver import HubServer
from test_remote import BASE, hub_env

from weightsurgeon.checkpoint import MAX_JSON_BYTES
from weightsurgeon.synth import make_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("remote") / "m", num_layers=2, hidden_size=64, intermediate_size=128,
                           dtype="bf16", shard_bytes=60_000)


@pytest.fixture
def hub():
    with HubServer(lifetime=240) as server:
        yield server


def _one_error(res, *words: str) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], res.stderr


def test_a_gated_repository_says_how_to_get_in(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model, gated=True)
    _one_error(run_cli("inspect", BASE, env=hub_env(hub, tmp_path)),
               f"{BASE}: gated repository (HTTP 403): accept its licence on the Hub page, then log in with `hf auth login`")


def test_a_failing_file_list_is_named(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    hub.faults.info_status = 500
    _one_error(run_cli("inspect", BASE, env=hub_env(hub, tmp_path)), f"{BASE}: the Hub answered", "listing the repository")


def test_an_unreachable_hub_is_named(model: Path, tmp_path: Path) -> None:
    with HubServer(lifetime=5) as closed:
        url = closed.url
    env = hub_env(closed, tmp_path)
    res = run_cli("inspect", BASE, env=env)
    _one_error(res, f"{BASE}: cannot reach {url}", "check the network, HF_ENDPOINT and any proxy settings")


def test_an_index_naming_a_shard_the_repository_lacks(hub: HubServer, model: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(model, tmp_path / "m"))
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    (folder / shards[-1]).unlink()
    hub.add(BASE, folder)
    _one_error(run_cli("inspect", BASE, env=hub_env(hub, tmp_path)),
               f"model.safetensors.index.json: names shard '{shards[-1]}', which the repository does not have")


def test_an_unexpected_status_for_a_file(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    shard = sorted(p.name for p in model.glob("*.safetensors"))[0]
    hub.faults.status = {shard: 418}
    _one_error(run_cli("inspect", BASE, env=hub_env(hub, tmp_path)), "unexpected HTTP 418 for", shard)


def test_a_connection_cut_every_time_gives_up(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    hub.faults.cut_after, hub.faults.cut_times = 0, 1000  # no byte ever arrives
    res = run_cli("zero", BASE, "--module", "o_proj", "--remote", "-o", tmp_path / "out", env=hub_env(hub, tmp_path))
    _one_error(res, "times in a row", "giving up (a dropped connection resumes where it stopped, up to")
    assert not (tmp_path / "out").exists()


def test_a_socks_proxy_is_refused_in_one_line(hub: HubServer, model: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's client lists the files first: without httpx[socks] it fails there, in one line;
    with it, the tensor bytes' own client refuses the proxy kind (called directly: socksio is not installed here)."""
    hub.add(BASE, model)
    res = run_cli("zero", BASE, "--module", "o_proj", "--remote", "-o", tmp_path / "out",
                  env=hub_env(hub, tmp_path, HTTP_PROXY="socks5://127.0.0.1:1", NO_PROXY=""))
    _one_error(res, f"{BASE}: cannot reach", "check the network, HF_ENDPOINT and any proxy settings")
    assert not (tmp_path / "out").exists()
    from weightsurgeon.errors import SurgeonError
    from weightsurgeon.remote import proxy_for

    for key in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    with pytest.raises(SurgeonError, match="the proxy socks5://127.0.0.1 .* is not an http:// proxy, the only kind spoken"):
        proxy_for("http", "example.org")


# ---------------------------------------------------------------------------------------
# A server that answers otherwise than the Hub (a broken mirror, a proxy in the way)
# ---------------------------------------------------------------------------------------

def _shard(model: Path) -> str:
    return sorted(p.name for p in model.glob("*.safetensors"))[0]


SERVER_CASES = [
    ("no-commit", lambda f, m: setattr(f, "info_no_sha", True),
     f"{BASE}: the Hub's model info names no commit for this revision, so the files cannot be pinned; check HF_ENDPOINT"),
    ("huge-config", lambda f, m: f.sizes.update({"config.json": 10**9}),
     f"config.json: the Hub lists 1000000000 bytes, more than the {MAX_JSON_BYTES} this file may have: the "
     "repository does not hold a model in safetensors"),
    ("no-size", lambda f, m: f.sizes.update({_shard(m): None}),
     ": the Hub's file list gives no size, so its header cannot be checked; check HF_ENDPOINT"),
    ("redirect-loop", lambda f, m: setattr(f, "redirect_loop", True),
     (f"{BASE}: more than 5 redirects for http", "the server redirects in a loop: check HF_ENDPOINT and any proxy")),
    ("redirect-no-location", lambda f, m: setattr(f, "redirect_no_location", True),
     f": redirect (HTTP 302) without a Location for {BASE}; the server is broken: check HF_ENDPOINT and any proxy"),
    ("garbled-content-range", lambda f, m: setattr(f, "content_range", "bytes garbage"),
     "the server sent an unreadable Content-Range 'bytes garbage'; it is not answering as the Hub does"),
    ("wrong-content-range", lambda f, m: setattr(f, "content_range", "bytes 0-0/1"),
     "for a request of 0-"),
]


@pytest.mark.parametrize("case_id,fault,words", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_a_server_that_answers_otherwise_than_the_hub(hub: HubServer, model: Path, tmp_path: Path, case_id, fault,
                                                      words) -> None:
    hub.add(BASE, model)
    fault(hub.faults, model)
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path))
    _one_error(res, *((words,) if isinstance(words, str) else words))
    if case_id == "wrong-content-range":
        assert "(file size " in res.stderr and "the file changed or the server is broken; run again" in res.stderr


def test_a_hub_id_the_hub_would_refuse(hub: HubServer, tmp_path: Path) -> None:
    """The CLI looks in the local cache first, which refuses the id in its own words; open_remote, the
    Python API, says it itself (a subprocess: huggingface_hub reads HF_HUB_OFFLINE when imported)."""
    import subprocess
    import sys

    _one_error(run_cli("inspect", "org/two--dashes", env=hub_env(hub, tmp_path)),
               "org/two--dashes: cannot resolve from the local Hugging Face cache (HFValidationError")
    script = ("from weightsurgeon.errors import SurgeonError\nfrom weightsurgeon.remote import open_remote\n"
              "try:\n    open_remote('org/two--dashes', 'org/two--dashes', None)\n"
              "except SurgeonError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=hub_env(hub, tmp_path),
                         timeout=300)
    assert res.stdout.startswith("org/two--dashes: not a valid Hub id ("), res.stdout + res.stderr
    assert "give ORG/NAME, or a folder that exists" in res.stdout


def test_verify_of_a_remote_surgery_finds_bytes_changed_after_writing(hub: HubServer, model: Path,
                                                                      tmp_path: Path) -> None:
    """The output's bytes that came from the Hub are compared with the sha256 taken while writing them; a byte
    flipped between writing and --verify (made here by wrapping compare_written) is named."""
    import subprocess
    import sys

    hub.add(BASE, model)
    script = (
        "import sys, weightsurgeon.writer as w\n"
        "real = w.compare_written\n"
        "def flipped(plan, folder, *a, **kw):\n"
        "    shard = sorted(folder.glob('*.safetensors'))[0]\n"
        "    data = bytearray(shard.read_bytes()); data[-1] ^= 1; shard.write_bytes(bytes(data))\n"
        "    return real(plan, folder, *a, **kw)\n"
        "w.compare_written = flipped\n"
        "from weightsurgeon.cli import main\n"
        "main(sys.argv[1:])\n")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", script, "zero", BASE, "--module", "o_proj", "--remote", "--verify",
                          "-o", str(out)], capture_output=True, text=True, env=hub_env(hub, tmp_path), timeout=600)
    lines = [line for line in res.stderr.splitlines() if line.strip()]  # a notice of what will be fetched, then the error
    errors = [line for line in lines if line.startswith("error: ")]
    assert res.returncode == 1 and errors == lines[-1:], res.stderr
    assert f"--verify: {tmp_path}" in errors[0] and "model-00001-of-00001.safetensors: the bytes of 'lm_head.weight' " \
        "(and any tensors written after it in one piece) differ from those fetched from the Hub while writing" in errors[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".surgeon-tmp")]
