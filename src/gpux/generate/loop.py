"""The decode loop: prompts -> one cache graph run per token -> sampled tokens, text pieces, finish reasons.

One batch of sequences moves together; each has its own sampling chain (:class:`~gpux.generate.sampling.Sampler`),
stop matcher and streaming detokeniser, so requests with different parameters share a batch (what the
server's scheduler builds on). The cache stays in onnxruntime's own buffers between steps: outputs are
bound with an IOBinding and the ``present`` values of one step are bound as the ``past`` of the next, so no
step copies the cache through numpy (and on a GPU it never leaves the device). Only the last position's
logits come back to the host.

Rows are left-padded (decoders continue from the right end); the attention mask marks padding and position
ids count real tokens only, as transformers' ``generate`` does. A finished row keeps its place in the batch
(its tokens are ignored) until the whole batch is done or the caller stops iterating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpux.generate.detok import StreamDecoder
from gpux.generate.sampling import Sampler, SamplingParams, TokenChoice
from gpux.generate.stops import StopMatcher


def positions(mask: np.ndarray, new: int) -> np.ndarray:
    """Position ids of the last ``new`` places of ``mask``, as transformers' ``generate`` computes them (the
    running count of real tokens minus one; padded places read 1). The exporter's parity check uses it too."""
    pos = np.cumsum(mask, axis=-1) - 1
    pos[mask == 0] = 1
    return pos[:, -new:].astype(np.int64)


@dataclass
class Sequence:
    """One prompt's progress through the loop."""

    prompt: list[int]
    params: SamplingParams
    sampler: Sampler
    decoder: StreamDecoder
    stops: StopMatcher
    limit: int
    tokens: list[int] = field(default_factory=list)
    choices: list[TokenChoice] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    #: Hand each event the raw logits it was sampled from (an ensemble compares models' distributions).
    keep_logits: bool = False
    #: Changes this row's logits in place before sampling (a model's own rules: Whisper's timestamp pairs,
    #: suppressed tokens); called with the logits and the sequence.
    process: Callable[[np.ndarray, Sequence], None] | None = None
    #: The encoder's input of an encoder–decoder row (its source token ids); None for decoder-only models.
    source: Any = None
    _seen: np.ndarray | None = None
    _filled: int = 0

    @property
    def input_tokens(self) -> int:
        """Tokens the request gave: the encoder's source for an encoder–decoder row, else the prompt."""
        return len(self.source) if self.source is not None else len(self.prompt)

    def seen(self) -> np.ndarray:
        """Prompt and generated ids so far (the repetition penalty's history), grown without re-copying."""
        n, p = len(self.prompt) + len(self.tokens), len(self.prompt)
        if self._seen is None or len(self._seen) < n:
            self._seen = np.empty(max(64, 2 * n), np.int64)
            self._seen[:p] = self.prompt
            self._filled = p
        while self._filled < n:
            self._seen[self._filled] = self.tokens[self._filled - p]
            self._filled += 1
        return self._seen[:n]


@dataclass(frozen=True)
class Event:
    """What one step produced for one sequence: the token, the text now final, and whether it finished."""

    row: int
    choice: TokenChoice
    text: str
    finish_reason: str | None
    #: The raw logits of this step (before any processing), only for sequences with ``keep_logits``.
    logits: np.ndarray | None = None


