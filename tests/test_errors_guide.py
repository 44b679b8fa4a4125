"""Issue 9: errors that guide. A user's mistake is a clear gpux error with its exit family, never an
abort or "internal error ... please report it"; and the Python API says what the CLI says.

Everything runs the real path: the `gpux` CLI in subprocesses, real onnxruntime sessions, silero-vad,
tiny ONNX models and the real all-MiniLM-L6-v2 (converted once for the module).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import gpux
import models
from conftest import gpux as cli
from gpux.errors import InputNameError, InputShapeError, InputTypeError
from gpux.store import leases
from gpux.store.local import Store

SILERO_YML = Path(__file__).parent.parent / "examples" / "silero-vad" / "gpux.yml"


def _one_error_line(res: object, code: int, *words: str) -> None:
    """The process exited with ``code`` and said one ``error:`` line holding every word."""
    stderr = res.stderr  # type: ignore[attr-defined]
    assert res.returncode == code, stderr  # type: ignore[attr-defined]
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert "internal error" not in stderr
    for w in words:
        assert w in stderr, stderr


# -- item 1: a zero-size dimension never reaches onnxruntime ---------------------------------------------

def test_zero_batch_npz_is_exit_2_not_an_abort(silero: Path, tmp_path: Path) -> None:
    fast = tmp_path / "zero_batch.npz"  # arrays of the declared dtypes: the fast path
    np.savez(fast, input=np.zeros((0, 512), np.float32), state=np.zeros((2, 0, 128), np.float32),
             sr=np.array(16000, np.int64))
    slow = tmp_path / "zero_batch64.npz"  # float64 arrays: cast on the slow path
    np.savez(slow, input=np.zeros((0, 512)), state=np.zeros((2, 0, 128)), sr=np.array(16000))
    for feed in (fast, slow):
        _one_error_line(cli("run", str(silero), "--input", f"@{feed}"), 2, "zero-size dimension", "(0, 512)")


def test_model_check_refuses_zero_size_dims_on_both_paths(model_dir: Path) -> None:
    m = gpux.load(model_dir / "pair.onnx")  # a, b: float32 [batch, n]
    empty = np.zeros((2, 0), np.float32)
    with pytest.raises(InputShapeError, match=r"input 'a' has a zero-size dimension: shape \(2, 0\)"):
        m.check({"a": empty, "b": empty})  # fast path
    with pytest.raises(InputShapeError, match="zero-size dimension"):
        m.check({"a": [[], []], "b": [[], []]})  # slow path (JSON lists)
    with pytest.raises(InputShapeError, match="zero-size dimension"):
        m.run({"a": np.ones((0, 3), np.float32), "b": np.ones((0, 3), np.float32)})
    ok = np.ones((1, 3), np.float32)
    assert m.check({"a": ok, "b": ok})["a"] is ok  # the fast path still hands arrays through


# -- item 21: undecodable text is a usage/config error -----------------------------------------------------

def test_non_utf8_gpux_yml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "gpux.yml").write_bytes(SILERO_YML.read_bytes().replace(b"silero-vad\n", b"silero-vad\xff\n", 1))
    _one_error_line(cli("build", str(tmp_path)), 2, "is not UTF-8 text", "byte 0xff", "save the file as UTF-8")


def test_inline_input_with_invalid_utf8_or_a_lone_surrogate(model_dir: Path) -> None:
    model = str(model_dir / "strings.onnx")
    # "\udcff" is how Python spells the raw byte 0xff it could not decode: subprocess sends that byte.
    _one_error_line(cli("run", model, "--input", '{"text": ["\udcff"]}'), 2, "--input is not valid UTF-8",
                    "byte 0xff")
    _one_error_line(cli("run", model, "--input", '{"text": ["\\ud800"]}'), 2, "lone surrogate", "\\ud800")
    ok = cli("run", model, "--input", '{"text": ["\\ud83d\\ude00 ok"]}')  # a real surrogate pair is text
    assert ok.returncode == 0, ok.stderr


# -- item 22: messages say what is wrong; one numeric policy ----------------------------------------------

def test_input_files_that_are_not_input_files(model_dir: Path, tmp_path: Path) -> None:
    model = str(model_dir / "mlp.onnx")
    _one_error_line(cli("run", model, "-i", f"@{tmp_path}"), 2, "is a folder")
    _one_error_line(cli("run", model, "-i", "@/dev/null"), 2, "/dev/null is not a regular file")
    (tmp_path / "garbage.npz").write_bytes(b"\x80\x04this is not numpy")
    _one_error_line(cli("run", model, "-i", f"@{tmp_path / 'garbage.npz'}"), 2, "is not a numpy .npz archive")
    (tmp_path / "empty.json").write_text("")
    _one_error_line(cli("run", model, "-i", f"@{tmp_path / 'empty.json'}"), 2, "is empty")
    for res in (cli("run", model, "-i", f"@{tmp_path}"), cli("run", model, "-i", "@/dev/null")):
        assert "does not exist" not in res.stderr


def test_int64_out_of_range_is_named_not_ragged(model_dir: Path) -> None:
    model = str(model_dir / "intbool.onnx")  # ids: int64 [2, k], flags: bool [k]
    res = cli("run", model, "-i", '{"ids": [[1, 2, 1000000000000000000000000000000], [4, 5, 6]], '
                                  '"flags": [1, 0, 1]}')
    _one_error_line(res, 2, "input 'ids' expects int64", "out of int64's range")
    assert "ragged" not in res.stderr


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_cli_refuses_json_constants_that_json_does_not_have(model_dir: Path, literal: str) -> None:
    res = cli("run", str(model_dir / "mlp.onnx"), "-i", f'{{"x": [[1, 2, 3, {literal}]]}}')
    _one_error_line(res, 2, f"holds {literal}", "finite")


def test_one_numeric_policy_in_model_check(model_dir: Path) -> None:
    """What the KServe route hands Model.check (raw JSON values) meets the CLI's rule."""
    mlp = gpux.load(model_dir / "mlp.onnx")  # x: float32 [batch, 4]
    with pytest.raises(InputTypeError, match=r"value 1e\+39 is out of float32's range"):
        mlp.check({"x": [[1.0, 2.0, 3.0, 1e39]]})
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(InputTypeError, match="non-finite value"):
            mlp.check({"x": [[1.0, 2.0, 3.0, bad]]})
    with pytest.raises(InputTypeError, match="out of float32's range"):
        mlp.check({"x": [[1, 2, 3, 10**400]]})  # a Python int wider than any float
    assert mlp.check({"x": [[1, 2, 3, 10**30]]})["x"].dtype == np.float32  # 1e30 fits float32
    ints = gpux.load(model_dir / "intbool.onnx")
    for value, words in ((10**30, "out of int64's range"), (2**63, "value 9223372036854775808 is out of int64"),
                         (2.0**63, "out of int64's range"), (1.5, "non-integer value 1.5"),
                         (float("nan"), "non-finite value nan")):
        with pytest.raises(InputTypeError, match=words):
            ints.check({"ids": [[1, 2, value], [4, 5, 6]], "flags": [1, 0, 1]})
    feed = ints.check({"ids": [[1, 2, 2**63 - 1], [4, 5, -(2**63)]], "flags": [1, 0, 1]})
    assert feed["ids"][0, 2] == 2**63 - 1 and feed["ids"][1, 2] == -(2**63)
    with pytest.raises(InputTypeError, match="holds null"):
        ints.check({"ids": [[1, 2, None], [4, 5, 6]], "flags": [1, 0, 1]})


