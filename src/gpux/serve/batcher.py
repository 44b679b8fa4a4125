"""Dynamic batching: requests for one model are queued, merged into batches, run off the event loop.

A request carries a list of items (texts for a task model, one feed for a raw
model). The worker takes the first queued request, then keeps taking more until
the batch holds ``max_batch`` items or ``max_delay_ms`` has passed since the
first, runs them as one call in the model's own worker thread, and hands each
request its slice of the results.

With ``instances`` > 1, that many batches run at once, each in its own thread on
the same session (onnxruntime sessions take concurrent ``run`` calls): with one
intra-op thread each, a batch never waits for a sibling thread that the HTTP
thread preempted, which is what costs throughput when server and model share
few cores (Triton's ``instance_group`` count plays the same role).

Back-pressure: the queue holds at most ``max_queue`` requests; past that
:meth:`Batcher.submit` raises :class:`QueueFullError` at once (HTTP 429), and a
request that waits longer than its timeout gets :class:`TimeoutError` (HTTP 504).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpux.errors import GpuxError


class QueueFullError(GpuxError):
    """The model's request queue is full; retry after a moment."""


@dataclass
class BatchConfig:
    max_batch: int = 32
    #: 0: never wait; a batch is whatever queued while the previous one ran (continuous batching).
    max_delay_ms: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0
    #: Batches in flight at once (model instances sharing one session).
    instances: int = 1


@dataclass
class BatchTiming:
    """What one request spent where, for the response's timings and /stats."""

    queue_s: float
    inference_s: float
    batch_items: int


@dataclass
class _Request:
    items: list[Any]
    future: asyncio.Future[tuple[list[Any], BatchTiming]]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """One per loaded model. ``fn`` maps a list of items to a list of results, in order."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], config: BatchConfig,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.fn = fn
        self.config = config
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=config.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=max(1, config.instances), thread_name_prefix="gpux-infer")
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Most batches that ran at once since load (at most ``instances``): shown by /stats.
        self.peak_in_flight = 0

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for task in list(self._running):
            task.cancel()
        while not self._queue.empty():
            req = self._queue.get_nowait()
            if not req.future.done():
                req.future.set_exception(GpuxError("the model was unloaded", hint="send the request again"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, items: list[Any], timeout_s: float | None = None) -> tuple[list[Any], BatchTiming]:
        """Queue ``items``; return their results and timing. Raises QueueFullError or TimeoutError."""
        self.start()
        loop = asyncio.get_running_loop()
        req = _Request(items, loop.create_future())
        try:
            self._queue.put_nowait(req)
        except asyncio.QueueFull:
            raise QueueFullError(f"the queue for this model is full ({self.config.max_queue} requests waiting)",
                                 hint="retry after a moment, or raise --max-queue") from None
        return await asyncio.wait_for(asyncio.shield(req.future), timeout_s or self.config.timeout_s)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(max(1, self.config.instances))
        while True:
            await slots.acquire()  # a free instance first: requests queue meanwhile, so batches grow
            try:
                live = await self._collect()
            except BaseException:
                slots.release()
                raise
            if not live:
                slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(live))
            self._running.add(task)
            self.peak_in_flight = max(self.peak_in_flight, len(self._running))
            task.add_done_callback(functools.partial(self._finished, slots))

    def _finished(self, slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        slots.release()

    async def _collect(self) -> list[_Request]:
        """The next batch: the first queued request, then more until full or past the delay."""
        first = await self._queue.get()
        batch = [first]
        count = len(first.items)
        deadline = first.enqueued + self.config.max_delay_ms / 1e3
        while count < self.config.max_batch:
            wait = deadline - time.perf_counter()
            if wait <= 0 and self._queue.empty():
                break
            try:
                nxt = self._queue.get_nowait() if wait <= 0 else await asyncio.wait_for(self._queue.get(), wait)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            batch.append(nxt)
            count += len(nxt.items)
        return [r for r in batch if not r.future.done()]  # timed-out requests are dropped

    async def _execute(self, live: list[_Request]) -> None:
        """Run one batch in an executor thread; hand each request its slice (or the error)."""
        items = [item for r in live for item in r.items]
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, items)
        except Exception as exc:  # handed to every request of the batch
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        took = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(len(items), took)
        pos = 0
        for r in live:
            part = results[pos:pos + len(r.items)]
            pos += len(r.items)
            if not r.future.done():
                r.future.set_result((part, BatchTiming(start - r.enqueued, took, len(items))))
