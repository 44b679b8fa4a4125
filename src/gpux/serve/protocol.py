"""Connection guards uvicorn lacks: a deadline and a size cap for each request's head, and a connection cap.

uvicorn (0.54 here) only times out a keep-alive connection after a response; a connection that never
finishes its headers is held for good. 3,000 such slowloris connections were held 40 s, and at
``ulimit -n 1024`` the server stopped accepting, ``/health`` included. Its ``limit_concurrency`` does not
help: it still accepts the connection and only answers 503 once the headers are complete, and
``h11_max_incomplete_event_size`` applies to the h11 parser, not the httptools one used here.

:func:`guarded_protocol` subclasses uvicorn's httptools protocol:

- each request's head (request line and headers) must arrive within ``header_timeout_s`` from the
  connection (or, on a kept-alive connection, from its first byte) and be at most ``max_head_bytes``;
  past either the client gets 408 / 431 and the connection is closed;
- past ``max_connections`` open connections, the oldest one still sending its head is closed to make
  room (a flood of idle sockets cannot lock out a real client), or the new one if none is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _plain(status: str, message: str) -> bytes:
    body = ('{"error": "%s", "hint": "send the request line and headers at once"}' % message).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class _Guarded(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_head_bytes: int = 64 * 1024
    max_connections: int = 1000
    #: Connections still sending a request head, oldest first (a dict keeps insertion order). One per class.
    waiting: dict[_Guarded, None] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            victim = next(iter(self.waiting), None)
            if victim is None:  # every open connection is a real request: refuse the newcomer
                transport.close()
                return
            victim._drop()
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)  # may include body bytes: judged only if the head is still open
        super().data_received(data)
        if self._head_timer is not None and self._head_bytes > self.max_head_bytes:
            self._refuse("431 Request Header Fields Too Large", f"the request head is over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)
        self.waiting[self] = None

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.waiting.pop(self, None)

    def _timed_out(self) -> None:
        self._head_timer = None
        self._refuse("408 Request Timeout", f"the request head did not arrive within {self.header_timeout_s:g} s")

    def _refuse(self, status: str, message: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_plain(status, message))
            self.transport.close()

    def _drop(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(header_timeout_s: float = 10.0, max_connections: int = 1000,
                     max_head_bytes: int = 64 * 1024) -> type[asyncio.Protocol]:
    """A uvicorn ``http=`` protocol class with these limits (a class per server: its own waiting list)."""
    return type("GuardedHttpToolsProtocol", (_Guarded,), {
        "header_timeout_s": float(header_timeout_s), "max_connections": int(max_connections),
        "max_head_bytes": int(max_head_bytes), "waiting": {}})


def default_max_connections() -> int:
    """The open-file limit less 128 for model files, threads and logs (at least 64): past the limit
    ``accept`` fails and even ``/health`` goes unanswered."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - Windows
        return 1000
    return 10_000 if soft == resource.RLIM_INFINITY else max(64, soft - 128)


def server_config(app: Any, settings: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> Any:
    """The uvicorn Config ``gpux serve`` (and the tests) run with: the guards above and quiet logs."""
    import uvicorn

    http = guarded_protocol(settings.header_timeout_s, settings.max_connections)
    return uvicorn.Config(app, host=host, port=port, http=http, log_level="warning", **kwargs)
