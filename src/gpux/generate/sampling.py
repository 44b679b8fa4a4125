"""Choosing the next token from a row of logits, in numpy, the way transformers' ``generate`` does.

:class:`SamplingParams` is the Hugging Face Inference-API ``"parameters"`` object, checked strictly so a
typo (``top-p``) or a wrong type (``"temperature": "0.7"``) is refused with the key named instead of being
silently ignored. :class:`Sampler` is one per sequence (a per-request chain, like llama.cpp's): it owns its
random generator, so a seed reproduces a sequence whatever else the server is doing.

The chain is transformers' order and semantics: repetition penalty, temperature, top-k, top-p, min-p, then
a draw from the softmax of what survives; greedy is the argmax after the penalty. The reported ``logprob``
and ``entropy`` are of the model's *raw* distribution (before any processing), as OpenAI reports them, so
they describe the model and not the knobs.

Cost matters: the vocabulary is ~50k and a decode step of the model is ~10 ms, so this must stay well under
half a millisecond. Nothing sorts the whole vocabulary unless top-p really needs most of it; greedy is an
argmax plus one pass for the log-sum-exp and entropy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from gpux.errors import UsageError

_MAX_TOP_LOGPROBS = 20

# (type, example) per key: the example goes into every error about that key.
_KEYS: dict[str, tuple[str, str]] = {
    "max_new_tokens": ("int", '"max_new_tokens": 128'),
    "min_new_tokens": ("int", '"min_new_tokens": 64'),
    "do_sample": ("bool", '"do_sample": true'),
    "temperature": ("float", '"temperature": 0.7'),
    "top_k": ("int", '"top_k": 50'),
    "top_p": ("float", '"top_p": 0.9'),
    "min_p": ("float", '"min_p": 0.05'),
    "repetition_penalty": ("float", '"repetition_penalty": 1.1'),
    "seed": ("int", '"seed": 42'),
    "stop": ("stop", '"stop": ["\\n\\n", "User:"]'),
    "stop_token_ids": ("ids", '"stop_token_ids": [2]'),
    "logprobs": ("bool", '"logprobs": true'),
    "top_logprobs": ("int", '"top_logprobs": 5'),
}


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request. Defaults are greedy with no penalty."""

    max_new_tokens: int = 64
    #: End-of-sequence tokens are masked until this many were made (transformers' min_new_tokens).
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        """True when the argmax is taken: ``do_sample`` off (whatever the temperature), or temperature 0."""
        return not self.do_sample or self.temperature == 0.0

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any] | None,
                        defaults: Mapping[str, Any] | None = None) -> SamplingParams:
        """Parse a request's ``"parameters"`` over the model's ``defaults`` (same key names).

        A key set to ``null`` counts as not given, because OpenAI-style clients send ``null`` for unset
        fields. Unknown keys are refused: a misspelt knob that silently does nothing is worse than an error.
        ``defaults`` come from the model, not the user; a key there that is not a field is a bug of the
        caller (``ValueError``).
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise UsageError(f'"parameters" must be an object, not {type(params).__name__}',
                             hint='e.g. "parameters": {"max_new_tokens": 64, "temperature": 0.7}')
        unknown = [k for k in params if k not in _KEYS]
        if unknown:
            known = ", ".join(_KEYS)
            raise UsageError(f'unknown generation parameter "{unknown[0]}"',
                             hint=f"use one of: {known}")
        merged: dict[str, Any] = {}
        for source, who in ((defaults or {}), "default"), (params, "user"):
            for key, value in source.items():
                if key not in _KEYS:
                    raise ValueError(f"{who} generation parameter {key!r} is not a SamplingParams field")
                if value is not None:
                    merged[key] = value
        values = {key: _check(key, value) for key, value in merged.items()}
        out = cls(**values)
        if out.top_logprobs and not out.logprobs:
            raise UsageError('"top_logprobs" needs "logprobs": true',
                             hint='e.g. "logprobs": true, "top_logprobs": 5')
        return out


def _check(key: str, value: Any) -> Any:
    """One key's value, typed and in range, or a UsageError that names the key and shows an example."""
    kind, example = _KEYS[key]

    def bad(why: str) -> UsageError:
        return UsageError(f'"{key}" {why}, not {value!r}', hint=f"e.g. {example}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be an integer")
        lo = {"max_new_tokens": 1, "min_new_tokens": 0, "top_k": 0, "seed": 0, "top_logprobs": 0}[key]
        if value < lo:
            raise bad(f"must be ≥ {lo}")
        if key == "top_logprobs" and value > _MAX_TOP_LOGPROBS:
            raise bad(f"must be at most {_MAX_TOP_LOGPROBS}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("must be a number")
        v = float(value)
        ok = {
            "temperature": v >= 0.0,
            "top_p": 0.0 < v <= 1.0,
            "min_p": 0.0 <= v <= 1.0,
            "repetition_penalty": v > 0.0,
        }[key]
        if not ok:
            rule = {"temperature": "must be ≥ 0 (0 means greedy)", "top_p": "must be in (0, 1]",
                    "min_p": "must be in [0, 1]", "repetition_penalty": "must be > 0 (1 means no penalty)"}[key]
            raise bad(rule)
        return v
    if kind == "stop":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
            raise bad("must be a non-empty string or a list of them")
        return tuple(items)
    # ids
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise bad("must be a list of token ids (integers ≥ 0)")
    return tuple(value)


assert {f.name for f in fields(SamplingParams)} == set(_KEYS)


class TokenChoice(NamedTuple):
    """The chosen token and what the model's raw distribution said about it (natural logs)."""

    id: int
    logprob: float
    entropy: float
    top: list[tuple[int, float]] | None


class Sampler:
    """The per-sequence sampling chain; :meth:`step` is called once per generated token.

    Vocabulary-sized temporaries go into three scratch arrays owned by the sampler: a fresh 200 kB array
    per operation is above glibc's mmap threshold, and the page faults of allocating and freeing them
    tripled the cost of a step in measurements.
    """

    def __init__(self, params: SamplingParams, stats: bool = True) -> None:
        self.params = params
        #: Compute each token's log-probability and entropy (a full-vocabulary softmax, ~0.35 ms for Whisper's
        #: 51k tokens). Off for callers that never read them (speech recognition); logprobs turn it on.
        self.stats = stats
        self.rng = np.random.Generator(np.random.PCG64(params.seed))
        self._greedy = params.greedy
        self._penalty = params.repetition_penalty
        self._temperature = params.temperature
        self._top_k = params.top_k
        self._top_p = params.top_p
        self._min_p = params.min_p
        self._n_top = params.top_logprobs if params.logprobs else 0
        self._scratch = np.empty((3, 0), dtype=np.float32)

    def _buffers(self, n: int) -> np.ndarray:
        if self._scratch.shape[1] != n:
            self._scratch = np.empty((3, n), dtype=np.float32)
        return self._scratch

    def step(self, logits: np.ndarray, seen_ids: np.ndarray) -> TokenChoice:
        """Pick the next token from one row of ``logits`` (vocab,), given every id so far (prompt included)."""
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
        buf = self._buffers(x.shape[0])
        lse, entropy = _raw_stats(x, buf[0]) if self.stats or self._n_top else (float(x.max()), 0.0)
        y = self._penalised(x, seen_ids, buf[1])
        tok = int(np.argmax(y)) if self._greedy else self._sample(y, buf)
        top = self._top(x, lse) if self._n_top else None
        return TokenChoice(tok, float(x[tok]) - lse, entropy, top)

    def processed(self, logits: np.ndarray, seen_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids that survive, their processed logits) as sampling sees them; for tests and debugging."""
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
        buf = self._buffers(x.shape[0])
        cand, vals = self._filter(self._penalised(x, seen_ids, buf[1]), buf)
        return (np.arange(x.shape[0]) if cand is None else cand), vals.copy()

    # -- the chain -----------------------------------------------------------------------------------

    def _penalised(self, x: np.ndarray, seen_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Repetition penalty over the seen ids: negative logits multiplied, others divided (once per id)."""
        if self._penalty == 1.0 or len(seen_ids) == 0:
            return x
        ids = np.asarray(seen_ids, dtype=np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids < x.shape[0])]  # ids past the lm head's vocabulary cannot be generated
        np.copyto(out, x)
        s = out[ids]  # duplicates read the original value and write the same result: applied once per id
        out[ids] = np.where(s < 0, s * np.float32(self._penalty), s / np.float32(self._penalty))
        return out

    def _filter(self, y: np.ndarray, buf: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Temperature, top-k, top-p, min-p: (surviving ids or None for all, their logits)."""
        n = y.shape[0]
        if self._temperature != 1.0:
            y = np.divide(y, np.float32(self._temperature), out=buf[1])
        cand: np.ndarray | None = None
        vals = y
        if 0 < self._top_k < n:
            part = buf[0]
            np.copyto(part, y)
            part.partition(n - self._top_k)
            cand = np.flatnonzero(y >= part[n - self._top_k])  # ties with the k-th kept, like torch's `<`
            vals = y[cand]
        if self._top_p < 1.0:
            keep = _top_p_keep(vals, self._top_p, buf if cand is None else None)
            cand = keep if cand is None else cand[keep]
            vals = vals[keep]
        if self._min_p > 0.0:
            p = _softmax(vals, buf[0] if cand is None else None)
            keep = np.flatnonzero(p >= np.float32(self._min_p) * p.max())  # the top one always survives
            cand = keep if cand is None else cand[keep]
            vals = vals[keep]
        return cand, vals

    def _sample(self, y: np.ndarray, buf: np.ndarray) -> int:
        cand, vals = self._filter(y, buf)
        out = buf[0] if cand is None else None
        p = np.exp(np.subtract(vals, vals.max(), out=out), out=out)
        i = _draw(p, self.rng.random())
        return i if cand is None else int(cand[i])

    def _top(self, x: np.ndarray, lse: float) -> list[tuple[int, float]]:
        n = x.shape[0]
        k = min(self._n_top, n)
        idx = np.argpartition(x, n - k)[n - k:]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        return [(int(i), float(x[i]) - lse) for i in idx]


def _softmax(vals: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    p = np.exp(np.subtract(vals, vals.max(), out=out), out=out)
    p /= p.sum()
    return p


def _raw_stats(x: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """(log-sum-exp, entropy in nats) of the raw logits, in one exp pass (``e`` is scratch)."""
    m = float(x.max())
    np.subtract(x, np.float32(m), out=e)
    np.exp(e, out=e)
    s = float(e.sum(dtype=np.float64))
    with np.errstate(invalid="ignore"):
        dot = float(np.dot(e, x))
    if not math.isfinite(dot):  # -inf logits (masked ids): 0 * -inf is nan, and their share is 0
        ok = np.isfinite(x)
        dot = float(np.dot(e[ok], x[ok]))
    lse = m + math.log(s)
    return lse, lse - dot / s


def _draw(p: np.ndarray, u: float) -> int:
    """The index where the running sum of the (unnormalised) weights ``p`` passes ``u`` of their total.

    An inverse-CDF draw; the running sum is taken over 1024-blocks first, because a cumsum over the full
    vocabulary costs ~150 µs in numpy while block sums cost ~10.
    """
    block = 1024
    if len(p) <= 4 * block:
        c = np.cumsum(p, dtype=np.float64)
        return min(int(np.searchsorted(c, u * c[-1], side="right")), len(p) - 1)
    full = len(p) // block * block
    sums = np.empty(len(p) // block + 1, dtype=np.float64)
    sums[:-1] = p[:full].reshape(-1, block).sum(axis=1, dtype=np.float64)
    sums[-1] = p[full:].sum(dtype=np.float64)
    c = np.cumsum(sums)
    target = u * c[-1]
    b = min(int(np.searchsorted(c, target, side="right")), len(sums) - 1)
    while sums[b] == 0.0 and b > 0:  # rounding put the target past the last block with weight
        b -= 1
    part = p[b * block:(b + 1) * block]
    inner = np.cumsum(part, dtype=np.float64)
    i = int(np.searchsorted(inner, target - (c[b] - sums[b]), side="right"))
    return b * block + min(i, len(part) - 1)


def _top_p_keep(vals: np.ndarray, top_p: float, buf: np.ndarray | None) -> np.ndarray:
    """Positions in ``vals`` that transformers' TopPLogitsWarper keeps (min_tokens_to_keep=1).

    It removes a token when the probability mass of the tokens ranked above it is already ≥ top_p, i.e.
    keeps the shortest head of the descending order whose mass reaches top_p. No argsort (0.5 ms at 50k):
    the head's probabilities are found by value (a partition of the top 64, else one full value sort), the
    cut becomes a threshold, and the survivors are the ids at or above it (ties with the last one kept).
    Rows 0 and 2 of ``buf`` are scratch, passed when ``vals`` is the whole vocabulary.
    """
    n = vals.shape[0]
    p = _softmax(vals, None if buf is None else buf[0])
    if buf is None:
        work = p.copy()
    else:
        work = buf[2]
        np.copyto(work, p)
    head = 64
    count = n
    if n > head:
        work.partition(n - head)
        q = np.sort(work[n - head:])[::-1]
        count = _head_count(q, top_p)
    if count >= head or n <= head:
        np.copyto(work, p)
        work.sort()
        q = work[::-1]
        count = _head_count(q, top_p)
    return np.flatnonzero(p >= q[max(count, 1) - 1])


def _head_count(q: np.ndarray, top_p: float) -> int:
    """How many of the descending probabilities ``q`` have less than top_p of mass ranked above them.

    Returns ``len(q)`` when even all of them stay short. Cumulative sums of 50k floats are slow in numpy
    (150 µs), so the crossing is found on sums of 1024-blocks first and the cumsum runs in one block.
    """
    block = 1024
    start = 0
    if len(q) > 4 * block:
        full = len(q) // block * block
        sums = q[:full].reshape(-1, block).sum(axis=1, dtype=np.float64)
        before = np.cumsum(sums) - sums  # mass ahead of each block
        b = int(np.searchsorted(before, top_p, side="left")) - 1  # the last block that starts short of top_p
        b = max(b, 0)
        start, base = b * block, float(before[b])
        q_part = q[start:start + block] if b < len(sums) - 1 else q[start:]
    else:
        base, q_part = 0.0, q
    c = np.cumsum(q_part, dtype=np.float64)
    above = base + c - q_part
    count = start + int(np.searchsorted(above, top_p, side="left"))
    return count
