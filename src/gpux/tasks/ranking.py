"""Text ranking (cross-encoders): one relevance score per query–document pair.

A cross-encoder is a sequence classifier with one output (``...ForSequenceClassification``,
``num_labels=1``, or a sentence-transformers CrossEncoder): the pair is tokenized as one sequence
(separators from the tokenizer.json, the longer text cut first when over the limit, as
sentence-transformers does) and the logit goes through the model's activation from task.json:
``sigmoid`` (CrossEncoder's default for one label), ``identity`` (raw logits) or ``softmax`` (a
model with several labels: the last label's probability, the "relevant" class of binary rerankers).

Inputs: ``{"inputs": {"query": "q", "documents": ["a", "b"]}}`` or pairs as text-classification takes
them (``[{"text": query, "text_pair": document}, ...]``). The answer is ``{"scores": [...]}`` in input
order; ``POST /v1/rerank`` (serve/rerank.py) sorts them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import UsageError
from gpux.tasks import text_or_pairs, truncate_flag
from gpux.tasks.classification import softmax
from gpux.tasks.text import TextEncoder

if TYPE_CHECKING:
    from gpux.engine.model import Model

ACTIVATIONS = ("sigmoid", "identity", "softmax")
#: Pairs per model call when one call is given more (sentence-transformers' CrossEncoder batch size).
CHUNK = 32


def pairs_of(query: Any, documents: Any) -> list[tuple[str, str]]:
    """(query, document) pairs, or :class:`UsageError`: a string query, documents as strings or
    ``{"text": ...}`` objects (Cohere's and Jina's shapes)."""
    if not isinstance(query, str) or not query:
        raise UsageError('"query" must be a non-empty string', hint='e.g. "query": "what is gpux?"')
    if not isinstance(documents, list) or not documents:
        raise UsageError('"documents" must be a non-empty list of texts', hint='e.g. "documents": ["a", "b"]')
    out = []
    for i, d in enumerate(documents):
        text = d.get("text") if isinstance(d, dict) else d
        if not isinstance(text, str):
            raise UsageError(f"document {i} must be a string or a {{\"text\": string}} object",
                             hint='e.g. "documents": ["first text", {"text": "second text"}]')
        out.append((query, text))
    return out


class Ranker:
    unit = "items"
    answer_key = "scores"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.encode = TextEncoder(model.bundle)
        self.activation: str = self.encode.config.get("activation") or "sigmoid"
        if self.activation not in ACTIVATIONS:
            from gpux.errors import ModelLoadError

            raise ModelLoadError(f"task.json's activation {self.activation!r} is not one of {ACTIVATIONS}",
                                 hint="pull the model again (gpux pull --force)")

    def items(self, payload: dict[str, Any]) -> list[tuple[str, str]]:
        value = payload.get("inputs")
        if isinstance(value, dict) and set(value) == {"query", "documents"}:
            return pairs_of(value["query"], value["documents"])
        found = text_or_pairs(payload)
        if not all(isinstance(p, tuple) for p in found):
            raise UsageError("a ranking model scores pairs", hint='give {"inputs": {"query": "q", "documents": '
                             '["a", "b"]}} or [{"text": query, "text_pair": document}]')
        return found  # type: ignore[return-value]

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """One score per row of [batch, labels] logits, by the model's activation."""
        x = logits.astype(np.float64)
        if x.shape[-1] > 1:
            return softmax(x)[:, -1] if self.activation == "softmax" else x[:, -1]
        x = x[:, 0]
        return 1.0 / (1.0 + np.exp(-x)) if self.activation == "sigmoid" else x

    def run_counted(self, items: list[tuple[str, str]], truncate: bool | None = None
                    ) -> tuple[list[Any], list[int]]:
        """The score of each pair, and the tokens each pair used.

        More than :data:`CHUNK` pairs (one query against 100 documents) run as chunks of pairs of similar
        length, as sentence-transformers' CrossEncoder does: padded to the longest of the whole list,
        short documents would cost as much as the longest one.
        """
        if len(items) <= CHUNK:
            return self._run(list(items), truncate)
        lengths = self.encode.lengths(items)
        if truncate is not None:  # named by their index in the whole list, not in a chunk
            cut = [i for i, n in enumerate(lengths) if n > self.encode.max_length]
            if cut:
                self.encode.report(items, cut, truncate)
        order = np.argsort([-n for n in lengths], kind="stable")
        scores: list[Any] = [0.0] * len(items)
        tokens = [0] * len(items)
        for start in range(0, len(items), CHUNK):
            picked = [int(i) for i in order[start:start + CHUNK]]
            got, used = self._run([items[i] for i in picked], None)
            for i, score, n in zip(picked, got, used):
                scores[i], tokens[i] = score, n
        return scores, tokens

    def _run(self, items: list[tuple[str, str]], truncate: bool | None) -> tuple[list[Any], list[int]]:
        feed = self.encode(items, truncate)
        logits = self.model.run(feed)[self.encode.config["output"]]
        return [float(s) for s in self.scores(logits)], feed["attention_mask"].sum(axis=1).tolist()

    def run_batch(self, items: list[tuple[str, str]], truncate: bool | None = None) -> list[Any]:
        return self.run_counted(items, truncate)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {self.answer_key: self.run_batch(self.items(payload), truncate_flag(payload))}
