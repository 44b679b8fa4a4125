"""What every generate route shares: a request opened on a model's scheduler, its events as an async stream.

The routes (OpenAI in :mod:`gpux.serve.openai_gen`, Ollama in :mod:`gpux.serve.ollama_gen`, KServe's generate
extension and gpux's own ``/generate`` in :mod:`gpux.serve.generate_routes`) only translate their wire
format into an :class:`Ask` and :class:`Run`'s events back into theirs, so every one gets the same
scheduler, errors, limits, signals and pacing.

Order of work in :func:`open_run`, so that a bad request fails with a status code before any byte is
streamed: resolve the model (404), hold it loaded (``manager.use``: never evicted while streaming; a
keep_alive of 0 unloads it after), check it generates text, tokenize and fit the prompt (400), submit every
choice to the scheduler (429 when the cache budget is taken). Only then does a route start its response.
The run ends (jobs cancelled, model released) in :meth:`Run.close`, which the routes call in ``finally``: a
client that disconnects mid-stream cancels its jobs at the scheduler's next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from gpux.errors import GpuxError, UsageError
from gpux.generate.loop import Event
from gpux.serve.app import keep_alive_seconds
from gpux.serve.manager import Loaded, ModelManager
from gpux.tasks.generation import Request


@dataclass
class Ask:
    """One generation request, as the routes agree on it."""

    ref: str
    #: The task's payload: ``{"inputs": "prompt"}`` or ``{"messages": [...]}``, plus ``"parameters"``.
    payload: dict[str, Any]
    route: str
    keep_alive: Any = None
    n: int = 1
    #: Whether the client named a maximum of new tokens; if not, the request may fill its context.
    max_given: bool = True
    #: The request's context (Ollama's num_ctx); None: the server's default, capped by the model's.
    context: int | None = None
    #: EMA weight of the per-token entropy signal (``"signals": {"ema_alpha": 0.2}``); None: no signals.
    ema_alpha: float | None = None
    #: Frame-paced stream: one event per frame at this rate (``"pace_hz": 60``).
    pace_hz: float | None = None
    #: Events carry their raw logits (an ensemble compares distributions).
    keep_logits: bool = False


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    import orjson

    return b"data: " + orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


def stream_error(request: Any, exc: BaseException) -> dict[str, Any]:
    """The error body for a failure after a stream's status line went out (it can only go in the stream)."""
    from gpux.serve.app import _STATUS, error_body

    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    if status == 500 and not isinstance(exc, GpuxError):
        exc = GpuxError(f"internal error: {type(exc).__name__}: {exc}", hint="please report it")
    return error_body(request, exc, status)


def signals_option(body: dict[str, Any]) -> float | None:
    """``"signals": {"ema_alpha": a}`` (or ``true`` for a = 0.2) -> a; absent -> None."""
    value = body.get("signals")
    if value is None or value is False:
        return None
    if value is True:
        return 0.2
    alpha = value.get("ema_alpha", 0.2) if isinstance(value, dict) else None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise UsageError(f'"signals" must be true or {{"ema_alpha": a}} with 0 < a <= 1, not {value!r}',
                         hint='e.g. "signals": {"ema_alpha": 0.2}')
    return float(alpha)


def pace_option(body: dict[str, Any]) -> float | None:
    value = body.get("pace_hz")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 1000:
        raise UsageError(f'"pace_hz" must be a number of frames per second from 1 to 1000, not {value!r}',
                         hint='e.g. "pace_hz": 60')
    return float(value)


class Signals:
    """Per-token signals of one choice: logprob, entropy and an exponential moving average of the entropy."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.ema: float | None = None

    def update(self, event: Event) -> dict[str, float]:
        h = event.choice.entropy
        self.ema = h if self.ema is None else self.alpha * h + (1 - self.alpha) * self.ema
        return {"logprob": event.choice.logprob, "entropy": h, "entropy_ema": self.ema}


@dataclass
class Run:
    """An opened generation: the model held, one scheduler job per choice, their events in one queue."""

    app: FastAPI
    ask: Ask
    loaded: Loaded
    load_s: float
    start: float
    jobs: list[Any] = field(default_factory=list)
    queue: asyncio.Queue[tuple[int, Any]] = field(default_factory=asyncio.Queue)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    signals: list[Signals] = field(default_factory=list)
    _open: int = 0
    _closed: bool = False

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def prompt_tokens(self) -> int:
        return self.jobs[0].seq.input_tokens if self.jobs else 0

    @property
    def completion_tokens(self) -> int:
        return sum(len(j.seq.tokens) for j in self.jobs)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def durations(self) -> dict[str, int]:
        """Ollama's final-chunk counters, in nanoseconds (prompt eval = queue + prefill, as Ollama counts)."""
        ns, job = 1_000_000_000, self.jobs[0]
        first = job.first_token or time.perf_counter()
        end = job.finished or time.perf_counter()
        return {"total_duration": int((time.perf_counter() - self.start) * ns), "load_duration": int(self.load_s * ns),
                "prompt_eval_count": job.seq.input_tokens, "prompt_eval_duration": int((first - job.submitted) * ns),
                "eval_count": len(job.seq.tokens), "eval_duration": int(max(0.0, end - first) * ns)}

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """``(choice index, event)`` as the scheduler makes them, until every choice ended; errors raise."""
        while self._open:
            index, item = await self.queue.get()
            if item is None:
                self._open -= 1
            elif isinstance(item, BaseException):
                self._open -= 1
                raise item
            else:
                yield index, item

    async def batches(self) -> AsyncIterator[list[tuple[int, Event]]]:
        """:meth:`events` grouped: everything that arrived by the time the consumer looks (at least one).

        A stream that falls behind (a slow client, a busy loop) sends what queued up in one chunk instead
        of one write per token, so it catches up instead of lagging further.
        """
        batch: list[tuple[int, Event]] = []
        while self._open:
            index, item = await self.queue.get() if not batch else self.queue.get_nowait()
            if item is None:
                self._open -= 1
            elif isinstance(item, BaseException):
                self._open -= 1
                if batch:
                    yield batch
                raise item
            else:
                batch.append((index, item))
            if self.queue.empty() and batch:
                yield batch
                batch = []
        if batch:
            yield batch

    async def collect(self) -> None:
        """Wait for every choice to finish (non-streaming answers read ``jobs[i].seq`` afterwards)."""
        async for _ in self.events():
            pass

    def signal(self, index: int, event: Event) -> dict[str, float] | None:
        return self.signals[index].update(event) if self.signals else None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for job in self.jobs:
            job.cancel()
        await self.stack.aclose()


