"""How a large graph's weights sit on disk and in memory: tied output head shared, weights beside the graph.

Both were measured on SmolLM2-135M (docs/generate.md):

- a model whose output projection is its token embedding (``tie_word_embeddings``) is exported with the
  embedding twice: once for the ``Gather`` that looks tokens up, once transposed for the ``MatMul`` that
  makes logits (113 MB of 653 MB). :func:`share_tied_head` makes the head a ``Gemm`` with ``transB`` over
  the embedding itself, so one copy serves both;
- onnxruntime reading a graph whose weights are inside the protobuf holds the protobuf and the weights
  it makes from it at once: peak RSS twice the weights (1021 MB at load). With the weights in a file
  beside the graph (``model.onnx.data``) it reads them once: 679 MB. :func:`save` writes graphs over
  :data:`EXTERNAL_OVER` that way; the store keeps the data file as a file of the bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Graphs whose weights pass this many bytes keep them in ``<graph>.data`` beside the graph
#: (``GPUX_EXTERNAL_OVER`` sets another size: tests store tiny models the way large ones are stored).
EXTERNAL_OVER = 64 << 20


def external_over() -> int:
    import os

    return int(os.environ.get("GPUX_EXTERNAL_OVER", EXTERNAL_OVER))


def data_file(graph: Path) -> Path:
    return graph.with_name(graph.name + ".data")


def share_tied_head(model: Any) -> bool:
    """Rewrite ``logits = MatMul(h, E^T)`` as ``Gemm(h2d, E, transB=1)`` when ``E`` is the embedding a
    ``Gather`` reads (same values); True if it did. ``model`` is an ``onnx.ModelProto``, changed in place."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    head = producers.get("logits")
    if head is None or head.op_type != "MatMul" or head.input[1] not in inits:
        return False
    weight = numpy_helper.to_array(inits[head.input[1]])
    if weight.ndim != 2:
        return False
    for node in g.node:
        if node.op_type != "Gather" or node.input[0] not in inits or node.input[0] == head.input[1]:
            continue
        table = inits[node.input[0]]
        if tuple(table.dims) != weight.shape[::-1] or not np.array_equal(numpy_helper.to_array(table), weight.T):
            continue
        hidden = weight.shape[0]
        flat, shape, out2d = "logits/flat", "logits/shape", "logits/2d"
        g.initializer.extend([numpy_helper.from_array(np.array([-1, hidden], np.int64), "logits/flat_shape")])
        nodes = [
            helper.make_node("Reshape", [head.input[0], "logits/flat_shape"], [flat], name="logits/Reshape2d"),
            helper.make_node("Gemm", [flat, table.name], [out2d], transB=1, name="logits/TiedGemm"),
            helper.make_node("Shape", [head.input[0]], [shape + "_h"], name="logits/ShapeH", end=-1),
            helper.make_node("Constant", [], [shape + "_v"], name="logits/Vocab",
                             value=numpy_helper.from_array(np.array([weight.shape[1]], np.int64))),
            helper.make_node("Concat", [shape + "_h", shape + "_v"], [shape], axis=0, name="logits/ShapeOut"),
            helper.make_node("Reshape", [out2d, shape], ["logits"], name="logits/Reshape3d"),
        ]
        index = list(g.node).index(head)
        g.node.remove(head)
        for offset, new in enumerate(nodes):
            g.node.insert(index + offset, new)
        if not any(head.input[1] in n.input for n in g.node):
            g.initializer.remove(inits[head.input[1]])
        return True
    return False


def untie_head(model: Any) -> bool:
    """Undo :func:`share_tied_head` (a transposed copy of the embedding for a MatMul head): what a quantiser
    needs, since it quantises MatMuls and the quantised head is a copy anyway. True if it did."""
    from onnx import helper, numpy_helper

    g = model.graph
    gemm = next((n for n in g.node if n.name == "logits/TiedGemm"), None)
    if gemm is None:
        return False
    table = next(i for i in g.initializer if i.name == gemm.input[1])
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(table).T),
                                                 "logits/head_weight"))
    index = list(g.node).index(gemm)
    g.node.remove(gemm)
    g.node.insert(index, helper.make_node("MatMul", [gemm.input[0], "logits/head_weight"], list(gemm.output),
                                          name="logits/MatMul"))
    return True


def load(path: Path) -> Any:
    """``onnx.load`` of a stored graph, its weights read from ``<graph>.data`` by gpux itself.

    onnx's own loader refuses a data file with more than one hard link ("a potential hardlink attack"),
    and the store's bundles are hard links to its blobs by design; the file is the bundle's own, named in
    its manifest and hash-checked, so reading it here is safe.
    """
    import mmap

    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    tensors = [t for t in _initializers(model.graph) if uses_external_data(t)]
    if not tensors:
        return model
    with open(data_file(path), "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for t in tensors:
            info = {e.key: e.value for e in t.external_data}
            if info.get("location") != data_file(path).name:
                raise ValueError(f"{path.name}: tensor {t.name} keeps its data in {info.get('location')!r}")
            offset = int(info.get("offset", 0))
            length = int(info.get("length", len(data) - offset))
            t.raw_data = data[offset:offset + length]
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    return model


def _initializers(graph: Any) -> list[Any]:
    return list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.HasField("t")]


def save(model: Any, path: Path) -> list[Path]:
    """Write ``model`` to ``path`` (weights beside it when large); the files written, graph first."""
    import onnx

    data = data_file(path)
    data.unlink(missing_ok=True)
    if model.ByteSize() <= external_over():
        onnx.save(model, str(path))
        return [path]
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=1024)
    return [path, data]


def files_of(graph: Path, name: str) -> dict[str, Path]:
    """``{name: graph}`` plus its data file under ``name + ".data"`` when it has one (what the store publishes)."""
    files = {name: graph}
    if data_file(graph).is_file():
        files[name + ".data"] = data_file(graph)
    return files