# -- item 23: strict config types ---------------------------------------------------------------------------

@pytest.mark.parametrize("line, words", [
    ("serving: {port: true}", "serving.port"),
    ("serving: {port: '8080'}", "serving.port"),
    ("runtime: {intra_op_threads: true}", "runtime.intra_op_threads"),
])
def test_config_ints_are_strict(tmp_path: Path, model_dir: Path, line: str, words: str) -> None:
    (tmp_path / "m.onnx").write_bytes((model_dir / "mlp.onnx").read_bytes())
    (tmp_path / "gpux.yml").write_text(f"name: strict\nmodel: {{source: m.onnx}}\n{line}\n")
    _one_error_line(cli("build", str(tmp_path)), 2, words, "valid integer", "got ")


# -- item 25: noise, resolution, tables, truncation, rm --------------------------------------------------

def test_corrupt_onnx_prints_only_gpux_line(tmp_path: Path) -> None:
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07this is not a model")
    for args in (["run", str(tmp_path / "corrupt.onnx"), "-i", "{}"], ["inspect", str(tmp_path / "corrupt.onnx")]):
        res = cli(*args)
        _one_error_line(res, 3, "could not load")
        assert "[E:onnxruntime" not in res.stderr and "EndProfiling" not in res.stderr


def test_tables_are_not_cut_when_piped(tmp_path: Path) -> None:
    long_name = "encoder_hidden_states_for_the_second_stage_of_a_rather_long_pipeline_" + "x" * 40
    graph = helper.make_graph([helper.make_node("Identity", [long_name], ["y"])], "wide",
                              [helper.make_tensor_value_info(long_name, TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "wide.onnx"))
    res = cli("inspect", str(tmp_path / "wide.onnx"))
    assert res.returncode == 0, res.stderr
    assert long_name in res.stdout and "…" not in res.stdout

    def result(p50: float) -> dict:
        point = {"latency": {"p50_ms": p50, "mean_ms": p50, "std_ms": 0.0}}
        return {"models": {"org/some-model-name": {"precisions": {"fp32": {"gpux": {"points": {
            "batch_16_seq_128": point, "batch_16_seq_512": point}}}}}}}

    (tmp_path / "a.json").write_text(json.dumps(result(1.0)))
    (tmp_path / "b.json").write_text(json.dumps(result(1.0)))
    res = cli("bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert res.returncode == 0, res.stderr
    for seq in ("128", "512"):
        assert f"models.org/some-model-name.precisions.fp32.gpux.points.batch_16_seq_{seq}.latency.p50_ms" \
            in res.stdout
    assert "…" not in res.stdout


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store with all-MiniLM-L6-v2 converted from its local Hugging Face folder; (store root, folder)."""
    from hf_models import minilm_folder

    root = tmp_path_factory.mktemp("guide-home")
    folder = minilm_folder()
    res = cli("pull", str(folder), env={"GPUX_HOME": str(root)})
    assert res.returncode == 0, res.stderr
    return root, folder


def test_inspect_resolves_a_hugging_face_folder_as_run_does(minilm: tuple[Path, Path]) -> None:
    root, folder = minilm
    res = cli("inspect", str(folder), "--json", env={"GPUX_HOME": str(root)})
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["task"] == "feature-extraction" and info["source"]["kind"] == "local"
    assert [s["name"] for s in info["graphs"]["model"]["inputs"]][:2] == ["input_ids", "attention_mask"]


def test_truncation_is_said_and_can_be_refused(minilm: tuple[Path, Path]) -> None:
    root, folder = minilm
    env = {"GPUX_HOME": str(root)}
    long_text = " ".join(["word"] * 600)
    payload = {"inputs": ["short", long_text]}
    res = cli("run", str(folder), "-i", json.dumps(payload), env=env)
    assert res.returncode == 0, res.stderr
    assert "warning: text 1 has 602 tokens; cut to the model's limit of 256" in res.stderr
    assert "text 0" not in res.stderr and len(json.loads(res.stdout)["embeddings"]) == 2
    refused = cli("run", str(folder), "-i", json.dumps({**payload, "truncate": False}), env=env)
    _one_error_line(refused, 2, "text 1 has 602 tokens", "at most 256")
    quiet = cli("run", str(folder), "-i", '{"inputs": ["short"], "truncate": false}', env=env)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


def test_rm_warns_when_a_server_holds_the_model(model_dir: Path, tmp_path: Path, gpux_home: Path) -> None:
    folder = tmp_path / "held"
    folder.mkdir()
    models.mlp(folder / "m.onnx")
    (folder / "gpux.yml").write_text("name: held\nmodel: {source: m.onnx}\n")
    assert cli("build", str(folder)).returncode == 0
    # This test process stands in for the live server holding it (a lease is a file naming a live pid).
    leases.record(gpux_home, ["held:latest"], url="http://127.0.0.1:8765", pid=os.getpid())
    res = cli("rm", "held")
    assert res.returncode == 0 and "removed held:latest" in res.stdout
    assert f"pid {os.getpid()}" in res.stderr and "http://127.0.0.1:8765" in res.stderr and "warning" in res.stderr
    leases.release(gpux_home)
    assert cli("build", str(folder)).returncode == 0
    res = cli("rm", "held")
    assert res.returncode == 0 and res.stderr == ""


# -- item 26: the Python API says what the CLI says ---------------------------------------------------------

def test_providers_are_short_names_and_placement_needs_no_flag(model_dir: Path) -> None:
    m = gpux.load(model_dir / "mlp.onnx", graph_optimization="disable")
    assert m.providers == ["cpu"] and m.ort_providers == ["CPUExecutionProvider"]
    assert "providers=['cpu']" in repr(m)
    assert m.placement == {"cpu": 3}  # assigned at load, read on first access: no run needed
    m.run({"x": [[1, 2, 3, 4]]})
    assert m.placement == {"cpu": 3}
    profiled = gpux.load(model_dir / "mlp.onnx", graph_optimization="disable", placement=True)
    assert profiled.placement is None  # the profiled count comes from the first run
    profiled.run({"x": [[1, 2, 3, 4]]})
    assert profiled.placement == {"cpu": 3}


def test_task_models_take_text_from_python(minilm: tuple[Path, Path]) -> None:
    root, _ = minilm
    store = Store(root)
    name = next(f"{n}:{t}" for n, t in store.names())
    m = gpux.load(name, store=store)
    one = m("a cat sits on the mat")["embeddings"]
    assert one.shape == (1, 384) and abs(float(np.linalg.norm(one[0])) - 1.0) < 1e-4
    two = m.predict(["a cat sits on the mat", "stock markets fell"])["embeddings"]
    np.testing.assert_allclose(two[0], one[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.predict({"inputs": "stock markets fell"})["embeddings"][0], two[1],
                               rtol=1e-4, atol=1e-5)
    assert m.task is m.task  # built once
    with pytest.warns(UserWarning, match="cut to the model's limit of 256"):
        m(" ".join(["word"] * 600))


def test_raw_models_predict_by_name(model_dir: Path) -> None:
    m = gpux.load(model_dir / "mlp.onnx")
    assert m.task is None
    np.testing.assert_allclose(m({"x": [[1, 2, 3, 4]]})["y"], models.mlp_expected(np.array([[1, 2, 3, 4]])),
                               rtol=1e-6)
    with pytest.raises(InputNameError, match="has no task: give its inputs by name"):
        m.predict("some text")
