"""OpenAI's ``POST /v1/chat/completions`` and ``POST /v1/completions``, so the ``openai`` client works unchanged.

Streams are server-sent events: ``data: {chunk}`` lines sharing one ``id`` and ``created``, ``finish_reason``
null until each choice's last chunk, ``data: [DONE]`` at the end; with ``stream_options.include_usage``
every chunk carries ``"usage": null`` and one more chunk with ``"choices": []`` and the usage closes the
stream. ``n`` > 1 runs the choices as separate sequences of the same batch (a seed counts up per choice).

Parameters follow OpenAI's names and defaults where OpenAI has them (``max_tokens`` defaults to 16 on
completions and to the context on chat); what OpenAI lacks takes vLLM's extra names (``top_k``, ``min_p``,
``repetition_penalty``, ``min_tokens``) and gpux's (``signals``, ``pace_hz``). A temperature not sent
means the model's own generation defaults (its ``generation_config.json``), as ``gpux run`` uses. Unknown
or unsupported fields are refused with a 400 naming them, as OpenAI refuses them, instead of being ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from gpux.errors import UsageError
from gpux.serve import schemas
from gpux.serve.app import FastJSON, _unless_gone, read_json
from gpux.serve.generation import (Ask, Run, open_run, pace_option, paced, signals_option, sse,
                                  stream_error)

#: Fields accepted and ignored: they change nothing about the tokens (bookkeeping, tracing, caching hints).
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"}
_SAMPLING = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
             "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p",
             "repetition_penalty", "min_tokens", "signals", "pace_hz", "response_format", "keep_alive"}
_CHAT = _SAMPLING | {"messages", "max_completion_tokens", "tools", "tool_choice", "functions", "function_call"}
_COMPLETIONS = _SAMPLING | {"prompt", "echo", "suffix", "best_of"}


def _number(body: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or not low <= value <= high:
        raise UsageError(f'"{key}" must be {"a number" if kind is float else "an integer"} from {low:g} to {high:g}, '
                         f"not {value!r}", hint="see OpenAI's API reference for the field")
    return value


def _parameters(body: dict[str, Any], allowed: set[str], max_key: str, top_max: int, completions: bool) -> dict[str, Any]:
    """The request's fields as the task's generation parameters (Hugging Face names); refuses what gpux lacks."""
    unknown = sorted(k for k in body if k not in allowed and k not in _IGNORED)
    if unknown:
        raise UsageError(f'unknown field "{unknown[0]}"', hint="gpux takes OpenAI's fields: " + ", ".join(sorted(allowed)))
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise UsageError(f'"{key}" is not supported', hint='use "repetition_penalty" (e.g. 1.1) instead')
    if body.get("logit_bias"):
        raise UsageError('"logit_bias" is not supported', hint="leave it out")
    for key in ("tools", "functions"):
        if body.get(key):
            raise UsageError(f'"{key}" (tool calling) is not supported yet', hint="send plain messages")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise UsageError(f'"response_format" {fmt!r} is not supported', hint='leave it out or use {"type": "text"}')
    params: dict[str, Any] = {}
    limit = _number(body, max_key, int, 1, 1 << 30) if max_key in body else None
    limit = limit if limit is not None else _number(body, "max_tokens", int, 1, 1 << 30)
    if limit is not None:
        params["max_new_tokens"] = limit
    elif completions:
        params["max_new_tokens"] = 16  # OpenAI's completions default
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1)
    if temperature is not None:
        params["do_sample"] = temperature > 0
        if temperature > 0:
            params["temperature"] = float(temperature)
    elif top_p is not None:
        params["do_sample"] = True
    if top_p is not None:
        params["top_p"] = float(top_p)
    for ours, theirs in (("top_k", "top_k"), ("min_p", "min_p"), ("repetition_penalty", "repetition_penalty"),
                         ("min_new_tokens", "min_tokens"), ("seed", "seed")):
        if body.get(theirs) is not None:
            params[ours] = body[theirs]
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else stop
        if isinstance(stop, list) and len(stop) > 4:
            raise UsageError(f'"stop" takes at most 4 sequences, not {len(stop)}', hint="OpenAI's limit")
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if completions:  # completions: "logprobs": N (0..5) is the top count
        n = _number(body, "logprobs", int, 0, 5)
        if n is not None:
            params["logprobs"], params["top_logprobs"] = True, n
    else:
        if logprobs not in (None, True, False):
            raise UsageError(f'"logprobs" must be true or false, not {logprobs!r}', hint='e.g. "logprobs": true')
        if _number(body, "top_logprobs", int, 0, top_max) and not logprobs:
            raise UsageError('"top_logprobs" needs "logprobs": true', hint='e.g. "logprobs": true, "top_logprobs": 5')
        if logprobs:
            params["logprobs"], params["top_logprobs"] = True, int(top or 0)
    return params


def _ask(body: dict[str, Any], payload: dict[str, Any], params: dict[str, Any], route: str) -> Ask:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise UsageError('the body needs "model": a stored model name', hint="GET /v1/models lists them")
    n = _number(body, "n", int, 1, 16) or 1
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not body.get("stream")):
        raise UsageError('"stream_options" needs "stream": true and an object', hint='{"include_usage": true}')
    return Ask(model, {**payload, "parameters": params}, route, body.get("keep_alive"), n,
               max_given="max_new_tokens" in params, ema_alpha=signals_option(body), pace_hz=pace_option(body))


def _messages(value: Any) -> list[dict[str, Any]]:
    """OpenAI messages with string content; text parts of list content are joined, other parts refused."""
    if not isinstance(value, list) or not value:
        raise UsageError('"messages" must be a non-empty list', hint='[{"role": "user", "content": "Hi"}]')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UsageError(f"messages[{i}] must be an object with a role", hint='{"role": "user", "content": "Hi"}')
        content = m.get("content")
        if isinstance(content, list):
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise UsageError(f"messages[{i}] has a non-text part", hint="this model takes text only")
            content = "".join(str(p.get("text", "")) for p in content)
        if content is not None and not isinstance(content, str):
            raise UsageError(f"messages[{i}].content must be a string or text parts", hint='"content": "Hi"')
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content or ""})
    return out


def _chat_logprobs(run: Run, events: list[Any]) -> dict[str, Any]:
    task = run.loaded.task

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = task.piece(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**entry(c.id, c.logprob), "top_logprobs": [entry(i, lp) for i, lp in (c.top or [])]}
                        for c in events], "refusal": None}


def _text_logprobs(run: Run, choices: list[Any], offset: int = 0) -> dict[str, Any]:
    task = run.loaded.task
    tokens = [task.piece(c.id) for c in choices]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [c.logprob for c in choices],
            "top_logprobs": [{task.piece(i): lp for i, lp in (c.top or [])} for c in choices], "text_offset": offsets}


def register(app: FastAPI) -> None:
    @app.post("/v1/chat/completions", openapi_extra=schemas.body(schemas.OPENAI_CHAT))
    async def chat_completions(request: Request) -> Any:
        body = await read_json(request)
        ask = _ask(body, {"messages": _messages(body.get("messages"))},
                   _parameters(body, _CHAT, "max_completion_tokens", 20, False), "chat")
        return await _respond(request, body, ask, chat=True)

    @app.post("/v1/completions", openapi_extra=schemas.body(schemas.OPENAI_COMPLETIONS))
    async def completions(request: Request) -> Any:
        body = await read_json(request)
        for key, fine in (("echo", (None, False)), ("suffix", (None, "")), ("best_of", (None, 1))):
            if body.get(key) not in fine:
                raise UsageError(f'"{key}" is not supported', hint="leave it out")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise UsageError('"prompt" must be a string (one prompt per request)',
                             hint="send several prompts as several requests; token-id prompts are not supported")
        ask = _ask(body, {"inputs": prompt}, _parameters(body, _COMPLETIONS, "max_tokens", 5, True), "completions")
        return await _respond(request, body, ask, chat=False)


async def _respond(request: Request, body: dict[str, Any], ask: Ask, chat: bool) -> Any:
    run = await open_run(request.app, ask)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if not body.get("stream"):
        try:
            await _unless_gone(request, run.collect())
            return FastJSON(_whole(run, rid, created, chat))
        finally:
            await run.close()
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(_stream(request, run, rid, created, chat, usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _whole(run: Run, rid: str, created: int, chat: bool) -> dict[str, Any]:
    choices = []
    for i, job in enumerate(run.jobs):
        s = job.seq
        logprobs = None
        if s.params.logprobs:
            logprobs = _chat_logprobs(run, s.choices) if chat else _text_logprobs(run, s.choices)
        body: dict[str, Any] = {"message": {"role": "assistant", "content": s.text, "refusal": None}} if chat \
            else {"text": s.text}
        choices.append({"index": i, **body, "logprobs": logprobs, "finish_reason": s.finish_reason})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": run.name, "choices": choices, "usage": run.usage(), "system_fingerprint": _fingerprint(run)}


def _fingerprint(run: Run) -> str:
    return "gpux-" + "-".join(p.replace("ExecutionProvider", "").lower() for p in run.loaded.model.providers[:1])


async def _stream(request: Request, run: Run, rid: str, created: int, chat: bool, usage: bool) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    extra = {"usage": None} if usage else {}
    fingerprint = _fingerprint(run)
    offsets = [0] * len(run.jobs)

    def chunk(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return sse({"id": rid, "object": kind, "created": created, "model": run.name,
                    "system_fingerprint": fingerprint, "choices": choices, **extra, **more})

    def piece(index: int, events: list[Any]) -> dict[str, Any] | None:
        text = "".join(e.text for e in events)
        finish = events[-1].finish_reason if events else None
        s = run.jobs[index].seq
        if not text and finish is None and not s.params.logprobs and not run.signals:
            return None  # nothing final yet (half a character, or a possible stop string)
        logprobs = None
        if s.params.logprobs and events:
            logprobs = _chat_logprobs(run, [e.choice for e in events]) if chat else \
                _text_logprobs(run, [e.choice for e in events], offsets[index])
        offsets[index] += len(text)
        out: dict[str, Any] = {"index": index, ("delta" if chat else "text"): {"content": text} if chat else text,
                               "logprobs": logprobs, "finish_reason": finish}
        if run.signals and events:
            out["signals"] = [run.signal(index, e) for e in events]
        return out

    try:
        if chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(len(run.jobs))])
        if run.ask.pace_hz:
            async for frame, _last in paced(run, run.ask.pace_hz):
                by: dict[int, list[Any]] = {}
                for index, event in frame:
                    by.setdefault(index, []).append(event)
                parts = [p for i, evs in sorted(by.items()) if (p := piece(i, evs)) is not None]
                yield chunk(parts or [], frame=True)
        else:
            async for batch in run.batches():
                by_choice: dict[int, list[Any]] = {}
                for index, event in batch:
                    by_choice.setdefault(index, []).append(event)
                for index, evs in by_choice.items():
                    part = piece(index, evs)
                    if part is not None:
                        yield chunk([part])
        if usage:
            extra.pop("usage")
            yield chunk([], usage=run.usage())
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # the status line is sent: the error goes in the stream, as OpenAI's does
        yield sse(stream_error(request, exc))
    finally:
        await run.close()

