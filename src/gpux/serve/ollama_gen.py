"""Ollama's ``POST /api/generate``, ``POST /api/chat`` and ``POST /api/show``, so the ``ollama`` client works unchanged.

Streams are NDJSON (Ollama's default; ``"stream": false`` answers one object): chunks
``{"model", "created_at", "response" | "message", "done": false}``, then a final chunk with ``done_reason``
and Ollama's counters in nanoseconds (``total_duration``, ``load_duration``, ``prompt_eval_count``,
``prompt_eval_duration``, ``eval_count``, ``eval_duration``). An empty prompt (or no messages) only loads the
model (``done_reason: "load"``), or with ``keep_alive: 0`` unloads it (``"unload"``).

``/api/generate`` renders the prompt through the model's chat template as one user turn (with ``system``),
as Ollama does, unless ``raw`` is true or the model has no template. ``options`` takes Ollama's names:
``num_predict`` (-1: until the context is full), ``temperature`` (0: greedy), ``top_k``, ``top_p``, ``min_p``,
``seed``, ``stop``, ``repeat_penalty``, ``num_ctx``. Runtime knobs that mean nothing to onnxruntime
(``num_thread``, ``num_gpu``, ``use_mmap``...) are accepted and ignored; sampling options gpux does not
implement (``mirostat``, ``typical_p``...) are refused when set away from their no-op value, because output
silently different from what was asked is worse than an error. Options not sent take the model's own
generation defaults (its ``generation_config.json``: gpux's analogue of a Modelfile's PARAMETERs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from gpux.errors import UsageError
from gpux.serve import schemas
from gpux.generate.scheduler import SchedulerClosedError
from gpux.serve.app import FastJSON, _unless_gone, keep_alive_seconds, read_json
from gpux.serve.generation import Ask, Run, open_run, stream_error

_MAPPED = {"num_predict": "max_new_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
           "min_p": "min_p", "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty"}
_RUNTIME = {"num_thread", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "numa", "num_batch", "low_vram", "f16_kv",
            "vocab_only", "num_keep", "logits_all", "embedding_only"}
#: Sampling options gpux does not implement, with the value at which they do nothing.
_NO_OP = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
          "presence_penalty": 0.0, "frequency_penalty": 0.0, "penalize_newline": True, "repeat_last_n": 64}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _options(options: Any) -> tuple[dict[str, Any], bool, int | None]:
    """Ollama options -> (generation parameters, whether a maximum was named, num_ctx)."""
    if options is None:
        return {}, False, None
    if not isinstance(options, dict):
        raise UsageError('"options" must be an object', hint='e.g. "options": {"temperature": 0, "num_predict": 64}')
    params: dict[str, Any] = {}
    given, context = False, None
    for key, value in options.items():
        if value is None or key in _RUNTIME:
            continue
        if key in _NO_OP:
            if value != _NO_OP[key]:
                raise UsageError(f'option "{key}" is not supported by gpux', hint="leave it out")
            continue
        if key == "num_ctx":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f'"num_ctx" must be a positive integer, not {value!r}', hint='e.g. "num_ctx": 4096')
            context = value
            continue
        if key not in _MAPPED:
            raise UsageError(f'unknown option "{key}"', hint="options gpux takes: " + ", ".join(
                sorted([*_MAPPED, "num_ctx"])))
        if key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -2:
                raise UsageError(f'"num_predict" must be a positive integer or -1, not {value!r}',
                                 hint='e.g. "num_predict": 128 (-1: until the context is full)')
            if value < 0:
                continue
            given = True
        if key == "temperature" and isinstance(value, (int, float)) and not isinstance(value, bool):
            params["do_sample"] = value > 0
            if value <= 0:
                continue
        params[_MAPPED[key]] = [value] if key == "stop" and isinstance(value, str) else value
    return params, given, context


def _refuse(body: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if body.get(key) not in (None, "", [], False):
            raise UsageError(f'"{key}" is not supported by gpux yet', hint="leave it out")


def _logprob_params(body: dict[str, Any], params: dict[str, Any]) -> None:
    top = body.get("top_logprobs")
    if body.get("logprobs"):
        params["logprobs"] = True
        if top:
            params["top_logprobs"] = top
    elif top:
        raise UsageError('"top_logprobs" needs "logprobs": true', hint='e.g. "logprobs": true, "top_logprobs": 3')


def register(app: FastAPI) -> None:
    @app.post("/api/generate", openapi_extra=schemas.body(schemas.OLLAMA_GENERATE))
    async def generate(request: Request) -> Any:
        body = await read_json(request)
        _refuse(body, "suffix", "template", "context", "format", "images", "think")
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise UsageError('"prompt" must be a string', hint='e.g. "prompt": "Why is the sky blue?"')
        if not prompt:
            return await _load_only(request, body)
        params, given, context = _options(body.get("options"))
        _logprob_params(body, params)
        system = body.get("system")
        loaded_template = await _has_template(request, body)
        if body.get("raw") or not loaded_template:
            payload: dict[str, Any] = {"inputs": ((system + "\n\n") if system else "") + prompt}
        else:
            payload = {"messages": ([{"role": "system", "content": system}] if system else []) +
                       [{"role": "user", "content": prompt}]}
        ask = Ask(_model(body), {**payload, "parameters": params}, "ollama.generate", body.get("keep_alive"),
                  max_given=given, context=context)
        return await _respond(request, body, ask, chat=False)

    @app.post("/api/chat", openapi_extra=schemas.body(schemas.OLLAMA_CHAT))
    async def chat(request: Request) -> Any:
        body = await read_json(request)
        _refuse(body, "tools", "format", "think")
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise UsageError('"messages" must be a list', hint='[{"role": "user", "content": "Hi"}]')
        if not messages:
            return await _load_only(request, body)
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content", ""), str):
                raise UsageError(f"messages[{i}] must have a role and string content",
                                 hint='{"role": "user", "content": "Hi"}')
            _refuse(m, "images", "tool_calls")
        params, given, context = _options(body.get("options"))
        _logprob_params(body, params)
        ask = Ask(_model(body), {"messages": [{"role": m["role"], "content": m.get("content", "")} for m in messages],
                                 "parameters": params}, "ollama.chat", body.get("keep_alive"), max_given=given,
                  context=context)
        return await _respond(request, body, ask, chat=True)

    @app.post("/api/show", openapi_extra=schemas.body(schemas.OLLAMA_SHOW))
    async def show(request: Request) -> FastJSON:
        body = await read_json(request)
        manager = request.app.state.manager
        name = manager.require(_model(body))
        manifest = manager.store.manifest(name)
        info: dict[str, Any] = {"general.task": manifest.task, "general.source": manifest.source.get("kind")}
        template, parameters = None, ""
        if manifest.task == "text-generation":
            from gpux.tasks.text import read_assets

            config, _ = read_assets(manager.store.get(name))
            gen = config.get("generation", {})
            template = gen.get("chat_template")
            info["context_length"] = gen.get("context_length")
            parameters = "\n".join(f"{k} {v}" for k, v in (gen.get("defaults") or {}).items())
        capabilities = ["completion"] if manifest.task == "text-generation" else \
            ["embedding"] if manifest.task == "feature-extraction" else []
        return FastJSON({"modelfile": f"# gpux model {name}\nFROM {manifest.source}\n", "parameters": parameters,
                         "template": template or "", "modified_at": manifest.created,
                         "details": {"format": "onnx", "family": manifest.task or "", "families": None,
                                     "parent_model": "",
                                     "parameter_size": "", "quantization_level": "F32"},
                         "model_info": info, "capabilities": capabilities})


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise UsageError('the body needs "model": a stored model name', hint="GET /api/tags lists them")
    return model


async def _has_template(request: Request, body: dict[str, Any]) -> bool:
    """Whether the model has a chat template (read once it is loaded; loading is needed to generate anyway)."""
    manager = request.app.state.manager
    loaded, _ = await manager.get(manager.require(_model(body)), keep_alive_seconds(body.get("keep_alive")))
    return bool(getattr(loaded.task, "template", None))


async def _load_only(request: Request, body: dict[str, Any]) -> FastJSON:
    """Ollama's load (empty prompt) and unload (empty prompt, keep_alive 0) requests."""
    manager = request.app.state.manager
    name = manager.require(_model(body))
    keep = keep_alive_seconds(body.get("keep_alive"))
    if keep == 0:
        await manager.unload(name, reason="unloaded")
        reason = "unload"
    else:
        await manager.get(name, keep)
        reason = "load"
    key = "message" if request.url.path.endswith("/chat") else "response"
    value: Any = {"role": "assistant", "content": ""} if key == "message" else ""
    return FastJSON({"model": body["model"], "created_at": _now(), key: value, "done": True, "done_reason": reason})


