"""Text-to-text generation with an encoder–decoder (T5, BART, Marian, Pegasus...): translation, summaries.

Same payload, parameters, streaming and answer shape as text-generation (gpux.tasks.generation): each input
text is the encoder's source, tokenized with the tokenizer's special tokens as ``tokenizer(text)`` does before
``model.generate``; the decoder starts from ``decoder_start_token_id`` and the model's own decoder rules from
``generation_config.json`` apply (``forced_bos_token_id``, ``suppress_tokens``...; gpux.generate.rules). A
source longer than the model takes is refused naming the limit, or with ``"truncate": true`` its end is cut
(the encoder reads the start of a document). Decoding is greedy or sampled; beam search is not done.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import InputError, UsageError
from gpux.generate.loop import Event, Sequence
from gpux.generate.rules import decoder_rules
from gpux.generate.seq2seq import Seq2SeqLoop
from gpux.tasks.generation import Generation, Request, device_of

if TYPE_CHECKING:
    from gpux.engine.model import Model


class Text2Text(Generation):
    def __init__(self, model: Model) -> None:  # noqa: D107 - Generation's, with the two graphs
        super().__init__(model)
        self.context = int(self.config["max_length"])  # the encoder's source limit
        self.max_target = int(self.config["max_target"])
        self.rules = self.config.get("rules") or {}

    def _attach(self, model: Model) -> None:
        graph = model.graphs["decoder"]
        self.s2s = Seq2SeqLoop(model.graphs["encoder"], graph, self.config["seq2seq"], device_of(graph))
        self.loop = self.s2s  # type: ignore[assignment]
        self.cache_token_bytes = sum(2 * h * d * 4 for h, d in self.s2s.self_layers)

    def fit(self, row: int, ids: list[int], params: Any, truncate: bool) -> list[int]:
        if not ids:
            raise InputError(f"input {row} is empty (no tokens)", hint="give a text to translate or summarise")
        if len(ids) > self.context:
            if not truncate:
                raise InputError(f"input {row} has {len(ids)} tokens; this model reads at most {self.context}",
                                 hint='shorten it, or send "truncate": true to cut its end')
            ids = ids[:self.context - 1] + ids[-1:]  # keep the closing special token (</s>)
        return ids

    def sequences(self, requests: list[Request]) -> list[Sequence]:
        from gpux.generate.detok import StreamDecoder
        from gpux.generate.sampling import Sampler
        from gpux.generate.stops import StopMatcher

        start = [self.s2s.start]
        return [Sequence(list(start), r.params, Sampler(r.params), StreamDecoder(self.tokenizer),
                         StopMatcher(list(r.params.stop)), min(r.params.max_new_tokens, self.max_target - 1),
                         process=decoder_rules(self.rules, self.eos, r.params.max_new_tokens), source=r.ids)
                for r in requests]

    def source(self, seqs: list[Sequence]) -> dict[str, np.ndarray]:
        """The encoder's batch: sources right-padded with the pad id, the mask marking real tokens."""
        width = max(len(s.source) for s in seqs)
        ids = np.full((len(seqs), width), self.pad, np.int64)
        mask = np.zeros((len(seqs), width), np.int64)
        for row, s in enumerate(seqs):
            ids[row, :len(s.source)], mask[row, :len(s.source)] = s.source, 1
        return {"input_ids": ids, "attention_mask": mask}

    def events(self, requests: list[Request]) -> Iterator[tuple[list[Sequence], list[Event]]]:
        seqs = self.sequences(requests)
        for events in self.s2s.run(seqs, self.source(seqs), self.pad, self.eos):
            yield seqs, events

    def render(self, messages: Any) -> str:
        raise UsageError(f"model {self.model.name!r} is an encoder–decoder (text2text-generation) without a chat "
                         "template", hint='send the text as "inputs"')

    def scheduler(self, **options: Any) -> Any:
        """The server's scheduler for this model: cohorts of requests encoded together (gpux.generate.cohorts)."""
        from gpux.generate.cohorts import CohortScheduler

        return CohortScheduler(self, name=self.model.name, **options)
