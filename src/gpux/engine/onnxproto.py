"""Read the facts ``gpux inspect`` shows straight from an ONNX file's protobuf bytes.

onnxruntime does not expose opset imports, initializer sizes or node counts, and
the ``onnx`` package is a 40 MB import we keep off the run path. ONNX files are
plain protobuf, so this walks the wire format over an ``mmap`` and skips weight
bytes without copying them; a 2 GB model is summarised in milliseconds.

Field numbers are those of onnx/onnx.proto3 (ModelProto, GraphProto, NodeProto,
AttributeProto, TensorProto, OperatorSetIdProto, StringStringEntryProto).
"""

from __future__ import annotations

import mmap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: TensorProto.DataType -> name.
TENSOR_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32",
                13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
                17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
                21: "uint4", 22: "int4", 23: "float4e2m1"}


@dataclass
class GraphStats:
    """What inspect reports about a graph and the subgraphs inside it."""

    name: str = ""
    nodes: int = 0
    op_types: Counter[str] = field(default_factory=Counter)
    parameters: int = 0
    parameters_by_dtype: Counter[str] = field(default_factory=Counter)
    external_data: set[str] = field(default_factory=set)


@dataclass
class ModelProtoInfo:
    """The header of a ModelProto plus graph statistics."""

    ir_version: int = 0
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    graph: GraphStats = field(default_factory=GraphStats)


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _fields(buf: memoryview, start: int, end: int):  # type: ignore[no-untyped-def]
    """Yield (field number, wire type, value) where value is an int or a (start, end) span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            yield num, wire, val
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ProtoError("length-delimited field runs past its message")
            yield num, wire, (pos, pos + size)
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
    if pos != end:
        raise ProtoError("message ends mid-field")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _str(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _entry(buf: memoryview, span: tuple[int, int]) -> tuple[str, str]:
    key = value = ""
    for num, _, v in _fields(buf, *span):
        if num == 1:
            key = _str(buf, v)
        elif num == 2:
            value = _str(buf, v)
    return key, value


def _tensor(buf: memoryview, span: tuple[int, int], stats: GraphStats) -> None:
    count, dtype = 1, 0
    for num, wire, v in _fields(buf, *span):
        if num == 1 and wire == 0:
            count *= v
        elif num == 1:  # packed dims
            pos, end = v
            while pos < end:
                d, pos = _varint(buf, pos)
                count *= d
        elif num == 2:
            dtype = v
        elif num == 13:
            key, value = _entry(buf, v)
            if key == "location":
                stats.external_data.add(value)
    stats.parameters += count
    stats.parameters_by_dtype[TENSOR_TYPES.get(dtype, str(dtype))] += count


def _graph(buf: memoryview, span: tuple[int, int], stats: GraphStats, top: bool) -> None:
    for num, _, v in _fields(buf, *span):
        if num == 1:
            _node(buf, v, stats)
        elif num == 2 and top:
            stats.name = _str(buf, v)
        elif num == 5:
            _tensor(buf, v, stats)


def _node(buf: memoryview, span: tuple[int, int], stats: GraphStats) -> None:
    stats.nodes += 1
    op, domain = "", ""
    for num, _, v in _fields(buf, *span):
        if num == 4:
            op = _str(buf, v)
        elif num == 7:
            domain = _str(buf, v)
        elif num == 5:  # attribute: may hold subgraphs (If/Loop/Scan bodies)
            for anum, _, av in _fields(buf, *v):
                if anum in (6, 11):  # g, graphs
                    _graph(buf, av, stats, top=False)
                elif anum == 5:  # a tensor attribute (Constant node weights)
                    _tensor(buf, av, stats)
    stats.op_types[f"{domain}::{op}" if domain and domain != "ai.onnx" else op] += 1


def read(path: str | Path) -> ModelProtoInfo:
    """Summarise an ONNX file. Raises :class:`ProtoError` if it is not one."""
    info = ModelProtoInfo()
    with open(path, "rb") as fh:
        size = Path(path).stat().st_size
        if size == 0:
            raise ProtoError("the file is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                _model(buf, info)
            finally:
                buf.release()
    return info


def _model(buf: memoryview, info: ModelProtoInfo) -> None:
    seen_graph = False
    for num, wire, v in _fields(buf, 0, len(buf)):
        if num == 1 and wire == 0:
            info.ir_version = v
        elif num == 2 and wire == 2:
            info.producer_name = _str(buf, v)
        elif num == 3 and wire == 2:
            info.producer_version = _str(buf, v)
        elif num == 4 and wire == 2:
            info.domain = _str(buf, v)
        elif num == 5 and wire == 0:
            info.model_version = v
        elif num == 6 and wire == 2:
            info.doc_string = _str(buf, v)
        elif num == 7 and wire == 2:
            _graph(buf, v, info.graph, top=True)
            seen_graph = True
        elif num == 8 and wire == 2:
            domain, version = "", 0
            for onum, _, ov in _fields(buf, *v):
                if onum == 1:
                    domain = _str(buf, ov)
                elif onum == 2:
                    version = ov
            info.opsets[domain or "ai.onnx"] = version
        elif num == 14 and wire == 2:
            key, value = _entry(buf, v)
            info.metadata[key] = value
    if not seen_graph or not info.ir_version:
        raise ProtoError("no ModelProto header (ir_version and graph) found")
