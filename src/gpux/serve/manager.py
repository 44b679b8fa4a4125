"""The model manager: what is loaded, how much memory it holds, when it leaves. No HTTP here.

- Loading is single-flight: concurrent requests for an unloaded model wait on
  one load. Loads run in a thread, off the event loop.
- Memory: a model's cost is the larger of its files' size (known before
  loading) and the process RSS growth its load caused, plus its activation
  memory: the most RSS one of its batches grew the process by (measured in the
  worker thread around each batch, remembered across unloads). Loading past the
  budget evicts idle models, least recently used first; a model that cannot fit
  even in an empty server is refused with :class:`ModelTooLargeError`. When a
  batch grows a model past the budget, idle models are evicted to make up for it.
- Unloading is atomic and drains: the model leaves ``models`` at once (a new
  request waits for the unload to end, then loads it again), queued requests
  fail at once with 503, running batches get the request timeout to finish.
- Leases: whenever the set of loaded models changes it is written to
  ``$GPUX_HOME/serving/<pid>.json`` (:mod:`gpux.store.leases`) so ``gpux rm``
  can warn; :meth:`ModelManager.close` removes it.
- keep_alive: a model idle for its keep-alive (per model, set by the last
  request that named one) is unloaded by :meth:`ModelManager.reap`; a negative
  keep-alive keeps it forever, zero unloads it after the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gpux.errors import GpuxError, ModelNotFoundError
from gpux.serve.batcher import Batcher, BatchConfig
from gpux.serve.metrics import Metrics
from gpux.store import leases


class ModelTooLargeError(GpuxError):
    """The model needs more memory than the server's whole budget."""

    exit_code = 7


#: Batch RSS growth below this is noise (the HTTP thread's own allocations, page rounding), not activations.
ACTIVATION_FLOOR = 1 << 20


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class GenerationConfig:
    """How the server runs text-generation models (``gpux serve`` flags; gpux.yml ``serving``)."""

    #: Sequences decoded together per model (the scheduler's batch rows).
    max_sequences: int = 16
    #: Key/value cache tokens reserved at most per model (prompt + max new tokens of every request in it);
    #: None: what ``kv_budget_bytes`` holds for the model's layers.
    kv_budget_tokens: int | None = None
    kv_budget_bytes: int = 2 << 30
    #: Prompt tokens prefilled per iteration; longer prompts are prefilled in pieces between decode steps.
    prefill_chunk: int = 512
    #: Seconds one generation may run before it is stopped (504, or an error event in a stream).
    request_timeout_s: float = 600.0
    #: The context a request gets when it names none (Ollama's num_ctx default), capped by the model's own.
    default_context: int = 4096


@dataclass
class Loaded:
    """A model in memory and what the server knows about it."""

    name: str
    model: Any
    task: Any
    batcher: Batcher
    #: What loading cost: max(files, RSS growth of the load).
    load_bytes: int
    load_s: float
    keep_alive_s: float
    last_used: float = field(default_factory=time.time)
    active: int = 0
    #: The most RSS one batch grew the process by (activations, arena growth).
    activation_bytes: int = 0
    #: Text-generation models: the continuous-batching scheduler (gpux.generate.scheduler); None otherwise.
    scheduler: Any = None

    @property
    def memory_bytes(self) -> int:
        """What the model counts against --memory-budget: its load plus its largest batch's growth."""
        return self.load_bytes + self.activation_bytes

    @property
    def expires_at(self) -> float | None:
        return None if self.keep_alive_s < 0 else self.last_used + self.keep_alive_s

    def run_items(self, items: list[Any]) -> list[Any]:
        """What the batcher calls: texts through the task -> (answer, tokens) each; raw feeds one by one."""
        if self.task is not None:
            answers, tokens = self.task.run_counted(items)
            return list(zip(answers, tokens))
        return [self.model.run(feed) for feed in items]


