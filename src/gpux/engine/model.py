"""``gpux.load``: a bundle's graphs in onnxruntime sessions, behind one small object.

A bundle may hold several graphs (an encoder and a decoder, say); all of them are
loaded with the same providers and settings, and ``Model.run`` runs the default
one unless told otherwise. Settings come from, in order of precedence: the
arguments of :func:`load`, the bundle's ``runtime`` section, gpux's defaults.

A bundle whose graphs run apart (its task class says ``lazy_graphs = True``: the
two-tower zero-shot models) creates each graph's session on first use: CLIP asked
only for image embeddings never pays the text tower's load time and memory, nor the
other way round. The cost: a graph that cannot load fails its first request rather
than ``load``. Graphs that always run together (an encoder and its decoder) load at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.engine import providers as _providers
from gpux.engine.options import RuntimeOptions
from gpux.engine.session import Graph
from gpux.store.bundle import Bundle
from gpux.store.local import Store
from gpux.store.resolve import resolve

if TYPE_CHECKING:
    from gpux.tasks import Task


class Graphs(Mapping[str, Graph]):
    """A bundle's graphs by role, each session created on first access (once, under a lock), or all at once.

    Lazy for bundles of several graphs: which ones a request needs is known only when it comes (CLIP's text
    tower for label prompts, its vision tower for images), and each session costs load time and memory.
    """

    def __init__(self, bundle: Bundle, options: RuntimeOptions, requested: list[str], placement: bool,
                 lazy: bool) -> None:
        self._bundle, self._options, self._requested, self._placement = bundle, options, requested, placement
        self._built: dict[str, Graph] = {}
        self._lock = threading.Lock()
        if not lazy:
            for role in bundle.manifest.graphs:
                self.__getitem__(role)

    def __getitem__(self, role: str) -> Graph:
        graph = self._built.get(role)
        if graph is not None:
            return graph
        m = self._bundle.manifest
        if role not in m.graphs:
            raise KeyError(role)
        with self._lock:
            if role not in self._built:
                main = role == m.default_graph
                self._built[role] = Graph(
                    self._bundle.graph_path(role), self._role_options(role), self._requested,
                    declared_inputs=m.inputs if main else None,
                    declared_outputs=m.outputs if main else None,
                    placement=self._placement)
            return self._built[role]

    def _role_options(self, role: str) -> RuntimeOptions:
        """The model's options with the bundle's settings for this graph (``runtime.graphs.<role>``: a
        decoder's one-row steps keep no pre-packed weight copy) applied; the user's own choices stay."""
        per_role = (self._bundle.manifest.runtime.get("graphs") or {}).get(role) or {}
        known = {k: v for k, v in per_role.items() if k in ("prepacking", "memory_arena") and isinstance(v, bool)}
        return self._options.override(**known) if known else self._options

    def __iter__(self) -> Iterator[str]:
        return iter(self._bundle.manifest.graphs)

    def __len__(self) -> int:
        return len(self._bundle.manifest.graphs)

    @property
    def built(self) -> dict[str, Graph]:
        """The graphs whose sessions exist now, by role (none is created by reading this)."""
        return dict(self._built)


class Model:
    """A loaded model. ``run`` is safe to call from several threads at once."""

    def __init__(self, bundle: Bundle, options: RuntimeOptions, *, placement: bool = False,
                 lazy: bool | None = None) -> None:
        self.bundle = bundle
        self.options = options
        self.requested = _providers.resolve(options.provider)
        m = bundle.manifest
        if lazy is None:  # the task says whether its graphs run apart (two towers) or together (encoder-decoder)
            from gpux.tasks import task_class

            lazy = len(m.graphs) > 1 and bool(getattr(task_class(m.task), "lazy_graphs", False))
        #: Sessions by role; ``lazy``: each made on first use (default: when the task's class asks for it).
        self.graphs = Graphs(bundle, options, self.requested, placement, lazy)
        self._info: dict[str, Any] | None = None
        self._task: Task | None = None
        self._task_built = False
        self._task_lock = threading.Lock()

    @property
    def _default(self) -> Graph:
        return self.graphs[self.bundle.manifest.default_graph]

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def providers(self) -> list[str]:
        """Providers the default graph's session really has, best first, as the CLI names them (``cpu``).
        Before any of a lazy model's sessions exists: those asked for (reading this creates none)."""
        return [_providers.alias_of(p) for p in self.ort_providers]

    @property
    def ort_providers(self) -> list[str]:
        """The same providers under onnxruntime's names (``CPUExecutionProvider``)."""
        built = self.graphs.built
        graph = built.get(self.bundle.manifest.default_graph) or next(iter(built.values()), None)
        return list(graph.providers if graph is not None else self.requested)

    @property
    def placement(self) -> dict[str, int] | None:
        """Nodes per provider (short names), e.g. ``{"cpu": 57}``.

        With ``load(placement=True)`` (what the CLI does): the nodes the first run
        executed, from onnxruntime's profiler, None before that run. Otherwise the
        nodes onnxruntime assigned at load, read on first access (untaken ``If``
        branches counted too); ``run`` is not slowed either way.
        """
        return self._default.placement

    @property
    def inputs(self) -> list[Any]:
        return self._default.inputs

    @property
    def outputs(self) -> list[Any]:
        return self._default.outputs

    @property
    def load_ms(self) -> float:
        return sum(g.load_ms for g in self.graphs.built.values())  # the sessions made so far

    @property
    def settings(self) -> dict[str, Any]:
        return self._default.settings

    def check(self, inputs: Mapping[str, Any], graph: str | None = None) -> Mapping[str, Any]:
        """Validate and cast ``inputs`` without running: what a server does before queueing a request."""
        return (self._default if graph is None else self.graphs[graph]).check(inputs)

    def run(self, inputs: Mapping[str, Any], graph: str | None = None) -> dict[str, np.ndarray]:
        """Run the default graph (or ``graph``) on ``inputs``; outputs by name."""
        if graph is None:
            return self._default.run(inputs)
        return self.graphs[graph].run(inputs)

    @property
    def task(self) -> Task | None:
        """The model's task pipeline (tokenize -> run -> pool/softmax), built on first use; None for raw tensors."""
        if not self._task_built:
            with self._task_lock:
                if not self._task_built:
                    from gpux.tasks import for_model

                    self._task = for_model(self)
                    if self._task is not None and hasattr(self._task, "allow_paths"):
                        self._task.allow_paths = True  # Python and the CLI may name files; the server never does
                    self._task_built = True
        return self._task

    def predict(self, inputs: Any) -> dict[str, Any]:
        """What ``gpux run`` answers, from Python.

        A task model takes text: ``"one text"``, ``["a", "b"]`` or the CLI's payload
        ``{"inputs": [...]}``, and returns the task's answer (``{"embeddings": ...}``,
        ``{"predictions": ...}``). A raw-tensor model takes its inputs by name and
        returns its outputs by name, as :meth:`run` does.
        """
        task = self.task
        if task is None:
            if not isinstance(inputs, Mapping):
                from gpux.errors import InputNameError

                raise InputNameError(f"model {self.name!r} has no task: give its inputs by name",
                                     hint="the model takes " + ", ".join(
                                         f"{s.name}: {s.describe()}" for s in self.inputs))
            return self.run(inputs)
        payload = dict(inputs) if isinstance(inputs, Mapping) else {"inputs": inputs}
        return task(payload)

    def generate(self, prompt: str | list[str] | list[dict[str, str]], *, stream: bool = False,
                 **parameters: Any) -> Any:
        """Generate text from a text-generation model.

        ``prompt`` is a prompt, a list of prompts, or a chat (a list of ``{"role", "content"}`` messages, to
        which the model's chat template is applied). ``parameters`` are the generation parameters
        (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``, ``seed``, ``stop``...). With
        ``stream=True`` (one prompt or chat) it returns an iterator of tokens as they are made (each has
        ``.text``, ``.id``, ``.logprob``, ``.finish_reason``); otherwise what ``gpux run`` answers.
        """
        from gpux.errors import UsageError

        task = self.task
        if task is None or not hasattr(task, "stream"):
            raise UsageError(f"model {self.name!r} is not a text-generation model ({self.bundle.manifest.task})",
                             hint="use model(...) or model.predict(...) for its task")
        chat = isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)
        payload = {"messages" if chat else "inputs": prompt, "parameters": parameters}
        return task.stream(payload) if stream else task(payload)

    def __call__(self, inputs: Any) -> dict[str, Any]:
        """``model(inputs)`` is :meth:`predict`."""
        return self.predict(inputs)

    @property
    def info(self) -> dict[str, Any]:
        """What ``gpux inspect`` shows, as JSON-ready data."""
        if self._info is None:
            from gpux.engine.inspect import describe

            self._info = describe(self)
        return self._info

    def __repr__(self) -> str:
        return f"<gpux.Model {self.name!r} providers={self.providers}>"


def load(model: str | Path | Bundle, provider: str | None = None, *,
         intra_op_threads: int | None = None, inter_op_threads: int | None = None,
         graph_optimization: str | None = None, placement: bool = False,
         log_level: int | None = None, spinning: bool | None = None, store: Store | None = None) -> Model:
    """Load ``model``: an ``.onnx`` path, a bundle folder, a folder with gpux.yml, or a built name.

    ``provider`` is ``auto`` (best available), or a name such as ``cpu`` or
    ``cuda``; an unavailable one raises :class:`~gpux.errors.ProviderUnavailableError`.
    With ``placement=True`` the first run is profiled to count the nodes each provider
    executed; without it ``Model.placement`` reports the nodes assigned at load.
    """
    bundle = model if isinstance(model, Bundle) else resolve(str(model), store)
    options = RuntimeOptions.from_dict(bundle.manifest.runtime).override(
        provider=provider, intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads, graph_optimization=graph_optimization,
        log_level=log_level, spinning=spinning)
    return Model(bundle, options, placement=placement)
