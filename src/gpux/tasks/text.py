"""Tokenize a batch of texts (or text pairs) with the bundle's tokenizer.json into the graph's int64 inputs.

Pairs go to ``tokenizers`` as ``(text, pair)`` tuples: the tokenizer.json post-processor adds the
separators and type ids the model was trained with, so no task hard-codes ``[SEP]``. Tasks that need to
map tokens back to characters (token classification, question answering, fill-mask) ask for the
:class:`tokenizers.Encoding` objects themselves (offsets, word ids, sequence ids, overflowing windows).
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import InputError, ModelLoadError, UsageError

if TYPE_CHECKING:
    from gpux.store.bundle import Bundle


#: Windowing tokenizers kept (one per doc_stride asked for, oldest dropped first; each is a copy of the vocabulary).
WINDOWED_KEPT = 4

#: One input of a text task: a text, or a (text, text_pair) pair.
TextInput = str | tuple[str, str]


def read_assets(bundle: Bundle) -> tuple[dict[str, Any], Any]:
    """The bundle's task config and its ``tokenizers.Tokenizer``; :class:`ModelLoadError` if either is unreadable."""
    from tokenizers import Tokenizer

    try:
        config: dict[str, Any] = json.loads(
            (bundle.root / bundle.manifest.assets["task_config"]).read_text(encoding="utf-8"))
        return config, Tokenizer.from_file(str(bundle.root / bundle.manifest.assets["tokenizer"]))
    except Exception as exc:  # tokenizers raises plain Exception for a bad file
        raise ModelLoadError(f"bundle {bundle.name!r} lacks a readable tokenizer or task config: {exc}",
                             hint="pull the model again (gpux pull)") from exc


class TruncationWarning(UserWarning):
    """A text was longer than the model takes and was cut to its limit (the CLI prints it on stderr)."""


