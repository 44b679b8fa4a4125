"""One Ray Serve replica: gpux's own model manager and FastAPI app, behind ``@serve.ingress``.

Each replica builds what ``gpux serve`` builds in its one process (:func:`gpux.serve.app.create_app` over
a :class:`~gpux.serve.manager.ModelManager`), so every route, streaming ones included, behaves as on the
plain server, and loading, the memory budget, keep-alive, eviction and dynamic batching stay gpux's, per
replica. Ray adds what one process cannot: replicas on many machines, autoscaling, restarts, and routing.

Routing by model (Ray's model multiplexing): :meth:`GpuxReplica.advertise` is the ``@serve.multiplexed``
function. It loads nothing (the app loads models as it always does, so timings, errors and
``load_duration`` are the plain server's); it tells Ray which models this replica serves, and Ray's
routers then send a request naming one (header set by :mod:`gpux.serve.ray.proxy`) to the replicas that
have it. Models named at start are preloaded and advertised by every replica.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from gpux import errors
from gpux.serve.app import ServeSettings
from gpux.serve.batcher import BatchConfig

#: Models each replica advertises to Ray's routers at most (least recently used first out). Memory is
#: governed by gpux's --memory-budget and keep-alive, not by this count: it only steers routing.
MAX_ADVERTISED = 16
#: The response header naming the replica that answered (operators, and tests, see the spread of load).
REPLICA_HEADER = b"x-gpux-replica"


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica needs to build its manager and app: ``gpux serve``'s flags, sent to every replica.

    ``None`` fields take the defaults of the machine the replica runs on (its tier, ``gpux info``), so a
    cluster of unlike machines sizes each replica to its own node.
    """

    store_root: str
    settings: ServeSettings
    batch: BatchConfig = field(default_factory=BatchConfig)
    budget_bytes: int | None = None
    keep_alive_s: float = 300.0
    max_sequences: int | None = None
    kv_budget: int | None = None
    prefill_chunk: int = 512
    request_timeout_s: float = 600.0
    threads: int | None = None


def build_manager(spec: ReplicaSpec) -> Any:
    """The replica's :class:`ModelManager`, as ``gpux serve`` builds it, with this machine's tier defaults."""
    from gpux.engine.hardware import describe, tier_of
    from gpux.serve.manager import GenerationConfig, ModelManager
    from gpux.store.local import Store

    tier = tier_of(describe())
    return ModelManager(
        budget_bytes=spec.budget_bytes if spec.budget_bytes is not None else tier.defaults.memory_budget_bytes,
        generation=GenerationConfig(max_sequences=spec.max_sequences or tier.defaults.max_sequences,
                                    kv_budget_tokens=spec.kv_budget or tier.defaults.kv_cache_tokens,
                                    prefill_chunk=spec.prefill_chunk, request_timeout_s=spec.request_timeout_s),
        keep_alive_s=spec.keep_alive_s, batch=spec.batch, threads=spec.threads, store=Store(spec.store_root))


#: The replica this process runs (Ray runs one replica per worker process); read by :func:`_build_app`.
_REPLICA: list[Any] = []


def _build_app() -> Any:
    """Ray's app builder: called in the replica, after ``GpuxReplica.__init__``, so the manager is per replica."""
    from gpux.serve.app import create_app

    replica = _REPLICA[-1]
    replica.manager = build_manager(replica.spec)
    app = create_app(replica.manager, replica.spec.settings)
    app.add_middleware(_Affinity, replica=replica)
    return app


@serve.ingress(_build_app)
class GpuxReplica:
    """The deployment class: holds the spec; the app comes from :func:`_build_app`, routes from gpux."""

    def __init__(self, spec: ReplicaSpec) -> None:
        os.environ["GPUX_HOME"] = spec.store_root  # anything that reads the store's home finds the shared one
        self.spec = spec
        self.manager: Any = None  # built with the app, by _build_app
        try:
            self.tag = serve.get_replica_context().replica_id.unique_id.encode()
        except Exception:  # noqa: BLE001 - outside a replica (unit use): any stable tag will do
            self.tag = str(os.getpid()).encode()
        _REPLICA[:] = [self]

    @serve.multiplexed(max_num_models_per_replica=MAX_ADVERTISED)
    async def advertise(self, model_id: str) -> str:
        """Ray's multiplexed loader: checks the model exists (an unknown one is not advertised); loads nothing."""
        self.manager.require(model_id)  # ModelNotFoundError: the caller lets the app answer it
        return model_id


class _Affinity:
    """ASGI middleware in the replica: advertise each request's model to Ray; tag the response's replica."""

    def __init__(self, app: Any, replica: GpuxReplica) -> None:
        self.app, self.replica = app, replica

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, self._after_startup(send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self._advertise(model_id)
        tag = self.replica.tag

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, tag)]}
            await send(message)

        await self.app(scope, receive, tagged)

    async def _advertise(self, model_id: str) -> None:
        try:
            await self.replica.advertise(model_id)
        except errors.GpuxError:  # an unknown model: not advertised; the app answers it as the plain server does
            pass

    def _after_startup(self, send: Any) -> Any:
        """Once the preloads are in (lifespan startup complete), advertise them: every replica holds them."""
        async def wrapped(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                for ref in self.replica.spec.settings.preload:
                    await self._advertise(ref)
            await send(message)
        return wrapped


def application(args: dict[str, Any]) -> Any:
    """A Ray Serve application builder, for Serve config files and KubeRay's ``serveConfigV2``.

    ``import_path: gpux.serve.ray.deployment:application`` with ``args`` ``models`` (a list, or names
    separated by commas: preloaded and advertised by every replica), ``store`` (default ``$GPUX_HOME``),
    ``max_batch_size``, ``threads`` (intra-op threads per replica: the pod's CPUs) and ``api_key`` (default
    ``$GPUX_API_KEY``). Replica counts and autoscaling are set
    in the config's ``deployments: [{name: gpux, ...}]``, as for any Ray Serve application.
    """
    from gpux.store.local import home

    models = args.get("models") or []
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    settings = ServeSettings(api_key=args.get("api_key") or os.environ.get("GPUX_API_KEY") or None,
                             preload=tuple(models))
    spec = ReplicaSpec(store_root=str(args.get("store") or home()), settings=settings,
                       batch=BatchConfig(max_batch=int(args.get("max_batch_size") or 32)),
                       threads=int(args["threads"]) if args.get("threads") else None)
    deployment: Any = serve.deployment(GpuxReplica)
    return deployment.options(  # Ray's default of 5 in flight would cap gpux's batches at 5
        name="gpux", max_ongoing_requests=2 * spec.batch.max_batch, ray_actor_options={"num_cpus": spec.threads or 1}
    ).bind(spec)
