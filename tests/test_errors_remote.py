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
