"""Token classification (``...ForTokenClassification``, NER): entities with labels, scores and character offsets.

The rules are those of transformers' token-classification pipeline, so answers match it token for token:
softmax per token; special and padding tokens skipped; ``aggregation_strategy`` ``none`` (every token,
``"entity"``, ``"index"``), ``simple`` (adjacent tokens of one entity grouped, B-/I- prefixes honoured),
``first``/``max``/``average`` (tokens of one word agree first: the first token's label, the most confident
token's, or the averaged scores'), each grouped into ``"entity_group"`` spans. Labels in ``ignore_labels``
(default ``["O"]``) are left out. A subword is a token whose text is not its own characters (the
tokenizer's ``##`` prefix); for tokenizers without one, a token not preceded by a space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import UsageError
from gpux.tasks import known_parameters, parameters, texts, truncate_flag
from gpux.tasks.classification import softmax
from gpux.tasks.text import TextEncoder

if TYPE_CHECKING:
    from gpux.engine.model import Model

STRATEGIES = ("none", "simple", "first", "max", "average")


@dataclass(frozen=True)
class Tagging:
    """One text to tag, with the request's aggregation strategy and labels to leave out."""

    text: str
    strategy: str = "none"
    ignore: tuple[str, ...] = ("O",)


class TokenClassifier:
    unit = "items"
    answer_key = "entities"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.encode = TextEncoder(model.bundle)
        self.labels: list[str] = self.encode.config["labels"]
        tok = self.encode.tokenizer
        self.word_aware = bool(getattr(tok.model, "continuing_subword_prefix", None))
        unk = getattr(tok.model, "unk_token", None)
        self.unk_id = tok.token_to_id(unk) if isinstance(unk, str) else None

    def items(self, payload: dict[str, Any]) -> list[Tagging]:
        params = parameters(payload)
        known_parameters(params, ("aggregation_strategy", "ignore_labels"), "token-classification")
        strategy = params.get("aggregation_strategy") or "none"
        if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
            raise UsageError(f"aggregation_strategy {strategy!r} is not one of {', '.join(STRATEGIES)}",
                             hint='e.g. "parameters": {"aggregation_strategy": "simple"}')
        ignore = params.get("ignore_labels", ["O"])
        if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
            raise UsageError('"ignore_labels" must be a list of labels', hint='e.g. ["O"], or [] for every token')
        return [Tagging(t, strategy.lower(), tuple(ignore)) for t in texts(payload)]

    def run_counted(self, items: list[Tagging], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """The entities of each text, and the tokens each text used."""
        encs = self.encode.encodings([t.text for t in items], truncate)
        feed = self.encode.feed(encs)
        scores = softmax(self.model.run(feed)[self.encode.config["output"]].astype(np.float64))
        answers = [self._entities(item, enc, scores[i]) for i, (item, enc) in enumerate(zip(items, encs))]
        return answers, feed["attention_mask"].sum(axis=1).tolist()

    def run_batch(self, items: list[Tagging], truncate: bool | None = None) -> list[Any]:
        return self.run_counted(items, truncate)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {self.answer_key: self.run_batch(self.items(payload), truncate_flag(payload))}

    # -- transformers' rules -------------------------------------------------------------

    def _entities(self, item: Tagging, enc: Any, scores: np.ndarray) -> list[dict[str, Any]]:
        pre = self._pre_entities(item.text, enc, scores)
        if item.strategy in ("none", "simple"):
            found = [{"entity": self.labels[int(p["scores"].argmax())], "score": float(p["scores"].max()),
                      "index": p["index"], "word": p["word"], "start": p["start"], "end": p["end"]} for p in pre]
        else:
            found = self._words(pre, item.strategy)
        if item.strategy != "none":
            found = self._group(found)
        key = "entity" if item.strategy == "none" else "entity_group"
        return [e for e in found if e[key] not in item.ignore]

    def _pre_entities(self, text: str, enc: Any, scores: np.ndarray) -> list[dict[str, Any]]:
        tok = self.encode.tokenizer
        out = []
        for idx, (tid, special, mask, (start, end)) in enumerate(zip(enc.ids, enc.special_tokens_mask,
                                                                      enc.attention_mask, enc.offsets)):
            if special or not mask:
                continue
            word = tok.id_to_token(tid) or ""
            ref = text[start:end]
            if self.word_aware:
                subword = len(word) != len(ref)
            else:
                subword = start > 0 and " " not in text[start - 1:start + 1]
            if tid == self.unk_id:
                word, subword = ref, False
            out.append({"word": word, "scores": scores[idx], "start": start, "end": end, "index": idx,
                        "is_subword": subword})
        return out

    def _words(self, pre: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        """Tokens of one word agree on a label (first, max or average), one entity per word."""
        groups: list[list[dict[str, Any]]] = []
        for p in pre:
            if groups and p["is_subword"]:
                groups[-1].append(p)
            else:
                groups.append([p])
        return [self._word(g, strategy) for g in groups]

    def _word(self, group: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        if strategy == "first":
            scores = group[0]["scores"]
        elif strategy == "max":
            scores = max(group, key=lambda p: p["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
        best = int(scores.argmax())
        return {"entity": self.labels[best], "score": float(scores[best]), "word": self._join(group),
                "start": group[0]["start"], "end": group[-1]["end"]}

    def _join(self, group: list[dict[str, Any]]) -> str:
        tokens = [p["word"] for p in group]
        decoder = self.encode.tokenizer.decoder
        return str(decoder.decode(tokens)) if decoder is not None else " ".join(tokens)

    def _group(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjacent entities of one type become one span; a B- tag always starts a new one."""
        groups: list[list[dict[str, Any]]] = []
        for e in entities:
            bi, tag = _tag(e["entity"])
            if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
                groups[-1].append(e)
            else:
                groups.append([e])
        return [{"entity_group": g[0]["entity"].split("-", 1)[-1],
                 "score": float(np.nanmean([e["score"] for e in g])), "word": self._join(g),
                 "start": g[0]["start"], "end": g[-1]["end"]} for g in groups]


def _tag(label: str) -> tuple[str, str]:
    """("B"|"I", type) of a label; a label without a B-/I- prefix continues (I)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label
