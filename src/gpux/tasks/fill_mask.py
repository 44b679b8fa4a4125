"""Fill-mask (``...ForMaskedLM``): the top-k tokens, with scores, for each mask token of a text.

The answer has the shape of Hugging Face's fill-mask pipeline: for a text with one mask, a list of
``{"score", "token", "token_str", "sequence"}`` candidates, best first; with several masks, one such list
per mask, in text order. ``"parameters": {"top_k": 5, "targets": [...]}`` as in that pipeline: targets
restrict the candidates to those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import InputError, UsageError
from gpux.tasks import int_parameter, known_parameters, parameters, texts, truncate_flag
from gpux.tasks.classification import softmax
from gpux.tasks.text import TextEncoder

if TYPE_CHECKING:
    from gpux.engine.model import Model


@dataclass(frozen=True)
class Fill:
    """One text to fill, with the request's own top_k and target token ids (None: the whole vocabulary)."""

    text: str
    top_k: int = 5
    targets: tuple[int, ...] | None = None


class FillMask:
    """Softmax over the vocabulary at each mask position; the top-k ids decoded by the bundle's tokenizer."""

    unit = "items"
    answer_key = "predictions"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.encode = TextEncoder(model.bundle)
        cfg = self.encode.config
        tok = self.encode.tokenizer
        self.mask_token: str = cfg.get("mask_token") or "[MASK]"
        found = tok.token_to_id(self.mask_token)
        self.mask_id: int = int(cfg["mask_id"]) if cfg.get("mask_id") is not None else int(found or 0)
        self.pad_id = int(cfg["pad_id"])

    def items(self, payload: dict[str, Any]) -> list[Fill]:
        """Texts, each with at least one mask token (refused here, before anything is queued)."""
        params = parameters(payload)
        known_parameters(params, ("top_k", "targets"), "fill-mask")
        top_k = int_parameter(params, "top_k", 5, 1, 1000)
        targets = self._targets(params.get("targets"))
        found = texts(payload)
        for i, text in enumerate(found):
            if self.mask_token not in text:
                raise InputError(f"text {i} has no mask token {self.mask_token}",
                                 hint=f"put {self.mask_token} where the model should fill in a word")
        # Every mask must survive truncation: checked here, so one text cannot fail a batch others share.
        heads = [t[:t.rindex(self.mask_token) + len(self.mask_token)] for t in found]
        for i, n in enumerate(self.encode.lengths(heads)):
            if n > self.encode.max_length:
                raise InputError(f"the last mask token of text {i} is past the model's {self.encode.max_length} "
                                 "tokens", hint="shorten the text or move the mask nearer its start")
        return [Fill(t, top_k, targets) for t in found]

    def _targets(self, value: Any) -> tuple[int, ...] | None:
        """Target words -> vocabulary ids; a word outside the vocabulary becomes its first token, as in
        transformers' pipeline."""
        if value is None:
            return None
        words = [value] if isinstance(value, str) else value
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise UsageError('"targets" must be a word or a non-empty list of words', hint='e.g. ["paris", "london"]')
        tok = self.encode.tokenizer
        ids: set[int] = set()
        for w in words:
            found = tok.token_to_id(w)
            if found is None:
                pieces = tok.encode(w, add_special_tokens=False).ids
                if not pieces:
                    continue
                found = pieces[0]
            ids.add(int(found))
        if not ids:
            raise UsageError("none of the targets is in the model's vocabulary", hint="give words the model knows")
        return tuple(sorted(ids))

    def run_counted(self, items: list[Fill], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """The candidates for each mask of each text, and the tokens each text used."""
        feed = self.encode([f.text for f in items], truncate)
        logits = self.model.run(feed)[self.encode.config["output"]]
        ids = feed["input_ids"]
        answers = []
        for row, item in enumerate(items):
            where = np.flatnonzero(ids[row] == self.mask_id)  # items() made sure each mask fits
            probs = softmax(logits[row, where].astype(np.float64))
            per_mask = [self._candidates(ids[row], int(pos), p, item, single=where.size == 1)
                        for pos, p in zip(where, probs)]
            answers.append(per_mask[0] if where.size == 1 else per_mask)
        return answers, feed["attention_mask"].sum(axis=1).tolist()

    def _candidates(self, ids: np.ndarray, pos: int, probs: np.ndarray, item: Fill, single: bool) -> list[Any]:
        vocab = np.arange(probs.shape[-1]) if item.targets is None else np.array(item.targets)
        scores = probs[vocab]
        k = min(item.top_k, scores.size)
        best = np.argsort(-scores, kind="stable")[:k]
        tok = self.encode.tokenizer
        out = []
        for j in best:
            token = int(vocab[j])
            filled = ids.copy()
            filled[pos] = token
            filled = filled[filled != self.pad_id]
            # As transformers: special tokens kept with several masks, so the other masks still show.
            out.append({"score": float(scores[j]), "token": token, "token_str": tok.decode([token]),
                        "sequence": tok.decode(filled.tolist(), skip_special_tokens=single)})
        return out

    def run_batch(self, items: list[Fill], truncate: bool | None = None) -> list[Any]:
        return self.run_counted(items, truncate)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {self.answer_key: self.run_batch(self.items(payload), truncate_flag(payload))}
