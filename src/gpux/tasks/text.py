"""Tokenize a batch of texts with the bundle's tokenizer.json into the graph's int64 inputs."""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import InputError, ModelLoadError

if TYPE_CHECKING:
    from gpux.store.bundle import Bundle


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
        from tokenizers import Tokenizer

        try:
            self.config: dict[str, Any] = json.loads(
                (bundle.root / bundle.manifest.assets["task_config"]).read_text(encoding="utf-8"))
            self.tokenizer = Tokenizer.from_file(str(bundle.root / bundle.manifest.assets["tokenizer"]))
        except Exception as exc:  # tokenizers raises plain Exception for a bad file
            raise ModelLoadError(f"bundle {bundle.name!r} lacks a readable tokenizer or task config: {exc}",
                                 hint="pull the model again (gpux pull)") from exc
        self.tokenizer.enable_truncation(max_length=int(self.config["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(self.config["pad_id"]), pad_token=self.config["pad_token"] or "[PAD]")
        self.inputs: list[str] = self.config["inputs"]
        self._counter: Any = None
        #: False once fix_length() set a length on purpose: cutting to it is then what was asked.
        self._check_cuts = True

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text before truncation, from a second tokenizer so the first is never reconfigured
        while another thread encodes with it."""
        if self._counter is None:
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(self.tokenizer.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()
        return [len(e.ids) for e in self._counter.encode_batch(texts)]

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    def fix_length(self, length: int) -> None:
        """Pad and truncate every batch to exactly ``length`` tokens (fixed shapes, as benchmarks need)."""
        if not 1 <= length <= self.max_length:
            from gpux.errors import UsageError

            raise UsageError(f"sequence length {length} is outside this model's 1..{self.max_length}",
                             hint=f"give sequence lengths up to {self.max_length}")
        self._check_cuts = False
        self.tokenizer.enable_truncation(max_length=length)
        self.tokenizer.enable_padding(pad_id=int(self.config["pad_id"]), pad_token=self.config["pad_token"] or "[PAD]",
                                      length=length)

    def __call__(self, texts: list[str], truncate: bool | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts``. Texts over the model's limit are cut silently
        (``truncate=None``), cut with a warning (True) or refused (False)."""
        encs = self.tokenizer.encode_batch(texts)
        if truncate is not None and self._check_cuts:
            cut = [i for i, e in enumerate(encs) if e.overflowing]
            if cut:
                self._report(texts, cut, truncate)
        feed = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        return {k: feed[k] for k in self.inputs}

    def _report(self, texts: list[str], cut: list[int], truncate: bool) -> None:
        counts = self.lengths([texts[i] for i in cut])
        limit = self.max_length
        if not truncate:
            more = f" ({len(cut)} texts are over it)" if len(cut) > 1 else ""
            raise InputError(f"text {cut[0]} has {counts[0]} tokens; this model takes at most {limit}{more}",
                             hint='shorten it, or leave out "truncate": false to cut it to the limit')
        for i, n in zip(cut, counts):
            warnings.warn(TruncationWarning(f"text {i} has {n} tokens; cut to the model's limit of {limit}"),
                          stacklevel=3)
