"""Reading from the Hub by range: a stand-in Hub on 127.0.0.1 (tests/hubserver.py) serves tiny models.

Every test runs the real CLI in a subprocess with HF_ENDPOINT pointed at the server, an
empty HF cache and no token, and counts the bytes the server sent.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from hubserver import ForwardProxy, HubServer

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.synth import make_checkpoint

BASE = "org/base"


@pytest.fixture
def hub(tmp_path: Path):
    with HubServer(lifetime=240) as server:
        yield server


def hub_env(hub: HubServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "hf-home"
    env = cli_env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
                  HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DOWNLOAD_TIMEOUT="5")
    env.pop("HF_TOKEN", None)
    env.update(extra)
    return env


def header_bytes(folder: Path) -> int:
    with open_checkpoint(folder) as c:
        return sum(s.data_start for s in c.shards)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "base", num_layers=4, hidden_size=128, intermediate_size=256, dtype="bf16",
                           shard_bytes=300_000)


def test_inspect_reads_headers_only(hub: HubServer, model: Path, tmp_path: Path) -> None:
    commit = hub.add(BASE, model)
    local = run_cli("inspect", model, "--json")
    res = run_cli("inspect", BASE, "--json", env=hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr
    got, want = json.loads(res.stdout), json.loads(local.stdout)
    assert got["origin"] == "remote" and got["repo"] == BASE and got["commit"] == commit
    assert got["path"] == f"hf://{BASE}@{commit}"
    assert len(got["shards"]) > 1 and all(len(s["sha256"]) == 64 for s in got["shards"])
    for key in ("num_layers", "num_parameters", "total_bytes", "dtypes", "parameters_by_group", "modules", "tied_embeddings"):
        assert got[key] == want[key], key
    # config + index + each shard's header (plus the small over-read of one request per header)
    side = sum((model / n).stat().st_size for n in ("config.json", "model.safetensors.index.json"))
    data = hub.data_bytes
    assert header_bytes(model) <= data - side <= header_bytes(model) + 8 * len(got["shards"]) * 1024
    assert got["fetched"]["bytes"] == data
    assert data < got["total_bytes"] / 10
    # every file request named the pinned commit, none a branch
    files = [r["path"] for r in hub.log if "/resolve/" in r["path"]]
    assert files and all(f"/resolve/{commit}/" in p for p in files)
    assert all("weightsurgeon" in (r["user_agent"] or "") for r in hub.log)


def test_inspect_table_says_remote_and_bytes(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr
    assert "read remotely from hf://org/base@" in res.stdout and "fetched" in res.stdout


def test_verify_remote_and_revision(hub: HubServer, model: Path, tmp_path: Path) -> None:
    commit = hub.add(BASE, model)
    env = hub_env(hub, tmp_path)
    res = run_cli("verify", f"{BASE}@main", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"ok: hf://{BASE}@{commit}: valid checkpoint") and "read remotely" in res.stdout
    res = run_cli("verify", BASE, "--revision", commit, "--json", env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["origin"] == "remote"
    res = run_cli("verify", BASE, "--revision", "no-such-branch", env=env)
    assert res.returncode == 1 and res.stderr.startswith("error: org/base: revision 'no-such-branch' not found")
    res = run_cli("verify", BASE, "--deep", env=env)
    assert res.returncode == 1 and "verify --deep reads every byte" in res.stderr and "Traceback" not in res.stderr


def test_unknown_repo_and_token(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    res = run_cli("inspect", "org/nothing", env=hub_env(hub, tmp_path))
    assert res.returncode == 1
    assert res.stderr.splitlines() == [res.stderr.strip()] and "org/nothing: repository not found" in res.stderr
    hub.faults.require_token = "secret"
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and "HTTP 401" in res.stderr and "HF_TOKEN" in res.stderr
    res = run_cli("inspect", BASE, "--json", env=hub_env(hub, tmp_path, HF_TOKEN="secret"))
    assert res.returncode == 0, res.stderr
    cdn = [r for r in hub.log if r["path"].startswith("/cdn/")]
    api = [r for r in hub.log if r["path"].startswith("/api/")]
    assert api[-1]["authorization"] == "Bearer secret"
    assert cdn and all(r["authorization"] is None for r in cdn)  # the token never leaves the Hub for a CDN


def test_gated_file_and_missing_file(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    shard = sorted(p.name for p in model.glob("*.safetensors"))[0]
    hub.faults.status = {shard: 403}
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path))
    assert res.returncode == 1
    assert res.stderr.startswith(f"error: {BASE}: access denied (HTTP 403) to {shard}: the repository is gated or private")
    hub.faults.status = {shard: 404}
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and f"error: {BASE}: {shard} not found at commit" in res.stderr


def test_offline_mode_refuses(hub: HubServer, model: Path, tmp_path: Path) -> None:
    hub.add(BASE, model)
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert res.returncode == 1 and "HF_HUB_OFFLINE" in res.stderr and hub.log == []


# ---------------------------------------------------------------------------------------
# diff --remote: only the selected tensors' bytes
# ---------------------------------------------------------------------------------------

TUNED = "org/tuned"
IDENTITY_KEYS = ("source", "path", "origin", "repo", "commit", "shards")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    from weightsurgeon.synth import make_tuned

    base = make_checkpoint(tmp_path / "base", num_layers=4, hidden_size=512, intermediate_size=512, dtype="bf16",
                           num_heads=8, num_kv_heads=2, shard_bytes=3_000_000)
    return base, make_tuned(base, tmp_path / "tuned")


def comparable(report: dict) -> dict:
    """A report without what names where its inputs came from or when it ran."""
    out = {k: copy.deepcopy(v) for k, v in report.items() if k not in ("created", "timing")}
    for side in [out["base"], *out["tuned"]]:
        for key in IDENTITY_KEYS:
            side.pop(key)
    return out


def module_bytes(folder: Path, suffix: str) -> int:
    with open_checkpoint(folder) as c:
        return sum(t.nbytes for t in c if t.name.endswith(suffix))


def side_bytes(folder: Path) -> int:
    return sum((folder / n).stat().st_size for n in ("config.json", "model.safetensors.index.json"))


def test_diff_remote_fetches_only_o_proj_and_equals_local(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    base_commit, tuned_commit = hub.add(BASE, base), hub.add(TUNED, tuned)
    local = run_cli("diff", base, tuned, "--module", "o_proj", "-o", tmp_path / "local", "--no-plots", "-q")
    assert local.returncode == 0, local.stderr
    env = hub_env(hub, tmp_path)
    dry = run_cli("diff", BASE, TUNED, "--module", "o_proj", "--remote", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    o_proj = module_bytes(base, "o_proj.weight")
    reads = {r["input"]: r for r in json.loads(dry.stdout)["inputs"]}
    assert reads["base"]["read_bytes"] == reads["tuned"]["read_bytes"] == o_proj
    assert reads["base"]["origin"] == "remote" and not (tmp_path / "remote").exists()

    hub.reset()
    res = run_cli("diff", BASE, TUNED, "--module", "o_proj", "--remote", "-o", tmp_path / "remote", "--no-plots", "-q",
                  env=env)
    assert res.returncode == 0, res.stderr
    budget = 2 * o_proj + header_bytes(base) + header_bytes(tuned) + side_bytes(base) + side_bytes(tuned)
    assert 2 * o_proj <= hub.data_bytes <= budget * 1.01, (hub.data_bytes, budget)
    assert o_proj / module_bytes(base, "") < 0.2  # the rest was there to be fetched, and was not
    assert f"read remotely from hf://{BASE}@{base_commit}" in res.stderr
    got = json.loads((tmp_path / "remote" / "report.json").read_text())
    want = json.loads((tmp_path / "local" / "report.json").read_text())
    assert comparable(got) == comparable(want)
    # identities: the layout digest (equal for base and tuned: same headers) and the weights' own
    assert got["base"]["layout_digest"] == want["base"]["layout_digest"] == got["tuned"][0]["layout_digest"]
    assert (got["base"]["repo"], got["base"]["commit"]) == (BASE, base_commit)
    assert got["tuned"][0]["commit"] == tuned_commit and got["tuned"][0]["origin"] == "remote"
    assert all(len(s["sha256"]) == 64 for s in got["base"]["shards"])
    assert got["base"]["shards"] != got["tuned"][0]["shards"]  # the weights differ, and the identities say so
    assert want["base"]["repo"] is None and want["base"]["origin"] == "local"
    assert sum(got["timing"]["fetched_bytes"].values()) == hub.data_bytes


def test_diff_local_base_remote_tuned(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    hub.add(TUNED, tuned)
    res = run_cli("diff", base, TUNED, "--module", "attn", "--layers", "1-2", "--remote", "-o", tmp_path / "r",
                  "--no-plots", "-q", env=hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr
    local = run_cli("diff", base, tuned, "--module", "attn", "--layers", "1-2", "-o", tmp_path / "l", "--no-plots", "-q")
    assert local.returncode == 0
    assert comparable(json.loads((tmp_path / "r" / "report.json").read_text())) == \
        comparable(json.loads((tmp_path / "l" / "report.json").read_text()))
    attn = sum(module_bytes(tuned, f"layers.{i}.self_attn.{m}_proj.{p}") for i in (1, 2) for m in "qkvo"
               for p in ("weight", "bias"))
    assert attn <= hub.data_bytes <= (attn + header_bytes(tuned) + side_bytes(tuned)) * 1.01


def test_hub_id_not_cached_needs_remote(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    hub.add(TUNED, tuned)
    res = run_cli("diff", base, TUNED, "-o", tmp_path / "r", env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and "--remote" in res.stderr and hub.log == []


def test_cut_connection_resumes(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    hub.add(BASE, base)
    hub.add(TUNED, tuned)
    hub.faults.cut_after, hub.faults.cut_times = 100_000, 3
    res = run_cli("diff", BASE, TUNED, "--module", "mlp", "--remote", "-o", tmp_path / "r", "--no-plots", "-q",
                  env=hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr
    assert hub.faults.cut_times == 0  # three transfers were cut mid-range ...
    local = run_cli("diff", base, tuned, "--module", "mlp", "-o", tmp_path / "l", "--no-plots", "-q")
    assert comparable(json.loads((tmp_path / "r" / "report.json").read_text())) == \
        comparable(json.loads((tmp_path / "l" / "report.json").read_text()))  # ... and resumed, bit for bit
    ranges = [(r["path"], r["range"]) for r in hub.log if r["path"].startswith("/cdn/")]
    assert len(ranges) == len(set(ranges))  # a resumed request asks from where the cut stopped, not again


def test_server_ignoring_range_is_refused(hub: HubServer, tmp_path: Path) -> None:
    from weightsurgeon.synth import make_tuned

    base = make_checkpoint(tmp_path / "base", num_layers=2, hidden_size=1024, intermediate_size=2048, dtype="bf16",
                           num_heads=8, num_kv_heads=2, vocab_size=4096)  # one 44 MB file, no index
    tuned = make_tuned(base, tmp_path / "tuned")
    hub.add(BASE, base)
    hub.add(TUNED, tuned)
    size = (base / "model.safetensors").stat().st_size
    hub.faults.ignore_range = True
    res = run_cli("diff", BASE, TUNED, "--remote", "-o", tmp_path / "r", env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "ignored the Range request" in res.stderr and "model.safetensors" in res.stderr
    assert hub.data_bytes < size / 2  # refused at once: what the server sent is what sat in socket buffers
    assert not (tmp_path / "r").exists()


def test_missing_shard_during_diff_leaves_no_output(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    hub.add(BASE, base)
    hub.add(TUNED, tuned)
    last = sorted(p.name for p in tuned.glob("*.safetensors"))[-1]
    hub.faults.data_status = {last: 404}  # headers read fine; the tensor bytes are gone
    res = run_cli("diff", BASE, TUNED, "--remote", "-o", tmp_path / "r", env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{last} not found at commit" in errors[0]
    assert errors[0].endswith("(HTTP 404), though the file list names it; run again, or check HF_ENDPOINT")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("r")] == []  # no output, no temporary folder
    hub.faults.data_status = {last: 401}
    res = run_cli("diff", BASE, TUNED, "--remote", "-o", tmp_path / "r", env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and "access denied (HTTP 401)" in res.stderr and not (tmp_path / "r").exists()


def test_slow_server_times_out(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    hub.add(BASE, base)
    hub.add(TUNED, tuned)
    hub.faults.delay_s = 4.0
    res = run_cli("inspect", BASE, env=hub_env(hub, tmp_path, HF_HUB_DOWNLOAD_TIMEOUT="1"), timeout=90)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "timed out" in res.stderr and "giving up" in res.stderr


def test_schema_1_reports_still_load(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from weightsurgeon.report.model import DiffReport

    base, tuned = pair
    res = run_cli("diff", base, tuned, "--module", "norm", "-o", tmp_path / "r", "--no-plots", "-q")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    old = copy.deepcopy(data)
    old["schema"] = "weightsurgeon.diff/1"
    for side in [old["base"], *old["tuned"]]:
        side["digest"] = side.pop("layout_digest")
        for key in ("origin", "repo", "commit", "shards"):
            side.pop(key)
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert DiffReport.from_dict(old).base.layout_digest == data["base"]["layout_digest"]
    res = run_cli("plot", tmp_path / "old.json", "-o", tmp_path / "figs")
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------
# Surgery with --remote: the output takes only the bytes it needs from the Hub
# ---------------------------------------------------------------------------------------

DONOR = "org/tuned"


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def test_splice_local_base_remote_donor(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    commit = hub.add(DONOR, tuned)
    env = hub_env(hub, tmp_path)
    dry = run_cli("splice", base, DONOR, "--take", "o_proj", "--remote", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    o_proj = module_bytes(tuned, "o_proj.weight")
    reads = {r["input"]: r for r in json.loads(dry.stdout)["inputs"]}
    assert reads["donor"]["read_bytes"] == o_proj and reads["donor"]["origin"] == "remote"
    hub.reset()
    res = run_cli("splice", base, DONOR, "--take", "o_proj", "--remote", "-o", tmp_path / "merged", "-q", env=env)
    assert res.returncode == 0, res.stderr
    assert o_proj <= hub.data_bytes <= (o_proj + header_bytes(tuned) + side_bytes(tuned)) * 1.01
    local = run_cli("splice", base, tuned, "--take", "o_proj", "-o", tmp_path / "local", "-q")
    assert local.returncode == 0, local.stderr
    assert shard_bytes(tmp_path / "merged") == shard_bytes(tmp_path / "local")
    doc = json.loads((tmp_path / "merged" / "surgeon.json").read_text())
    donor = next(i for i in doc["inputs"] if i["role"] == "donor")
    assert (donor["repo"], donor["commit"], donor["origin"]) == (DONOR, commit, "remote")
    assert donor["path"] == f"hf://{DONOR}@{commit}" and all(len(s["sha256"]) == 64 for s in donor["shards"])
    assert next(i for i in doc["inputs"] if i["role"] == "base")["repo"] is None


def test_zero_remote_base_streams_unchanged_tensors(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base, _ = pair
    hub.add(BASE, base)
    res = run_cli("zero", BASE, "--module", "o_proj", "--layers", "1-2", "--remote", "-o", tmp_path / "z", "-q",
                  env=hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr
    local = run_cli("zero", base, "--module", "o_proj", "--layers", "1-2", "-o", tmp_path / "l", "-q")
    assert local.returncode == 0
    assert shard_bytes(tmp_path / "z") == shard_bytes(tmp_path / "l")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "z" / name).read_bytes() == (base / name).read_bytes(), name
    AutoTokenizer.from_pretrained(tmp_path / "z")
    zeroed = sum(module_bytes(base, f"layers.{i}.self_attn.o_proj.weight") for i in (1, 2))
    assert hub.data_bytes <= sum(p.stat().st_size for p in base.iterdir()) - zeroed + 4096


def test_extract_remote_fetches_only_the_plugin(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, tuned = pair
    hub.add(DONOR, tuned)
    res = run_cli("extract", DONOR, "--take", "o_proj", "--remote", "-o", tmp_path / "plugin", "-q",
                  env=hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr
    o_proj = module_bytes(tuned, "o_proj.weight")
    assert o_proj <= hub.data_bytes <= (o_proj + header_bytes(tuned) + side_bytes(tuned)) * 1.01
    with open_checkpoint(tmp_path / "plugin") as plugin, open_checkpoint(tuned) as src:
        assert plugin.is_partial and set(plugin.tensors) == {t.name for t in src if t.name.endswith("o_proj.weight")}
        for name in plugin.tensors:
            assert (plugin.read_tensor(name) == src.read_tensor(name)).all()


def test_failed_remote_surgery_leaves_nothing(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    hub.add(DONOR, tuned)
    last = sorted(p.name for p in tuned.glob("*.safetensors"))[-1]
    hub.faults.data_status = {last: 404}
    before = shard_bytes(base)
    res = run_cli("splice", base, DONOR, "--take", "mlp", "--remote", "-o", tmp_path / "m", env=hub_env(hub, tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr and f"{last} not found at commit" in res.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("m", ".m"))] == []
    assert shard_bytes(base) == before


def test_lent_pieces_cut_anywhere_give_the_local_numbers(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel computes on the fetch buffers in place. Pieces of an odd size (element boundaries
    inside them: those bytes are read into the diff's own buffers instead) and a tuned model laid
    out otherwise (one file, so its pieces start elsewhere than the base's) still give the
    local numbers, and no byte is fetched twice."""
    import numpy as np
    from huggingface_hub import constants
    from safetensors.torch import load_file, save_file

    from weightsurgeon import remote
    from weightsurgeon.diff import diff_checkpoints

    base, tuned = pair
    single = tmp_path / "single"
    single.mkdir()
    tensors = {}
    for f in sorted(tuned.glob("*.safetensors")):
        tensors.update(load_file(f))
    save_file(tensors, single / "model.safetensors", metadata={"format": "pt", "note": "x" * 13})
    (single / "config.json").write_bytes((tuned / "config.json").read_bytes())
    hub.add(BASE, base)
    hub.add(TUNED, single)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(remote, "PIECE_BYTES", 50_001)
    monkeypatch.setattr(remote, "WINDOW_BYTES", 4 * 50_001)
    lent = []
    real_lend = remote.Prefetch.lend
    monkeypatch.setattr(remote.Prefetch, "lend", lambda self, f, pos, n: lent.append(n) or real_lend(self, f, pos, n))
    with open_checkpoint(BASE, remote=True) as b, open_checkpoint(TUNED, remote=True) as t:
        hub.reset()
        got = diff_checkpoints(b, [t])
    data_bytes = sum(info.nbytes for c in (base, single) for info in open_checkpoint(c))
    assert data_bytes <= hub.data_bytes <= data_bytes * 1.01  # nothing fetched twice
    # odd pieces put every other piece off the element grid: those bytes are read, the rest lent
    assert data_bytes / 5 < sum(lent) < data_bytes
    want = diff_checkpoints(base, [single])
    rows = {r.name: r.stats for r in want.tensors}
    assert len(rows) == len(got.tensors) > 20
    for r in got.tensors:
        a, w = r.stats, rows[r.name]
        assert (a.n, a.n_nonfinite, a.n_base_zero, a.max_abs_delta) == (w.n, w.n_nonfinite, w.n_base_zero, w.max_abs_delta)
        assert np.array_equal(a.hist, w.hist), r.name
        for key in ("sum_sq_delta", "sum_sq_a", "sum_sq_b", "dot_ab", "sum_delta"):
            assert getattr(a, key) == pytest.approx(getattr(w, key), rel=1e-12, abs=1e-300), (r.name, key)