def _logprobs(run: Run, choices: list[Any]) -> list[dict[str, Any]]:
    task = run.loaded.task

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = task.piece(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return [{**entry(c.id, c.logprob), **({"top_logprobs": [entry(i, lp) for i, lp in c.top]} if c.top else {})}
            for c in choices]


async def _respond(request: Request, body: dict[str, Any], ask: Ask, chat: bool) -> Any:
    run = await open_run(request.app, ask)
    model = body["model"]

    def content(text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if chat else {"response": text}

    def final(reason: str | None) -> dict[str, Any]:
        seq = run.jobs[0].seq
        out = {"model": model, "created_at": _now(), **content(""), "done": True, "done_reason": reason or "stop",
               **run.durations()}
        if not chat:
            out["context"] = list(seq.prompt) + list(seq.tokens)
        return out

    if body.get("stream") is False:
        try:
            await _unless_gone(request, run.collect())
            seq = run.jobs[0].seq
            whole = {**final(seq.finish_reason), **content(seq.text)}
            if seq.params.logprobs:
                whole["logprobs"] = _logprobs(run, seq.choices)
            return FastJSON(whole)
        finally:
            await run.close()

    async def lines() -> AsyncIterator[bytes]:
        import orjson

        try:
            reason = None
            async for batch in run.batches():  # one line per token, or what queued up if the client lags
                events = [e for _, e in batch]
                reason = events[-1].finish_reason
                text = "".join(e.text for e in events)
                chunk = {"model": model, "created_at": _now(), **content(text), "done": False}
                if run.jobs[0].seq.params.logprobs:
                    chunk["logprobs"] = _logprobs(run, [e.choice for e in events])
                if text or "logprobs" in chunk:
                    yield orjson.dumps(chunk) + b"\n"
            yield orjson.dumps(final(reason)) + b"\n"
        except SchedulerClosedError:
            yield orjson.dumps(final("unload")) + b"\n"
        except Exception as exc:  # the status line is sent: the error goes in the stream, as Ollama's does
            yield orjson.dumps(stream_error(request, exc)) + b"\n"
        finally:
            await run.close()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
