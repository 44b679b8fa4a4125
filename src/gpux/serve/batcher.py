"""Dynamic batching: requests for one model are queued, merged into batches, run off the event loop.

A request carries a list of items (texts for a task model, one feed for a raw
model). The worker takes items from the queued requests in order until the
batch holds ``max_batch`` items or ``max_delay_ms`` has passed since the first,
runs them as one call in the model's own worker thread, and hands each request
its slice of the results.

One request is never one unbounded call: a request with more than ``max_batch``
items is taken ``max_batch`` items at a time, and after each slice it goes to the
back of the queue, so the memory a batch needs is bounded by ``max_batch`` (not
by the request) and small requests queued behind a large one still get into the
next batch. Its results are put back together in order. Requests past
``max_items_per_request`` items are refused before anything runs; task models
count tokens as their batches run (the tokenizer's own counts, no second pass),
and a request past ``max_tokens_per_request`` is stopped there with
:class:`RequestTooLargeError` (HTTP 413).

Work nobody waits for is never run: a request whose caller stopped waiting (its
timeout passed, or the caller was cancelled, e.g. because the HTTP client went
away) has its future cancelled and is removed from the queue at once; a batch
being assembled skips it.

With ``instances`` > 1, that many batches run at once, each in its own thread on
the same session (onnxruntime sessions take concurrent ``run`` calls): with one
intra-op thread each, a batch never waits for a sibling thread that the HTTP
thread preempted, which is what costs throughput when server and model share
few cores (Triton's ``instance_group`` count plays the same role).

Back-pressure: the queue holds at most ``max_queue`` requests; past that
:meth:`Batcher.submit` raises :class:`QueueFullError` at once (HTTP 429), and a
request that waits longer than its timeout gets :class:`TimeoutError` (HTTP 504).

Closing (unloading the model) is a drain: no new request is accepted, queued
requests fail at once with :class:`ModelUnloadedError` (HTTP 503), and batches
already running get ``wait_s`` to finish and answer their requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpux.errors import GpuxError, UsageError
from gpux.serve.metrics import process_memory


class QueueFullError(GpuxError):
    """The model's request queue is full; retry after a moment."""


class RequestTooLargeError(UsageError):
    """One request holds more items or tokens than the server takes in one request (HTTP 413)."""


class ModelUnloadedError(GpuxError):
    """The model was unloaded while the request waited for it (HTTP 503): sending it again reloads it."""


class ClientGoneError(GpuxError):
    """The client disconnected before its request ran; the request was dropped (logged as HTTP 499)."""


@dataclass
class BatchConfig:
    max_batch: int = 32
    #: 0: never wait; a batch is whatever queued while the previous one ran (continuous batching).
    max_delay_ms: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0
    #: Batches in flight at once (model instances sharing one session).
    instances: int = 1
    #: Items (texts, feeds) one request may carry; OpenAI's embeddings API takes 2048 inputs too.
    max_items_per_request: int = 2048
    #: Tokens one request may use, after truncation (task models); OpenAI's embeddings cap is 300,000.
    max_tokens_per_request: int = 300_000


@dataclass
class BatchTiming:
    """What one request spent where, for the response's timings and /stats."""

    queue_s: float
    inference_s: float
    #: Items in the largest batch the request's items ran in.
    batch_items: int


@dataclass(eq=False)
class _Job:
    """One request: its items, where its results go, and how far it got."""

    items: list[Any]
    future: asyncio.Future[tuple[list[Any], BatchTiming]]
    enqueued: float = field(default_factory=time.perf_counter)
    #: Items handed to batches so far (the next slice starts here).
    taken: int = 0
    finished: int = 0
    tokens: int = 0
    started: float | None = None
    inference_s: float = 0.0
    largest_batch: int = 0
    results: list[Any] = field(default_factory=list)
    #: Why its unrun items were dropped, once they were (for /stats).
    reason: str = "cancelled"


@dataclass
class _Slice:
    job: _Job
    start: int
    stop: int


#: A batch finished: (items, seconds, process RSS growth in bytes it caused).
OnBatch = Callable[[int, float, int], None]
#: Items that were never run: (reason, count).
OnDrop = Callable[[str, int], None]


