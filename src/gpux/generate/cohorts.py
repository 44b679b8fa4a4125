"""Continuous batching for encoder–decoder models: requests join in cohorts, every cohort steps each iteration.

The decoder-only scheduler (gpux.generate.scheduler) merges newcomers into one running batch by left-padding
caches; an encoder–decoder row also carries its cross-attention keys and values over its own source length,
and learned decoder positions (Whisper, BART) would shift under padding. So here the jobs admitted in one
iteration are encoded together and form a *cohort* (their decoder prompts have one length), and each
iteration runs one decoder step per cohort. A newcomer never waits for a running request to finish (it
starts a cohort at the next iteration), finished or cancelled rows are cut out of their cohort at once, and
every contract of :class:`~gpux.generate.scheduler.Scheduler` holds (submit/cancel from any thread, budget,
deadlines, one terminal item per sink). The cost against one merged batch: one decoder call per cohort.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpux.generate.loop import choose
from gpux.generate.scheduler import Job, Scheduler, _numpy


@dataclass
class _Cohort:
    jobs: list[Job]
    mask: np.ndarray | None       # the encoder's padding mask (text models), rows x source
    past: list[Any]               # self-attention cache, onnxruntime values
    cross: list[Any]              # cross-attention keys/values, onnxruntime values
    hold: list[Any] = field(default_factory=list)


class _All:
    """What the base class reads as "the running batch": every cohort's jobs."""

    def __init__(self, cohorts: list[_Cohort]) -> None:
        self.jobs = [j for c in cohorts for j in c.jobs]


class CohortScheduler(Scheduler):
    """:class:`Scheduler`'s contract over a seq2seq task's loop (see the module docstring)."""

    def __init__(self, task: Any, *, name: str = "model", **options: Any) -> None:
        self.task = task
        self.s2s = task.s2s
        self._cohorts: list[_Cohort] = []
        super().__init__(task.loop, pad_id=task.pad, eos_ids=task.eos, name=name, **options)

    @property  # type: ignore[override]
    def _running(self) -> _All | None:
        return _All(self._cohorts) if self._cohorts else None

    @_running.setter
    def _running(self, value: Any) -> None:
        if value is None:
            self._cohorts = []

    def _reap(self) -> None:
        with self._cv:
            self._waiting = type(self._waiting)(j for j in self._waiting if not self._left(j))
        self._prefill = [j for j in self._prefill if not self._left(j)]
        self._cohorts = [c for c in (self._cut(c, {i for i, j in enumerate(c.jobs) if j.done or self._left(j)})
                                     for c in self._cohorts) if c is not None]

    def _prefill_step(self) -> None:
        """Encode every admitted job with the same decoder prompt length as one cohort; take its first token."""
        width = len(self._prefill[0].seq.prompt)
        group = [j for j in self._prefill if len(j.seq.prompt) == width]
        self._prefill = [j for j in self._prefill if j not in group]
        seqs = [j.seq for j in group]
        feed = self.task.source(seqs)
        cross = self.s2s.encode(feed)
        mask = feed.get("attention_mask") if self.s2s.masked else None
        ids = np.asarray([s.prompt for s in seqs], np.int64)
        logits, past = self.s2s.step(ids, mask, self.s2s.empty_cache(len(group)), cross)
        now = time.perf_counter()
        for row, job in enumerate(group):
            job.first_token = now
            self._emit(job, choose(row, job.seq, logits[row], self.eos))
        cohort = _Cohort(group, mask, past, cross)
        done = {i for i, j in enumerate(group) if j.seq.finish_reason is not None or j.cancelled}
        for i in done:
            self._end(group[i], None)
        kept = self._cut(cohort, done)
        if kept is not None:
            self._cohorts.append(kept)
        self.peak_batch = max(self.peak_batch, self.active)

    def _decode_step(self) -> None:
        cut: list[_Cohort | None] = list(self._cohorts)
        for index, cohort in enumerate(list(self._cohorts)):
            ids = np.asarray([[j.seq.tokens[-1]] for j in cohort.jobs], np.int64)
            logits, cohort.past = self.s2s.step(ids, cohort.mask, cohort.past, cohort.cross)
            cohort.hold = []
            cut[index] = self._cut(cohort, self._choose_rows(cohort.jobs, logits))
        self._cohorts = [c for c in cut if c is not None]
        self.steps += 1

    def _cut(self, cohort: _Cohort, leaving: set[int]) -> _Cohort | None:
        """``cohort`` less the ``leaving`` rows (their caches sliced out), or None when none is left."""
        keep = [i for i in range(len(cohort.jobs)) if i not in leaving]
        if not keep:
            return None
        if not leaving:
            return cohort
        past, hold = self._values([np.ascontiguousarray(_numpy(v)[keep]) for v in cohort.past])
        cross, hold2 = self._values([np.ascontiguousarray(_numpy(v)[keep]) for v in cohort.cross])
        mask = None if cohort.mask is None else np.ascontiguousarray(cohort.mask[keep])
        return _Cohort([cohort.jobs[i] for i in keep], mask, past, cross, hold + hold2)
