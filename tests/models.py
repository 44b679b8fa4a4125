"""Small real ONNX models built with onnx's helper API, for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path, **kw: object) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="gpux-tests",
                              producer_version="1.0")
    model.ir_version = 8
    for k, v in (kw.get("metadata") or {}).items():  # type: ignore[union-attr]
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    if kw.get("external"):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def mlp(path: Path, *, external: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """y = relu(x @ W + b), x: float32 [batch, 4], W fixed 4x3 -> y: float32 [batch, 3]."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
    b = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path, external=external, metadata=metadata)


MLP_W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
MLP_B = np.array([0.1, -0.2, 0.3], dtype=np.float32)


def mlp_expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float32) @ MLP_W + MLP_B, 0)


def add_pair(path: Path) -> Path:
    """z = a + b with a shared symbolic dim: a, b float32 [batch, n]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["z"])], "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "n"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "n"])])
    return _save(graph, path)


def half(path: Path) -> Path:
    """y = x * 2 in float16, x: float16 [?] (anonymous dynamic dim)."""
    two = numpy_helper.from_array(np.array([2.0], dtype=np.float16), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None])], initializer=[two])
    return _save(graph, path)


def int_and_bool(path: Path) -> Path:
    """s = ids + 1 (int64 [2, k]) and n = not flags (bool [k]); two outputs."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "one"], ["s"]), helper.make_node("Not", ["flags"], ["n"])],
        "intbool",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, "k"]),
         helper.make_tensor_value_info("flags", TensorProto.BOOL, ["k"])],
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2, "k"]),
         helper.make_tensor_value_info("n", TensorProto.BOOL, ["k"])], initializer=[one])
    return _save(graph, path)


def strings(path: Path) -> Path:
    """upper = StringNormalizer(UPPER)(text), text: string [n]."""
    graph = helper.make_graph(
        [helper.make_node("StringNormalizer", ["text"], ["upper"], case_change_action="UPPER", locale="C")],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("upper", TensorProto.STRING, ["n"])])
    return _save(graph, path)


def scalar_scale(path: Path) -> Path:
    """y = x * s with s an int32 scalar cast to float: x float32 [3], s int32 []."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "sf"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("s", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    return _save(graph, path)


def reshape_to_two_rows(path: Path) -> Path:
    """y = reshape(x, [2, -1]), x float32 [n]: onnxruntime fails at run time when n is odd."""
    shape = numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])],
                              initializer=[shape])
    return _save(graph, path)
