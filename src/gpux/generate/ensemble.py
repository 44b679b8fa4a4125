"""An ensemble run's bookkeeping: N models' token streams in, their diversity index (DI) per step and overall out.

HTTP-free and engine-free: the server's ``POST /ensemble`` and ``gpux run`` with several models both feed
it the events their schedulers make, tagged by model, in whatever order they arrive. For models sharing a
tokenizer (same vocabulary, same ids) a step's DI is the mean pairwise Jensen–Shannon divergence of the
models' raw next-token distributions at that step (:func:`gpux.generate.diversity.step_di_from_logits`),
computed as soon as every model still generating has reached the step and then forgotten, so memory stays
one logits row per model. Steps past a model's end compare the models still running (one left: no DI).
Models with different tokenizers get the text-level DI of their final texts only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpux.generate.diversity import DiversityMeter, step_di_from_logits, text_di
from gpux.generate.loop import Event


@dataclass
class EnsembleMeter:
    """Per-step and overall DI of ``n`` models' streams (see the module docstring)."""

    n: int
    shared_vocabulary: bool
    start: float = field(default_factory=time.perf_counter)
    meter: DiversityMeter = field(default_factory=DiversityMeter)
    texts: list[str] = field(init=False)
    tokens: list[int] = field(init=False)
    done: list[bool] = field(init=False)
    _pending: list[dict[int, np.ndarray]] = field(init=False)
    _next_step: int = 0

    def __post_init__(self) -> None:
        self.texts, self.tokens, self.done = [""] * self.n, [0] * self.n, [False] * self.n
        self._pending = [{} for _ in range(self.n)]

    def add(self, model: int, event: Event) -> list[tuple[int, float]]:
        """Record one model's event; returns the ``(step, DI)`` pairs it completed (in step order)."""
        step = self.tokens[model]
        self.tokens[model] += 1
        self.texts[model] += event.text
        if event.finish_reason is not None:
            self.done[model] = True
        if self.shared_vocabulary and event.logits is not None:
            self._pending[model][step] = event.logits
        return self._complete()

    def _complete(self) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        while self.shared_vocabulary:
            k = self._next_step
            live = [m for m in range(self.n) if self.tokens[m] > k or not self.done[m]]
            if any(k not in self._pending[m] for m in live) or not live:
                break
            rows = [self._pending[m].pop(k) for m in live]
            self._next_step += 1
            if len(rows) >= 2:
                out.append((k, self.meter.add(step_di_from_logits(rows))))
        return out

    def report(self) -> dict[str, Any]:
        """The run's DI (mean of step DIs, or the text DI), text DI, token counts and aggregate rate."""
        seconds = time.perf_counter() - self.start
        text = text_di(self.texts) if self.n >= 2 else 0.0
        return {"di": self.meter.mean if self.shared_vocabulary else text,
                "di_kind": "next-token distributions" if self.shared_vocabulary else "text",
                "di_per_step": [round(x, 6) for x in self.meter.per_step], "text_di": text,
                "tokens": list(self.tokens),
                "aggregate_tokens_per_s": round(sum(self.tokens) / seconds, 2) if seconds > 0 else 0.0}


def vocabulary_key(tokenizer: Any) -> int:
    """A key equal for tokenizers with the same vocabulary (tokens and ids), which is what step DI needs."""
    return hash(tuple(sorted(tokenizer.get_vocab(with_added_tokens=True).items())))


def run_together(tasks: list[Any], names: list[str], payload: dict[str, Any]) -> dict[str, Any]:
    """One prompt (or chat) to every task at once, offline (``gpux run`` with several models).

    Each distinct task gets one scheduler, so a model named twice decodes both copies in one batch, as the
    server does. Returns each model's generation and the ensemble's DI report.
    """
    import queue

    from gpux.errors import UsageError

    shared = len({vocabulary_key(t.tokenizer) for t in tasks}) == 1
    inbox: queue.Queue[tuple[int, Any]] = queue.Queue()
    schedulers: dict[int, Any] = {}
    jobs = []
    try:
        for i, task in enumerate(tasks):
            requests = task.items(payload)
            if len(requests) != 1:
                raise UsageError(f"an ensemble takes one prompt, not {len(requests)}",
                                 hint='send one "inputs" string or one "messages" chat')
            seq = task.sequences(requests)[0]
            seq.keep_logits = shared
            scheduler = schedulers.setdefault(id(task), None) or task.scheduler()
            schedulers[id(task)] = scheduler
            jobs.append(scheduler.submit(seq, lambda item, i=i: inbox.put((i, item))))
        meter = EnsembleMeter(len(tasks), shared)
        open_jobs = len(jobs)
        while open_jobs:
            i, item = inbox.get()
            if item is None or isinstance(item, BaseException):
                open_jobs -= 1
                if isinstance(item, BaseException):
                    raise item
                continue
            meter.add(i, item)
    finally:
        for scheduler in schedulers.values():
            scheduler.close()
    return {"models": [{"model": name, "text": job.seq.text, "token_ids": list(job.seq.tokens),
                        "finish_reason": job.seq.finish_reason} for name, job in zip(names, jobs)],
            **meter.report()}
