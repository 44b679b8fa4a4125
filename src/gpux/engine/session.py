"""One ONNX graph in one onnxruntime session: load, validate inputs, run, report placement.

``Graph.run`` is the hot path: it validates with a precompiled
:class:`~gpux.engine.signature.InputPlan` and calls the session's C++ binding
directly. The binding is what ``InferenceSession.run`` calls too, after its own
Python-side checks (which ours replace) and its CPU fallback on provider errors
(which gpux disables: a failing GPU must be an error, not a silent slowdown).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpux.engine.options import RuntimeOptions
from gpux.engine.providers import alias_of
from gpux.engine.signature import InputPlan, TensorSpec
from gpux.errors import ConfigError, ProviderUnavailableError, map_exceptions


class Graph:
    """A loaded graph. Thread-safe for concurrent ``run`` calls (onnxruntime's guarantee)."""

    def __init__(self, path: Path, options: RuntimeOptions, providers: Sequence[str], *,
                 declared_inputs: list[dict[str, Any]] | None = None,
                 declared_outputs: list[dict[str, Any]] | None = None,
                 placement: bool = False) -> None:
        import onnxruntime as ort

        self.path = path
        self._profile_dir = _profile_dir() if placement else None
        if self._profile_dir:  # removed however this graph ends: a failed load or run, or exit before one
            import weakref

            weakref.finalize(self, shutil.rmtree, self._profile_dir, True)
        prefix = os.path.join(self._profile_dir, "p") if self._profile_dir else None
        so, self.settings = options.session_options(prefix)
        # onnxruntime logs through its default logger too (a failed load's "could not write a profile"):
        # the session's level applies to both, so only gpux's one-line error reaches stderr unless -v.
        ort.set_default_logger_severity(options.log_level)
        start = time.perf_counter()
        with map_exceptions(f"loading {path.name}", loading=True):
            sess = ort.InferenceSession(str(path), so, providers=list(providers))
        self.load_ms = (time.perf_counter() - start) * 1e3
        sess.disable_fallback()
        self.session = sess
        self.providers: list[str] = sess.get_providers()
        if providers and providers[0] not in self.providers:
            raise ProviderUnavailableError(
                f"onnxruntime could not start provider {alias_of(providers[0])!r} "
                f"(it ran with {', '.join(map(alias_of, self.providers))})",
                hint="check the GPU driver and CUDA/TensorRT libraries, or use --provider cpu")
        graph_in = [TensorSpec.from_ort(a) for a in sess.get_inputs()]
        graph_out = [TensorSpec.from_ort(a) for a in sess.get_outputs()]
        self.inputs = narrow(graph_in, declared_inputs, "inputs")
        self.outputs = narrow(graph_out, declared_outputs, "outputs", subset=True)
        self._plan = InputPlan(self.inputs)
        self._out_names = [s.name for s in self.outputs]
        # The binding behind InferenceSession.run; fall back to the public call if it moves.
        self._run = getattr(getattr(sess, "_sess", None), "run", None) or sess.run
        self._placement: dict[str, int] | None = None

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate ``inputs``, run the graph, return outputs by name.

        Raises :class:`~gpux.errors.InputError` for inputs that do not fit and
        :class:`~gpux.errors.InferenceError` if onnxruntime fails.
        """
        feed = self._plan.prepare(inputs)
        try:
            outs = self._run(self._out_names, feed, None)
        except Exception as exc:
            with map_exceptions(f"running {self.path.name}"):
                raise exc
        if self._profile_dir is not None:
            self._finish_placement()
        return dict(zip(self._out_names, outs))

    @property
    def placement(self) -> dict[str, int] | None:
        """Nodes per provider (short names).

        Loaded with ``placement=True``: the nodes the first run executed, from the
        profiler (None until that run). Otherwise: the nodes onnxruntime assigned at
        load, read on first access from its assignment record (every branch of an
        ``If`` counted; None where onnxruntime predates that record). Either way
        ``run`` pays nothing for it after the first call.
        """
        if self._placement is None and self._profile_dir is None:
            self._placement = assigned_placement(self.session)
        return self._placement

    def ran(self) -> None:
        """Tell the graph its session ran outside :meth:`run` (an IOBinding loop): the first run's
        placement is read then, and profiling stops, as after a first :meth:`run`."""
        if self._profile_dir is not None:
            self._finish_placement()

    def check(self, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The validated, cast feed for ``inputs``; raises :class:`~gpux.errors.InputError`."""
        return self._plan.prepare(inputs)

    def _finish_placement(self) -> None:
        """Read which provider ran each node of the first run, then stop profiling."""
        prof_dir, self._profile_dir = self._profile_dir, None
        path = self.session.end_profiling()
        try:
            self._placement = count_placement(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            self._placement = None
        finally:
            shutil.rmtree(prof_dir or "", ignore_errors=True)  # the profile folder is ours alone


def _profile_dir() -> str:
    """A private folder for onnxruntime's profile, under $GPUX_HOME/tmp (gpux writes nowhere else)."""
    from gpux.store.local import home

    tmp = home() / "tmp"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"profile-{os.getpid()}-", dir=tmp)  # pid: prune reclaims a killed run's
    except OSError:  # a read-only GPUX_HOME must not stop a run
        return tempfile.mkdtemp(prefix="gpux-profile-")


def assigned_placement(session: Any) -> dict[str, int] | None:
    """Nodes per provider as onnxruntime assigned them at load (RuntimeOptions asks it to record that)."""
    read = getattr(session, "get_provider_graph_assignment_info", None)
    if read is None:
        return None
    try:
        counts: Counter[str] = Counter()
        for sub in read():
            counts[alias_of(sub.ep_name)] += len(sub.get_nodes())
    except Exception:  # an onnxruntime without the record, or one not asked to keep it
        return None
    return dict(counts) or None


def count_placement(events: list[dict[str, Any]]) -> dict[str, int]:
    """Nodes executed per provider (short names) from an onnxruntime profile."""
    seen: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") == "Node":
            provider = ev.get("args", {}).get("provider")
            if provider:
                seen[ev["name"].removesuffix("_kernel_time")] = alias_of(provider)
    return dict(Counter(seen.values()))


def narrow(graph: list[TensorSpec], declared: list[dict[str, Any]] | None, what: str,
           subset: bool = False) -> list[TensorSpec]:
    """Apply a bundle's declared specs to the graph's own.

    A declaration must name a real tensor with the graph's dtype and rank; it
    may fix a dynamic dim or rename it. With ``subset`` the declared list also
    selects (and orders) the tensors returned. Raises :class:`ConfigError`.
    """
    if not declared:
        return graph
    by_name = {s.name: s for s in graph}
    out: dict[str, TensorSpec] = {} if subset else dict(by_name)
    for decl in declared:
        name = decl["name"]
        spec = by_name.get(name)
        if spec is None:
            raise ConfigError(f"{what}.{name}: the model has no {what[:-1]} {name!r}",
                              hint=f"its {what} are: {', '.join(by_name)}")
        dtype, shape = decl.get("dtype"), decl.get("shape")
        if dtype and dtype != spec.dtype:
            raise ConfigError(f"{what}.{name}: declared dtype {dtype} but the model's is {spec.dtype}",
                              hint=f"declare dtype: {spec.dtype}")
        dims = spec.shape
        if shape is not None:
            dims = _narrow_dims(f"{what}.{name}", spec, tuple(shape))
        out[name] = TensorSpec(name, spec.dtype, dims)
    return list(out.values())


def _narrow_dims(where: str, spec: TensorSpec, shape: tuple[Any, ...]) -> tuple[Any, ...]:
    if spec.shape is None:
        return shape
    if len(shape) != len(spec.shape):
        raise ConfigError(f"{where}: declared rank {len(shape)} but the model's is "
                          f"{len(spec.shape)} ({spec.describe()})", hint="match the model's rank")
    for axis, (mine, theirs) in enumerate(zip(shape, spec.shape)):
        if isinstance(theirs, int) and isinstance(mine, int) and mine != theirs:
            raise ConfigError(f"{where}: dimension {axis} is fixed to {theirs} in the model, "
                              f"declared {mine}", hint=f"declare {theirs} or a name")
    return tuple(t if isinstance(t, int) else m for m, t in zip(shape, spec.shape))

