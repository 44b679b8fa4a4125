"""A model bundle: one or more ONNX graphs, their assets and a manifest, in one folder.

Layout of a bundle folder::

    manifest.json          this module's Manifest, schema 1
    model.onnx             a graph (roles name them: "model", or "encoder"/"decoder"...)
    model.onnx.data        external weights, kept beside the graph that names them
    tokenizer.json ...     assets (tokenizer, processor config, labels) by role

A bare ``.onnx`` file is a bundle of one graph with an in-memory manifest, so
every layer above sees the same shape whether a model was built, pulled or
pointed at. The manifest is plain JSON read with the standard library: the run
path must not pay for pydantic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpux.errors import ModelLoadError, ModelNotFoundError

MANIFEST = "manifest.json"
SCHEMA = 1


@dataclass
class Manifest:
    """What a bundle holds and how it wants to be run."""

    name: str
    graphs: dict[str, str]
    default_graph: str = "model"
    task: str | None = None
    tag: str = "latest"
    assets: dict[str, str] = field(default_factory=dict)
    #: Declared input specs (narrower than the graph's own), or None to use the graph's.
    inputs: list[dict[str, Any]] | None = None
    #: Outputs to return, in order ({name, dtype|None, shape|None}), or None for all.
    outputs: list[dict[str, Any]] | None = None
    #: Session settings: provider, intra_op_threads, inter_op_threads, graph_optimization.
    runtime: dict[str, Any] = field(default_factory=dict)
    #: Settings for `gpux serve`: host, port, batch_size.
    serving: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    #: How the graph was made from the source: exporter, versions, opset, dtype, parity figures.
    conversion: dict[str, Any] = field(default_factory=dict)
    #: File name -> {"sha256": hex, "size": bytes} for everything in the folder.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    gpux_version: str = ""
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> Manifest:
        if data.get("schema") != SCHEMA:
            raise ModelLoadError(f"{where}: manifest schema {data.get('schema')!r} is not {SCHEMA}",
                                 hint="rebuild the model with this gpux version (gpux build)")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise ModelLoadError(f"{where}: unknown manifest keys {extra}",
                                 hint="the bundle was written by a newer gpux; upgrade gpux")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelLoadError(f"{where}: manifest is incomplete: {exc}",
                                 hint="rebuild the model (gpux build)") from exc


@dataclass
class Bundle:
    """A manifest plus the folder its file names are relative to."""

    root: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    def graph_path(self, role: str | None = None) -> Path:
        """Path of the graph for ``role`` (the default graph when None)."""
        role = role or self.manifest.default_graph
        try:
            return self.root / self.manifest.graphs[role]
        except KeyError:
            roles = ", ".join(self.manifest.graphs)
            raise ModelNotFoundError(f"bundle {self.name!r} has no graph {role!r}",
                                     hint=f"its graphs are: {roles}") from None

    @classmethod
    def from_onnx(cls, path: Path) -> Bundle:
        """A one-graph bundle around a bare ``.onnx`` file, nothing written to disk."""
        path = path.resolve()
        return cls(path.parent, Manifest(name=path.stem, graphs={"model": path.name},
                                         source={"kind": "file", "uri": str(path)}))

    @classmethod
    def from_dir(cls, path: Path) -> Bundle:
        """Read ``path/manifest.json``; errors name the folder and what to do."""
        mpath = path / MANIFEST
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelNotFoundError(f"{path} has no {MANIFEST}",
                                     hint="build it with gpux build, or point at an .onnx file") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{mpath} cannot be read: {exc}",
                                 hint="rebuild the model (gpux build)") from exc
        return cls(path, Manifest.from_dict(data, mpath))