class ModelManager:
    """Thread-compatible only from the event loop that created it."""

    def __init__(self, *, budget_bytes: int | None = None, keep_alive_s: float = 300.0,
                 batch: BatchConfig | None = None, metrics: Metrics | None = None,
                 loader: Callable[[str], Any] | None = None, store: Any = None, threads: int | None = None,
                 generation: GenerationConfig | None = None) -> None:
        from gpux.store.local import Store

        self.budget = budget_bytes
        self.default_keep_alive = keep_alive_s
        self.batch = batch or BatchConfig()
        self.generation = generation or GenerationConfig()
        self.metrics = metrics or Metrics()
        self.store = store or Store()
        self._loader = loader
        self.threads = threads
        self.models: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Task[Loaded]] = {}
        self._lock = asyncio.Lock()
        self._aliases: dict[str, tuple[str, float]] = {}
        #: Models being unloaded (out of ``models``, still holding memory) and the drain each waits on.
        self._draining: dict[str, tuple[Loaded, asyncio.Task[None]]] = {}
        #: The largest batch growth seen per model, kept across unloads: its next load is charged for it.
        self._activation: dict[str, int] = {}
        self._rebalance: asyncio.Task[None] | None = None

    # -- names -----------------------------------------------------------------------

    def canonical(self, ref: str) -> str:
        """``name:tag`` for a request's model name; :class:`ModelNotFoundError` if not stored.

        Answers for loaded models come from memory (no manifest read on the request path);
        others are looked up in the store, and remembered for a few seconds.
        """
        from gpux.store.local import parse_ref

        hit = self._aliases.get(ref)
        if hit is not None and (hit[0] in self.models or time.monotonic() - hit[1] < 5.0):
            return hit[0]
        name, tag = parse_ref(ref)
        manifest = self.store.manifest(f"{name}:{tag}" if tag else name)
        canonical = f"{manifest.name}:{manifest.tag}"
        self._aliases[ref] = (canonical, time.monotonic())
        return canonical

    def available(self) -> list[dict[str, Any]]:
        out = []
        for name, tag in self.store.names():
            try:
                m = self.store.manifest(f"{name}:{tag}")
            except GpuxError:
                continue
            out.append({"name": f"{name}:{tag}", "task": m.task, "size_bytes": self.store.size(m),
                        "created": m.created, "digest": _digest(m), "source": m.source})
        return out

    # -- loading -----------------------------------------------------------------------

    async def get(self, ref: str, keep_alive_s: float | None = None) -> tuple[Loaded, float]:
        """The loaded model for ``ref`` (loading it if needed) and the seconds this call spent loading."""
        name = self.canonical(ref)
        start = time.perf_counter()
        loaded = self.models.get(name)
        while loaded is None and name in self._draining:  # unloading: wait for it to end, then load afresh
            await asyncio.shield(self._draining[name][1])
            loaded = self.models.get(name)
        if loaded is None:
            task = self._loading.get(name)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._load(name))
                self._loading[name] = task
                task.add_done_callback(functools.partial(self._loaded_or_failed, name))
            loaded = await asyncio.shield(task)
        if keep_alive_s is not None:
            loaded.keep_alive_s = keep_alive_s
        loaded.last_used = time.time()
        return loaded, time.perf_counter() - start

    @contextlib.asynccontextmanager
    async def use(self, ref: str, keep_alive_s: float | None = None) -> AsyncIterator[tuple[Loaded, float]]:
        """Hold ``ref`` loaded (never evicted) for the block; yields (model, seconds spent loading)."""
        loaded, load_s = await self.get(ref, keep_alive_s)
        loaded.active += 1
        try:
            yield loaded, load_s
        finally:
            loaded.active -= 1
            loaded.last_used = time.time()
            if loaded.keep_alive_s == 0 and loaded.active == 0 and self.models.get(loaded.name) is loaded:
                await self.unload(loaded.name, reason="expired")  # this copy, not one loaded after an unload

    def _loaded_or_failed(self, name: str, _task: object) -> None:
        self._loading.pop(name, None)

    async def _load(self, name: str) -> Loaded:
        estimate = self._estimate(name)
        if self.budget is not None and estimate > self.budget:
            raise ModelTooLargeError(
                f"model {name} needs about {estimate / 1e6:.0f} MB, more than the whole memory budget "
                f"({self.budget / 1e6:.0f} MB)", hint="raise --memory-budget or serve a smaller model")
        async with self._lock:
            await self._make_room(estimate, keep=name)
            before = _rss_bytes()
            start = time.perf_counter()
            model, task = await asyncio.get_running_loop().run_in_executor(None, self._load_sync, name)
            took = time.perf_counter() - start
            memory = max(estimate - self._activation.get(name, 0), _rss_bytes() - before)
            loaded = Loaded(name, model, task, None, memory, took, self.default_keep_alive,  # type: ignore[arg-type]
                            activation_bytes=self._activation.get(name, 0))
            loaded.batcher = Batcher(loaded.run_items, self.batch, on_batch=functools.partial(self._on_batch, loaded),
                                     cost=_tokens if task is not None else None,
                                     on_drop=functools.partial(self.metrics.dropped, name))
            if task is not None and hasattr(task, "scheduler"):
                loaded.scheduler = self._scheduler(loaded, asyncio.get_running_loop())
            self.models[name] = loaded
            self.metrics.loaded(name, loaded.memory_bytes)
            self._record_leases()
            return loaded

    def _scheduler(self, loaded: Loaded, loop: asyncio.AbstractEventLoop) -> Any:
        g = self.generation
        budget = g.kv_budget_tokens or max(1, g.kv_budget_bytes // max(1, loaded.task.cache_token_bytes))

        def finished(job: Any) -> None:  # on the scheduler's thread; Metrics is thread-safe
            if job.cancelled:
                self.metrics.dropped(loaded.name, "cancelled", 1)
            elif job.first_token is not None:
                self.metrics.generation(loaded.name, job.seq.input_tokens, len(job.seq.tokens),
                                        job.first_token - job.submitted, (job.finished or job.first_token) - job.first_token)
        return loaded.task.scheduler(max_batch=g.max_sequences, budget_tokens=budget, chunk=g.prefill_chunk,
                                     on_finish=finished, post=loop.call_soon_threadsafe)

    def _load_sync(self, name: str) -> tuple[Any, Any]:
        from gpux.engine.model import load
        from gpux.tasks import for_model

        from gpux.engine.options import cpu_count

        # No busy-waiting intra-op threads: they would take cores from the HTTP thread and the tokenizer.
        # With several instances the cores are split between them (each batch runs on its share).
        instances = max(1, self.batch.instances)
        threads = self.threads or (max(1, cpu_count() // instances) if instances > 1 else None)
        from gpux.store.repair import get_or_repair  # a corrupt or missing blob: pulled again in a child process

        model = self._loader(name) if self._loader is not None else load(get_or_repair(name, self.store),
                                                                           store=self.store, spinning=False,
                                                                           intra_op_threads=threads)
        return model, for_model(model)

    def _estimate(self, name: str) -> int:
        """Files plus the activation memory its batches needed the last time it was loaded."""
        return int(self.store.size(self.store.manifest(name))) + self._activation.get(name, 0)

    def _used(self) -> int:
        return sum(m.memory_bytes for m in self.models.values()) + \
            sum(m.memory_bytes for m, _ in self._draining.values())

    def _on_batch(self, loaded: Loaded, items: int, seconds: float, grew: int) -> None:
        """A batch of ``loaded`` finished (on the event loop): stats, and its memory if the batch grew it."""
        self.metrics.batch(loaded.name, items, seconds)
        if grew < ACTIVATION_FLOOR or grew <= loaded.activation_bytes:
            return
        loaded.activation_bytes = self._activation[loaded.name] = grew
        self.metrics.memory(loaded.name, loaded.memory_bytes)
        if self.budget is not None and self._used() > self.budget and \
                (self._rebalance is None or self._rebalance.done()):
            self._rebalance = asyncio.get_running_loop().create_task(self._evict_idle(keep=loaded.name))

    async def _evict_idle(self, keep: str) -> None:
        """Batches grew the loaded models past the budget: unload idle ones, least recently used first."""
        async with self._lock:
            idle = sorted((m for m in self.models.values() if m.active == 0 and m.name != keep),
                          key=lambda m: m.last_used)
            while self.budget is not None and self._used() > self.budget and idle:
                await self.unload(idle.pop(0).name, reason="evicted")

    async def _make_room(self, need: int, keep: str) -> None:
        if self.budget is None:
            return
        idle = sorted((m for m in self.models.values() if m.active == 0 and m.name != keep),
                      key=lambda m: m.last_used)
        while self._used() + need > self.budget and idle:
            await self.unload(idle.pop(0).name, reason="evicted")
        if self._used() + need > self.budget:
            busy = ", ".join(m.name for m in self.models.values())
            raise ModelTooLargeError(
                f"no room for {keep}: the loaded models ({busy}) are busy and the budget is "
                f"{self.budget / 1e6:.0f} MB", hint="retry when they are idle, or raise --memory-budget")

    async def unload(self, ref: str, reason: str = "unloaded") -> bool:
        """Unload ``ref``; False if it was not loaded (or another call is already unloading it).

        Atomic: the model leaves ``models`` before the first await, so no request reaches its batcher
        afterwards; queued requests fail at once with 503, running batches get the request timeout to
        finish (their requests are answered), then the model is gone.
        """
        name = ref if ref in self.models or ref in self._draining else self.canonical(ref)
        loaded = self.models.pop(name, None)
        if loaded is None:
            if name in self._draining:
                await asyncio.shield(self._draining[name][1])
            return False
        drain = asyncio.get_running_loop().create_task(self._drain(loaded))
        self._draining[name] = (loaded, drain)
        try:
            await asyncio.shield(drain)
        finally:
            if drain.done():
                self._draining.pop(name, None)
                self.metrics.unloaded(name, reason)
                self._record_leases()
            else:  # our caller was cancelled; the drain goes on and cleans up after itself
                drain.add_done_callback(functools.partial(self._drained, name, reason))
        return True

    async def _drain(self, loaded: Loaded) -> None:
        """Queued work fails at once; running batches (and generations) get the request timeout to finish."""
        await loaded.batcher.close(wait_s=self.batch.timeout_s)
        if loaded.scheduler is not None:
            await asyncio.get_running_loop().run_in_executor(None, loaded.scheduler.close, self.batch.timeout_s)

    def _drained(self, name: str, reason: str, _task: object) -> None:
        self._draining.pop(name, None)
        self.metrics.unloaded(name, reason)
        self._record_leases()

    def _record_leases(self) -> None:
        """Tell ``gpux rm`` which stored models this server holds (best effort, never raises)."""
        leases.record(self.store.root, sorted(set(self.models) | set(self._draining)))

    async def reap(self) -> list[str]:
        """Unload every idle model whose keep-alive has passed; returns their names."""
        now = time.time()
        gone = [m.name for m in list(self.models.values())
                if m.active == 0 and m.expires_at is not None and m.expires_at <= now]
        for name in gone:
            await self.unload(name, reason="expired")
        return gone

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload(name)
        for _, drain in list(self._draining.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(drain)
        leases.release(self.store.root)

    def require(self, ref: str) -> str:
        """``canonical(ref)``, with the error every route gives for an unknown model."""
        try:
            return self.canonical(ref)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"model {ref!r} is not in the store",
                                     hint=f"pull it first: gpux pull {ref}") from exc


def _tokens(result: Any) -> int:
    """Tokens one task result used: :meth:`Loaded.run_items` gives (answer, tokens) pairs."""
    return int(result[1])


def _digest(manifest: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted((k, v["sha256"]) for k, v in manifest.files.items())).encode()).hexdigest()
