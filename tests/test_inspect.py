"""The protobuf reader against the onnx package's own view of the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import gpux
import models
from gpux.engine import onnxproto


def _onnx_counts(path: Path) -> tuple[int, int]:
    """(parameters, nodes) counted with the onnx package, subgraphs and Constant nodes included."""
    params = nodes = 0

    def walk(graph: onnx.GraphProto) -> None:
        nonlocal params, nodes
        params += sum(int(np.prod(t.dims)) for t in graph.initializer)
        for n in graph.node:
            nodes += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g)
                elif a.type == onnx.AttributeProto.TENSOR:
                    params += int(np.prod(a.t.dims))

    walk(onnx.load(str(path), load_external_data=False).graph)
    return params, nodes


def test_header_and_counts_match_onnx(model_dir: Path) -> None:
    info = onnxproto.read(model_dir / "mlp.onnx")
    assert info.ir_version == 8
    assert info.opsets == {"ai.onnx": 17}
    assert (info.producer_name, info.producer_version) == ("gpux-tests", "1.0")
    assert info.metadata == {"author": "tests", "task": "demo"}
    assert info.graph.parameters == 15 and info.graph.nodes == 3
    assert dict(info.graph.op_types) == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert dict(info.graph.parameters_by_dtype) == {"float32": 15}


def test_silero_counts_match_onnx_including_subgraphs(silero: Path) -> None:
    info = onnxproto.read(silero)
    params, nodes = _onnx_counts(silero)
    assert (info.graph.parameters, info.graph.nodes) == (params, nodes)
    assert info.opsets == {"ai.onnx": onnx.load(str(silero)).opset_import[0].version}


def test_external_data_is_found_and_sized(tmp_path: Path) -> None:
    path = models.mlp(tmp_path / "ext.onnx", external=True)
    assert onnxproto.read(path).graph.external_data == {"ext.onnx.data"}
    info = gpux.load(path).info["graphs"]["model"]
    assert info["external_data_bytes"] == (tmp_path / "ext.onnx.data").stat().st_size > 0
    assert info["parameters"] == 15


@pytest.mark.parametrize("data", [b"", b"\x08", b"\x12\x7fshort", b"\x0f\x00"])
def test_garbage_is_a_proto_error(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "x.onnx"
    p.write_bytes(data)
    with pytest.raises(onnxproto.ProtoError):
        onnxproto.read(p)


def test_truncated_model_is_a_proto_error(tmp_path: Path, model_dir: Path) -> None:
    data = (model_dir / "mlp.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(onnxproto.ProtoError):
        onnxproto.read(p)


def test_model_info_has_signature_and_providers(model_dir: Path) -> None:
    info = gpux.load(model_dir / "mlp.onnx").info
    g = info["graphs"]["model"]
    assert g["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert g["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]
    assert info["providers"]["session"] == ["cpu"] and "cpu" in info["providers"]["available"]
    assert g["file_bytes"] == (model_dir / "mlp.onnx").stat().st_size
