"""gpux.yml is strict and every field is honoured; build stores bundles atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpux
import models
from gpux.config import load_config
from gpux.errors import ConfigError, InputShapeError, StoreError
from gpux.store import local

from conftest import gpux as cli


def _project(tmp_path: Path, model_dir: Path, text: str) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    shutil.copy(model_dir / "mlp.onnx", proj / "mlp.onnx")
    (proj / "gpux.yml").write_text(text)
    return proj


BASE = """\
name: tiny-mlp
model: {source: mlp.onnx, task: demo}
"""


def test_unknown_key_is_an_error_naming_it(tmp_path: Path, model_dir: Path) -> None:
    proj = _project(tmp_path, model_dir, BASE + "runtime: {provider: cpu, threads: 4}\n")
    with pytest.raises(ConfigError, match="unknown key 'runtime.threads'"):
        load_config(proj / "gpux.yml")
    proj = _project(tmp_path, model_dir, BASE + "servng: {port: 1}\n")
    with pytest.raises(ConfigError, match="unknown key 'servng'"):
        load_config(proj / "gpux.yml")


@pytest.mark.parametrize("extra, words", [
    ("runtime: {provider: warp}\n", "unknown provider 'warp'"),
    ("runtime: {graph_optimization: max}\n", "runtime.graph_optimization"),
    ("serving: {port: 70000}\n", "serving.port"),
    ("inputs: {x: {dtype: float33}}\n", "inputs.x.dtype"),
])
def test_bad_values_are_named(tmp_path: Path, model_dir: Path, extra: str, words: str) -> None:
    proj = _project(tmp_path, model_dir, BASE + extra)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_config(proj / "gpux.yml")


def test_missing_and_invalid_top_level(tmp_path: Path, model_dir: Path) -> None:
    proj = _project(tmp_path, model_dir, "name: Bad Name\n")
    with pytest.raises(ConfigError) as info:
        load_config(proj / "gpux.yml")
    assert "missing key 'model'" in str(info.value) and "name:" in str(info.value)
    (proj / "gpux.yml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(proj / "gpux.yml")


def test_build_then_run_by_name_honours_every_section(tmp_path: Path, model_dir: Path,
                                                      gpux_home: Path) -> None:
    proj = _project(tmp_path, model_dir, BASE + """\
inputs:
  x: {dtype: float32, shape: [2, 4]}