class TextEncoder:
    """Pads to the longest text in the batch and truncates to the model's max length.

    Built from the bundle, not a loaded model: tokenizing needs no session.
    Cutting a text changes the answer, so a caller may ask to hear of it
    (``truncate=True``: a :class:`TruncationWarning` per text) or to refuse it
    (``truncate=False``: an :class:`~gpux.errors.InputError` naming the limit).
    """

    def __init__(self, bundle: Bundle) -> None:
        self.config, self.tokenizer = read_assets(bundle)
        self.tokenizer.enable_truncation(max_length=int(self.config["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(self.config["pad_id"]), pad_token=self.config["pad_token"] or "[PAD]")
        self.inputs: list[str] = self.config["inputs"]
        self._counter: Any = None
        #: False once fix_length() set a length on purpose: cutting to it is then what was asked.
        self._check_cuts = True
        #: stride -> a tokenizer cutting only the second text into overlapping windows (question answering).
        self._windowed: dict[int, Any] = {}
        self._lock = threading.Lock()

    def lengths(self, texts: Sequence[TextInput]) -> list[int]:
        """Tokens per text before truncation, from a second tokenizer so the first is never reconfigured
        while another thread encodes with it."""
        return [len(e.ids) for e in self._counting().encode_batch(texts)]

    def _counting(self) -> Any:
        """The untruncated, unpadded tokenizer ``lengths`` and ``room`` count with (built on first use)."""
        with self._lock:
            if self._counter is None:
                from tokenizers import Tokenizer

                counter = Tokenizer.from_str(self.tokenizer.to_str())
                counter.no_truncation()
                counter.no_padding()
                self._counter = counter
        return self._counter

    def room(self, questions: Sequence[str]) -> list[int]:
        """Context tokens one window can hold beside each question (and the pair's special tokens)."""
        proc = self.tokenizer.post_processor
        special = int(proc.num_special_tokens_to_add(True)) if proc is not None else 0
        encs = self._counting().encode_batch(list(questions), add_special_tokens=False)
        return [self.max_length - special - len(e.ids) for e in encs]

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    def fix_length(self, length: int) -> None:
        """Pad and truncate every batch to exactly ``length`` tokens (fixed shapes, as benchmarks need)."""
        if not 1 <= length <= self.max_length:
            raise UsageError(f"sequence length {length} is outside this model's 1..{self.max_length}",
                             hint=f"give sequence lengths up to {self.max_length}")
        self._check_cuts = False
        self.tokenizer.enable_truncation(max_length=length)
        self.tokenizer.enable_padding(pad_id=int(self.config["pad_id"]), pad_token=self.config["pad_token"] or "[PAD]",
                                      length=length)

    def __call__(self, texts: Sequence[TextInput], truncate: bool | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts`` (strings or (text, pair) tuples). Texts over the model's limit
        are cut silently (``truncate=None``), cut with a warning (True) or refused (False)."""
        return self.feed(self.encodings(texts, truncate))

    def encodings(self, texts: Sequence[TextInput], truncate: bool | None = None) -> list[Any]:
        """The padded, truncated :class:`tokenizers.Encoding` of each text or pair (offsets, word ids...)."""
        encs = self.tokenizer.encode_batch(texts)
        if truncate is not None and self._check_cuts:
            cut = [i for i, e in enumerate(encs) if e.overflowing]
            if cut:
                self.report(texts, cut, truncate)
        return encs  # type: ignore[no-any-return]

    def feed(self, encs: list[Any]) -> dict[str, np.ndarray]:
        """The graph's inputs for encodings, padded here to the longest when they are not already."""
        n = max(len(e.ids) for e in encs)
        if all(len(e.ids) == n for e in encs):
            feed = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}
        else:
            feed = {"input_ids": np.full((len(encs), n), int(self.config["pad_id"]), dtype=np.int64),
                    "attention_mask": np.zeros((len(encs), n), dtype=np.int64),
                    "token_type_ids": np.zeros((len(encs), n), dtype=np.int64)}
            for i, e in enumerate(encs):
                k = len(e.ids)
                feed["input_ids"][i, :k] = e.ids
                feed["attention_mask"][i, :k] = e.attention_mask
                feed["token_type_ids"][i, :k] = e.type_ids
        return {k: feed[k] for k in self.inputs}

    def windows(self, pairs: list[tuple[str, str]], stride: int) -> list[list[Any]]:
        """Each (question, context) as windows of at most ``max_length`` tokens: the question whole in each,
        the context cut into pieces that overlap by ``stride`` tokens (unpadded; :meth:`feed` pads them).
        ``stride`` must be below each question's :meth:`room` (the caller checks: tokenizers panics).

        A tokenizer per stride, built once: reconfiguring a shared one while another batch thread
        encodes with it would change that batch's windows.
        """
        with self._lock:
            tok = self._windowed.get(stride)
            if tok is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_str(self.tokenizer.to_str())
                tok.no_padding()
                tok.enable_truncation(max_length=self.max_length, stride=stride, strategy="only_second")
                if len(self._windowed) >= WINDOWED_KEPT:  # clients choose strides: keep a few, not one each
                    self._windowed.pop(next(iter(self._windowed)))
                self._windowed[stride] = tok
        return [[e, *e.overflowing] for e in tok.encode_batch(pairs)]

    def report(self, texts: Sequence[TextInput], cut: list[int], truncate: bool) -> None:
        """Warn of (``truncate``) or refuse the texts at indices ``cut``, which are over the limit."""
        counts = self.lengths([texts[i] for i in cut])
        limit = self.max_length
        if not truncate:
            more = f" ({len(cut)} texts are over it)" if len(cut) > 1 else ""
            raise InputError(f"text {cut[0]} has {counts[0]} tokens; this model takes at most {limit}{more}",
                             hint='shorten it, or leave out "truncate": false to cut it to the limit')
        for i, n in zip(cut, counts):
            warnings.warn(TruncationWarning(f"text {i} has {n} tokens; cut to the model's limit of {limit}"),
                          stacklevel=3)
