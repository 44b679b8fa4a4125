"""Per-model serving statistics: /stats (JSON) and /metrics (Prometheus text format).

Latencies are kept in a bounded window (the last 10,000 requests per model) so
percentiles reflect recent traffic and memory stays flat under load. Items run
and items dropped unrun (timed out, client gone, unloaded, over a cap) are
counted per model, so "work nobody waits for never runs" can be checked from
outside. Also here: the process's own memory, read from /proc, which the model
manager charges to models (load growth, batch growth).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 10_000


def process_memory() -> tuple[int, int]:
    """This process's (RSS, peak RSS) in bytes, from /proc/self/status; (0, 0) where there is no /proc."""
    rss = peak = 0
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return rss, peak


@dataclass
class _ModelStats:
    requests: int = 0
    errors: int = 0
    latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    queue_s: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    batch_sizes: Counter[int] = field(default_factory=Counter)
    loads: int = 0
    unloads: Counter[str] = field(default_factory=Counter)
    items_run: int = 0
    items_dropped: Counter[str] = field(default_factory=Counter)
    generations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tokens_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    frames_sent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    frames_dropped: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


def _pcts(xs: deque[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    import numpy as np

    p = np.percentile(np.fromiter(xs, float), [50, 95, 99]) * 1e3
    return {"p50_ms": float(p[0]), "p95_ms": float(p[1]), "p99_ms": float(p[2])}


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram

        self._lock = threading.Lock()
        self._models: dict[str, _ModelStats] = {}
        self.registry = CollectorRegistry()  # one per server: tests run several
        self._p_requests = PCounter("gpux_requests", "Requests by model, route and HTTP status",
                                    ["model", "route", "status"], registry=self.registry)
        self._p_latency = Histogram("gpux_request_duration_seconds", "Request latency by model", ["model"],
                                    registry=self.registry,
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self._p_queue = Histogram("gpux_queue_duration_seconds", "Time requests wait for a batch", ["model"],
                                  registry=self.registry, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .5, 1))
        self._p_batch = Histogram("gpux_batch_size", "Items per inference call", ["model"], registry=self.registry,
                                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self._p_dropped = PCounter("gpux_dropped_items", "Items dropped before they ran, by model and reason",
                                   ["model", "reason"], registry=self.registry)
        self._p_memory = Gauge("gpux_model_memory_bytes", "Memory attributed to a loaded model", ["model"],
                               registry=self.registry)

    def _m(self, model: str) -> _ModelStats:
        return self._models.setdefault(model, _ModelStats())

    def request(self, model: str, route: str, status: int, latency_s: float, queue_s: float | None) -> None:
        with self._lock:
            m = self._m(model)
            m.requests += 1
            if status >= 400:
                m.errors += 1
            else:
                m.latency_s.append(latency_s)
                if queue_s is not None:
                    m.queue_s.append(queue_s)
        self._p_requests.labels(model, route, str(status)).inc()
        if status < 400:
            self._p_latency.labels(model).observe(latency_s)
            if queue_s is not None:
                self._p_queue.labels(model).observe(queue_s)

    def batch(self, model: str, size: int, seconds: float) -> None:
        with self._lock:
            m = self._m(model)
            m.batch_sizes[size] += 1
            m.items_run += size
        self._p_batch.labels(model).observe(size)

    def dropped(self, model: str, reason: str, items: int) -> None:
        """``items`` of a request were dropped before they ran (``reason``: timeout, cancelled, unloaded, ...)."""
        with self._lock:
            self._m(model).items_dropped[reason] += items
        self._p_dropped.labels(model, reason).inc(items)

    def generation(self, model: str, prompt_tokens: int, tokens: int, ttft_s: float, decode_s: float) -> None:
        """One generation finished: its time to first token and decode rate (tokens after the first)."""
        with self._lock:
            m = self._m(model)
            m.generations += 1
            m.prompt_tokens += prompt_tokens
            m.completion_tokens += tokens
            m.ttft_s.append(ttft_s)
            if tokens > 1 and decode_s > 0:
                m.tokens_per_s.append((tokens - 1) / decode_s)

    def frames(self, model: str, sent: int, dropped: int) -> None:
        """A frame-paced stream sent ``sent`` frames and skipped ``dropped`` it could not send on time."""
        now = time.monotonic()
        with self._lock:
            m = self._m(model)
            m.frames_sent.extend([now] * min(sent, WINDOW))
            m.frames_dropped.extend([now] * min(dropped, WINDOW))

    def _generation(self, m: _ModelStats) -> dict[str, Any]:
        import numpy as np

        now = time.monotonic()
        rates = np.fromiter(m.tokens_per_s, float) if m.tokens_per_s else None
        return {"requests": m.generations, "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
                "ttft": _pcts(m.ttft_s),
                "tokens_per_s": None if rates is None else
                {k: float(np.percentile(rates, q)) for k, q in (("p5", 5), ("p50", 50), ("p95", 95))},
                "frames_per_minute": {"sent": sum(1 for t in m.frames_sent if now - t <= 60),
                                      "dropped": sum(1 for t in m.frames_dropped if now - t <= 60)}}

    def loaded(self, model: str, memory: int) -> None:
        with self._lock:
            self._m(model).loads += 1
        self._p_memory.labels(model).set(memory)

    def memory(self, model: str, memory: int) -> None:
        """A loaded model's memory changed (its batches grew it)."""
        self._p_memory.labels(model).set(memory)

    def unloaded(self, model: str, reason: str) -> None:
        with self._lock:
            self._m(model).unloads[reason] += 1
        try:
            self._p_memory.remove(model)
        except KeyError:
            pass

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {name: {"requests": m.requests, "errors": m.errors, "latency": _pcts(m.latency_s),
                           "queue": _pcts(m.queue_s),
                           "batch_size_histogram": {str(k): v for k, v in sorted(m.batch_sizes.items())},
                           "loads": m.loads, "unloads": dict(m.unloads),
                           "items_run": m.items_run, "items_dropped": dict(m.items_dropped),
                           **({"generation": self._generation(m)} if m.generations or m.frames_sent else {})}
                    for name, m in self._models.items()}

    def prometheus(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))
