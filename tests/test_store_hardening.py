"""Store and pull hardening (issue 9, items 13-21, 24): each test runs the real CLI on real files.

Conversions use tiny random-weight BERT folders (tests/hf_models.py); nothing
touches the network but the local Hub server (tests/hf_server.py).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import gpux
import hf_models
from conftest import gpux as cli
from gpux.store.blobs import CorruptBlobError
from gpux.store.local import Store

MLP_IN = '{"x": [[1, 2, 3, 4]]}'
TEXT_IN = json.dumps({"inputs": "a fine day"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT classifier folder; tests copy it before changing anything."""
    return hf_models.tiny(tmp_path_factory.mktemp("tiny") / "bert-cls", "bert")


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    return dst


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_hub(tmp: Path) -> dict[str, str]:
    """Point the client at a closed port: any Hub call fails, and HF_HUB_OFFLINE stays unset."""
    return {"HF_ENDPOINT": f"http://127.0.0.1:{_dead_port()}", "HF_HOME": str(tmp / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": ""}


def _build(root: Path, name: str, model_dir: Path) -> Path:
    proj = root / name.replace("/", "--")
    proj.mkdir(parents=True)
    shutil.copy(model_dir / "mlp.onnx", proj / "mlp.onnx")
    (proj / "gpux.yml").write_text(f"name: {name}\nmodel: {{source: mlp.onnx}}\n")
    res = cli("build", str(proj))
    assert res.returncode == 0, res.stderr
    return proj


def _blob(store: Store, ref: str, file: str) -> Path:
    return store.blobs.path(store.manifest(ref).files[file]["sha256"])


def _rot(blob: Path) -> None:
    """Flip the last bytes in place, then put size and mtime back: what bit rot or a careless copy leaves."""
    st = blob.stat()
    blob.chmod(0o644)
    data = blob.read_bytes()
    with open(blob, "r+b") as fh:
        fh.seek(len(data) - 8)
        fh.write(bytes(255 - b for b in data[-8:]))
    blob.chmod(0o444)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert blob.stat().st_size == st.st_size and blob.stat().st_mtime_ns == st.st_mtime_ns


def _restamp(store: Store, ref: str) -> None:
    """Make the manifest vouch for the blobs as they are now: rot no stat can see (ctime included)."""
    m = store.manifest(ref)
    path = store.manifest_path(m.name, m.tag)
    data = json.loads(path.read_text())
    for entry in data["files"].values():
        st = store.blobs.path(entry["sha256"]).stat()
        entry["verified"] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, int(time.time())]
    path.write_text(json.dumps(data))


# -- 19: pull of things that are not models ------------------------------------------------------------------


def test_pull_of_a_path_or_file_says_what_it_is(tmp_path: Path, model_dir: Path, gpux_home: Path) -> None:
    env = _no_hub(tmp_path)
    (tmp_path / "weights.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    cases = [
        (["./typo-folder"], 3, "no such file or folder: ./typo-folder"),
        (["missing/deeper/folder"], 3, "no such file or folder"),
        (["model.onnx"], 3, "no such file or folder: model.onnx"),
        ([str(model_dir / "mlp.onnx")], 2, "gpux run FILE"),
        ([str(tmp_path / "weights.gguf")], 8, "is truncated or damaged"),  # GGUF magic, then nothing
        (["../../etc/passwd"], None, ""),
        (["My Model!"], 2, "neither a folder nor a Hugging Face id"),
    ]
    for args, code, words in cases:
        res = cli("pull", *args, env=env, cwd=tmp_path)
        assert res.returncode in ((2, 3) if code is None else (code,)), (args, res.stderr)
        assert words in res.stderr, (args, res.stderr)
        for wrong in ("internal error", "cannot reach the Hub", "Traceback"):
            assert wrong not in res.stderr, (args, res.stderr)
    assert not (gpux_home / "manifests").exists()  # nothing was converted or stored


# -- 17: folder names the store cannot hold ------------------------------------------------------------------


def test_odd_folder_names_are_sanitised_before_any_work(tiny: Path, tmp_path: Path, gpux_home: Path) -> None:
    folder = _copy(tiny, tmp_path / "weird" / "My Model!")
    res = cli("pull", str(folder))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "my-model:text-classification"
    listed = json.loads(cli("ls", "--json").stdout)["models"]
    assert [(r["name"], "error" in r) for r in listed] == [("my-model", False)]
    assert cli("run", str(folder), "-i", TEXT_IN).returncode == 0
    assert cli("prune").returncode == 0
    res = cli("rm", "my-model")
    assert res.returncode == 0 and "removed my-model:text-classification" in res.stdout
    from gpux.registry.local import sanitize

    assert [sanitize(n) for n in (".hidden", "a:b", "My Model!", "___", "Über Ñame")] == [
        "hidden", "a-b", "my-model", "model", "ber-ame"]


def test_a_manifest_under_an_invalid_name_does_not_break_ls_rm_prune(tmp_path: Path, model_dir: Path,
                                                                      gpux_home: Path) -> None:
    _build(tmp_path, "good", model_dir)
    store = Store()
    bad = gpux_home / "manifests" / "weird" / "My Model!" / "x.json"  # what an older gpux left behind
    bad.parent.mkdir(parents=True)
    bad.write_text(store.manifest_path("good", "latest").read_text())
    assert cli("rm", "good").returncode == 0
    assert store.blobs.all()  # still named by the invalid manifest: prune keeps it
    assert cli("prune").returncode == 0 and store.blobs.all()
    assert json.loads(cli("ls", "--json").stdout)["models"] == []


# -- 13: corruption that keeps size and mtime -------------------------------------------------------------


def test_in_place_overwrite_that_restores_mtime_is_caught(tmp_path: Path, model_dir: Path) -> None:
    _build(tmp_path, "rot", model_dir)
    gpux.load("rot")  # verified and stamped
    store = Store()
    blob = _blob(store, "rot", "mlp.onnx")
    _rot(blob)
    with pytest.raises(CorruptBlobError):
        gpux.load("rot")
    assert not blob.exists()


def test_a_stale_stamp_is_hashed_again(tmp_path: Path, model_dir: Path) -> None:
    _build(tmp_path, "old", model_dir)
    store = Store()
    gpux.load("old")
    _rot(_blob(store, "old", "mlp.onnx"))
    _restamp(store, "old")  # no stat shows it
    res = cli("run", "old", "-i", MLP_IN, env={"GPUX_VERIFY_EVERY_S": "0"})  # the periodic re-hash is due
    assert res.returncode == 6 and "does not match its content" in res.stderr, res.stderr


def test_pull_hash_verifies_and_verify_repairs(tiny: Path, tmp_path: Path, model_dir: Path) -> None:
    folder = _copy(tiny, tmp_path / "src" / "bert-cls")
    assert cli("pull", str(folder)).returncode == 0
    _build(tmp_path, "built", model_dir)
    store = Store()
    ref = "bert-cls:text-classification"
    good = _blob(store, ref, "model.onnx").read_bytes()

    for restamp in (False, True):  # size and mtime kept; then also a stamp that vouches for the bad bytes
        _rot(_blob(store, ref, "model.onnx"))
        if restamp:
            _restamp(store, ref)
        res = cli("pull", str(folder))
        assert res.returncode == 0 and "up to date" not in res.stderr and "pulled" in res.stderr, res.stderr
        assert _blob(store, ref, "model.onnx").read_bytes() == good  # converted again, byte for byte

    res = cli("verify")
    assert res.returncode == 0 and f"{ref}: ok" in res.stdout and "built:latest: ok" in res.stdout, res.stdout
    for r in (ref, "built"):
        _rot(_blob(store, r, "model.onnx" if r == ref else "mlp.onnx"))  # noqa: B023
        _restamp(store, r)
    res = cli("verify")
    assert res.returncode == 6, res.stderr
    assert f"{ref}: repaired" in res.stdout and "built:latest: broken" in res.stdout, res.stdout
    assert "gpux build" in res.stdout
    assert _blob(store, ref, "model.onnx").read_bytes() == good
    res = cli("verify", ref)
    assert res.returncode == 0 and res.stdout.strip() == f"{ref}: ok"


# -- 14: a deleted blob is repaired by run and by the server ---------------------------------------------------


@pytest.fixture
def deleted_blob(tiny: Path, tmp_path: Path) -> tuple[Store, Path]:
    """bert-cls pulled from a local folder, then its graph's blob deleted: (store, that blob's path)."""
    folder = _copy(tiny, tmp_path / "src" / "bert-cls")
    assert cli("pull", str(folder)).returncode == 0
    store = Store()
    blob = _blob(store, "bert-cls:text-classification", "model.onnx")
    blob.unlink()
    return store, blob


def test_run_repairs_a_deleted_blob(deleted_blob: tuple[Store, Path]) -> None:
    _, blob = deleted_blob
    res = cli("run", "bert-cls", "-i", TEXT_IN)
    assert res.returncode == 0 and "missing" in res.stderr and "pulling it again" in res.stderr, res.stderr
    assert blob.is_file()


def test_server_repairs_a_deleted_blob_or_answers_without_paths(deleted_blob: tuple[Store, Path], tmp_path: Path,
                                                               gpux_home: Path) -> None:
    from gpux.serve.app import ServeSettings, create_app
    from gpux.serve.manager import ModelManager
    from serve_helpers import LiveServer

    store, blob = deleted_blob
    with LiveServer(create_app(ModelManager(store=store), ServeSettings())) as srv:
        r = httpx.post(f"{srv.url}/predict/bert-cls", json={"inputs": "hello"}, timeout=300)
        assert r.status_code == 200, r.text
        assert blob.is_file()
    blob.unlink()
    shutil.rmtree(tmp_path / "src" / "bert-cls")  # the source is gone: nothing can repair it
    with LiveServer(create_app(ModelManager(store=store), ServeSettings())) as srv:
        r = httpx.post(f"{srv.url}/predict/bert-cls", json={"inputs": "hello"}, timeout=300)
        assert r.status_code in (500, 503), r.text
        body = json.dumps(r.json())
        assert "missing" in body and "could not be repaired" in body, body
        assert str(gpux_home) not in body and str(tmp_path) not in body, body


# -- 15: scratch leftovers -------------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_prune_reclaims_dead_and_old_scratch_only(gpux_home: Path) -> None:
    tmp = gpux_home / "tmp"
    dead = _dead_pid()
    paths = {
        "dead-convert": tmp / f"convert-{dead}-abc", "dead-profile": tmp / f"profile-{dead}-x",
        "live-convert": tmp / f"convert-{os.getpid()}-def", "old-unnamed": tmp / "convert-xyz",
        "new-unnamed": tmp / "bundle-new", "dead-blob": tmp / f"blob-{dead}-1",
    }
    for key, p in paths.items():
        if "blob" in key:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * 1000)
        else:
            p.mkdir(parents=True)
            (p / "model.onnx").write_bytes(b"x" * 1_000_000)
    old = time.time() - 3600
    os.utime(paths["old-unnamed"], (old, old))
    res = cli("prune")
    assert res.returncode == 0 and "freed 3.0 MB" in res.stderr, res.stderr
    left = {k for k, p in paths.items() if p.exists()}
    assert left == {"live-convert", "new-unnamed"}


