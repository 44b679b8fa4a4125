"""Model.run on real onnxruntime sessions: values, casts, and every input error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import gpux
import models
from gpux.engine.signature import InputPlan, TensorSpec
from gpux.errors import (InferenceError, InputNameError, InputShapeError, InputTypeError,
                         ModelLoadError, ModelNotFoundError)


def test_mlp_matches_numpy_for_arrays_and_json_lists(model_dir: Path) -> None:
    m = gpux.load(model_dir / "mlp.onnx")
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"], models.mlp_expected(x), rtol=1e-5, atol=1e-6)
    # JSON numbers (Python floats and ints) are cast to float32.
    out = m.run({"x": [[1, 2, 3, 4]]})["y"]
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_allclose(out, models.mlp_expected(np.array([[1, 2, 3, 4]])), rtol=1e-6)
    # float64 arrays are cast too.
    np.testing.assert_allclose(m.run({"x": x.astype(np.float64)})["y"], models.mlp_expected(x), rtol=1e-5)


def test_fast_path_hands_the_callers_mapping_through() -> None:
    plan = InputPlan([TensorSpec("x", "float32", ("batch", 4))])
    feed = {"x": np.zeros((2, 4), np.float32)}
    assert plan.prepare(feed) is feed
    cast = plan.prepare({"x": [[0, 0, 0, 0]]})
    assert cast["x"].dtype == np.float32


@pytest.mark.parametrize("feed, err, words", [
    ({}, InputNameError, ["missing input 'x'", "x: float32 [batch, 4]"]),
    ({"x": [[1, 2, 3, 4]], "z": [1]}, InputNameError, ["unknown input 'z'"]),
    ({"y": [[1, 2, 3, 4]]}, InputNameError, ["missing input 'x'", "unknown input 'y'"]),
    ({"x": [1, 2, 3, 4]}, InputShapeError, ["expects rank 2", "got shape (4,)"]),
    ({"x": np.zeros((2, 5), np.float32)}, InputShapeError, ["dimension 1 to be 4", "(2, 5)"]),
    ({"x": [[1, 2, 3, 4], [1, 2]]}, InputShapeError, ["ragged"]),
    ({"x": [["a", "b", "c", "d"]]}, InputTypeError, ["expects float32", "got strings"]),
])
def test_mlp_input_errors_name_the_problem(model_dir: Path, feed: dict, err: type, words: list[str]) -> None:
    m = gpux.load(model_dir / "mlp.onnx")
    with pytest.raises(err) as info:
        m.run(feed)
    for w in words:
        assert w in str(info.value)


def test_float16_cast_and_overflow(model_dir: Path) -> None:
    m = gpux.load(model_dir / "half.onnx")
    out = m.run({"x": [0.5, 1.25, -3]})["y"]
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, np.array([1.0, 2.5, -6], np.float16))
    with pytest.raises(InputTypeError, match="out of float16's range"):
        m.run({"x": [1e6]})


def test_int64_and_bool_casts(model_dir: Path) -> None:
    m = gpux.load(model_dir / "intbool.onnx")
    out = m.run({"ids": [[1, 2, 3], [4.0, 5.0, 6.0]], "flags": [True, False, 1]})
    np.testing.assert_array_equal(out["s"], np.array([[2, 3, 4], [5, 6, 7]], np.int64))
    np.testing.assert_array_equal(out["n"], [False, True, False])
    with pytest.raises(InputTypeError, match="non-integer value 1.5"):
        m.run({"ids": [[1.5, 2, 3], [4, 5, 6]], "flags": [1, 0, 1]})
    with pytest.raises(InputTypeError, match="expects bool"):
        m.run({"ids": [[1, 2, 3], [4, 5, 6]], "flags": [2, 0, 1]})
    with pytest.raises(InputShapeError, match="dimension 0 to be 2"):
        m.run({"ids": [[1, 2, 3]], "flags": [1, 0, 1]})


def test_int32_scalar_and_range(model_dir: Path) -> None:
    m = gpux.load(model_dir / "scale.onnx")
    np.testing.assert_allclose(m.run({"x": [1, 2, 3], "s": 3})["y"], [3, 6, 9])
    with pytest.raises(InputTypeError, match="out of int32's range"):
        m.run({"x": [1, 2, 3], "s": 2**40})
    with pytest.raises(InputShapeError, match="expects rank 0"):
        m.run({"x": [1, 2, 3], "s": [3]})


def test_string_tensors(model_dir: Path) -> None:
    m = gpux.load(model_dir / "strings.onnx")
    assert list(m.run({"text": ["abc", "Def"]})["upper"]) == ["ABC", "DEF"]
    with pytest.raises(InputTypeError, match="expects string"):
        m.run({"text": [1, 2]})


def test_shared_symbolic_dims_must_agree(model_dir: Path) -> None:
    m = gpux.load(model_dir / "pair.onnx")
    a = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(m.run({"a": a, "b": a})["z"], a * 2)
    with pytest.raises(InputShapeError, match="dimension 'batch' is 2 in input 'a'.*but 3 in input 'b'"):
        m.run({"a": a, "b": np.ones((3, 3), np.float32)})


def test_onnxruntime_failure_becomes_inference_error(tmp_path: Path) -> None:
    models.reshape_to_two_rows(tmp_path / "reshape.onnx")
    m = gpux.load(tmp_path / "reshape.onnx")
    assert m.run({"x": [1, 2, 3, 4]})["y"].shape == (2, 2)
    with pytest.raises(InferenceError, match="onnxruntime failed while running reshape.onnx"):
        m.run({"x": [1, 2, 3]})


def test_bad_files_and_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a model")
    with pytest.raises(ModelLoadError, match="could not load"):
        gpux.load(bad)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        gpux.load(tmp_path / "missing.onnx")
    with pytest.raises(ModelNotFoundError, match="no model 'nothing-here'"):
        gpux.load("nothing-here")


def test_settings_are_applied_and_recorded(model_dir: Path) -> None:
    m = gpux.load(model_dir / "mlp.onnx", intra_op_threads=1, graph_optimization="basic")
    assert m.settings == {"graph_optimization": "basic", "intra_op_threads": 1,
                          "inter_op_threads": 1, "execution_mode": "sequential",
                          "spinning": True}
    assert m.providers == ["cpu"] and m.ort_providers == ["CPUExecutionProvider"]


def test_placement_counts_nodes_per_provider_then_stops_profiling(model_dir: Path) -> None:
    m = gpux.load(model_dir / "mlp.onnx", graph_optimization="disable", placement=True)
    assert m.placement is None
    m.run({"x": [[1, 2, 3, 4]]})
    assert m.placement == {"cpu": 3}  # MatMul, Add, Relu: nothing fused at "disable"
    m.run({"x": [[1, 2, 3, 4]]})
    assert m.graphs["model"].session.end_profiling() == ""  # profiling already ended


def test_silero_vad_real_model_matches_raw_onnxruntime(silero: Path) -> None:
    m = gpux.load(silero)
    t = np.arange(512) / 16000
    feeds = {
        "silence": np.zeros((1, 512), np.float32),
        "tone": (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None],
    }
    raw = ort.InferenceSession(str(silero), providers=["CPUExecutionProvider"])
    for name, audio in feeds.items():
        feed = {"input": audio, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000)}
        out = m.run({"input": audio.tolist(), "state": feed["state"], "sr": 16000})
        ref = raw.run(None, feed)
        np.testing.assert_allclose(out["output"], ref[0], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(out["stateN"], ref[1], rtol=1e-5, atol=1e-6)
        assert out["output"].shape == (1, 1) and 0.0 <= float(out["output"][0, 0]) <= 1.0
    silence = m.run({"input": feeds["silence"], "state": np.zeros((2, 1, 128), np.float32), "sr": 16000})
    assert float(silence["output"][0, 0]) < 0.1  # silence is not speech


def test_multi_graph_bundle(tmp_path: Path) -> None:
    models.mlp(tmp_path / "encoder.onnx")
    models.half(tmp_path / "decoder.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema": 1, "name": "encdec", "graphs": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        "default_graph": "encoder"}))
    m = gpux.load(tmp_path)
    assert set(m.graphs) == {"encoder", "decoder"}
    np.testing.assert_allclose(m.run({"x": [[0, 0, 0, 0]]})["y"], models.mlp_expected(np.zeros((1, 4))))
    assert m.run({"x": [1.5]}, graph="decoder")["y"].tolist() == [3.0]
