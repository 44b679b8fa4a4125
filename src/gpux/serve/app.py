"""The HTTP layer: FastAPI app, errors as JSON, API key, body limit, and gpux's native routes.

The model manager (what is loaded) and the batcher (how requests become calls)
live in their own modules; this one only translates HTTP to them and back.
OpenAI-, Ollama- and KServe-compatible routes are in :mod:`gpux.serve.compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gpux import errors
from gpux.engine.providers import alias_of
from gpux.generate.scheduler import CacheFullError, GenerationTimeoutError, SchedulerClosedError
from gpux.preprocess.audio import AudioTooLongError
from gpux.preprocess.image import ImageTooLargeError
from gpux.serve.admission import Admission
from gpux.serve.batcher import BatchTiming, ClientGoneError, ModelUnloadedError, QueueFullError, RequestTooLargeError
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
    #: Seconds a client has to send a request's whole head (slowloris guard; see serve/protocol.py).
    header_timeout_s: float = 10.0
    #: Seconds a client has to send a request's whole body once its head is in.
    body_timeout_s: float = 30.0
    #: Open connections past which the server closes the oldest one still sending its head (or the new one).
    max_connections: int = 1000
    #: POST requests inside the app at once; past it a 429 is sent before the body is read. None: derived from
    #: the batcher's capacity (queue + batch × instances).
    max_in_flight: int | None = None


class BodyTooLargeError(errors.UsageError):
    """The request body is over the server's limit."""


