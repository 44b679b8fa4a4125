"""Storing a variant beside the model it was made from: shared by every kind of variant (gpux.convert.optimize
for encoders, gpux.convert.media_variants for image, audio and two-tower models, gpux.convert.lm_variants for
text generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpux.errors import ConvertError
from gpux.store.bundle import Bundle, Manifest
from gpux.store.local import Store


def publish_variant(store: Store, m: Manifest, suffix: str, graph: Path | dict[str, Path],
                    conversion: dict[str, Any]) -> Bundle:
    """Store ``graph`` as ``<name>:<tag>-<suffix>``: the base's other files shared, its conversion record
    extended with ``conversion`` and the base it was made from (name and graph digest).

    ``graph``: the new default graph, or new graphs by role (a two-tower model's text and vision graphs):
    each replaces the base's file of that role, the base's other graphs are shared as they are.
    ``base_digest`` is the base's default graph's digest, what ``gpux pull`` compares to tell whether a stored
    variant is up to date; ``base_digests`` has every graph's when there are several.
    """
    graphs = graph if isinstance(graph, dict) else {m.default_graph: graph}
    digest = {role: m.files[name]["sha256"] for role, name in m.graphs.items()}
    manifest = Manifest(
        name=m.name, tag=f"{m.tag}-{suffix}", task=m.task, graphs=dict(m.graphs), default_graph=m.default_graph,
        assets=dict(m.assets),
        source=dict(m.source), runtime=dict(m.runtime), serving=dict(m.serving),
        conversion={**m.conversion, "base": f"{m.name}:{m.tag}", "base_digest": digest[m.default_graph],
                    **({"base_digests": digest} if len(digest) > 1 else {}), **conversion})
    from gpux.convert.weights import files_of

    mine: dict[str, Path] = {}
    for role, path in graphs.items():
        mine.update(files_of(path, m.graphs[role]))  # the variant's graph, and its weights file when it has one
    replaced = {name for role in graphs for name in (m.graphs[role], m.graphs[role] + ".data")}
    files = {name: store.blobs.path(e["sha256"]) for name, e in m.files.items() if name not in replaced}
    return store.publish(manifest, {**files, **mine}, move=frozenset(mine))


def refuse_below(result: dict[str, Any], suffix: str, cos_floor: float, agree_floor: float) -> None:
    """A ConvertError with the numbers when ``result`` (cosine_min, max_abs, argmax_agreement) is under a floor."""
    if result["cosine_min"] < cos_floor or result.get("argmax_agreement", 1.0) < agree_floor:
        raise ConvertError(
            f"the {suffix} variant loses too much: cosine {result['cosine_min']:.5f} (min {cos_floor}), "
            f"max-abs {result['max_abs']:.3g}" + (f", argmax agreement {result['argmax_agreement']:.1%} "
                                                 f"(min {agree_floor:.0%})" if "argmax_agreement" in result else ""),
            hint="nothing was stored; loosen --min-cosine/--min-agreement to accept it")
