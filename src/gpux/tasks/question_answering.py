"""Extractive question answering (``...ForQuestionAnswering``): answer text, score, character offsets.

A context longer than the model takes is cut into windows of ``max_length`` tokens that overlap by
``doc_stride`` tokens, the question whole in each (the tokenizer's own overflow, as transformers' QA
pipeline did). In each window, over the tokens that can be an answer (the context's, and the first token
for "no answer"), the start and end logits are softmaxed; a span scores ``p_start · p_end`` with
``start <= end < start + max_answer_len``; the best spans of every window compete, spans with the same text
(ignoring case) have their scores added, and the top ``top_k`` are answered. With ``align_to_words`` (the
default) a span's characters are widened to whole words. With ``handle_impossible_answer`` the empty
answer competes with the lowest first-token score of the windows. Inputs and outputs have transformers'
shapes: ``{"question": ..., "context": ...}`` in; ``{"score", "start", "end", "answer"}`` out (a list of them
with ``top_k`` > 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import InputError, UsageError
from gpux.tasks import int_parameter, known_parameters, parameters, truncate_flag
from gpux.tasks.text import TextEncoder

if TYPE_CHECKING:
    from gpux.engine.model import Model

PARAMETERS = ("top_k", "doc_stride", "max_answer_len", "handle_impossible_answer", "align_to_words")


@dataclass(frozen=True)
class Question:
    """One question with its context and the request's own answer rules."""

    question: str
    context: str
    top_k: int = 1
    doc_stride: int = 128
    max_answer_len: int = 15
    impossible: bool = False
    align_to_words: bool = True