class BodyTimeoutError(errors.UsageError):
    """The client did not send the whole body in time (a slow or stalled upload)."""


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (QueueFullError, 429), (CacheFullError, 429), (GenerationTimeoutError, 504), (SchedulerClosedError, 503), (RequestTooLargeError, 413), (ModelUnloadedError, 503), (ClientGoneError, 499),
    (BodyTimeoutError, 408), (BodyTooLargeError, 413), (ImageTooLargeError, 413), (AudioTooLongError, 413), (ModelTooLargeError, 507), (errors.ModelNotFoundError, 404),
    (errors.InputError, 400), (errors.UsageError, 400), (errors.ProviderError, 503),
    (asyncio.TimeoutError, 504), (errors.GpuxError, 500),
)
_T = TypeVar("_T")
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
#: The longest keep_alive accepted: a year. Longer ones overflowed expiry timestamps (/api/ps answered 500 for good).
MAX_KEEP_ALIVE_S = 365 * 24 * 3600.0


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama-style keep_alive: ``"5m"``, ``"30s"``, ``"1h"``, seconds as a number; negative = forever."""
    if value is None:
        return None
    m = _DURATION.match(str(value).strip())
    if not m or isinstance(value, bool):
        raise errors.UsageError(f"keep_alive {value!r} is not a duration", hint='use e.g. "5m", "30s", 0 or -1')
    scale = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    seconds = float(m.group(1)) * scale
    if seconds > MAX_KEEP_ALIVE_S:
        raise errors.UsageError(f"keep_alive {value!r} is longer than a year",
                                hint="use -1 to keep the model loaded for good")
    return seconds


def refused_by_model(exc: errors.InferenceError) -> errors.InputError:
    """onnxruntime refusing a client's own tensors (an index past a table, a sequence past the positions).

    The values passed the signature check, so only the model can tell: that is the client's input, a 400.
    """
    return errors.InputError(f"the model could not run on these inputs: {exc.message.split(': ', 1)[-1]}",
                             hint="check the values' ranges against the model (token ids, type ids, sequence length)")


def status_of(exc: BaseException) -> int:
    return next(code for kind, code in _STATUS if isinstance(exc, kind))


#: An absolute path: POSIX (checked against the disk below, so routes like /v1/models stay) or Windows.
_PATH = re.compile(r"(?<![\w.~:/-])(?:/[^\s/'\"`,;:()\[\]{}<>]+)+/?|\b[A-Za-z]:\\[^\s'\"`,;]+")


@functools.lru_cache(maxsize=512)
def _is_top_dir(name: str) -> bool:
    return os.path.isdir(os.path.join(os.sep, name))


def scrub(text: str, roots: tuple[str, ...] = ()) -> str:
    """``text`` without this machine's paths: clients learn nothing of the server's disk layout.

    The store root becomes ``<store>``; any other absolute path whose first folder exists here
    (``/tmp/...``, ``/home/...``) becomes ``<path>``. URL paths in hints (``GET /v1/models``) stay.
    """
    for root in roots:
        if root and root != os.sep:
            text = text.replace(root, "<store>")

    def one(m: re.Match[str]) -> str:
        found = m.group()
        if not found.startswith("/"):
            return "<path>"
        first = found.split("/", 2)[1]
        return "<path>" if first and _is_top_dir(first) else found
    return _PATH.sub(one, text) if ("/" in text or "\\" in text) else text


def error_body(request: Request, exc: BaseException, status: int) -> dict[str, Any]:
    message = exc.message if isinstance(exc, errors.GpuxError) else (str(exc) or "the request timed out")
    hint = exc.hint if isinstance(exc, errors.GpuxError) else None
    root = getattr(getattr(getattr(request.app.state, "manager", None), "store", None), "root", None)
    roots = (str(root), os.path.realpath(root)) if root is not None else ()
    message = scrub(message, roots)
    hint = scrub(hint, roots) if hint else hint
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
                    check: Callable[[Loaded, list[Any]], list[Any]] | None = None, *, request: Request | None = None
                    ) -> tuple[Loaded, list[Any], dict[str, int]]:
    """Queue ``items`` on ``ref``'s batcher, record stats, return (model, results, timings).

    With ``request``, a client that disconnects while its items wait has them dropped from the queue
    (they never run) and gets :class:`ClientGoneError` (logged as 499).
    """
    manager: ModelManager = app.state.manager
    start = time.perf_counter()
    name = manager.require(ref)
    status, queue_s = 500, None
    try:
        async with manager.use(name, keep_alive_seconds(keep_alive)) as (loaded, load_s):
            if check is not None:
                items = check(loaded, items)
            work = loaded.batcher.submit(items)
            results, t = await (work if request is None else _unless_gone(request, work))
            status, queue_s = 200, t.queue_s
            return loaded, results, timings(start, load_s, t)
    except BaseException as exc:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        raise
    finally:
        manager.metrics.request(name, route, status, time.perf_counter() - start, queue_s)


async def _unless_gone(request: Request, work: Coroutine[Any, Any, _T]) -> _T:
    """``await work``, unless the client disconnects first: then ``work`` is cancelled and ClientGoneError raised.

    The body has been read by then, so the next ASGI message is ``http.disconnect`` (or nothing until the
    response is sent); watching for it costs one parked task, no polling.
    """
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((job, watch), return_when=asyncio.FIRST_COMPLETED)
        if job.done() or watch.exception() is not None:  # answered, or the watch itself broke: just wait
            return await job
        job.cancel()
        with contextlib.suppress(BaseException):
            await job
        raise ClientGoneError("the client disconnected before its request ran", hint="nothing to do: it was dropped")
    finally:
        job.cancel()
        watch.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(manager: ModelManager, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = False
        reaper = asyncio.get_running_loop().create_task(_reap(manager, settings.reap_interval_s))
        try:
            for ref in settings.preload:
                try:
                    await manager.get(ref)
                except errors.GpuxError as exc:  # uvicorn only logs it: `gpux serve` reports it and exits
                    app.state.startup_error = exc
                    raise
            app.state.ready = True
            yield
        finally:
            reaper.cancel()
            await manager.close()

    app = FastAPI(title="gpux", lifespan=lifespan, default_response_class=FastJSON)
    app.state.manager = manager
    app.state.settings = settings

    in_flight = settings.max_in_flight
    if in_flight is None:  # what the batcher can hold: a full queue plus the batches running
        in_flight = manager.batch.max_queue + manager.batch.max_batch * max(1, manager.batch.instances)
    app.add_middleware(_Guard, api_key=settings.api_key, max_body=settings.max_body_bytes, max_in_flight=in_flight)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, errors.InferenceError) and getattr(request.state, "client_tensors", False):
            exc = refused_by_model(exc)
        status = status_of(exc) if any(isinstance(exc, k) for k, _ in _STATUS) else 500
        if status == 500 and not isinstance(exc, errors.GpuxError):
            exc = errors.GpuxError(f"internal error: {type(exc).__name__}: {exc}", hint="please report it")
        headers = {"Retry-After": "1"} if status == 429 else {"Connection": "close"} if status == 408 else None
        return FastJSON(error_body(request, exc, status), status_code=status, headers=headers)

    for kind, _ in _STATUS:
        app.add_exception_handler(kind, on_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        err = errors.UsageError(f"{where}: {first.get('msg')}", hint="see the API docs for the request shape")
        return JSONResponse(error_body(request, err, 400), status_code=400)

    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        """No bare 404/405: gpux's error body, with the routes there are (an unknown path) or the methods."""
        if exc.status_code == 404:
            paths = [(str(getattr(r, "path", "")), getattr(r, "methods", None) or ()) for r in app.routes]
            routes = sorted({f"{m} {p}" for p, methods in paths for m in methods
                             if m != "HEAD" and not p.startswith(("/docs", "/redoc", "/openapi"))})
            err = errors.UsageError(f"no route {request.method} {request.url.path}",
                                    hint="routes: " + ", ".join(routes) + "; API docs at /docs")
        else:
            err = errors.UsageError(f"{request.method} {request.url.path}: {exc.detail}",
                                    hint=f"allowed: {exc.headers.get('Allow', '?') if exc.headers else '?'}")
        return FastJSON(error_body(request, err, exc.status_code), status_code=exc.status_code, headers=exc.headers)

    from gpux.serve import compat, generate_routes, media_routes, native, ollama_gen, openai_gen, rerank

    native.register(app)
    compat.register(app)
    rerank.register(app)
    openai_gen.register(app)
    ollama_gen.register(app)
    generate_routes.register(app)
    media_routes.register(app)
    return app


