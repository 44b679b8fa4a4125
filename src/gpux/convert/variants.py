"""Storing a variant beside the model it was made from: shared by every kind of variant (gpux.convert.optimize
for encoders, gpux.convert.lm_variants for text generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpux.store.bundle import Bundle, Manifest
from gpux.store.local import Store


def publish_variant(store: Store, m: Manifest, suffix: str, graph: Path, conversion: dict[str, Any]) -> Bundle:
    """Store ``graph`` as ``<name>:<tag>-<suffix>``: the base's other files shared, its conversion record
    extended with ``conversion`` and the base it was made from (name and graph digest)."""
    manifest = Manifest(
        name=m.name, tag=f"{m.tag}-{suffix}", task=m.task, graphs=dict(m.graphs), assets=dict(m.assets),
        source=dict(m.source), runtime=dict(m.runtime), serving=dict(m.serving),
        conversion={**m.conversion, "base": f"{m.name}:{m.tag}", "base_digest": m.files[m.graphs["model"]]["sha256"],
                    **conversion})
    from gpux.convert.weights import files_of

    graph_name = m.graphs["model"]
    mine = files_of(graph, graph_name)  # the variant's graph, and its weights file when it has one
    files = {name: store.blobs.path(e["sha256"]) for name, e in m.files.items()
             if name not in (graph_name, graph_name + ".data")}
    return store.publish(manifest, {**files, **mine}, move=frozenset(mine))
