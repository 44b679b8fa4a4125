"""Model affinity with unchanged clients: a middleware in Ray's HTTP proxy that names the request's model.

Ray Serve routes a request to the replicas that have its model loaded (model multiplexing) only when
the request carries the model in the ``serve_multiplexed_model_id`` header, which Ray's proxy reads
before it picks a replica. gpux's clients (the OpenAI and Ollama SDKs, KServe) never send it: they name
the model in the URL (``/predict/{model}``, ``/v2/models/{name}/...``) or in the JSON body
(``"model"``; Ollama's ``/api/show`` also takes ``"name"``). This middleware runs in the proxy, in front of
Ray's own routing, finds the model there and adds the header; the body it had to read is handed on
unchanged. A request that already carries the header is left alone, and one whose model cannot be found
(GET routes, ``/ensemble``'s list) is routed without affinity, as Ray routes any request.

Only the first :data:`PEEK` bytes of a body are read here: past them the request goes on with what was
read plus the rest, and the model is looked for in that prefix. A wrong guess costs affinity, never
correctness: the replica's gpux app reads the body itself.

Imported by Ray's proxy processes: stdlib and orjson only (no onnxruntime, no FastAPI app).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Ray Serve's header (``ray.serve._private.constants.SERVE_MULTIPLEXED_MODEL_ID``); "-" and "_" both work.
HEADER = b"serve_multiplexed_model_id"
#: Bytes of a body read to find its model: a JSON body's "model" key comes first in every client seen.
PEEK = 64 * 1024
_PATH = re.compile(r"^/(?:predict/(?P<a>.+?)/?$|v2/models/(?P<b>.+?)(?:/(?:ready|infer|generate|generate_stream))?/?$)")
_JSON_MODEL = re.compile(rb'"(?:model|name)"\s*:\s*"((?:[^"\\]|\\.){1,512})"')
_FORM_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]{1,512})\r\n')


def model_of_path(path: str) -> str | None:
    """The model a URL names (``/predict/{model}``, KServe's ``/v2/models/{name}[/...]``), else None."""
    m = _PATH.match(path)
    if not m:
        return None
    return unquote(m.group("a") or m.group("b") or "") or None


def model_of_body(body: bytes, complete: bool) -> str | None:
    """The model a JSON (or multipart form) body names: the top-level ``model`` (or ``name``) string."""
    if complete and body[:1] == b"{":
        import orjson

        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        value = data.get("model", data.get("name")) if isinstance(data, dict) else None
        return value if isinstance(value, str) and value else None
    m = _JSON_MODEL.search(body) or _FORM_MODEL.search(body)
    if not m:
        return None
    try:
        return m.group(1).decode("utf-8")
    except UnicodeDecodeError:
        return None


#: Ray's proxy calls :func:`middlewares` when this environment variable names it in the proxy's process
#: (``gpux serve --ray`` sets it before it starts Ray; on a cluster, set it where each node's ``ray start``
#: runs: docs/scale.md). Ray 2.50+ removed ``http_options.middlewares``; this hook is what remains.
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "gpux.serve.ray.proxy:middlewares"
#: The environment every Ray node's processes should start with (``gpux serve --ray`` sets what is not set
#: already before it starts a local Ray; on a cluster, export it before ``ray start``: docs/scale.md).
#: Ray's throughput-optimized mode (gRPC from proxy to replica, user code on the replica's own event loop,
#: buffered request logs) took the 64-client ratio from 0.61x to 0.75x of the plain server here
#: (benchmarks/serve_ray.py); its direct ingress stays off, since it bypasses the proxy and so this middleware.
NODE_ENV = {CALLBACK_ENV: CALLBACK, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
            "RAY_USAGE_STATS_ENABLED": "0"}


def middlewares() -> list[Any]:
    """Ray Serve's HTTP proxy callback: the Starlette middlewares its proxies wrap their app in."""
    from starlette.middleware import Middleware

    return [Middleware(ModelIdMiddleware)]


class ModelIdMiddleware:
    """Pure ASGI middleware for Ray Serve's HTTP proxies (installed by :func:`middlewares`)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(k.lower().replace(b"-", b"_") == HEADER for k, _ in scope["headers"]):
            return await self.app(scope, receive, send)
        model = model_of_path(scope["path"])
        if model is None and scope["method"] in ("POST", "PUT"):
            model, receive = await _peek(receive)
        if model:
            scope = dict(scope)
            scope["headers"] = [*scope["headers"], (HEADER, model.encode("utf-8"))]
        await self.app(scope, receive, send)


async def _peek(receive: Receive) -> tuple[str | None, Receive]:
    """Read up to :data:`PEEK` body bytes; (the model they name, a receive that replays them first)."""
    messages: list[Message] = []
    body = b""
    complete = False
    while len(body) < PEEK:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # a disconnect: hand it on as it came
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            complete = True
            break
    pending = iter(messages)

    async def replay() -> Message:
        for message in pending:
            return message
        return await receive()

    return model_of_body(body, complete), replay