class QuestionAnswering:
    unit = "items"
    answer_key = "answers"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.encode = TextEncoder(model.bundle)
        start, end = self.encode.config.get("outputs") or ["start_logits", "end_logits"]
        self.outputs = (str(start), str(end))
        probe = self.encode.tokenizer.encode("a")
        #: The first special token (BERT's [CLS], RoBERTa's <s>): the "no answer" position.
        self.cls_id = probe.ids[0] if probe.special_tokens_mask and probe.special_tokens_mask[0] else None

    def items(self, payload: dict[str, Any]) -> list[Question]:
        params = parameters(payload)
        known_parameters(params, PARAMETERS, "question-answering")
        limit = self.encode.max_length
        rules = {"top_k": int_parameter(params, "top_k", 1, 1, 100),
                 "doc_stride": int_parameter(params, "doc_stride", min(128, limit // 2), 0, limit - 1),
                 "max_answer_len": int_parameter(params, "max_answer_len", 15, 1, limit)}
        flags = {}
        for name, default in (("handle_impossible_answer", False), ("align_to_words", True)):
            value = params.get(name, default)
            if not isinstance(value, bool):
                raise UsageError(f'"{name}" must be true or false, not {value!r}', hint=f'e.g. "{name}": {default}')
            flags[name] = value
        if "inputs" not in payload:
            raise UsageError('the input needs an "inputs" key',
                             hint='give {"inputs": {"question": "...", "context": "..."}}')
        value = payload["inputs"]
        found = [value] if isinstance(value, dict) else value
        if not isinstance(found, list) or not found:
            raise UsageError('"inputs" must be a {"question", "context"} object or a non-empty list of them',
                             hint='give {"inputs": {"question": "Who?", "context": "Ada wrote it."}}')
        for i, x in enumerate(found):
            if not (isinstance(x, dict) and set(x) == {"question", "context"}
                    and isinstance(x["question"], str) and isinstance(x["context"], str)
                    and x["question"].strip() and x["context"].strip()):
                raise UsageError(f"input {i} must be {{\"question\": text, \"context\": text}}, both not empty",
                                 hint='e.g. {"question": "Who wrote it?", "context": "Ada wrote it."}')
        out = []
        for i, (x, room) in enumerate(zip(found, self.encode.room([x["question"] for x in found]))):
            stride = self._stride(i, room, params.get("doc_stride") is not None, rules["doc_stride"])
            out.append(Question(x["question"], x["context"], rules["top_k"], stride,
                                rules["max_answer_len"], flags["handle_impossible_answer"], flags["align_to_words"]))
        return out

    def _stride(self, i: int, room: int, asked: bool, stride: int) -> int:
        """The overlap of question ``i``'s windows: the default shrinks to fit beside a long question; an
        asked-for one that does not fit is refused (here, before the request joins a batch)."""
        limit = self.encode.max_length
        if room < 1:
            raise InputError(f"question {i} leaves no room for its context in this model's {limit} tokens",
                             hint="shorten the question")
        if stride < room:
            return stride
        if not asked:
            return room // 2
        raise UsageError(f"doc_stride {stride} does not fit question {i}: beside it a window holds {room} "
                         "context tokens", hint=f"give a doc_stride below {room}, or shorten the question")

    def run_counted(self, items: list[Question], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """The answers to each question, and the tokens its windows used (a long context is never cut)."""
        windows: list[list[Any]] = [[] for _ in items]
        for stride in sorted({q.doc_stride for q in items}):
            picked = [i for i, q in enumerate(items) if q.doc_stride == stride]
            for i, w in zip(picked, self.encode.windows([(items[i].question, items[i].context) for i in picked],
                                                        stride)):
                windows[i] = w
        flat = [w for ws in windows for w in ws]
        out = self.model.run(self.encode.feed(flat))
        starts, ends = out[self.outputs[0]], out[self.outputs[1]]
        answers, tokens, row = [], [], 0
        for q, ws in zip(items, windows):
            answers.append(self._answer(q, ws, starts[row:row + len(ws)], ends[row:row + len(ws)]))
            tokens.append(sum(len(w.ids) for w in ws))
            row += len(ws)
        return answers, tokens

    def run_batch(self, items: list[Question], truncate: bool | None = None) -> list[Any]:
        return self.run_counted(items, truncate)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {self.answer_key: self.run_batch(self.items(payload), truncate_flag(payload))}

    def _answer(self, q: Question, windows: list[Any], starts: np.ndarray, ends: np.ndarray) -> Any:
        found: list[dict[str, Any]] = []
        null = 1e6
        for enc, start_logits, end_logits in zip(windows, starts, ends):
            n = len(enc.ids)
            allowed = np.array([s == 1 for s in enc.sequence_ids], dtype=bool)
            if self.cls_id is not None:
                allowed |= np.array(enc.ids) == self.cls_id
            spans, null = best_spans(start_logits[:n].astype(np.float64), end_logits[:n].astype(np.float64),
                                     allowed, q.top_k, q.max_answer_len, null if q.impossible else None)
            for s, e, score in spans:
                lo, hi = _chars(enc, s, e, q.align_to_words)
                text = q.context[lo:hi]
                same = next((a for a in found if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score
                else:
                    found.append({"score": score, "start": lo, "end": hi, "answer": text})
        if q.impossible:
            found.append({"score": null, "start": 0, "end": 0, "answer": ""})
        ranked = sorted(found, key=lambda a: a["score"], reverse=True)[:q.top_k]
        return ranked[0] if q.top_k == 1 else ranked


def best_spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int, max_len: int,
               null: float | None) -> tuple[list[tuple[int, int, float]], float]:
    """The ``top_k`` best (start, end, p_start·p_end) spans of one window, and the running null score.

    Positions not ``allowed`` get -10000 before the softmax; the first position ("no answer") is then
    excluded from spans, its ``p_start·p_end`` only lowering the null score.
    """
    start = np.where(allowed, start, -10000.0)
    end = np.where(allowed, end, -10000.0)
    p_start = np.exp(start - start.max())
    p_start /= p_start.sum()
    p_end = np.exp(end - end.max())
    p_end /= p_end.sum()
    if null is not None:
        null = min(null, float(p_start[0] * p_end[0]))
    p_start[0] = p_end[0] = 0.0
    scores = np.tril(np.triu(np.outer(p_start, p_end)), max_len - 1)
    flat = scores.ravel()
    order = [int(np.argmax(flat))] if top_k == 1 else list(np.argsort(-flat, kind="stable")[:top_k])
    spans = []
    for idx in order:
        s, e = divmod(int(idx), scores.shape[1])
        if allowed[s] and allowed[e]:
            spans.append((s, e, float(scores[s, e])))
    return spans, null if null is not None else 1e6


def _chars(enc: Any, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character span of tokens s..e in the context; widened to whole words when asked."""
    if align_to_words:
        start_word, end_word = enc.token_to_word(s), enc.token_to_word(e)
        if start_word is not None and end_word is not None:  # None: a special token (the "no answer" one)
            return int(enc.word_to_chars(start_word, 1)[0]), int(enc.word_to_chars(end_word, 1)[1])
    return int(enc.offsets[s][0]), int(enc.offsets[e][1])
