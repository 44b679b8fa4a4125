"""gpux's own routes: health, models (list/load/unload), predict, stats, metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gpux.errors import UsageError
from gpux.serve import schemas
from gpux.serve.app import FastJSON, keep_alive_seconds, providers, read_json, run_items, timings
from gpux.serve.manager import Loaded, ModelManager


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise UsageError('the body needs "model": a stored model name', hint="GET /models lists them")
    return name


def _loaded_view(m: Loaded) -> dict[str, Any]:
    return {"name": m.name, "task": m.model.bundle.manifest.task, "memory_bytes": m.memory_bytes,
            "providers": providers(m), "load_ms": m.load_s * 1e3, "active_requests": m.active,
            "queue_depth": m.batcher.depth, "instances": m.batcher.config.instances,
            "threads": m.model.settings.get("intra_op_threads"), "batches_in_flight_peak": m.batcher.peak_in_flight,
            "expires_at": m.expires_at, **({"generation": _scheduler_view(m.scheduler)} if m.scheduler else {})}


def _scheduler_view(s: Any) -> dict[str, Any]:
    return {"running": s.active, "waiting": s.depth, "max_sequences": s.max_batch, "peak_sequences": s.peak_batch,
            "kv_reserved_tokens": s.reserved, "kv_budget_tokens": s.budget, "steps": s.steps}


def register(app: FastAPI) -> None:
    manager: ModelManager = app.state.manager

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        ok = bool(request.app.state.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/models")
    async def models() -> dict[str, Any]:
        loaded = {m.name: _loaded_view(m) for m in manager.models.values()}
        return {"models": [{**a, "loaded": a["name"] in loaded, **loaded.get(a["name"], {})}
                           for a in manager.available()],
                "memory_budget_bytes": manager.budget,
                "memory_used_bytes": sum(m.memory_bytes for m in manager.models.values())}

    @app.post("/models/load", openapi_extra=schemas.body(schemas.MODEL_LOAD))
    async def load(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        start = time.perf_counter()
        loaded, load_s = await manager.get(manager.require(_model_name(body)), keep_alive_seconds(body.get("keep_alive")))
        return {**_loaded_view(loaded), **timings(start, load_s, None)}

    @app.post("/models/unload", openapi_extra=schemas.body(schemas.MODEL_UNLOAD))
    async def unload(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        name = manager.require(_model_name(body))
        return {"name": name, "unloaded": await manager.unload(name)}

    @app.post("/predict/{model:path}", openapi_extra=schemas.body(schemas.PREDICT))
    async def predict(model: str, request: Request) -> FastJSON:
        body = await read_json(request)
        if "inputs" not in body:
            raise UsageError('the body needs "inputs"', hint='{"inputs": ["text"]} or {"inputs": {"x": [[1, 2]]}}; '
                             "docs/cli.md shows each task's shape")

        def check(loaded: Loaded, items: list[Any]) -> list[Any]:
            if loaded.task is not None:  # the task's own parser: texts, pairs, questions, parameters
                return loaded.task.items({"inputs": items[0], **_parameters(body)})  # type: ignore[no-any-return]
            if not isinstance(items[0], dict):
                raise UsageError('"inputs" must map input names to values for this model',
                                 hint=f"its inputs: {', '.join(s.name for s in loaded.model.inputs)}")
            request.state.client_tensors = True  # onnxruntime refusing them is a 400 (see app.on_error)
            return [dict(loaded.model.check(items[0]))]

        loaded, results, t = await run_items(app, "predict", model, [body["inputs"]], body.get("keep_alive"), check,
                                             request=request)
        answer: dict[str, Any]
        if loaded.task is not None:
            answer = {loaded.task.answer_key: [r[0] for r in results]}
        else:
            answer = {"outputs": {k: _plain(v) for k, v in results[0].items()}}
        return FastJSON({"model": loaded.name, "task": loaded.model.bundle.manifest.task, **answer,
                         "providers": providers(loaded), **t})

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"models": manager.metrics.snapshot(),
                "loaded": [_loaded_view(m) for m in manager.models.values()]}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(manager.metrics.prometheus(), media_type=CONTENT_TYPE_LATEST)


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    """The body's task parameters (``top_k``, ``aggregation_strategy``...), if it has any."""
    return {"parameters": body["parameters"]} if "parameters" in body else {}


def _plain(value: Any) -> Any:
    from gpux.jsonout import to_jsonable

    return to_jsonable(value)
