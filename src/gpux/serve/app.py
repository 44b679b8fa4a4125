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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gpux import errors
from gpux.engine.providers import alias_of
from gpux.serve.batcher import BatchTiming, QueueFullError
from gpux.serve.manager import Loaded, ModelManager, ModelTooLargeError


class FastJSON(JSONResponse):
    """JSON via orjson: numpy arrays serialised natively, float32 in its shortest form (~25x json.dumps)."""

    def render(self, content: Any) -> bytes:
        import orjson

        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


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

    app = FastAPI(title="gpux", lifespan=lifespan, default_response_class=FastJSON)
    app.state.manager = manager
    app.state.settings = settings

    app.add_middleware(_Guard, api_key=settings.api_key, max_body=settings.max_body_bytes)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc) if any(isinstance(exc, k) for k, _ in _STATUS) else 500
        if status == 500 and not isinstance(exc, errors.GpuxError):
            exc = errors.GpuxError(f"internal error: {type(exc).__name__}: {exc}", hint="please report it")
        headers = {"Retry-After": "1"} if status == 429 else None
        return FastJSON(error_body(request, exc, status), status_code=status, headers=headers)

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


class _Guard:
    """API key and body-size checks as plain ASGI middleware (BaseHTTPMiddleware costs ~0.3 ms a request)."""

    OPEN = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})

    def __init__(self, app: Any, api_key: str | None, max_body: int) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if self.api_key and scope["path"] not in self.OPEN and \
                    headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
                return await JSONResponse({"error": "missing or wrong API key", "hint": "send Authorization: Bearer KEY"},
                                          status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                return await JSONResponse({"error": f"request body of {int(length)} bytes is over the limit of "
                                                    f"{self.max_body}", "hint": "send fewer or shorter inputs"},
                                          status_code=413)(scope, receive, send)
        await self.app(scope, receive, send)


async def _reap(manager: ModelManager, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            await manager.reap()


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, with a limit on streamed (chunked) bodies too."""
    import orjson

    limit = request.app.state.settings.max_body_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"request body is over the limit of {limit} bytes",
                                    hint="send fewer or shorter inputs")
    try:
        data = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise errors.UsageError(f"the body is not valid JSON: {exc}", hint="send a JSON object") from exc
    if not isinstance(data, dict):
        raise errors.UsageError("the body must be a JSON object", hint='e.g. {"model": "...", "input": "..."}')
    return data
