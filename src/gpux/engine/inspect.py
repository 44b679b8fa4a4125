"""What ``gpux inspect`` reports: signature from the session, the rest from the file itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpux.engine import onnxproto, providers

if TYPE_CHECKING:
    from gpux.engine.model import Model


def describe(model: Model) -> dict[str, Any]:
    """JSON-ready facts about every graph of ``model`` plus this machine's providers."""
    m = model.bundle.manifest
    graphs = {}
    for role, graph in model.graphs.items():
        proto = onnxproto.read(graph.path)
        data_bytes = sum((graph.path.parent / loc).stat().st_size
                         for loc in proto.graph.external_data
                         if (graph.path.parent / loc).is_file())
        graphs[role] = {
            "file": str(graph.path),
            "file_bytes": graph.path.stat().st_size,
            "external_data_bytes": data_bytes,
            "ir_version": proto.ir_version,
            "opsets": proto.opsets,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "graph_name": proto.graph.name,
            "doc_string": proto.doc_string,
            "metadata": proto.metadata,
            "parameters": proto.graph.parameters,
            "parameters_by_dtype": dict(proto.graph.parameters_by_dtype.most_common()),
            "nodes": proto.graph.nodes,
            "op_types": dict(proto.graph.op_types.most_common()),
            "inputs": [s.to_json() for s in graph.inputs],
            "outputs": [s.to_json() for s in graph.outputs],
        }
    return {
        "name": m.name,
        "task": m.task,
        "source": m.source,
        "conversion": m.conversion,
        "default_graph": m.default_graph,
        "graphs": graphs,
        "assets": m.assets,
        "runtime": model.settings,
        "providers": {
            "session": list(model.providers),
            "available": [providers.alias_of(p) for p in providers.available()],
        },
    }
