"""``gpux serve``: the HTTP API (FastAPI + uvicorn), bound to loopback unless told otherwise."""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from typing import Any, Optional

import typer

from gpux.cli import common
from gpux.errors import GpuxError, UsageError

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?$", re.I)


def parse_bytes(text: str) -> int:
    """``4GB``, ``512MiB``, ``1e9`` style sizes -> bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"{text!r} is not a size", hint="use e.g. 4GB, 512MB or a number of bytes")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    base = 1024 if "I" in (m.group(2) or "").upper() else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(unit or " "))


def serve(
    models: list[str] = typer.Argument(None, help="Models to load at start (others load on first request)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),  # noqa: UP007
    port: Optional[int] = typer.Option(None, "--port", min=0, max=65535, help="Port (default 8080)."),  # noqa: UP007
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="e.g. 4GB; LRU-evict idle models past it."),  # noqa: UP007
    keep_alive: str = typer.Option("5m", "--keep-alive", help="Unload a model idle this long (-1: never)."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", min=1,  # noqa: UP007
                                                 help="Items per batched call (default 32; 1: no batching)."),
    max_queue_delay_ms: float = typer.Option(0.0, "--max-queue-delay-ms", min=0,
                                             help="Wait this long to fill a batch (0: take what is queued)."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Queued requests per model before 429."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.001, help="Seconds before a queued request gets 504."),
    max_items: int = typer.Option(2048, "--max-items", min=1, help="Items (texts) one request may hold; past it 413."),
    max_tokens: int = typer.Option(300_000, "--max-tokens", min=1,
                                   help="Tokens one request may use (task models); past it 413."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="GPUX_API_KEY", help="Require Bearer KEY."),  # noqa: UP007
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", min=0.001, help="Largest request body accepted."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads per model (default: cores "  # noqa: UP007
                                          "÷ instances)."),
    instances: Optional[int] = typer.Option(None, "--instances", min=1, max=64, help="Batches run at once per "  # noqa: UP007
                                            "model, sharing its session (default 1)."),
    max_in_flight: Optional[int] = typer.Option(None, "--max-in-flight", min=1, help="POST requests handled at "  # noqa: UP007
                                                "once; past it 429 before the body is read (default: max-queue + "
                                                "max-batch-size x instances)."),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", min=1, help="Open connections; past "  # noqa: UP007
                                                  "it the oldest one still sending headers is closed (default: the "
                                                  "open-file limit less 128)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.001,
                                         help="Seconds a client has to send a request's headers (then 408)."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", min=0.001,
                                       help="Seconds a client has to send a request's body (then 408)."),
    max_sequences: Optional[int] = typer.Option(None, "--max-sequences", min=1, help="Text generation: sequences "  # noqa: UP007
                                                "decoded together per model (default: the machine's tier, gpux info)."),
    kv_budget: Optional[int] = typer.Option(None, "--kv-budget", min=1, help="Text generation: key/value cache "  # noqa: UP007
                                            "tokens reserved per model (prompt + max new tokens of each request); "
                                            "past it 429 (default: the machine's tier)."),
    prefill_chunk: int = typer.Option(512, "--prefill-chunk", min=1, help="Text generation: prompt tokens "
                                      "prefilled per step; longer prompts are prefilled between decode steps."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.001,
                                          help="Text generation: seconds one generation may run (then 504)."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve replicas (docs/scale.md; needs the ray extra)."),
    ray_address: Optional[str] = typer.Option(None, "--address", help="With --ray: join this Ray cluster (auto, "  # noqa: UP007
                                          "HOST:PORT or ray://HOST:PORT) instead of starting Ray here."),
    replicas: Optional[int] = typer.Option(None, "--replicas", min=1, help="With --ray: a fixed number of "  # noqa: UP007
                                           "replicas (default: gpux.yml serving, else 1)."),
    autoscale: Optional[str] = typer.Option(None, "--autoscale", metavar="MIN:MAX", help="With --ray: "  # noqa: UP007
                                            "autoscale between MIN and MAX replicas."),
) -> None:
    """Serve stored models over HTTP: native, OpenAI, Ollama and KServe v2 routes.

    Host, port, batch size and instances not given as flags come from the first MODEL's gpux.yml
    ``serving`` section when it has one, then from the defaults.
    """
    try:
        import uvicorn

        from gpux.serve.app import ServeSettings, create_app, keep_alive_seconds
        from gpux.serve.batcher import BatchConfig
        from gpux.serve.manager import GenerationConfig, ModelManager
        from gpux.serve.protocol import default_max_connections, server_config
    except ImportError as exc:
        raise UsageError(f"serving needs the serve extra ({exc.name} is missing)",
                         hint="pip install 'gpux[serve]'") from exc
    from gpux.store.local import Store

    serving = Store().manifest(models[0]).serving if models else {}
    host = _host(host, serving.get("host"), api_key)
    port = port if port is not None else int(serving.get("port") or 8080)
    max_batch_size = max_batch_size or int(serving.get("batch_size") or 32)
    instances = instances or int(serving.get("instances") or 1)
    if not ray and (ray_address is not None or replicas is not None or autoscale is not None):
        raise UsageError("--address, --replicas and --autoscale only apply with --ray", hint="add --ray")
    if ray:
        return _serve_ray(models or [], serving, host=host, port=port, address=ray_address, replicas=replicas,
                          autoscale=autoscale, keep_alive=keep_alive, spec_args=dict(
                              budget_bytes=parse_bytes(memory_budget) if memory_budget else None,
                              max_sequences=max_sequences or int(serving.get("max_sequences") or 0) or None,
                              kv_budget=kv_budget or int(serving.get("kv_budget") or 0) or None,
                              prefill_chunk=prefill_chunk, request_timeout_s=request_timeout, threads=threads,
                              batch=BatchConfig(max_batch=max_batch_size, max_delay_ms=max_queue_delay_ms,
                                                max_queue=max_queue, timeout_s=timeout, instances=instances,
                                                max_items_per_request=max_items, max_tokens_per_request=max_tokens)),
                          settings=ServeSettings(api_key=api_key, max_body_bytes=int(max_body_mb * 1e6),
                                                 preload=tuple(models or ()), header_timeout_s=header_timeout,
                                                 body_timeout_s=body_timeout, max_in_flight=max_in_flight))
    from gpux.engine.hardware import describe, tier_of

    tier = tier_of(describe())  # defaults for what no flag or gpux.yml says (docs/hardware.md)
    manager = ModelManager(
        budget_bytes=parse_bytes(memory_budget) if memory_budget else tier.defaults.memory_budget_bytes,
        generation=GenerationConfig(max_sequences=max_sequences or int(serving.get("max_sequences") or 0) or
                                    tier.defaults.max_sequences,
                                    kv_budget_tokens=kv_budget or int(serving.get("kv_budget") or 0) or
                                    tier.defaults.kv_cache_tokens,
                                    prefill_chunk=prefill_chunk, request_timeout_s=request_timeout),
        keep_alive_s=keep_alive_seconds(keep_alive) or 0.0,
        batch=BatchConfig(max_batch=max_batch_size, max_delay_ms=max_queue_delay_ms, max_queue=max_queue,
                          timeout_s=timeout, instances=instances, max_items_per_request=max_items,
                          max_tokens_per_request=max_tokens),
        threads=threads)
    for ref in models or []:
        manager.require(ref)  # fail before binding the port
    settings = ServeSettings(api_key=api_key, max_body_bytes=int(max_body_mb * 1e6), preload=tuple(models or ()),
                             header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                             max_connections=max_connections or default_max_connections(), max_in_flight=max_in_flight)
    app = create_app(manager, settings)
    address: str = host
    sock = _bind(address, port)  # before uvicorn: a busy port is one line naming --port, not uvicorn's log

    class Server(uvicorn.Server):
        async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:  # noqa: UP007
            try:
                await super().startup(sockets)
            except SystemExit:  # uvicorn's way to say the app did not start: gpux says why, below
                self.should_exit = True
                return
            if self.started:
                _banner(address, sock.getsockname()[1], sorted(manager.models), tier, manager)

    server = Server(server_config(app, settings, host=address, port=port))  # configures uvicorn's loggers
    if not common.state["verbose"]:  # a failed preload is gpux's one-line error below, not uvicorn's traceback too
        logging.getLogger("uvicorn.error").addFilter(
            lambda _record: getattr(app.state, "startup_error", None) is None)
    server.run(sockets=[sock])
    if not server.started:  # the app did not start: a preload failed
        error = getattr(app.state, "startup_error", None)
        raise error if isinstance(error, GpuxError) else GpuxError(
            "the server did not start", hint="the lines above say why")


def _serve_ray(models: list[str], serving: dict[str, Any], *, host: str, port: int, address: str | None,
               replicas: int | None, autoscale: str | None, keep_alive: str,
               spec_args: dict[str, Any], settings: Any) -> None:
    """``--ray``: the same app on Ray Serve replicas (gpux.serve.ray; ray is imported only here)."""
    from gpux.serve.app import keep_alive_seconds
    from gpux.serve.manager import ModelManager
    from gpux.serve.ray.launch import import_ray, scaling

    import_ray()  # a missing extra is one line with the pip command, before anything starts
    from gpux.serve.ray.deployment import ReplicaSpec
    from gpux.serve.ray.launch import serve_on_ray
    from gpux.store.local import Store

    store = Store()
    checker = ModelManager(store=store)
    for ref in models:
        checker.require(ref)  # an unknown model fails here, not in every replica
    batch = spec_args["batch"]
    options = scaling(replicas, autoscale, serving, batch.max_batch * max(1, batch.instances))
    if address is None:
        _bind(host, port).close()  # a busy port is one line naming --port, before Ray starts
    spec = ReplicaSpec(store_root=str(store.root.resolve()), settings=settings,
                       keep_alive_s=keep_alive_seconds(keep_alive) or 0.0, **spec_args)

    def ready(url: str, seconds: float) -> None:
        count = (f"{options['num_replicas']} replica(s)" if "num_replicas" in options else
                 "autoscaling {min_replicas}..{max_replicas} replicas, target {target_ongoing_requests:g} "
                 "requests in flight each".format(**options["autoscaling_config"]))
        common.err_console().print("\n".join([
            f"gpux serve on Ray Serve listening on {url} (started in {seconds:.1f} s)",
            f"  ray: {'a local instance' if address is None else address}; {count}",
            f"  models loaded in every replica: {', '.join(models)}" if models else
            "  models: loaded by each replica on first request; requests for a model go to replicas that have it",
            f"  store: {spec.store_root} (every node must see this path; docs/scale.md)",
            f"  API docs: {url}/docs   (Ctrl-C stops)"]), markup=False, highlight=False, soft_wrap=True)

    serve_on_ray(spec, host=host, port=port, address=address, options=options,
                 verbose=bool(common.state["verbose"]), on_ready=ready)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host(flag: str | None, from_yml: object, api_key: str | None) -> str:
    """The address to bind: loopback unless ``--host`` says otherwise.

    A model's gpux.yml may pick another loopback address, never a public one: a file pulled with a
    model must not open the server to the network (``serving.host: 0.0.0.0`` bound every interface
    with no flag, warning or key). Leaving loopback without ``--api-key`` is allowed, with a warning.
    """
    from gpux.cli import common

    host = flag
    if host is None:
        host = "127.0.0.1"
        if isinstance(from_yml, str) and from_yml:
            if _is_loopback(from_yml):
                host = from_yml
            else:
                common.err_console().print(
                    f"warning: gpux.yml asks for serving.host {from_yml}; binding 127.0.0.1 (pass --host "
                    f"{from_yml} to listen there)", markup=False, highlight=False, soft_wrap=True)
    if not _is_loopback(host) and not api_key:
        common.err_console().print(
            f"warning: listening on {host} without --api-key: anyone who can reach this machine can use the API "
            "(set --api-key or GPUX_API_KEY)", markup=False, highlight=False, soft_wrap=True)
    return host


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a UsageError that names the flag to change."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host!r}: {exc.strerror}", hint="check --host") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use",
                             hint="pick another with --port, or stop the server that holds it") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                         hint="check --host and --port (ports below 1024 need privileges)") from None
    sock.set_inheritable(True)
    return sock


def _banner(host: str, port: int, loaded: list[str], tier: Any, manager: Any) -> None:
    from gpux.cli import common

    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    lines = [f"gpux serve listening on {url}",
             f"  models loaded: {', '.join(loaded)}" if loaded else
             f"  models loaded: none yet (stored models load on their first request; {url}/models lists them)",
             f"  machine: {tier.name} tier ({tier.reason}); memory budget "
             f"{'none' if manager.budget is None else f'{manager.budget / 2**30:.1f} GiB'}, generation: "
             f"{manager.generation.max_sequences} sequences, {manager.generation.kv_budget_tokens} cache tokens per model",
             f"  API docs: {url}/docs   (Ctrl-C stops)"]
    common.err_console().print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
