"""A model's own decoding rules from its ``generation_config.json``, applied to one row's logits in place.

Each is the transformers logits processor of that name, so greedy tokens match ``model.generate``:

- ``suppress_tokens``: never emitted (SuppressTokensLogitsProcessor);
- ``begin_suppress_tokens``: not as the first new token (SuppressTokensAtBeginLogitsProcessor);
- ``forced_bos_token_id``: the first new token (ForcedBOSTokenLogitsProcessor; mBART's language code);
- ``forced_eos_token_id``: the last token when the length limit is reached (ForcedEOSTokenLogitsProcessor);
- ``no_repeat_ngram_size``: no n-gram of the decoder's ids twice (NoRepeatNGramLogitsProcessor; BART summaries);
- ``min_length``: no end-of-sequence before that many decoder ids, the start token counted (MinLengthLogitsProcessor).

The run path has no transformers, so these live here as numpy; gpux.tasks.whisper adds Whisper's timestamp
rules on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gpux.generate.loop import Sequence

Rule = Callable[[np.ndarray, Sequence], None]


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return [int(v) for v in value] if isinstance(value, list) else []


def banned_ngrams(ids: list[int], n: int) -> list[int]:
    """Tokens that would complete an ``n``-gram already present in ``ids``."""
    if n <= 0 or len(ids) + 1 < n:
        return []
    prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix]


def decoder_rules(rules: dict[str, Any], eos: frozenset[int], max_new_tokens: int) -> Rule | None:
    """One callable applying ``rules`` (task.json's ``rules``: generation_config keys) or None when none apply."""
    suppress = _ids(rules.get("suppress_tokens"))
    begin = _ids(rules.get("begin_suppress_tokens"))
    forced_bos = rules.get("forced_bos_token_id")
    forced_eos = _ids(rules.get("forced_eos_token_id"))
    ngram = int(rules.get("no_repeat_ngram_size") or 0)
    min_length = int(rules.get("min_length") or 0)
    if not (suppress or begin or forced_bos is not None or forced_eos or ngram or min_length):
        return None
    eos_ids = sorted(eos)

    def apply(logits: np.ndarray, s: Sequence) -> None:
        new = len(s.tokens)
        if min_length and len(s.prompt) + new < min_length and eos_ids:
            logits[eos_ids] = -np.inf
        if suppress:
            logits[suppress] = -np.inf
        if new == 0 and begin:
            logits[begin] = -np.inf
        if ngram:
            banned = banned_ngrams([*s.prompt, *s.tokens], ngram)
            if banned:
                logits[banned] = -np.inf
        if new == 0 and isinstance(forced_bos, int):
            logits[:] = -np.inf
            logits[forced_bos] = 0.0
        elif forced_eos and new == max_new_tokens - 1:
            logits[:] = -np.inf
            logits[forced_eos] = 0.0

    return apply
