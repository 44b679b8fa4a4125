"""The HTTP layer: FastAPI app, errors as JSON, API key, body limit, and gpux's native routes.

The model manager (what is loaded) and the batcher (how requests become calls)
live in their own modules; this one only translates HTTP to them and back.
OpenAI-, Ollama- and KServe-compatible routes are in :mod:`gpux.serve.compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from gpux import errors
from gpux.engine.providers import alias_of
from gpux.serve.batcher import BatchTiming, QueueFullError
from gpux.serve.manager import Loaded, ModelManager, ModelTooLargeError


@dataclass
class ServeSettings:
    api_key: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    preload: tuple[str, ...] = ()
    reap_interval_s: float = 1.0


class BodyTooLargeError(errors.UsageError):
    """The request body is over the server's limit."""


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (QueueFullError, 429), (BodyTooLargeError, 413), (ModelTooLargeError, 507), (errors.ModelNotFoundError, 404),
    (errors.InputError, 400), (errors.UsageError, 400), (errors.ProviderError, 503),
    (asyncio.TimeoutError, 504), (errors.GpuxError, 500),
)
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama-style keep_alive: ``"5m"``, ``"30s"``, ``"1h"``, seconds as a number; negative = forever."""
    if value is None:
        return None
    m = _DURATION.match(str(value).strip())
    if not m or isinstance(value, bool):
        raise errors.UsageError(f"keep_alive {value!r} is not a duration", hint='use e.g. "5m", "30s", 0 or -1')
    scale = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def status_of(exc: BaseException) -> int:
    return next(code for kind, code in _STATUS if isinstance(exc, kind))


def error_body(request: Request, exc: BaseException, status: int) -> dict[str, Any]:
    message = exc.message if isinstance(exc, errors.GpuxError) else (str(exc) or "the request timed out")
    hint = exc.hint if isinstance(exc, errors.GpuxError) else None
    if request.url.path.startswith("/v1/"):  # OpenAI's error object
        return {"error": {"message": message + (f" ({hint})" if hint else ""), "type": type(exc).__name__,
                          "param": None, "code": status}}
    return {"error": message, **({"hint": hint} if hint else {})}


def timings(start: float, load_s: float, t: BatchTiming | None) -> dict[str, int]:
    """Ollama-style durations in nanoseconds."""
    ns = 1_000_000_000
    return {"total_duration": int((time.perf_counter() - start) * ns), "load_duration": int(load_s * ns),
            "queue_duration": int(t.queue_s * ns) if t else 0, "inference_duration": int(t.inference_s * ns) if t else 0}


def providers(loaded: Loaded) -> list[str]:
    return [alias_of(p) for p in loaded.model.providers]


async def run_items(app: FastAPI, route: str, ref: str, items: list[Any], keep_alive: Any,
                    check: Callable[[Loaded, list[Any]], list[Any]] | None = None
                    ) -> tuple[Loaded, list[Any], dict[str, int]]:
    """Queue ``items`` on ``ref``'s batcher, record stats, return (model, results, timings)."""
    manager: ModelManager = app.state.manager
    start = time.perf_counter()
    name = manager.require(ref)
    status, queue_s = 500, None
    try:
        async with manager.use(name, keep_alive_seconds(keep_alive)) as (loaded, load_s):
            if check is not None:
                items = check(loaded, items)
            results, t = await loaded.batcher.submit(items)
            status, queue_s = 200, t.queue_s
            return loaded, results, timings(start, load_s, t)
    except BaseException as exc:
        status = status_of(exc) if isinstance(exc, Exception) else 500
        raise
    finally:
        manager.metrics.request(name, route, status, time.perf_counter() - start, queue_s)


def create_app(manager: ModelManager, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = False
        reaper = asyncio.get_running_loop().create_task(_reap(manager, settings.reap_interval_s))
        try:
            for ref in settings.preload:
                await manager.get(ref)
            app.state.ready = True
            yield
        finally:
            reaper.cancel()
            await manager.close()

    app = FastAPI(title="gpux", lifespan=lifespan)
    app.state.manager = manager
    app.state.settings = settings

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        open_paths = ("/health", "/v2/health/live", "/v2/health/ready")
        if settings.api_key and request.url.path not in open_paths:
            if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
                return JSONResponse({"error": "missing or wrong API key", "hint": "send Authorization: Bearer KEY"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return JSONResponse({"error": f"request body of {length} bytes is over the limit of "
                                          f"{settings.max_body_bytes}", "hint": "send fewer or shorter inputs"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc) if any(isinstance(exc, k) for k, _ in _STATUS) else 500
        if status == 500 and not isinstance(exc, errors.GpuxError):
            exc = errors.GpuxError(f"internal error: {type(exc).__name__}: {exc}", hint="please report it")
        headers = {"Retry-After": "1"} if status == 429 else None
        return JSONResponse(error_body(request, exc, status), status_code=status, headers=headers)

    for kind, _ in _STATUS:
        app.add_exception_handler(kind, on_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        err = errors.UsageError(f"{where}: {first.get('msg')}", hint="see the API docs for the request shape")
        return JSONResponse(error_body(request, err, 400), status_code=400)

    from gpux.serve import compat, native

    native.register(app)
    compat.register(app)
    return app


async def _reap(manager: ModelManager, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            await manager.reap()


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, with a limit on streamed (chunked) bodies too."""
    import json

    limit = request.app.state.settings.max_body_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"request body is over the limit of {limit} bytes",
                                    hint="send fewer or shorter inputs")
    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise errors.UsageError(f"the body is not valid JSON: {exc}", hint="send a JSON object") from exc
    if not isinstance(data, dict):
        raise errors.UsageError("the body must be a JSON object", hint='e.g. {"model": "...", "input": "..."}')
    return data
