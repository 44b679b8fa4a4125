"""Pulling through the real huggingface_hub client from a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import hf_models
from conftest import gpux as cli
from gpux.errors import ModelNotFoundError, RegistryError
from gpux.store.local import Store
from hf_server import HubServer

REPO = "acme/tiny-bert"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("hub")
    main = hf_models.tiny(root / "main", "bert")
    hf_models.set_architectures(main, ["BertForSequenceClassification"])
    (main / "pytorch_model.bin").write_bytes(b"pickle that must never be fetched")
    v2 = hf_models.tiny(root / "v2", "bert", seed=1)
    hf_models.set_architectures(v2, ["BertForSequenceClassification"])
    gated = hf_models.tiny(root / "gated", "bert")
    with HubServer({REPO: {"main": main, "v2": v2}, "acme/gated": gated, "acme/other": v2},
                   gated=("acme/gated",)) as server:
        yield server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, hub: HubServer) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hub-client")
    return {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(d / "hf"), "GPUX_HOME": str(d / "gpux"),
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def _manifest(env: dict[str, str], name: str, tag: str) -> dict:
    return json.loads(Store(Path(env["GPUX_HOME"])).manifest_path(name, tag).read_text())


def test_pull_pins_the_commit_and_fetches_only_needed_files(hub: HubServer, env: dict[str, str]) -> None:
    res = cli("pull", REPO, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{REPO}:text-classification"
    source = _manifest(env, REPO, "text-classification")["source"]
    assert source == {"kind": "hf", "repo": REPO, "revision": "main", "sha": hub.sha(REPO)}
    fetched = {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests
               if m == "GET" and ("/resolve/" in p or "/_cdn/" in p)}
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= fetched
    assert "pytorch_model.bin" not in fetched  # never pickle without --allow-pickle
    # The files landed in HF_HOME's hub cache, under the pinned commit.
    snap = Path(env["HF_HOME"]) / "hub" / "models--acme--tiny-bert" / "snapshots" / hub.sha(REPO)
    assert (snap / "model.safetensors").is_file()

    run = cli("run", REPO, "-i", json.dumps({"inputs": ["hello there"]}), env=env)
    assert run.returncode == 0, run.stderr
    assert {p["label"] for p in json.loads(run.stdout)["predictions"][0]} == set(hf_models.LABELS.values())


def test_revision_is_resolved_and_pinned(hub: HubServer, env: dict[str, str]) -> None:
    res = cli("pull", f"{REPO}@v2", "--force", env=env)
    assert res.returncode == 0, res.stderr
    source = _manifest(env, REPO, "text-classification")["source"]
    assert source["revision"] == "v2" and source["sha"] == hub.sha(REPO, "v2") != hub.sha(REPO)


def test_offline_reuses_the_cache_and_fails_clearly_without_it(hub: HubServer, env: dict[str, str]) -> None:
    assert cli("pull", REPO, env=env).returncode == 0
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    res = cli("pull", REPO, env=offline)
    assert res.returncode == 0 and "is up to date" in res.stderr
    res = cli("pull", "acme/other", env=offline)
    assert res.returncode == 8 and "not in the local cache" in res.stderr


@pytest.mark.parametrize("ref, code, words", [
    ("acme/nope", 3, "no model 'acme/nope' on the Hub"),
    (f"{REPO}@no-such-branch", 3, "has no revision 'no-such-branch'"),
    ("acme/gated", 8, "is gated"),
])
def test_hub_errors(env: dict[str, str], ref: str, code: int, words: str) -> None:
    res = cli("pull", ref, env=env)
    assert res.returncode == code and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


@pytest.fixture
def client(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the in-process client at the server (it reads HF_ENDPOINT at import time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # so a cut mid-file can resume
    return tmp_path / "cache"


def test_interrupted_download_resumes_with_a_range_request(hub: HubServer, client: Path) -> None:
    from gpux.registry import hub as registry_hub

    hub.fail_after_bytes["model.safetensors"] = [16 * 64 * 1024]
    before = len(hub.requests)
    located = registry_hub.fetch(REPO)
    ranges = [h.get("range") for m, p, h in hub.requests[before:] if m == "GET" and "model.safetensors" in p]
    assert f"bytes={16 * 64 * 1024}-" in ranges
    data = (located.folder / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == located.folder.joinpath("model.safetensors").resolve().name


def test_corrupted_cache_blob_is_detected_and_fetched_again(hub: HubServer, client: Path) -> None:
    from gpux.registry import hub as registry_hub

    located = registry_hub.fetch(REPO)
    blob = (located.folder / "model.safetensors").resolve()
    good = blob.read_bytes()
    blob.write_bytes(good[:-10] + b"0123456789")  # bit rot in the cache
    again = registry_hub.fetch(REPO)
    assert (again.folder / "model.safetensors").read_bytes() == good


def test_a_mirror_serving_bad_bytes_is_refused(hub: HubServer, client: Path) -> None:
    from gpux.registry import hub as registry_hub

    hub.corrupt["model.safetensors"] = True
    try:
        with pytest.raises(RegistryError, match="arrived corrupted twice"):
            registry_hub.fetch(REPO)
    finally:
        hub.corrupt.pop("model.safetensors")
    assert not list(client.rglob("model.safetensors"))  # no bad copy left behind


def test_unknown_repo_in_process(client: Path) -> None:
    from gpux.registry import hub as registry_hub

    with pytest.raises(ModelNotFoundError, match="on the Hub"):
        registry_hub.fetch("acme/missing")


def test_run_with_a_revision_uses_or_pulls_that_revision(hub: HubServer, env: dict[str, str]) -> None:
    assert cli("pull", REPO, env=env).returncode == 0
    res = cli("run", f"{REPO}@main", "-i", json.dumps({"inputs": "x"}), env=env)
    assert res.returncode == 0 and "pulling" not in res.stderr, res.stderr
    res = cli("run", f"{REPO}@{hub.sha(REPO, 'v2')}", "-i", json.dumps({"inputs": "x"}), env=env)
    assert res.returncode == 0 and "pulling" in res.stderr, res.stderr
    assert _manifest(env, REPO, "text-classification")["source"]["sha"] == hub.sha(REPO, "v2")


def test_network_down_uses_the_cached_copy(hub: HubServer, env: dict[str, str]) -> None:
    assert cli("pull", REPO, env=env).returncode == 0
    hub.stop()
    try:
        res = cli("pull", REPO, env=env)
        assert res.returncode == 0 and "is up to date" in res.stderr, res.stderr
        res = cli("run", REPO, "-i", json.dumps({"inputs": "offline"}), env=env)
        assert res.returncode == 0, res.stderr
    finally:
        hub.start()
