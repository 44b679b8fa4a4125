"""Continuous batching: one running decode batch per model that requests join and leave between steps.

::

    submit() -> waiting --admit--> prefill --first token--> running batch --stop/length/cancel--> gone
                (FIFO; each job       (short prompts         (one cache-graph step per iteration
                 reserves prompt +     together, long ones     for every row; a row that finishes
                 max new tokens of     one chunk per           leaves before the next step)
                 the KV budget)        iteration)

Like Ollama's ``server/sched.go`` keeps the scheduler apart from runners and HTTP handlers, this module
knows nothing of HTTP: the server submits :class:`Job` objects and reads their events through a sink.

Contracts:

- One worker thread per model owns every cache and the batch; :meth:`Scheduler.submit` and
  :meth:`Job.cancel` are the only calls made from other threads (both thread-safe, neither blocks on a step).
- Iteration-level batching (as llama.cpp's server slots and vLLM do): each iteration first prefills (a group
  of short prompts in one left-padded step, or one ``chunk``-token piece of a long prompt), then runs one
  decode step for every running row. A prompt longer than ``chunk`` tokens is prefilled over several
  iterations, so running streams get a token between its pieces instead of stalling behind it.
- Joining: the new rows' cache is left-padded (zeros, attention mask 0) to the batch's width, or the batch's
  to theirs, and concatenated. Leaving: the row is sliced out and columns that are padding for every row
  left are dropped. Position ids come from the attention mask (:func:`gpux.generate.loop.positions`), so
  a row's numbers do not depend on who else is in the batch: greedy output of a batched request equals the
  same request run alone (tests check it token for token).
- Budget: a job reserves its prompt plus its maximum new tokens of cache (TGI's ``max_batch_total_tokens``
  rule); a job that would take the reserved total past ``budget_tokens`` is refused at once with
  :class:`CacheFullError` (HTTP 429 + Retry-After), one that could never fit with :class:`InputError`.
  Rows shorter than the longest one are padded, so the cache actually held can exceed the sum of the live
  rows' lengths by that padding, never the reservations' sum times the batch size.
- A cancelled job (client gone) or one past its deadline leaves at the next iteration and frees its
  reservation; the sink of a job always gets exactly one terminal item: ``None`` (finished), or an
  exception (:class:`GenerationTimeoutError`, :class:`SchedulerClosedError`, an engine error).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpux.errors import GpuxError, InputError
from gpux.generate.loop import CacheLoop, Event, Sequence, choose

#: What a sink receives: a step's event for its job, ``None`` when the job finished, or the error that ended it.
Item = Event | BaseException | None


class CacheFullError(GpuxError):
    """The key/value cache budget is taken by running and waiting requests; retry in a moment (HTTP 429)."""


class GenerationTimeoutError(GpuxError):
    """A request ran past its deadline and was stopped (HTTP 504)."""


class SchedulerClosedError(GpuxError):
    """The model was unloaded before the request finished (HTTP 503); sending it again reloads it."""


@dataclass(eq=False)
class Job:
    """One request in the scheduler: its sequence, where its events go, and its place in the pipeline."""

    seq: Sequence
    sink: Callable[[Item], None]
    reserved: int
    deadline: float | None = None
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    finished: float | None = None
    cancelled: bool = False
    #: Prompt tokens already in this job's own cache (chunked prefill); its cache until it joins the batch.
    prefilled: int = 0
    own: _Rows | None = None
    done: bool = False
    _wake: Callable[[], None] | None = None

    def cancel(self) -> None:
        """Stop this job (its client went away): it leaves at the next iteration. Safe from any thread."""
        self.cancelled = True
        if self._wake is not None:
            self._wake()


@dataclass
class _Rows:
    """Rows sharing one cache: the jobs, the attention mask over the cache, the cache itself."""

    jobs: list[Job]
    mask: np.ndarray          # (rows, width) int64, 1 = real token; left padding only
    past: list[Any]           # onnxruntime values, (rows, heads, width, head_dim) each
    hold: list[Any] = field(default_factory=list)   # numpy-backed wrappers that ``past`` points into


class Scheduler:
    """Continuous batching over one model's cache graph (see the module docstring).

    ``on_finish(job)`` runs on the worker thread when a job ends (metrics). With ``post`` (e.g. an asyncio
    loop's ``call_soon_threadsafe``) sinks run on the consumer's thread instead: the worker hands over each
    iteration's items in one call (one event-loop wake-up per step, not one per row per step, measured
    ~3% of served throughput at 16 streams), so sinks need not be thread-safe.
    """

    def __init__(self, loop: CacheLoop, *, pad_id: int, eos_ids: frozenset[int], max_batch: int = 16,
                 budget_tokens: int = 65536, chunk: int = 512, name: str = "model",
                 on_finish: Callable[[Job], None] | None = None,
                 post: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.loop, self.pad_id, self.eos = loop, pad_id, eos_ids
        self.max_batch, self.budget, self.chunk = max(1, max_batch), budget_tokens, max(1, chunk)
        self.on_finish = on_finish
        self.post = post
        self._outbox: list[tuple[Callable[[Item], None], Item]] = []
        self.reserved = 0
        self.steps = 0
        self.peak_batch = 0
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._prefill: list[Job] = []
        self._running: _Rows | None = None
        self._closing = False
        self._long_turn = False
        self._thread = threading.Thread(target=self._work, name=f"gpux-sched-{name}", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------------------
    def submit(self, seq: Sequence, sink: Callable[[Item], None], timeout_s: float | None = None) -> Job:
        """Queue ``seq``; its events go to ``sink`` (called on the worker thread). Refuses at once when full."""
        need = len(seq.prompt) + seq.limit
        if need > self.budget:
            raise InputError(f"this request needs {need} tokens of key/value cache ({len(seq.prompt)} prompt + "
                             f"{seq.limit} new), more than the server's whole budget of {self.budget}",
                             hint="ask for fewer new tokens (max_tokens / num_predict), or raise --kv-budget")
        job = Job(seq, sink, need, None if timeout_s is None else time.perf_counter() + timeout_s)
        with self._cv:
            if self._closing:
                raise SchedulerClosedError("the model is being unloaded", hint="send the request again to reload it")
            if self.reserved + need > self.budget:
                raise CacheFullError(f"the key/value cache budget is taken ({self.reserved} of {self.budget} tokens "
                                     f"reserved; this request needs {need})",
                                     hint="retry after a moment, ask for fewer new tokens, or raise --kv-budget")
            self.reserved += need
            job._wake = self._wake
            self._waiting.append(job)
            self._cv.notify()
        return job

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    @property
    def depth(self) -> int:
        """Jobs not yet producing tokens (waiting or prefilling)."""
        return len(self._waiting) + len(self._prefill)

    @property
    def active(self) -> int:
        return len(self._running.jobs) if self._running else 0

    def close(self, drain_s: float = 0.0) -> None:
        """Refuse new jobs; fail waiting ones; let running ones finish for ``drain_s`` seconds, then fail them."""
        with self._cv:
            self._closing = True
            self._drain_until = time.perf_counter() + drain_s
            self._cv.notify()
        self._thread.join(timeout=drain_s + 30.0)

    # -- the worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._prefill or self._running or self._closing):
                    self._cv.wait()
                if self._closing:
                    for job in [*self._waiting, *self._prefill]:
                        self._end(job, SchedulerClosedError("the model was unloaded before this request ran",
                                                            hint="send it again to reload the model"))
                    self._waiting.clear()
                    self._prefill.clear()
                    if self._running is None:
                        self._flush()
                        return
                    if time.perf_counter() > self._drain_until:
                        for job in self._running.jobs:
                            self._end(job, SchedulerClosedError("the model was unloaded while this request ran",
                                                                hint="send it again to reload the model"))
                        self._running = None
                        self._flush()
                        return
                while self._waiting and len(self._prefill) + self.active < self.max_batch:
                    self._prefill.append(self._waiting.popleft())
            try:
                self._reap()
                if self._prefill:
                    self._prefill_step()
                if self._running is not None:
                    self._decode_step()
            except BaseException as exc:  # an engine failure ends every job in flight, not the worker
                for job in [*self._prefill, *(self._running.jobs if self._running else [])]:
                    self._end(job, exc)
                self._prefill.clear()
                self._running = None
            self._flush()

    def _emit(self, job: Job, item: Item) -> None:
        if self.post is None:
            job.sink(item)
        else:
            self._outbox.append((job.sink, item))

    def _flush(self) -> None:
        """Hand this iteration's items to the consumer's thread in one call (see ``post``)."""
        if not self._outbox or self.post is None:
            return
        items, self._outbox = self._outbox, []

        def deliver() -> None:
            for sink, item in items:
                sink(item)
        try:
            self.post(deliver)
        except RuntimeError:  # the consumer's event loop is closed (the server is shutting down): nobody listens
            pass

    def _end(self, job: Job, outcome: BaseException | None) -> None:
        if job.done:
            return
        job.done = True
        job.finished = time.perf_counter()
        with self._cv:
            self.reserved -= job.reserved
        job.own = None
        if not job.cancelled:
            self._emit(job, outcome)
        if self.on_finish is not None:
            try:
                self.on_finish(job)
            except Exception:  # noqa: S110 - metrics must never stop the worker
                pass

    def _gone(self, job: Job) -> BaseException | None | bool:
        """Why ``job`` must leave now (cancelled: True; past its deadline: the error), or False."""
        if job.cancelled:
            return True
        if job.deadline is not None and time.perf_counter() > job.deadline:
            return GenerationTimeoutError("the request ran past its timeout and was stopped",
                                          hint="ask for fewer new tokens, or raise the server's --request-timeout")
        return False

    def _reap(self) -> None:
        """Cancelled and expired jobs leave, waiting or running; their reservations are freed."""
        with self._cv:
            self._waiting = deque(j for j in self._waiting if not self._left(j))
        self._prefill = [j for j in self._prefill if not self._left(j)]
        if self._running is not None:
            leaving = {i for i, j in enumerate(self._running.jobs) if j.done or self._left(j)}
            if leaving:
                self._running = self._without(self._running, leaving)

    def _left(self, job: Job) -> bool:
        """End ``job`` if it was cancelled or ran past its deadline (then True), else False."""
        gone = self._gone(job)
        if gone is False:
            return job.done
        self._end(job, gone if isinstance(gone, BaseException) else None)
        return True

    # -- prefill ---------------------------------------------------------------------------------------
    def _prefill_step(self) -> None:
        """One prefill action: a group of short unstarted prompts, or the next chunk of a long one."""
        short = [j for j in self._prefill if j.prefilled == 0 and len(j.seq.prompt) <= self.chunk]
        long = [j for j in self._prefill if j not in short]
        if short and not (long and self._long_turn):
            group: list[Job] = []
            total = 0
            for job in short:
                if group and total + len(job.seq.prompt) > self.chunk:
                    break
                group.append(job)
                total += len(job.seq.prompt)
            self._long_turn = True
            self._prefill_group(group)
        elif long:
            self._long_turn = False
            self._prefill_chunk(long[0])

    def _prefill_group(self, group: list[Job]) -> None:
        width = max(len(j.seq.prompt) for j in group)
        ids = np.full((len(group), width), self.pad_id, np.int64)
        mask = np.zeros((len(group), width), np.int64)
        for row, job in enumerate(group):
            n = len(job.seq.prompt)
            ids[row, width - n:], mask[row, width - n:] = job.seq.prompt, 1
        logits, past = self.loop.step(ids, mask, self.loop.empty_cache(len(group)))
        for job in group:
            self._prefill.remove(job)
        self._started(_Rows(list(group), mask, past), logits)

    def _prefill_chunk(self, job: Job) -> None:
        piece = job.seq.prompt[job.prefilled:job.prefilled + self.chunk]
        rows = job.own or _Rows([job], np.zeros((1, 0), np.int64), self.loop.empty_cache(1))
        mask = np.concatenate([rows.mask, np.ones((1, len(piece)), np.int64)], axis=1)
        logits, past = self.loop.step(np.asarray([piece], np.int64), mask, rows.past)
        job.prefilled += len(piece)
        job.own = _Rows([job], mask, past)
        if job.prefilled >= len(job.seq.prompt):
            self._prefill.remove(job)
            rows, job.own = job.own, None
            self._started(rows, logits)

    def _started(self, rows: _Rows, logits: np.ndarray) -> None:
        """Prefilled rows: sample each one's first token, then join the running batch (if not already done)."""
        now = time.perf_counter()
        for row, job in enumerate(rows.jobs):
            job.first_token = now
            event = choose(0, job.seq, logits[row], self.eos)
            self._emit(job, event)
        staying = {i for i, j in enumerate(rows.jobs) if j.seq.finish_reason is None and not j.cancelled}
        for i, job in enumerate(rows.jobs):
            if i not in staying:
                self._end(job, None)
        if not staying:
            return
        joining = self._without(rows, set(range(len(rows.jobs))) - staying)
        assert joining is not None
        self._running = joining if self._running is None else self._merge(self._running, joining)
        self.peak_batch = max(self.peak_batch, len(self._running.jobs))

    # -- decode ----------------------------------------------------------------------------------------
    def _decode_step(self) -> None:
        run = self._running
        assert run is not None
        ids = np.asarray([[j.seq.tokens[-1]] for j in run.jobs], np.int64)
        mask = np.concatenate([run.mask, np.ones((len(run.jobs), 1), np.int64)], axis=1)
        logits, past = self.loop.step(ids, mask, run.past)
        self.steps += 1
        run.mask, run.past, run.hold = mask, past, []
        leaving = self._choose_rows(run.jobs, logits)
        if leaving:
            self._running = self._without(run, leaving)

    def _choose_rows(self, jobs: list[Job], logits: np.ndarray) -> set[int]:
        """One decode step's tokens for ``jobs`` (row by row), emitted; the rows that leave (cancelled or
        finished, each ended) are returned so the caller cuts them out of their cache."""
        leaving = set()
        for row, job in enumerate(jobs):
            if job.cancelled:
                leaving.add(row)
                continue
            self._emit(job, choose(row, job.seq, logits[row], self.eos))
            if job.seq.finish_reason is not None:
                leaving.add(row)
        for row in leaving:
            self._end(jobs[row], None)
        return leaving

    # -- cache surgery ---------------------------------------------------------------------------------
    def _values(self, arrays: list[np.ndarray]) -> tuple[list[Any], list[Any]]:
        from onnxruntime import OrtValue

        from gpux.generate.loop import _raw

        hold = [OrtValue.ortvalue_from_numpy(a, self.loop.device) for a in arrays]
        return [_raw(v) for v in hold], hold

    def _without(self, rows: _Rows, leaving: set[int]) -> _Rows | None:
        """``rows`` less the ``leaving`` ones, with columns that are padding for every row left dropped."""
        keep = [i for i in range(len(rows.jobs)) if i not in leaving]
        if not keep:
            return None
        if not leaving:
            return rows
        mask = rows.mask[keep]
        first = int((mask.shape[1] - mask.sum(axis=1)).min())
        arrays = [np.ascontiguousarray(_numpy(v)[keep][:, :, first:]) for v in rows.past]
        past, hold = self._values(arrays)
        return _Rows([rows.jobs[i] for i in keep], np.ascontiguousarray(mask[:, first:]), past, hold)

    def _merge(self, a: _Rows, b: _Rows) -> _Rows:
        """One batch of ``a``'s rows then ``b``'s, the narrower cache left-padded to the wider one's width."""
        width = max(a.mask.shape[1], b.mask.shape[1])

        def widen(x: np.ndarray, axis: int) -> np.ndarray:
            pad = width - x.shape[axis]
            if pad == 0:
                return x
            shape = list(x.shape)
            shape[axis] = pad
            return np.concatenate([np.zeros(shape, x.dtype), x], axis=axis)

        mask = np.concatenate([widen(a.mask, 1), widen(b.mask, 1)], axis=0)
        arrays = [np.concatenate([widen(_numpy(x), 2), widen(_numpy(y), 2)], axis=0) for x, y in zip(a.past, b.past)]
        past, hold = self._values(arrays)
        return _Rows(a.jobs + b.jobs, mask, past, hold)


def _numpy(value: Any) -> np.ndarray:
    """A cache value as a host array (a copy where it lives on a device)."""
    return np.asarray(value.numpy())

