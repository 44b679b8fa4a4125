"""gpux's own ``POST /generate`` and the KServe generate extension (``/v2/models/{name}/generate[_stream]``).

``/generate`` streams server-sent events by default, one per token::

    data: {"index": 0, "token": {"id": 504, "text": " Paris", "logprob": -0.02, "entropy": 0.3}, "text": " Paris"}
    ...
    data: {"done": true, "generations": [{"text", "token_ids", "finish_reason"}], "usage": {...}, "timings": {...}}

(``"stream": false``: the last object alone, the same shape ``/predict`` gives). The body is the task's own
payload (``inputs`` or ``messages``, ``parameters``, ``truncate``) plus ``model``, ``n``, ``signals`` and
``pace_hz``.

KServe's generate extension (provisional upstream, Triton's shape): ``{"text_input": "...", "parameters":
{...}}`` -> ``{"model_name", "model_version", "text_output"}``; ``generate_stream`` sends one such object per
token as server-sent events. Parameters take Hugging Face names, and ``max_tokens`` as Triton's examples use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from gpux.errors import UsageError
from gpux.serve import schemas
from gpux.generate.ensemble import EnsembleMeter, vocabulary_key
from gpux.serve.app import FastJSON, _unless_gone, providers, read_json
from gpux.serve.generation import Ask, Run, open_run, pace_option, paced, signals_option, sse, stream_error


def _timings(run: Run) -> dict[str, Any]:
    job = run.jobs[0]
    first, end = job.first_token or job.submitted, job.finished or job.first_token or job.submitted
    tokens = len(job.seq.tokens)
    return {"load_ms": round(run.load_s * 1e3, 3), "ttft_ms": round((first - run.start) * 1e3, 3),
            "decode_tokens_per_s": round((tokens - 1) / (end - first), 2) if tokens > 1 and end > first else 0.0,
            "total_ms": round((end - run.start) * 1e3, 3)}


def _final(run: Run) -> dict[str, Any]:
    gens = []
    for job in run.jobs:
        s = job.seq
        gen: dict[str, Any] = {"text": s.text, "token_ids": list(s.tokens), "finish_reason": s.finish_reason}
        if s.params.logprobs:
            gen["logprobs"] = [run.loaded.task.token_info(c) for c in s.choices]
        gens.append(gen)
    return {"model": run.name, "task": run.loaded.model.bundle.manifest.task, "generations": gens, "usage": run.usage(),
            "timings": _timings(run), "providers": providers(run.loaded)}


def _event(run: Run, index: int, e: Any) -> dict[str, Any]:
    c = e.choice
    out: dict[str, Any] = {"index": index, "token": {"id": c.id, "text": run.loaded.task.piece(c.id),
                                                     "logprob": c.logprob, "entropy": c.entropy}, "text": e.text}
    if c.top:
        out["token"]["top_logprobs"] = [{"id": i, "logprob": lp} for i, lp in c.top]
    if e.finish_reason:
        out["finish_reason"] = e.finish_reason
    signal = run.signal(index, e)
    if signal is not None:
        out["signals"] = signal
    return out


def register(app: FastAPI) -> None:
    @app.post("/generate", openapi_extra=schemas.body(schemas.GENERATE))
    async def generate(request: Request) -> Any:
        body = await read_json(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise UsageError('the body needs "model": a stored model name', hint="GET /models lists them")
        payload: dict[str, Any] = {k: body[k] for k in ("inputs", "messages", "parameters", "truncate") if k in body}
        if isinstance(payload.get("inputs"), list) and len(payload["inputs"]) == 1:
            payload["inputs"] = payload["inputs"][0]
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
            raise UsageError(f'"n" must be an integer from 1 to 16, not {n!r}', hint='e.g. "n": 2')
        ask = Ask(model, payload, "generate", body.get("keep_alive"), n,
                  ema_alpha=signals_option(body), pace_hz=pace_option(body))
        run = await open_run(request.app, ask)
        if body.get("stream", True) is False:
            try:
                await _unless_gone(request, run.collect())
                return FastJSON(_final(run))
            finally:
                await run.close()
        return _sse(request, run, lambda i, e: _event(run, i, e), lambda: {"done": True, **_final(run)})

    app.post("/ensemble", openapi_extra=schemas.body(schemas.ENSEMBLE))(_ensemble)

    @app.post("/v2/models/{name:path}/generate", openapi_extra=schemas.body(schemas.KSERVE_GENERATE))
    async def kserve_generate(name: str, request: Request) -> Any:
        run = await open_run(request.app, _kserve_ask(name.split("/versions/")[0], await read_json(request)))
        try:
            await _unless_gone(request, run.collect())
            return FastJSON({"model_name": run.name, "model_version": "1", "text_output": run.jobs[0].seq.text})
        finally:
            await run.close()

    @app.post("/v2/models/{name:path}/generate_stream", openapi_extra=schemas.body(schemas.KSERVE_GENERATE))
    async def kserve_generate_stream(name: str, request: Request) -> Any:
        run = await open_run(request.app, _kserve_ask(name.split("/versions/")[0], await read_json(request)))
        return _sse(request, run, lambda i, e: {"model_name": run.name, "model_version": "1", "text_output": e.text,
                                                 **({"finish_reason": e.finish_reason} if e.finish_reason else {})},
                    None)


def _vocabulary(task: Any) -> int:
    key = getattr(task, "_vocabulary_key", None)
    if key is None:
        key = task._vocabulary_key = vocabulary_key(task.tokenizer)
    return int(key)


async def _ensemble(request: Request) -> Any:
    """``POST /ensemble``: one prompt or chat to several models through their schedulers, DI per step and overall."""
    import asyncio

    body = await read_json(request)
    models = body.get("models")
    if not isinstance(models, list) or not 2 <= len(models) <= 8 or not all(isinstance(m, str) and m for m in models):
        raise UsageError('"models" must list 2 to 8 stored model names', hint='e.g. "models": ["a", "b"]')
    payload: dict[str, Any] = {k: body[k] for k in ("inputs", "messages", "parameters", "truncate") if k in body}
    runs: list[Run] = []
    try:
        for model in models:
            runs.append(await open_run(request.app, Ask(model, payload, "ensemble", body.get("keep_alive"),
                                                        keep_logits=True)))
    except BaseException:
        for run in runs:
            await run.close()
        raise
    meter = EnsembleMeter(len(runs), len({_vocabulary(r.loaded.task) for r in runs}) == 1)
    inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, run: Run) -> None:
        try:
            async for _, event in run.events():
                await inbox.put((i, event))
            await inbox.put((i, None))
        except BaseException as exc:
            await inbox.put((i, exc))

    def final() -> dict[str, Any]:
        return {"done": True, "models": [{"model": r.name, "text": r.jobs[0].seq.text,
                                          "token_ids": list(r.jobs[0].seq.tokens),
                                          "finish_reason": r.jobs[0].seq.finish_reason} for r in runs],
                **meter.report()}

    async def events() -> AsyncIterator[dict[str, Any]]:
        pumps = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(runs)]
        try:
            open_runs = len(runs)
            while open_runs:
                i, item = await inbox.get()
                if item is None or isinstance(item, BaseException):
                    open_runs -= 1
                    if isinstance(item, BaseException):
                        raise item
                    continue
                yield {"model": runs[i].name, "model_index": i, **_event(runs[i], 0, item)}
                for step, di in meter.add(i, item):
                    yield {"step": step, "di": di}
        finally:
            for p in pumps:
                p.cancel()
            for run in runs:
                await run.close()

    if body.get("stream", True) is False:
        async for _ in events():
            pass
        return FastJSON(final())

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for e in events():
                yield sse(e)
            yield sse(final())
        except Exception as exc:
            yield sse(stream_error(request, exc))

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _kserve_ask(name: str, body: dict[str, Any]) -> Ask:
    text = body.get("text_input")
    if not isinstance(text, str) or not text:
        raise UsageError('the body needs "text_input": the prompt', hint='{"text_input": "Hello", "parameters": {}}')
    params = dict(body.get("parameters") or {})
    if not isinstance(body.get("parameters") or {}, dict):
        raise UsageError('"parameters" must be an object', hint='e.g. "parameters": {"max_tokens": 32}')
    params.pop("stream", None)
    if "max_tokens" in params:
        params["max_new_tokens"] = params.pop("max_tokens")
    return Ask(name, {"inputs": text, "parameters": params}, "kserve.generate")


def _sse(request: Request, run: Run, event: Any, final: Any) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            if run.ask.pace_hz:
                async for frame, _ in paced(run, run.ask.pace_hz):
                    yield sse({"frame": True, "events": [event(i, e) for i, e in frame]})
            else:
                async for i, e in run.events():
                    yield sse(event(i, e))
            if final is not None:
                yield sse(final())
        except Exception as exc:  # the status line is sent: the error goes in the stream
            yield sse(stream_error(request, exc))
        finally:
            await run.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
