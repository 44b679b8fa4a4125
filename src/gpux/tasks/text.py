"""Tokenize a batch of texts with the bundle's tokenizer.json into the graph's int64 inputs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import ModelLoadError

if TYPE_CHECKING:
    from gpux.store.bundle import Bundle


class TextEncoder:
    """Pads to the longest text in the batch and truncates to the model's max length.

    Built from the bundle, not a loaded model: tokenizing needs no session.
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
        self.tokenizer.enable_truncation(max_length=length)
        self.tokenizer.enable_padding(pad_id=int(self.config["pad_id"]), pad_token=self.config["pad_token"] or "[PAD]",
                                      length=length)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encs = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        return {k: feed[k] for k in self.inputs}
