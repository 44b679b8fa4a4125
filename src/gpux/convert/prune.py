"""Drop what a traced graph computes only to read its shape.

A traced wrapper often runs more of the model than its outputs need, and the exporter keeps those nodes when a
``Shape`` reads their result: the encoder wrapper of gpux.convert.seq2seq runs the decoder for one token to
get the cross-attention keys, and their reshape reads the batch size off the decoder's hidden states, which
keeps the token embedding table (80 MB of Whisper tiny's 145 MB encoder file) for one ``Shape``.

:func:`fold_shapes` infers every tensor's shape symbolically (onnxruntime's ``SymbolicShapeInference``);
a ``Shape`` node whose input's dimensions are all known numbers or named dimensions of a graph input is
replaced by those numbers and a ``Shape`` of that input. Then nodes and weights no output depends on are
removed. The outputs are bitwise the same (the folded values are what the ``Shape`` read); where inference
fails the graph is left as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _shapes(model: Any) -> dict[str, list[int | str | None]]:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes: dict[str, list[int | str | None]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if not vi.type.tensor_type.HasField("shape"):
            continue
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in vi.type.tensor_type.shape.dim]
    return shapes


def fold_shapes(model: Any) -> int:
    """Replace foldable ``Shape`` nodes in ``model`` (an ``onnx.ModelProto``, changed in place); prune. Returns
    how many were replaced."""
    from onnx import helper, numpy_helper

    try:
        shapes = _shapes(model)
    except Exception:  # noqa: BLE001 - inference gives up on some graphs; they stay correct, only larger
        return 0
    inputs = {i.name for i in model.graph.input}
    named: dict[str, tuple[str, int]] = {}
    for name in inputs:
        for axis, dim in enumerate(shapes.get(name) or []):
            if isinstance(dim, str):
                named.setdefault(dim, (name, axis))
    nodes: list[Any] = []
    replaced = 0
    for node in model.graph.node:
        dims = shapes.get(node.input[0]) if node.op_type == "Shape" and node.input else None
        if dims is not None and node.input[0] not in inputs:
            attrs = {a.name: a.i for a in node.attribute}
            dims = dims[attrs.get("start", 0):attrs.get("end", len(dims))]
            if dims and all((isinstance(d, int) and d > 0) or (isinstance(d, str) and d in named) for d in dims):
                parts = []
                for k, dim in enumerate(dims):
                    part = f"{node.output[0]}__dim{k}"
                    if isinstance(dim, int):
                        nodes.append(helper.make_node("Constant", [], [part],
                                                      value=numpy_helper.from_array(np.array([dim], np.int64))))
                    else:
                        source, axis = named[str(dim)]
                        nodes.append(helper.make_node("Shape", [source], [part], start=axis, end=axis + 1))
                    parts.append(part)
                nodes.append(helper.make_node("Concat", parts, [node.output[0]], axis=0))
                replaced += 1
                continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    prune(model)
    return replaced


def prune(model: Any) -> None:
    """Remove nodes and initializers no graph output depends on (``model`` changed in place)."""
    need = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(node.input)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    weights = [w for w in model.graph.initializer if w.name in need]
    del model.graph.initializer[:]
    model.graph.initializer.extend(weights)
    del model.graph.value_info[:]


def bypass_lone_concats(model: Any) -> int:
    """Rewire around ``Concat`` nodes of one input (a cache "update" of a full cross-attention cache traces to
    ``cat([keys])``): each copies its input every decoder step for nothing (Whisper tiny.en int8: 18% of a
    step, measured). Consumers read the input directly; a graph output keeps an ``Identity``. Returns the count."""
    from onnx import helper

    outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Concat" and len(node.input) == 1:
            if node.output[0] in outputs:
                nodes.append(helper.make_node("Identity", [rename.get(node.input[0], node.input[0])], list(node.output)))
            else:
                rename[node.output[0]] = rename.get(node.input[0], node.input[0])
            continue
        nodes.append(node)
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(rename)


def fold_file(path: Path) -> int:
    """:func:`fold_shapes` on the graph at ``path`` (weights inside the file), saved back when anything changed."""
    import onnx

    model = onnx.load(str(path))
    before = len(model.graph.node)
    replaced = fold_shapes(model) + bypass_lone_concats(model)
    if replaced or len(model.graph.node) != before:
        onnx.save(model, str(path))
    return replaced