outputs: [y]
runtime: {provider: cpu, intra_op_threads: 1, inter_op_threads: 1, graph_optimization: basic}
serving: {host: 127.0.0.1, port: 9001, batch_size: 4, instances: 2}
""")
    res = cli("build", str(proj), "--tag", "v1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "tiny-mlp:v1"
    manifest = json.loads(local.Store().manifest_path("tiny-mlp", "v1").read_text())
    assert manifest["serving"] == {"host": "127.0.0.1", "port": 9001, "batch_size": 4, "instances": 2,
                                   "max_sequences": None, "kv_budget": None}
    assert manifest["task"] == "demo"
    assert manifest["files"]["mlp.onnx"]["sha256"] == local.sha256_file(model_dir / "mlp.onnx")

    m = gpux.load("tiny-mlp:v1")
    assert m.settings["intra_op_threads"] == 1 and m.settings["graph_optimization"] == "basic"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"], models.mlp_expected(x), rtol=1e-6)
    with pytest.raises(InputShapeError, match="dimension 0 to be 2"):  # the declared, narrower shape
        m.run({"x": np.ones((3, 4), np.float32)})
    # Arguments beat the bundle's runtime section.
    assert gpux.load("tiny-mlp:v1", intra_op_threads=2).settings["intra_op_threads"] == 2


@pytest.mark.parametrize("decl, words", [
    ("inputs: {x: {dtype: int64}}\n", "declared dtype int64 but the model's is float32"),
    ("inputs: {q: {dtype: float32}}\n", "the model has no input 'q'"),
    ("inputs: {x: {dtype: float32, shape: [4]}}\n", "declared rank 1"),
    ("inputs: {x: {dtype: float32, shape: [b, 5]}}\n", "dimension 1 is fixed to 4"),
    ("outputs: [nope]\n", "the model has no output 'nope'"),
])
def test_declarations_that_contradict_the_graph_fail_the_build(tmp_path: Path, model_dir: Path,
                                                               gpux_home: Path, decl: str, words: str) -> None:
    proj = _project(tmp_path, model_dir, BASE + decl)
    res = cli("build", str(proj))
    assert res.returncode == 2
    assert words in res.stderr and "Traceback" not in res.stderr
    assert local.Store().tags("tiny-mlp") == []  # nothing stored


def test_build_carries_external_data(tmp_path: Path, gpux_home: Path) -> None:
    proj = tmp_path / "ext"
    proj.mkdir()
    models.mlp(proj / "weights.onnx", external=True)
    (proj / "gpux.yml").write_text("name: ext\nmodel: {source: weights.onnx}\n")
    assert cli("build", str(proj)).returncode == 0
    stored = gpux.load("ext").bundle.root
    assert (stored / "weights.onnx.data").is_file() and stored.is_relative_to(gpux_home)
    shutil.rmtree(proj)  # the stored bundle must not depend on the source folder
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(gpux.load("ext").run({"x": x})["y"], models.mlp_expected(x), rtol=1e-6)


def test_failed_publish_leaves_the_old_model_and_no_partial_file(tmp_path: Path, model_dir: Path,
                                                                  gpux_home: Path) -> None:
    from gpux.config import manifest_from_config
    from gpux.store import blobs

    proj = _project(tmp_path, model_dir, BASE)
    store = local.Store()
    manifest, files = manifest_from_config(load_config(proj / "gpux.yml"), proj)
    store.publish(manifest, files)
    before = store.manifest_path("tiny-mlp", "latest").read_text()
    stored_blobs = store.blobs.all()
    models.mlp(proj / "mlp.onnx", metadata={"version": "2"})  # new bytes: a new blob to write

    def boom(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    blobs.before_commit = boom
    try:
        manifest2, files2 = manifest_from_config(load_config(proj / "gpux.yml"), proj)
        with pytest.raises(StoreError, match="No space left"):
            store.publish(manifest2, files2)
    finally:
        blobs.before_commit = None
    assert store.manifest_path("tiny-mlp", "latest").read_text() == before
    assert store.blobs.all() == stored_blobs
    assert [p.name for p in (gpux_home / "tmp").iterdir()] == []
    assert gpux.load("tiny-mlp").run({"x": [[0, 0, 0, 0]]})["y"].shape == (1, 3)


def test_folder_with_gpux_yml_runs_without_a_build(tmp_path: Path, model_dir: Path, gpux_home: Path) -> None:
    proj = _project(tmp_path, model_dir, BASE + "runtime: {intra_op_threads: 1}\n")
    m = gpux.load(proj)
    assert m.name == "tiny-mlp" and m.settings["intra_op_threads"] == 1
    assert not gpux_home.exists()  # nothing written


@pytest.mark.parametrize("ref", ["../etc", "a/../b", "a/b/c", ".hidden", "x:", "x:../y", "", "a b"])
def test_model_names_are_validated(ref: str) -> None:
    from gpux.errors import UsageError

    with pytest.raises(UsageError):
        local.parse_ref(ref)
    assert local.parse_ref("sentence-transformers/all-MiniLM-L6-v2:v1") == (
        "sentence-transformers/all-MiniLM-L6-v2", "v1")


def test_package_source_is_found_without_importing_it(tmp_path: Path, silero: Path) -> None:
    from gpux.config import resolve_source

    assert resolve_source("package:silero_vad/data/silero_vad.onnx", tmp_path) == silero
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        resolve_source("package:no_such_pkg/x.onnx", tmp_path)