async def open_run(app: FastAPI, ask: Ask) -> Run:
    """Resolve, load, check, tokenize and submit ``ask`` (see the module docstring for the order)."""
    manager: ModelManager = app.state.manager
    start = time.perf_counter()
    name = manager.require(ask.ref)
    stack = contextlib.AsyncExitStack()
    run: Run | None = None
    try:
        loaded, load_s = await stack.enter_async_context(manager.use(name, keep_alive_seconds(ask.keep_alive)))
        run = Run(app, ask, loaded, load_s, start, stack=stack)
        if loaded.scheduler is None:
            raise UsageError(f"model {loaded.name} does not generate text (task: {loaded.model.bundle.manifest.task})",
                             hint="use a text-generation model; GET /models lists each model's task")
        if ask.ema_alpha is not None:
            run.signals = [Signals(ask.ema_alpha) for _ in range(ask.n)]
        _submit(run, manager)
        return run
    except BaseException:
        for job in run.jobs if run is not None else []:
            job.cancel()
        await stack.aclose()
        raise


def _submit(run: Run, manager: ModelManager) -> None:
    task, ask = run.loaded.task, run.ask
    requests = task.items(ask.payload)
    if len(requests) != 1:
        raise UsageError(f"one prompt per request here, not {len(requests)}",
                         hint='send each prompt as its own request, or use "n" for several answers to one')
    request = requests[0]
    context = min(task.context, ask.context or manager.generation.default_context)
    if len(request.ids) >= context:
        raise UsageError(f"the prompt has {len(request.ids)} tokens; the request's context is {context} tokens",
                         hint="shorten the prompt, or raise num_ctx (at most the model's context of "
                              f"{task.context})")
    params = request.params
    if not ask.max_given:
        params = dataclasses.replace(params, max_new_tokens=context - len(request.ids))
    timeout = manager.generation.request_timeout_s
    for i in range(ask.n):
        seed = None if params.seed is None else params.seed + i
        choice = Request(request.ids, dataclasses.replace(params, seed=seed))
        seq = task.sequences([choice])[0]
        seq.limit = min(seq.limit, context - len(request.ids))
        seq.keep_logits = ask.keep_logits

        def sink(item: Any, i: int = i) -> None:  # runs on the event loop (the scheduler posts it there)
            run.queue.put_nowait((i, item))
        run.jobs.append(run.loaded.scheduler.submit(seq, sink, timeout))
        run._open += 1


async def paced(run: Run, hz: float) -> AsyncIterator[tuple[list[tuple[int, Event]], bool]]:
    """The run's events grouped into frames at ``hz``: ``(events since the last frame, last frame?)``.

    One frame per period, empty or not (a client animating at 60 Hz wants the beat); a frame whose time
    passed by more than a period while the previous one was being sent is skipped and counted as dropped,
    so the stream never bursts to catch up. Frames sent and dropped go to /stats.
    """
    period = 1.0 / hz
    buffer: list[tuple[int, Event]] = []
    failure: list[BaseException] = []

    async def pump() -> None:
        try:
            async for item in run.events():
                buffer.append(item)
        except BaseException as exc:  # handed to the frame loop, which raises it after the last frame
            failure.append(exc)

    feeder = asyncio.ensure_future(pump())
    sent = dropped = 0
    due = time.monotonic() + period
    try:
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            if now - due > period:
                missed = int((now - due) / period)
                dropped += missed
                due += missed * period
            due += period
            last = feeder.done()
            frame, buffer[:] = list(buffer), []
            sent += 1
            yield frame, last
            if last:
                if failure:
                    raise failure[0]
                return
    finally:
        feeder.cancel()
        run.app.state.manager.metrics.frames(run.name, sent, dropped)
