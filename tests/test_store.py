"""The content-addressed store: verification on read, dedup, rm/prune, stats, concurrent writers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpux
import models
from conftest import gpux as cli
from gpux.store.blobs import CorruptBlobError
from gpux.store.local import Store


def _project(root: Path, name: str, model_dir: Path) -> Path:
    proj = root / name
    proj.mkdir(parents=True)
    shutil.copy(model_dir / "mlp.onnx", proj / "mlp.onnx")
    (proj / "gpux.yml").write_text(f"name: {name}\nmodel: {{source: mlp.onnx}}\n")
    return proj


def _blob_of(store: Store, ref: str) -> Path:
    entry = store.manifest(ref).files["mlp.onnx"]
    return store.blobs.path(entry["sha256"])


def test_layout_and_dedup(tmp_path: Path, model_dir: Path, gpux_home: Path) -> None:
    for name in ("one", "two"):
        assert cli("build", str(_project(tmp_path, name, model_dir))).returncode == 0
    store = Store()
    assert store.names() == [("one", "latest"), ("two", "latest")]
    assert len(store.blobs.all()) == 1  # the same graph is stored once
    blob = _blob_of(store, "one")
    assert blob.name == "sha256-" + store.manifest("one").files["mlp.onnx"]["sha256"]
    bundle = gpux.load("one").bundle.root
    assert (bundle / "mlp.onnx").stat().st_ino == blob.stat().st_ino  # a hard link, not a copy


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_blob_is_detected_deleted_and_never_served(tmp_path: Path, model_dir: Path, damage: str) -> None:
    assert cli("build", str(_project(tmp_path, "dmg", model_dir))).returncode == 0
    store = Store()
    blob = _blob_of(store, "dmg")
    data = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(data[:-7] if damage == "truncate" else data[:-7] + bytes(7))
    with pytest.raises(CorruptBlobError):
        gpux.load("dmg")
    assert not blob.exists()
    res = cli("run", "dmg", "-i", '{"x": [[1, 2, 3, 4]]}')
    assert res.returncode == 6 and "missing" in res.stderr and "build the model again" in res.stderr
    assert cli("build", str(tmp_path / "dmg")).returncode == 0  # a rebuild repairs it
    assert cli("run", "dmg", "-i", '{"x": [[1, 2, 3, 4]]}').returncode == 0


def test_verification_is_remembered_until_the_file_changes(tmp_path: Path, model_dir: Path) -> None:
    assert cli("build", str(_project(tmp_path, "stamp", model_dir))).returncode == 0
    store = Store()
    gpux.load("stamp")
    entry = store.manifest("stamp").files["mlp.onnx"]
    st = _blob_of(store, "stamp").stat()
    assert entry["verified"][:4] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]  # + when it was checked


def test_rm_keeps_shared_blobs_and_prune_frees_the_rest(tmp_path: Path, model_dir: Path, gpux_home: Path) -> None:
    for name in ("keep", "drop"):
        assert cli("build", str(_project(tmp_path, name, model_dir))).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    models.half(other / "half.onnx")
    (other / "gpux.yml").write_text("name: other\nmodel: {source: half.onnx}\n")
    assert cli("build", str(other)).returncode == 0
    store = Store()
    assert len(store.blobs.all()) == 2
    res = cli("rm", "drop")
    assert res.returncode == 0 and res.stdout.strip() == "removed drop:latest"
    assert len(store.blobs.all()) == 2 and gpux.load("keep").run({"x": [[0, 0, 0, 0]]})
    assert cli("rm", "other").returncode == 0
    assert len(store.blobs.all()) == 1
    res = cli("rm", "nothing")
    assert res.returncode == 3 and "gpux ls" in res.stderr
    # prune removes what no manifest names: an orphan blob and a stale temp file.
    orphan = store.blobs.path("0" * 64)
    orphan.write_bytes(b"orphan")
    assert cli("prune").returncode == 0 and not orphan.exists()


def test_ls_and_stats(tmp_path: Path, model_dir: Path) -> None:
    assert cli("build", str(_project(tmp_path, "listed", model_dir))).returncode == 0
    for _ in range(3):
        assert cli("run", "listed", "-i", '{"x": [[1, 2, 3, 4]]}').returncode == 0
    out = json.loads(cli("ls", "--json", "--stats").stdout)
    (row,) = out["models"]
    assert row["name"] == "listed" and row["tag"] == "latest" and row["hits"] == 3
    assert row["size_bytes"] == (model_dir / "mlp.onnx").stat().st_size and row["last_used"] > 0
    assert out["stats"] == {"hits": 3, "misses": 0, "hit_rate": 1.0}
    table = cli("ls", "--stats").stdout
    assert "listed:latest" in table and "hit rate 100%" in table


def test_concurrent_builds_of_one_model_leave_one_valid_model(tmp_path: Path, model_dir: Path) -> None:
    proj = _project(tmp_path, "race", model_dir)
    procs = [subprocess.Popen([sys.executable, "-m", "gpux", "build", str(proj)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    store = Store()
    assert store.names() == [("race", "latest")] and len(store.blobs.all()) == 1
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(gpux.load("race").run({"x": x})["y"], models.mlp_expected(x), rtol=1e-6)
    assert [p.name for p in (store.root / "tmp").iterdir()] == []