def test_a_killed_conversion_leaves_scratch_that_prune_reclaims(tiny: Path, gpux_home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gpux", "pull", str(tiny)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tmp, deadline = gpux_home / "tmp", time.monotonic() + 120
    while not (tmp.is_dir() and list(tmp.glob("convert-*"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the pull ended before converting"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp.glob("convert-*"))
    assert left and all(p.name.startswith(f"convert-{proc.pid}-") for p in left)  # named by the dead writer
    assert cli("prune").returncode == 0
    assert list(tmp.glob("convert-*")) == []


def test_run_leaves_no_profile_folder(tmp_path: Path, model_dir: Path, gpux_home: Path) -> None:
    _build(tmp_path, "prof", model_dir)
    assert cli("run", "prof", "-i", MLP_IN).returncode == 0
    res = cli("run", "prof", "-i", '{"x": [[1, 2, 3]]}')  # the wrong shape: fails after the session is made
    assert res.returncode == 2, res.stderr
    res = cli("run", "prof", "-i", '{"x": [["a", 2, 3, 4]]}')
    assert res.returncode == 2, res.stderr
    assert [p.name for p in (gpux_home / "tmp").iterdir()] == []


# -- 18: local folders are keyed by path and content ------------------------------------------------------------


def test_same_basename_and_resaved_weights(tiny: Path, tmp_path: Path) -> None:
    first = _copy(tiny, tmp_path / "models" / "bert-cls")
    second = hf_models.tiny(tmp_path / "other" / "bert-cls", "bert", seed=1)
    a = cli("pull", str(first))
    b = cli("pull", str(second))
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    name_a, name_b = a.stdout.split(":")[0], b.stdout.split(":")[0]
    assert name_a == "bert-cls" and name_b.startswith("bert-cls-") and "taken by another folder" in b.stderr
    store = Store()
    assert store.manifest(name_a).source["path"] == str(first.resolve())
    assert store.manifest(name_b).source["path"] == str(second.resolve())
    again = cli("pull", str(second))  # the same folder keeps its name
    assert again.stdout == b.stdout and "up to date" in again.stderr

    old_digest = store.manifest(name_a).files["model.onnx"]["sha256"]
    os.utime(first / "model.safetensors")  # touched, same bytes: hashed, still up to date
    res = cli("pull", str(first))
    assert res.returncode == 0 and "up to date" in res.stderr, res.stderr
    hf_models.tiny(first, "bert", seed=2)  # new weights saved into the folder
    res = cli("pull", str(first))
    assert res.returncode == 0 and "pulled" in res.stderr and res.stdout == a.stdout, res.stderr
    assert store.manifest(name_a).files["model.onnx"]["sha256"] != old_digest
    hf_models.tiny(first, "bert", seed=3)
    res = cli("run", str(first), "-i", TEXT_IN)  # run converts the changed folder too
    assert res.returncode == 0 and "pulling it" in res.stderr, res.stderr


# -- 24: short names and near misses ---------------------------------------------------------------------------


def test_short_names_resolve_and_typos_get_suggestions(tmp_path: Path, model_dir: Path) -> None:
    proj = _build(tmp_path, "tiny-mlp", model_dir)
    store = Store()
    # gpux.yml names have no org: store it under one, as a pull would (org/name), by publishing its manifest so.
    m = store.manifest("tiny-mlp")
    m.name = "acme/tiny-mlp"
    store.publish(m, {n: store.blobs.path(e["sha256"]) for n, e in m.files.items()})
    assert cli("rm", "tiny-mlp").returncode == 0 and proj.is_dir()

    res = cli("run", "tiny-mlp", "-i", MLP_IN)
    assert res.returncode == 0 and json.loads(res.stdout)["model"] == "acme/tiny-mlp", res.stderr
    assert cli("inspect", "tiny-mlp").returncode == 0
    res = cli("run", "tiny-mpl", "-i", MLP_IN)
    assert res.returncode == 3 and "did you mean acme/tiny-mlp" in res.stderr, res.stderr
    res = cli("pull", "acme/tiny-mpl", env=_no_hub(tmp_path))
    assert res.returncode == 8 and "did you mean acme/tiny-mlp" in res.stderr, res.stderr
    assert "HF_HUB_OFFLINE" not in res.stderr  # it is not set: do not tell the user to unset it
    m.name = "other/tiny-mlp"
    store.publish(m, {n: store.blobs.path(e["sha256"]) for n, e in m.files.items()})
    res = cli("run", "tiny-mlp", "-i", MLP_IN)
    assert res.returncode == 2 and "ambiguous" in res.stderr and "other/tiny-mlp" in res.stderr, res.stderr


# -- 20: a full disk during conversion ---------------------------------------------------------------------------


def _fsize_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_disk_full_during_conversion_says_so(tiny: Path, gpux_home: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpux", "pull", str(tiny)], capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: _fsize_limit(1 << 20))  # writes past 1 MiB fail: EFBIG
    assert proc.returncode == 6, proc.stderr
    assert "no space to write" in proc.stderr and str(gpux_home) in proc.stderr and "MB free" in proc.stderr
    assert "no exporter" not in proc.stderr
    assert Store().names() == [] and [p.name for p in (gpux_home / "tmp").iterdir()] == []


# -- 21: remote code and refused pickle -----------------------------------------------------------------------


def test_remote_code_and_refused_pickle_are_clear_errors(tiny: Path, tmp_path: Path) -> None:
    custom = _copy(tiny, tmp_path / "custom")
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="acme-bert", auto_map={"AutoModel": "modeling_acme.AcmeModel"})
    (custom / "config.json").write_text(json.dumps(cfg))
    res = cli("pull", str(custom))
    assert res.returncode == 7 and "own Python code" in res.stderr and "trust_remote_code" in res.stderr, res.stderr

    import argparse

    import torch
    from safetensors.torch import load_file

    pickled = _copy(tiny, tmp_path / "pickled")
    state = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save({**state, "extra": argparse.Namespace(note="not a tensor")}, pickled / "pytorch_model.bin")
    res = cli("pull", str(pickled), "--allow-pickle")
    assert res.returncode == 7 and "weights_only" in res.stderr and "safetensors" in res.stderr, res.stderr
    assert "internal error" not in res.stderr


# -- 16: a killed download resumes -------------------------------------------------------------------------------


def test_a_killed_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    from hf_server import HubServer

    repo_dir = hf_models.tiny(tmp_path / "hub" / "main", "bert")
    size = (repo_dir / "model.safetensors").stat().st_size
    cut = 3 << 19  # 1.5 MiB: the client writes whole 1 MiB pieces, so 1 MiB is on disk when it is cut
    env = {**_no_hub(tmp_path), "HF_HUB_DOWNLOAD_TIMEOUT": "30"}
    with HubServer({"acme/resumable": repo_dir}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        hub.fail_after_bytes["model.safetensors"] = [cut] * 20  # every GET is cut, then the client sleeps 1 s
        proc = subprocess.Popen([sys.executable, "-m", "gpux", "pull", "acme/resumable"], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        blobs = Path(env["HF_HOME"]) / "hub" / "models--acme--resumable" / "blobs"
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size >= 1 << 20 for p in blobs.glob("*.incomplete")) if blobs.is_dir() else True:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # killed while the client waits to retry: the partial file stays
        proc.wait()
        hub.fail_after_bytes.clear()
        have = max(p.stat().st_size for p in blobs.glob("*.incomplete"))
        assert 0 < have < size
        before = len(hub.requests)
        res = cli("pull", "acme/resumable", env=env)
        assert res.returncode == 0, res.stderr
        gets = [h.get("range") for m, p, h in hub.requests[before:] if m == "GET" and p.endswith("model.safetensors")]
    assert gets == [f"bytes={have}-"], gets  # only the rest was asked for, once
    assert list(blobs.glob("*.incomplete")) == []