class CacheLoop:
    """Runs a cache graph (see gpux.convert.decoder) over a batch of sequences."""

    def __init__(self, graph: Any, layers: list[tuple[int, int]], takes_positions: bool, device: str = "cpu") -> None:
        self.graph = graph
        self.session = session = graph.session
        self.layers = layers
        self.takes_positions = takes_positions
        self.device = device
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(len(layers)) for kv in ("key", "value")]
        self.output_names = [o.name for o in session.get_outputs()]
        self._device = _device(device)

    def empty_cache(self, batch: int) -> list[Any]:
        from onnxruntime import OrtValue

        return [_raw(OrtValue.ortvalue_from_numpy(np.zeros((batch, h, 0, d), np.float32), self.device))
                for h, d in self.layers for _ in "kv"]

    def step(self, ids: np.ndarray, mask: np.ndarray, past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """Logits of each row's last position, and the new cache (onnxruntime values, not copied).

        The cache values travel as onnxruntime's own C++ values (``_iobinding``, ``_ortvalue``): the
        public wrappers cost ~120 Python objects per step for a 30-layer model, measured ~1 ms per token
        with cProfile, a sixth of an int4 decode step.
        """
        io = self.session.io_binding()
        raw = getattr(io, "_iobinding", None)
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        if self.takes_positions:
            io.bind_cpu_input("position_ids", positions(mask, ids.shape[1]))
        if raw is not None and self._device is not None:
            for name, value in zip(self.past_names, past):
                raw.bind_ortvalue_input(name, value)
            for name in self.output_names:
                raw.bind_output(name, self._device)
        else:  # the public API, should onnxruntime move its internals
            from onnxruntime import OrtValue

            for name, value in zip(self.past_names, past):
                io.bind_ortvalue_input(name, value if isinstance(value, OrtValue) else OrtValue(value))
            for name in self.output_names:
                io.bind_output(name, self.device)
        try:
            self.session.run_with_iobinding(io)
        except Exception as exc:
            from gpux.errors import map_exceptions

            with map_exceptions(f"running {self.graph.path.name}"):
                raise exc
        self.graph.ran()
        logits, *present = raw.get_outputs() if raw is not None and self._device is not None else io.get_outputs()
        return np.asarray(logits.numpy()[:, -1, :], dtype=np.float32), present

    def run(self, seqs: list[Sequence], pad_id: int, eos_ids: frozenset[int]) -> Iterator[list[Event]]:
        """Yield, after every step, the events of the sequences still running (prefill is the first step)."""
        width = max(len(s.prompt) for s in seqs)
        ids = np.full((len(seqs), width), pad_id, np.int64)
        mask = np.zeros((len(seqs), width), np.int64)
        for row, s in enumerate(seqs):
            ids[row, width - len(s.prompt):], mask[row, width - len(s.prompt):] = s.prompt, 1
        past = self.empty_cache(len(seqs))
        while True:
            logits, past = self.step(ids, mask, past)
            events, nxt = choose_all(seqs, logits, pad_id, eos_ids)
            if events:
                yield events
            if all(s.finish_reason is not None for s in seqs):
                return
            ids = nxt
            mask = np.concatenate([mask, np.ones((len(seqs), 1), np.int64)], axis=1)


def choose_all(seqs: list[Sequence], logits: np.ndarray, pad_id: int,
               eos_ids: frozenset[int]) -> tuple[list[Event], np.ndarray]:
    """Each running row's next token (:func:`choose`): the step's events, and the next step's input ids
    (the pad id for rows already finished, which keep their place in the batch)."""
    events, nxt = [], np.full((len(seqs), 1), pad_id, np.int64)
    for row, s in enumerate(seqs):
        if s.finish_reason is None:
            events.append(choose(row, s, logits[row], eos_ids))
            nxt[row, 0] = s.tokens[-1]
    return events, nxt


def _raw(value: Any) -> Any:
    """onnxruntime's C++ value inside its Python ``OrtValue`` wrapper (the value itself if there is none)."""
    return getattr(value, "_ortvalue", value)


def _device(name: str) -> Any:
    """The C++ ``OrtDevice`` for ``name`` ("cpu", "cuda"), or None where onnxruntime's internals moved."""
    try:
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

        return OrtDevice.make(name, 0)._get_c_device()
    except (ImportError, AttributeError, TypeError):
        return None


def choose(row: int, s: Sequence, logits: np.ndarray, eos_ids: frozenset[int]) -> Event:
    """Sample ``s``'s next token from its row of ``logits`` (changed in place), record it, say what it made.

    One place for the per-row work, so the offline loop and the server's scheduler pick tokens alike."""
    raw = logits.copy() if s.keep_logits else None
    if len(s.tokens) < s.params.min_new_tokens and eos_ids:
        logits[list(eos_ids)] = -np.inf  # as transformers' MinNewTokensLengthLogitsProcessor
    if s.process is not None:
        s.process(logits, s)
    choice = s.sampler.step(logits, s.seen())
    s.tokens.append(choice.id)
    s.choices.append(choice)
    event = _advance(row, s, choice, eos_ids)
    return event if raw is None else Event(event.row, choice, event.text, event.finish_reason, raw)


def _advance(row: int, s: Sequence, choice: TokenChoice, eos_ids: frozenset[int]) -> Event:
    """Detokenise the new token, match stop strings, decide whether ``s`` finished."""
    if choice.id in eos_ids or choice.id in s.params.stop_token_ids:
        s.finish_reason = "stop"
        piece, _ = s.stops.push(s.decoder.flush())
        piece += s.stops.flush()
    else:
        piece, hit = s.stops.push(s.decoder.push(choice.id))
        if hit:
            s.finish_reason = "stop"
        elif len(s.tokens) >= s.limit:
            s.finish_reason = "length"
            tail, hit = s.stops.push(s.decoder.flush())
            piece += tail + ("" if hit else s.stops.flush())
    s.text += piece
    return Event(row, choice, piece, s.finish_reason)


@dataclass
class Timings:
    """Wall-clock marks of one generate call, in perf_counter seconds."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    end: float | None = None

    def as_json(self, tokens: int) -> dict[str, float]:
        end = self.end or time.perf_counter()
        first = self.first or end
        decode_s = end - first
        rate = (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0
        return {"ttft_ms": round((first - self.start) * 1e3, 3), "decode_tokens_per_s": round(rate, 2),
                "total_ms": round((end - self.start) * 1e3, 3)}
