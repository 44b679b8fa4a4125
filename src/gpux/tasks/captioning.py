"""Image to text with a captioner (BLIP; ``VisionEncoderDecoderModel`` checkpoints): images -> captions.

``{"inputs": ["cat.png"], "parameters": {"prompt": "a picture of", "max_new_tokens": 30, ...}}`` ->
``{"captions": [{"text", "token_ids", "finish_reason"}]}``. As transformers' ``generate`` of these models:
the image is prepared by the model's own processor config, encoded once (gpux.generate.seq2seq), and the
decoder starts from its start token followed by the optional prompt's tokens (conditional captioning),
so the caption continues the prompt; ``text`` is the prompt and its continuation, special tokens dropped,
as ``processor.decode(out[0], skip_special_tokens=True)`` reads. Generation parameters are
text-generation's (greedy unless ``do_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import UsageError
from gpux.generate.loop import Sequence
from gpux.generate.rules import decoder_rules
from gpux.generate.sampling import Sampler, SamplingParams
from gpux.generate.seq2seq import Seq2SeqLoop
from gpux.tasks import parameters
from gpux.tasks.media import ImageTask

if TYPE_CHECKING:
    from gpux.engine.model import Model


@dataclass
class Caption:
    """One image with its request's prompt tokens and sampling parameters."""

    pixels: np.ndarray
    prompt: list[int]
    params: SamplingParams


class Captioner(ImageTask):
    answer_key = "captions"
    unit = "images"

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model.bundle.root / model.bundle.manifest.assets["tokenizer"]))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.s2s = Seq2SeqLoop(model.graphs["encoder"], model.graphs["decoder"], self.config["seq2seq"])
        gen = self.config["generation"]
        self.eos = frozenset(int(i) for i in gen["eos_token_ids"])
        self.defaults: dict[str, Any] = {"top_k": 50, **(gen.get("defaults") or {})}
        self.pad = int(self.config.get("pad_id") or 0)
        self.rules = self.config.get("rules") or {}
        self.max_target = int(self.config["max_target"])

    def items(self, payload: dict[str, Any]) -> list[Any]:
        params = dict(parameters(payload))
        prompt = params.pop("prompt", None)
        if prompt is not None and not isinstance(prompt, str):
            raise UsageError('"prompt" must be a text', hint='e.g. "parameters": {"prompt": "a picture of"}')
        sampling = SamplingParams.from_parameters(params, self.defaults)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        if 1 + len(ids) >= self.max_target:
            raise UsageError(f"the prompt has {len(ids)} tokens; this model's decoder takes {self.max_target}",
                             hint="shorten the prompt")
        return [Caption(self.prepare(s, i), list(ids), sampling) for i, s in enumerate(self.sources(payload))]

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        from gpux.generate.detok import StreamDecoder
        from gpux.generate.stops import StopMatcher

        seqs = []
        for c in items:
            prompt = [self.s2s.start, *c.prompt]
            limit = min(c.params.max_new_tokens, self.max_target - len(prompt))
            seqs.append(Sequence(prompt, c.params, Sampler(c.params), StreamDecoder(self.tokenizer),
                                 StopMatcher(list(c.params.stop)), limit,
                                 process=decoder_rules(self.rules, self.eos, limit)))
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            groups.setdefault(len(s.prompt), []).append(i)
        for rows in groups.values():
            feed = {"pixel_values": np.stack([items[i].pixels for i in rows]).astype(np.float32, copy=False)}
            for _ in self.s2s.run([seqs[i] for i in rows], feed, self.pad, self.eos):
                pass
        answers = []
        for c, s in zip(items, seqs):
            text = self.tokenizer.decode([*c.prompt, *s.tokens], skip_special_tokens=True)
            answers.append({"text": str(text), "token_ids": list(s.tokens), "finish_reason": s.finish_reason})
        return answers, [len(s.prompt) + len(s.tokens) for s in seqs]
