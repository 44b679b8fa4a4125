"""Whisper's timestamp tokens: the rule that keeps them well-formed while decoding, and segments from them.

Whisper marks time with tokens ``<|0.00|>`` … ``<|30.00|>`` (ids from ``no_timestamps_token_id + 1``, one per
20 ms). :func:`timestamp_rule` is transformers' ``WhisperTimeStampLogitsProcessor`` (itself OpenAI's
``ApplyTimestampRules``) in numpy, so greedy tokens match ``model.generate(return_timestamps=True)``:

- never ``<|notimestamps|>``; the first new token is a timestamp, at most ``max_initial_timestamp_index`` steps in;
- timestamps come in pairs (end of one segment, start of the next) and never go back;
- when the timestamps together are likelier than the best text token, a timestamp is taken.

:func:`segments` cuts a window's tokens at its timestamps (start, end, text tokens), and says where the next
window starts in long-form transcription, as OpenAI's ``transcribe`` seeks: after the last complete segment,
or a whole window on when the window ended on a single timestamp (nothing cut mid-speech).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpux.generate.loop import Sequence

#: Seconds per timestamp step (Whisper's ``time_precision``).
PRECISION = 0.02


def timestamp_rule(begin: int, eos: int, max_initial: int | None, then: Any = None) -> Any:
    """A :class:`~gpux.generate.loop.Sequence` ``process`` applying Whisper's timestamp rules after ``then``.

    ``begin`` is the id of ``<|0.00|>`` (``no_timestamps_token_id + 1``); ``eos`` the end-of-text id.
    """

    def apply(logits: np.ndarray, s: Sequence) -> None:
        if then is not None:
            then(logits, s)
        logits[begin - 1] = -np.inf  # <|notimestamps|>
        seq = s.tokens
        last = len(seq) >= 1 and seq[-1] >= begin
        penultimate = len(seq) < 2 or seq[-2] >= begin
        if last:
            if penultimate:
                logits[begin:] = -np.inf  # a pair just closed: text (or the end) next
            else:
                logits[:eos] = -np.inf  # a segment's end: its pair's start next
        stamps = [t for t in seq if t >= begin]
        if stamps:
            floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
            logits[begin:floor] = -np.inf
        if not seq:
            logits[:begin] = -np.inf
            if max_initial is not None:
                logits[begin + max_initial + 1:] = -np.inf
        # Timestamps together likelier than the best text token: log(sum exp stamps) > max text logit (the
        # shared normaliser cancels). One exp pass over the stamps, shifted by their max (-inf -> 0).
        stamps_max = float(logits[begin:].max())
        if not np.isfinite(stamps_max):
            return
        text_max = float(logits[:begin].max())
        if stamps_max + np.log(np.exp(logits[begin:] - stamps_max).sum()) > text_max:
            logits[:begin] = -np.inf

    return apply


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    tokens: tuple[int, ...]


def segments(tokens: list[int], begin: int, eos: int, window_s: float) -> tuple[list[Segment], float]:
    """The window's segments (times relative to the window) and how far to seek for the next window (s)."""
    body = [t for t in tokens if t != eos]
    is_ts = [t >= begin for t in body]
    single_ending = len(body) >= 2 and is_ts[-1] and not is_ts[-2]
    cuts = [i for i in range(1, len(body)) if is_ts[i] and is_ts[i - 1]]
    found: list[Segment] = []
    if cuts:
        edges = [*cuts, len(body)] if single_ending else cuts
        last = 0
        for cut in edges:
            piece = body[last:cut]
            stamps = [t for t in piece if t >= begin]
            if piece and stamps:
                found.append(Segment((stamps[0] - begin) * PRECISION, (stamps[-1] - begin) * PRECISION,
                                     tuple(t for t in piece if t < eos)))
            last = cut
        if single_ending:
            seek = window_s
        else:
            seek = (body[cuts[-1] - 1] - begin) * PRECISION
    else:
        stamps = [t for t in body if t >= begin]
        end = (stamps[-1] - begin) * PRECISION if stamps and stamps[-1] > begin else window_s
        text = tuple(t for t in body if t < eos)
        if text:
            found.append(Segment(0.0, end, text))
        seek = window_s
    return found, seek