class Batcher:
    """One per loaded model. ``fn`` maps a list of items to a list of results, in order.

    ``cost`` maps one result to the tokens it used; with it, ``max_tokens_per_request`` is enforced.
    """

    def __init__(self, fn: Callable[[list[Any]], list[Any]], config: BatchConfig,
                 on_batch: OnBatch | None = None, *, cost: Callable[[Any], int] | None = None,
                 on_drop: OnDrop | None = None) -> None:
        self.fn = fn
        self.config = config
        self.on_batch = on_batch
        self.on_drop = on_drop
        self.cost = cost
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._jobs: set[_Job] = set()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=max(1, config.instances), thread_name_prefix="gpux-infer")
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Most batches that ran at once since load (at most ``instances``): shown by /stats.
        self.peak_in_flight = 0
        #: Items run, and items dropped unrun by reason: what tests and /stats check "never ran" against.
        self.items_run = 0
        self.items_dropped: dict[str, int] = {}

    def start(self) -> None:
        if self._worker is None and not self._closing:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- requests ----------------------------------------------------------------------

    async def submit(self, items: list[Any], timeout_s: float | None = None) -> tuple[list[Any], BatchTiming]:
        """Queue ``items``; return their results and timing.

        Raises RequestTooLargeError, QueueFullError, ModelUnloadedError or TimeoutError. Cancelling the
        caller (or its timeout) cancels the request: what of it has not run yet never runs.
        """
        cfg = self.config
        if self._closing:
            raise _unloaded()
        if len(items) > cfg.max_items_per_request:
            raise RequestTooLargeError(
                f"the request has {len(items)} items, over the limit of {cfg.max_items_per_request} per request",
                hint="split it into several requests, or raise the server's --max-items")
        if len(self._queue) >= cfg.max_queue:
            raise QueueFullError(f"the queue for this model is full ({cfg.max_queue} requests waiting)",
                                 hint="retry after a moment, or raise --max-queue")
        self.start()
        job = _Job(items, asyncio.get_running_loop().create_future())
        job.results = [None] * len(items)
        self._queue.append(job)
        self._jobs.add(job)
        job.future.add_done_callback(functools.partial(self._forget, job))
        self._wake.set()
        try:
            return await asyncio.wait_for(job.future, timeout_s or cfg.timeout_s)
        except asyncio.TimeoutError:
            self._dropped(job, "timeout")
            raise
        except asyncio.CancelledError:
            self._dropped(job, "cancelled")
            raise

    def _forget(self, job: _Job, _future: object) -> None:
        """A finished, failed or cancelled request leaves the queue at once (it no longer counts to --max-queue)."""
        self._jobs.discard(job)
        with contextlib.suppress(ValueError):
            self._queue.remove(job)

    def _dropped(self, job: _Job, reason: str) -> None:
        """Count the items of ``job`` that were never handed to a batch, and never will be."""
        job.reason = reason
        self._count(reason, len(job.items) - job.taken)
        job.taken = len(job.items)

    def _count(self, reason: str, unrun: int) -> None:
        if unrun > 0:
            self.items_dropped[reason] = self.items_dropped.get(reason, 0) + unrun
            if self.on_drop is not None:
                self.on_drop(reason, unrun)

    # -- the worker --------------------------------------------------------------------

    async def _run(self) -> None:
        slots = asyncio.Semaphore(max(1, self.config.instances))
        while True:
            await slots.acquire()  # a free instance first: requests queue meanwhile, so batches grow
            try:
                batch = await self._collect()
            except BaseException:
                slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            self.peak_in_flight = max(self.peak_in_flight, len(self._running))
            task.add_done_callback(functools.partial(self._finished, slots))

    def _finished(self, slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        slots.release()

    async def _next_job(self, deadline: float | None) -> _Job | None:
        """The next live queued request, waiting until ``deadline`` (None: forever) for one."""
        while True:
            while self._queue:
                job = self._queue.popleft()
                if not job.future.done():
                    return job
            wait = None if deadline is None else deadline - time.perf_counter()
            if wait is not None and wait <= 0:
                return None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                return None

    async def _collect(self) -> list[_Slice]:
        """The next batch: slices of queued requests, in order, until full or past the delay."""
        limit = max(1, self.config.max_batch)
        batch: list[_Slice] = []
        count = 0
        try:
            first = await self._next_job(None)
            assert first is not None
            deadline = first.enqueued + self.config.max_delay_ms / 1e3
            job: _Job | None = first
            while job is not None:
                take = min(limit - count, len(job.items) - job.taken)
                batch.append(_Slice(job, job.taken, job.taken + take))
                job.taken += take
                count += take
                if job.taken < len(job.items):
                    self._queue.append(job)  # the rest waits its turn behind the requests queued after it
                if count >= limit:
                    break
                job = await self._next_job(deadline)  # past the deadline: only what is queued already
        except asyncio.CancelledError:  # only close() cancels the worker: what it holds will never run
            for s in batch:
                if not s.job.future.done():
                    s.job.future.set_exception(_unloaded())
                self._count("unloaded", s.stop - s.start)
            raise
        return batch

    def _call(self, items: list[Any]) -> tuple[list[Any], int]:
        """In the worker thread: run the batch and measure how far it pushed the process's RSS.

        The peak (VmHWM) catches what the batch allocated and freed when it set a new process high;
        otherwise the RSS it left behind (onnxruntime's arena keeps what a batch grew) is the figure.
        """
        rss0, peak0 = process_memory()
        results = self.fn(items)
        rss1, peak1 = process_memory()
        return results, max(0, (peak1 if peak1 > peak0 else rss1) - rss0)

    async def _execute(self, batch: list[_Slice]) -> None:
        """Run one batch in an executor thread; hand each request its slice (or the error)."""
        live = [s for s in batch if not s.job.future.done()]  # a request may have timed out meanwhile
        for s in batch:
            if s.job.future.done():
                self._count(s.job.reason, s.stop - s.start)
        if not live:
            return
        items = [item for s in live for item in s.job.items[s.start:s.stop]]
        start = time.perf_counter()
        for s in live:
            if s.job.started is None:
                s.job.started = start
        try:
            results, grew = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, items)
        except asyncio.CancelledError:  # close() gave up waiting: the requests fail now, not at their timeout
            for s in live:
                if not s.job.future.done():
                    s.job.future.set_exception(_unloaded())
            raise
        except Exception as exc:  # handed to every request of the batch
            for s in live:
                if not s.job.future.done():
                    s.job.future.set_exception(exc)
            return
        took = time.perf_counter() - start
        self.items_run += len(items)
        if self.on_batch is not None:
            self.on_batch(len(items), took, grew)
        pos = 0
        for s in live:
            n = s.stop - s.start
            part, pos = results[pos:pos + n], pos + n
            self._deliver(s, part, took, len(items))

    def _deliver(self, s: _Slice, part: list[Any], took: float, batch_items: int) -> None:
        job = s.job
        if job.future.done():
            return
        job.results[s.start:s.stop] = part
        job.finished += len(part)
        job.inference_s += took
        job.largest_batch = max(job.largest_batch, batch_items)
        if self.cost is not None:
            job.tokens += sum(self.cost(r) for r in part)
            cap = self.config.max_tokens_per_request
            if job.tokens > cap:
                job.future.set_exception(RequestTooLargeError(
                    f"the request uses more than {cap} tokens ({job.tokens} in its first "
                    f"{job.finished} of {len(job.items)} items)",
                    hint="send fewer or shorter texts per request, or raise the server's --max-tokens"))
                self._dropped(job, "too_large")
                return
        if job.finished == len(job.items):
            queue_s = (job.started or job.enqueued) - job.enqueued
            job.future.set_result((job.results, BatchTiming(queue_s, job.inference_s, job.largest_batch)))

    # -- unloading ---------------------------------------------------------------------

    async def close(self, wait_s: float = 0.0) -> None:
        """Stop taking requests; fail queued ones at once; give running batches ``wait_s`` to finish.

        Whatever is still unanswered after that fails with :class:`ModelUnloadedError` (HTTP 503).
        """
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for job in list(self._jobs):
            if job.taken < len(job.items) and not job.future.done():  # some of it has not started: it never will
                job.future.set_exception(_unloaded())
                self._dropped(job, "unloaded")
        self._queue.clear()
        if self._running and wait_s > 0:
            await asyncio.wait(list(self._running), timeout=wait_s)
        for task in list(self._running):
            task.cancel()
        for job in list(self._jobs):
            if not job.future.done():
                job.future.set_exception(_unloaded())
        self._executor.shutdown(wait=False, cancel_futures=True)


def _unloaded() -> ModelUnloadedError:
    return ModelUnloadedError("the model was unloaded while this request waited for it",
                              hint="send the request again (it loads the model again)")