def proxy_env(hub: HubServer, tmp_path: Path, **proxy: str) -> dict[str, str]:
    """hub_env with only the given proxy variables (the machine's own, either case, removed)."""
    env = hub_env(hub, tmp_path)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        env.pop(name, None)
        env.pop(name.upper(), None)
    env.update(proxy)
    return env


def test_proxy_from_the_environment_carries_every_request(hub: HubServer, pair: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """HTTP_PROXY (as huggingface_hub's own client honours it) carries the file list and every
    ranged read, the CDN's included; with NO_PROXY naming the hosts, nothing goes through it."""
    base, tuned = pair
    hub.add(BASE, base)
    hub.add(TUNED, tuned)
    local = run_cli("diff", base, tuned, "--module", "o_proj", "-o", tmp_path / "local", "--no-plots", "-q")
    assert local.returncode == 0, local.stderr
    with ForwardProxy(lifetime=240) as proxy:
        env = proxy_env(hub, tmp_path, HTTP_PROXY=f"http://user:pw@{proxy.url[len('http://'):]}")
        res = run_cli("diff", BASE, TUNED, "--module", "o_proj", "--remote", "-o", tmp_path / "remote", "--no-plots",
                      "-q", env=env)
        assert res.returncode == 0, res.stderr
        got = json.loads((tmp_path / "remote" / "report.json").read_text())
        assert comparable(got) == comparable(json.loads((tmp_path / "local" / "report.json").read_text()))
        via = [r["url"] for r in proxy.log]
        assert len(via) == len(hub.log) and any("/api/models/" in u for u in via)
        ranged = [r for r in proxy.log if "/cdn/" in r["url"]]
        assert ranged and all(r["range"] for r in ranged) and any("localhost" in r["url"] for r in ranged)
        assert all(r["proxy_authorization"] == "Basic dXNlcjpwdw==" for r in ranged)  # user:pw
        assert proxy.sent >= hub.data_bytes >= 2 * module_bytes(base, "o_proj.weight")

        proxy.log.clear()
        env.update(NO_PROXY="127.0.0.1,localhost")
        res = run_cli("diff", BASE, TUNED, "--module", "o_proj", "--remote", "-o", tmp_path / "direct", "--no-plots",
                      "-q", env=env)
        assert res.returncode == 0, res.stderr
        assert proxy.log == []
    env = proxy_env(hub, tmp_path, HTTP_PROXY="socks5://127.0.0.1:1")
    res = run_cli("diff", BASE, TUNED, "--module", "o_proj", "--remote", "-o", tmp_path / "socks", env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr and not (tmp_path / "socks").exists()


def test_verify_of_a_remote_surgery_fetches_nothing_again(hub: HubServer, pair: tuple[Path, Path], tmp_path: Path) -> None:
    """--verify compares what came from the Hub with the sha256 of the bytes as they were fetched
    and written (and says so): the bytes fetched are those of the run without --verify."""
    base, tuned = pair
    hub.add(BASE, base)
    hub.add(DONOR, tuned)
    env = hub_env(hub, tmp_path)
    every = module_bytes(base, "")
    hub.reset()
    res = run_cli("zero", BASE, "--module", "o_proj", "--layers", "1-2", "--remote", "--verify", "-o", tmp_path / "z",
                  env=env)
    assert res.returncode == 0, res.stderr
    zeroed = sum(module_bytes(base, f"layers.{i}.self_attn.o_proj.weight") for i in (1, 2))
    assert every - zeroed <= hub.data_bytes <= sum(p.stat().st_size for p in base.iterdir()) - zeroed + 4096
    assert "verified byte for byte" in res.stdout and "without fetching them again" in res.stdout
    local = run_cli("zero", base, "--module", "o_proj", "--layers", "1-2", "-o", tmp_path / "zl", "-q")
    assert local.returncode == 0 and shard_bytes(tmp_path / "z") == shard_bytes(tmp_path / "zl")

    o_proj = module_bytes(tuned, "o_proj.weight")
    hub.reset()
    res = run_cli("splice", base, DONOR, "--take", "o_proj", "--alpha", "0.5", "--remote", "--verify", "--json",
                  "-o", tmp_path / "m", env=env)
    assert res.returncode == 0, res.stderr
    assert o_proj <= hub.data_bytes <= (o_proj + header_bytes(tuned) + side_bytes(tuned)) * 1.01
    result = json.loads(res.stdout)["result"]
    assert result["verified"] and result["verified_against_fetched_bytes"] == module_bytes(base, "o_proj.weight")
    local = run_cli("splice", base, tuned, "--take", "o_proj", "--alpha", "0.5", "--verify", "-o", tmp_path / "ml", "-q")
    assert local.returncode == 0 and shard_bytes(tmp_path / "m") == shard_bytes(tmp_path / "ml")


def test_extract_lora_remote_fetches_only_the_taken_modules(hub: HubServer, pair: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    """extract --lora with both models on the Hub fetches only their o_proj weights (and headers),
    and writes the adapter the local files give, byte for byte."""
    base, tuned = pair
    hub.add(BASE, base)
    hub.add(DONOR, tuned)
    env = hub_env(hub, tmp_path)
    dry = run_cli("extract", DONOR, "--base", BASE, "--take", "o_proj", "--lora", "16", "--remote", "--dry-run",
                  "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    o_proj = module_bytes(tuned, "o_proj.weight")
    reads = {r["input"]: r for r in json.loads(dry.stdout)["inputs"]}
    assert reads["donor"]["read_bytes"] == reads["base"]["read_bytes"] == o_proj
    hub.reset()
    res = run_cli("extract", DONOR, "--base", BASE, "--take", "o_proj", "--lora", "16", "--remote", "-o",
                  tmp_path / "adapter", "-q", env=env)
    assert res.returncode == 0, res.stderr
    budget = 2 * o_proj + header_bytes(base) + header_bytes(tuned) + side_bytes(base) + side_bytes(tuned)
    assert 2 * o_proj <= hub.data_bytes <= budget * 1.01, (hub.data_bytes, budget)
    local = run_cli("extract", tuned, "--base", base, "--take", "o_proj", "--lora", "16", "-o", tmp_path / "local", "-q")
    assert local.returncode == 0, local.stderr
    name = "adapter_model.safetensors"
    assert (tmp_path / "adapter" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["base_model_name_or_path"] == BASE
