"""``gpux run --benchmark``: time a loaded model on one feed and report it in full."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.bench.env import environment, peak_rss_mb
from gpux.bench.stats import summarize_ms
from gpux.engine.providers import alias_of

if TYPE_CHECKING:
    from gpux.engine.model import Model


def batch_size(model: Model, feed: Mapping[str, Any]) -> int:
    """Items per call: dim 0 of the model's first non-scalar input (1 if all are scalars).

    That is the batch axis of every exporter gpux knows; it is reported with
    the result so a reader can see what throughput counts.
    """
    for spec in model.inputs:
        shape = np.shape(feed[spec.name]) if spec.name in feed else ()
        if shape:
            return int(shape[0])
    return 1


def _task_items(payload: Mapping[str, Any]) -> int:
    value = payload.get("inputs")
    return len(value) if isinstance(value, list) else 1


def time_calls(call: Callable[[], Any], runs: int, on_step: Callable[[int], None] | None = None) -> list[float]:
    """Milliseconds of each of ``runs`` calls to ``call`` (``on_step(i)`` after the i-th)."""
    clock, out = time.perf_counter_ns, []
    for i in range(runs):
        t0 = clock()
        call()
        out.append((clock() - t0) / 1e6)
        if on_step is not None:
            on_step(i + 1)
    return out


def benchmark(model: Model, feed: Mapping[str, Any], *, runs: int = 100, warmup: int = 10,
              on_step: Callable[[int], None] | None = None,
              call: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``warmup`` untimed calls then ``runs`` timed ones; return the full result.

    ``call`` replaces ``model.run(feed)`` when a task pipeline (tokenize, run,
    post-process) is what should be timed. The first call is timed on its own
    (``first_run_ms``): it pays for lazy allocations and, with placement on, profiling.
    """
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    run = call if call is not None else (lambda: model.run(feed))
    start = time.perf_counter_ns()
    run()
    first_ms = (time.perf_counter_ns() - start) / 1e6
    for _ in range(warmup):
        run()
    samples = time_calls(run, runs, on_step)
    items = batch_size(model, feed) if call is None else _task_items(feed)
    total_s = sum(samples) / 1e3
    return {
        "model": model.name,
        "providers": [alias_of(p) for p in model.providers],
        "placement": model.placement,
        "inputs": {k: list(np.shape(v)) for k, v in feed.items()} if call is None else {"texts": _task_items(feed)},
        "batch_size": items,
        "runs": runs,
        "warmup": warmup,
        "latency": summarize_ms(samples),
        "throughput_items_per_s": items * runs / total_s if total_s > 0 else float("inf"),
        "load_ms": model.load_ms,
        "first_run_ms": first_ms,
        "peak_rss_mb": peak_rss_mb(),
        "session": model.settings,
        "environment": environment(),
    }