class _Guard:
    """API key, body size and admission as plain ASGI middleware (BaseHTTPMiddleware costs ~0.3 ms a request).

    Admission (:mod:`gpux.serve.admission`): at most ``max_in_flight`` POST requests are inside the app at
    once; four times as many more wait up to a second for a slot. Past that a request is answered 429 +
    ``Retry-After`` from pre-rendered bytes before its body is read or parsed, so under a flood refusing
    costs microseconds and the admitted requests keep the CPU (before, each refused request was parsed
    and routed first, and 1,000 clients drove goodput to a tenth). GETs (health, listings, metrics) are
    never held or refused: they are how operators see an overload.
    """

    OPEN = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})

    def __init__(self, app: Any, api_key: str | None, max_body: int, max_in_flight: int | None = None) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body
        self.max_in_flight = max_in_flight if max_in_flight is not None else 1 << 62
        self.admission = Admission(self.max_in_flight, max_waiting=4 * self.max_in_flight, wait_s=1.0)
        import orjson

        message = (f"the server is at capacity ({self.max_in_flight} requests in flight, "
                   f"{self.admission.max_waiting} queued)")
        hint = "retry after a moment, or raise --max-in-flight"
        self._busy_native = orjson.dumps({"error": message, "hint": hint})
        self._busy_openai = orjson.dumps({"error": {"message": f"{message} ({hint})", "type": "QueueFullError",
                                                    "param": None, "code": 429}})

    async def _busy(self, scope: Any, send: Any) -> None:
        body = self._busy_openai if scope["path"].startswith("/v1/") else self._busy_native
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

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
            if scope["method"] == "POST":
                if not await self.admission.enter():
                    return await self._busy(scope, send)
                try:
                    return await self.app(scope, receive, send)
                finally:
                    self.admission.leave()
        await self.app(scope, receive, send)


async def _reap(manager: ModelManager, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            await manager.reap()


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, with a limit on streamed (chunked) bodies too."""
    import orjson

    settings: ServeSettings = request.app.state.settings
    try:
        body = await _within(_read_body(request, settings.max_body_bytes), settings.body_timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {settings.body_timeout_s:g} s",
                               hint="send the whole body at once") from None
    try:
        data = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise errors.UsageError(f"the body is not valid JSON: {exc}", hint="send a JSON object") from exc
    if not isinstance(data, dict):
        raise errors.UsageError("the body must be a JSON object", hint='e.g. {"model": "...", "input": "..."}')
    return data


async def _read_body(request: Request, limit: int) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"request body is over the limit of {limit} bytes",
                                    hint="send fewer or shorter inputs")
    return body


async def _within(coro: Any, seconds: float) -> Any:
    """``await coro`` or raise asyncio.TimeoutError after ``seconds`` (a stalled upload must not hold a slot)."""
    if hasattr(asyncio, "timeout"):  # 3.11+: a timer handle, no extra task
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)  # pragma: no cover - Python 3.10
