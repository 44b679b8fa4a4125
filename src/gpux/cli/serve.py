"""``gpux serve``: the HTTP API (FastAPI + uvicorn), bound to loopback unless told otherwise."""

from __future__ import annotations

import re
from typing import Optional

import typer

from gpux.errors import UsageError

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
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="GPUX_API_KEY", help="Require Bearer KEY."),  # noqa: UP007
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", min=0.001, help="Largest request body accepted."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads per model (default: cores "  # noqa: UP007
                                          "÷ instances)."),
    instances: Optional[int] = typer.Option(None, "--instances", min=1, max=64, help="Batches run at once per "  # noqa: UP007
                                            "model, sharing its session (default 1)."),
) -> None:
    """Serve stored models over HTTP: native, OpenAI, Ollama and KServe v2 routes.

    Host, port, batch size and instances not given as flags come from the first MODEL's gpux.yml
    ``serving`` section when it has one, then from the defaults.
    """
    try:
        import uvicorn

        from gpux.serve.app import ServeSettings, create_app, keep_alive_seconds
        from gpux.serve.batcher import BatchConfig
        from gpux.serve.manager import ModelManager
    except ImportError as exc:
        raise UsageError(f"serving needs the serve extra ({exc.name} is missing)",
                         hint="pip install 'gpux[serve]'") from exc
    from gpux.store.local import Store

    serving = Store().manifest(models[0]).serving if models else {}
    host = host or serving.get("host") or "127.0.0.1"
    port = port if port is not None else int(serving.get("port") or 8080)
    max_batch_size = max_batch_size or int(serving.get("batch_size") or 32)
    instances = instances or int(serving.get("instances") or 1)
    manager = ModelManager(
        budget_bytes=parse_bytes(memory_budget) if memory_budget else None,
        keep_alive_s=keep_alive_seconds(keep_alive) or 0.0,
        batch=BatchConfig(max_batch=max_batch_size, max_delay_ms=max_queue_delay_ms, max_queue=max_queue,
                          timeout_s=timeout, instances=instances),
        threads=threads)
    for ref in models or []:
        manager.require(ref)  # fail before binding the port
    app = create_app(manager, ServeSettings(api_key=api_key, max_body_bytes=int(max_body_mb * 1e6),
                                            preload=tuple(models or ())))
    uvicorn.run(app, host=host, port=port, log_level="warning")
