"""Text generation: prompts (or a chat) -> the cache loop -> generations with usage and timings.

Payload, in Hugging Face's Inference API shape::

    {"inputs": "prompt" | ["p1", "p2"]  or  "messages": [{"role": "user", "content": "..."}],
     "parameters": {"max_new_tokens": 64, "do_sample": false, "temperature": ..., "top_k": ..., "top_p": ...,
                    "min_p": ..., "repetition_penalty": ..., "seed": ..., "stop": [...], "stop_token_ids": [...],
                    "logprobs": false, "top_logprobs": 0},
     "truncate": false}

Plain prompts are tokenized with the tokenizer's special tokens (a LLaMA tokenizer adds its BOS), as
``tokenizer(prompt)`` does before ``model.generate``; a chat is rendered with the model's template and
tokenized without them, as ``apply_chat_template`` does. The defaults are the model's own
``generation_config.json`` values. A prompt longer than the context is refused naming the limit, or with
``"truncate": true`` its oldest tokens are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpux.errors import InputError, UsageError
from gpux.generate.loop import CacheLoop, Event, Sequence, Timings
from gpux.generate.sampling import Sampler, SamplingParams, TokenChoice
from gpux.generate.scheduler import Scheduler
from gpux.tasks import parameters, texts

if TYPE_CHECKING:
    from gpux.engine.model import Model


@dataclass(frozen=True)
class Token:
    """One generated token as a stream yields it: ``text`` is the text now final (may be empty while a
    character's bytes are incomplete or a stop string may be starting); ``str(token)`` is that text."""

    id: int
    text: str
    logprob: float
    entropy: float
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None

    def __str__(self) -> str:
        return self.text


class Request:
    """One prompt, tokenized and checked, with its sampling parameters."""

    def __init__(self, ids: list[int], params: SamplingParams) -> None:
        self.ids = ids
        self.params = params


def device_of(graph: Any) -> str:
    """Where a graph's session keeps its outputs: "cuda" under the CUDA or TensorRT provider, else "cpu"."""
    return "cuda" if any(p.startswith("CUDA") or p.startswith("Tensorrt") for p in graph.providers) else "cpu"


class Generation:
    unit = "tokens"
    answer_key = "generations"

    def __init__(self, model: Model) -> None:
        from gpux.tasks.text import read_assets

        self.model = model
        self.config, self.tokenizer = read_assets(model.bundle)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        gen = self.config["generation"]
        self.context = int(gen["context_length"])
        self.eos = frozenset(int(i) for i in gen["eos_token_ids"])
        # transformers' own GenerationConfig default (top_k 50 when sampling) under the model's values.
        self.defaults: dict[str, Any] = {"top_k": 50, **(gen.get("defaults") or {})}
        self.template: str | None = gen.get("chat_template")
        self.special: dict[str, str] = dict(gen.get("special_tokens") or {})
        self.pad = int(self.config.get("pad_id") or 0)
        self._attach(model)

    def _attach(self, model: Model) -> None:
        """The loop over the model's graph(s) and the cache one token of one sequence holds (fp32 keys and
        values of every layer, in bytes); an encoder–decoder task attaches its own."""
        cache = self.config["cache"]
        graph = model.graphs["model"]
        self.loop = CacheLoop(graph, [tuple(x) for x in cache["layers"]], bool(cache["position_ids"]),
                              device_of(graph))
        self.cache_token_bytes = sum(2 * h * d * 4 for h, d in self.loop.layers)

    # -- inputs ---------------------------------------------------------------------------------------
    def prompts(self, payload: dict[str, Any]) -> tuple[list[list[int]], bool]:
        """Token ids of each prompt, and whether it came from a chat."""
        if "messages" in payload:
            if "inputs" in payload:
                raise UsageError('give "inputs" or "messages", not both',
                                 hint='"messages" is a chat; "inputs" a prompt or a list of prompts')
            return [self.tokenizer.encode(self.render(payload["messages"]), add_special_tokens=False).ids], True
        return [e.ids for e in self.tokenizer.encode_batch(texts(payload))], False

    def render(self, messages: Any) -> str:
        """The model's chat template applied to ``messages`` (with the assistant's turn opened)."""
        from gpux.generate.chat import render_chat

        if not self.template:
            raise UsageError(f"model {self.model.name!r} has no chat template",
                             hint='send a plain prompt as "inputs" instead of "messages"')
        return render_chat(self.template, messages, add_generation_prompt=True, special_tokens=self.special)

    def items(self, payload: dict[str, Any]) -> list[Request]:
        params = SamplingParams.from_parameters(parameters(payload), self.defaults)
        truncate = payload.get("truncate", False)
        if not isinstance(truncate, bool):
            raise UsageError(f'"truncate" must be true or false, not {truncate!r}',
                             hint='"truncate": true drops a long prompt\'s oldest tokens to fit the context')
        ids, _ = self.prompts(payload)
        return [Request(self.fit(i, p, params, truncate), params) for i, p in enumerate(ids)]

    def fit(self, row: int, ids: list[int], params: SamplingParams, truncate: bool) -> list[int]:
        """``ids`` checked against the context; cut from the left when ``truncate`` and too long."""
        if not ids:
            raise InputError(f"prompt {row} is empty (no tokens)", hint="give a prompt with some text")
        room = self.context - 1
        if len(ids) > room:
            if not truncate:
                raise InputError(f"prompt {row} has {len(ids)} tokens; this model's context is {self.context} "
                                 f"tokens, so a prompt may have at most {room}",
                                 hint='shorten it, or send "truncate": true to drop its oldest tokens')
            keep = max(1, self.context - params.max_new_tokens)
            ids = ids[-keep:]
        return ids

    # -- running --------------------------------------------------------------------------------------
    def sequences(self, requests: list[Request]) -> list[Sequence]:
        from gpux.generate.detok import StreamDecoder
        from gpux.generate.stops import StopMatcher

        return [Sequence(r.ids, r.params, Sampler(r.params), StreamDecoder(self.tokenizer),
                         StopMatcher(list(r.params.stop)), min(r.params.max_new_tokens, self.context - len(r.ids)))
                for r in requests]

    def scheduler(self, **options: Any) -> Scheduler:
        """A continuous-batching scheduler over this model (the server's; see gpux.generate.scheduler)."""
        return Scheduler(self.loop, pad_id=self.pad, eos_ids=self.eos, name=self.model.name, **options)

    def events(self, requests: list[Request]) -> Iterator[tuple[list[Sequence], list[Event]]]:
        seqs = self.sequences(requests)
        for events in self.loop.run(seqs, self.pad, self.eos):
            yield seqs, events

    def run_counted(self, items: list[Request], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        answers, _ = self.generate(items)
        return answers, [len(r.ids) + len(a["token_ids"]) for r, a in zip(items, answers)]

    def run_batch(self, items: list[Request], truncate: bool | None = None) -> list[Any]:
        return self.generate(items)[0]

    def generate(self, requests: list[Request]) -> tuple[list[dict[str, Any]], Timings]:
        timings = Timings()
        seqs: list[Sequence] = []
        for seqs, _ in self.events(requests):
            if timings.first is None:
                timings.first = time.perf_counter()
        timings.end = time.perf_counter()
        return [self.answer(s) for s in seqs], timings

    def answer(self, s: Sequence) -> dict[str, Any]:
        out: dict[str, Any] = {"text": s.text, "token_ids": list(s.tokens), "finish_reason": s.finish_reason}
        if s.params.logprobs or s.params.top_logprobs:
            out["logprobs"] = [self.token_info(c) for c in s.choices]
        return out

    def piece(self, token_id: int) -> str:
        """The text of one token alone (a byte of a longer character reads as U+FFFD, as OpenAI shows it)."""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def token_info(self, c: TokenChoice) -> dict[str, Any]:
        info: dict[str, Any] = {"id": c.id, "token": self.piece(c.id), "logprob": c.logprob, "entropy": c.entropy}
        if c.top:
            info["top_logprobs"] = [{"id": i, "token": self.piece(i), "logprob": lp} for i, lp in c.top]
        return info

    def stream(self, payload: dict[str, Any], timings: Timings | None = None) -> Generator[Token, None, None]:
        """The tokens of one prompt (or chat) as they are generated; ``timings`` (if given) is filled in."""
        return self.stream_requests(self.items(payload), timings)

    def stream_requests(self, requests: list[Request], timings: Timings | None = None) -> Generator[Token, None, None]:
        """:meth:`stream` for a request already tokenized (``gpux chat`` counts its prompt tokens first)."""
        if len(requests) != 1:
            raise UsageError(f"streaming takes one prompt, not {len(requests)}",
                             hint="stream the prompts one at a time, or generate them together without stream")
        timings = timings if timings is not None else Timings()
        for _, events in self.events(requests):
            if timings.first is None:
                timings.first = time.perf_counter()
            for e in events:
                c = e.choice
                yield Token(c.id, e.text, c.logprob, c.entropy, c.top, e.finish_reason)
        timings.end = time.perf_counter()

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        requests = self.items(payload)
        answers, timings = self.generate(requests)
        completion = sum(len(a["token_ids"]) for a in answers)
        return {"generations": answers,
                "usage": {"prompt_tokens": sum(len(r.ids) for r in requests), "completion_tokens": completion},
                "timings": timings.as_json(max(len(a["token_ids"]) for a in answers))}
