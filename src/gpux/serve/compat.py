"""Routes that follow other tools' specs, so their clients work unchanged.

- OpenAI: ``GET /v1/models``, ``POST /v1/embeddings`` (float or base64 encoding, usage in tokens).
- Ollama: ``POST /api/embed``, ``GET /api/tags``, ``GET /api/ps``.
- KServe Open Inference Protocol v2: health, model metadata and readiness, ``infer`` with typed tensors;
  task models also take text as BYTES tensors (``text``, ``text_pair``, ``question``, ``context``).
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gpux.errors import InferenceError, InputError, InputNameError, InputShapeError, InputTypeError, UsageError
from gpux.serve import schemas
from gpux.serve.app import (FastJSON, keep_alive_seconds, providers, read_json, refused_by_model, run_items, status_of,
                            timings)
from gpux.serve.manager import Loaded, ModelManager

#: KServe v2 datatypes <-> gpux dtypes.
V2_TYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
            "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
            "FP32": "float32", "FP64": "float64", "BYTES": "string"}
DTYPE_V2 = {v: k for k, v in V2_TYPES.items()}


def _iso(ts: float | None) -> str | None:
    """ISO time, or None for one no calendar holds (a listing must never fail on one model's expiry)."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _texts(value: Any, field: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise UsageError(f'"{field}" must be a string or a non-empty list of strings',
                         hint="token-id inputs are not supported; send text")
    return items


def _embedding_check(field: str) -> Callable[[Loaded, list[Any]], list[Any]]:
    def check(loaded: Loaded, items: list[Any]) -> list[Any]:
        embed = getattr(loaded.task, "embedding_items", None)
        if embed is not None:  # image (and CLIP-style text) embeddings: data URLs, as infinity takes them
            return embed(items[0])  # type: ignore[no-any-return]
        if loaded.model.bundle.manifest.task != "feature-extraction":
            raise UsageError(f"model {loaded.name} is not an embedding model (task: "
                             f"{loaded.model.bundle.manifest.task})", hint="use a feature-extraction model")
        return _texts(items[0], field)
    return check


def register(app: FastAPI) -> None:
    manager: ModelManager = app.state.manager

    # -- OpenAI -------------------------------------------------------------------------

    def short(ref: str) -> str:
        """``name`` when it alone picks this tag (latest, or the only one), else ``name:tag``."""
        name, _, tag = ref.partition(":")
        return name if tag == "latest" or manager.store.tags(name) == [tag] else ref

    @app.get("/v1/models")
    async def openai_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": short(m["name"]), "object": "model",
             "created": int(datetime.fromisoformat(m["created"]).timestamp()) if m["created"] else 0,
             "owned_by": "gpux"} for m in manager.available()]}

    @app.post("/v1/embeddings", openapi_extra=schemas.body(schemas.OPENAI_EMBEDDINGS))
    async def openai_embeddings(request: Request) -> FastJSON:
        body = await read_json(request)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise UsageError(f"encoding_format {fmt!r} is not supported", hint='use "float" or "base64"')
        model = body.get("model")
        if not isinstance(model, str):
            raise UsageError('"model" is required', hint="GET /v1/models lists them")
        loaded, results, t = await run_items(app, "openai.embeddings", model, [body.get("input")], None,
                                             _embedding_check("input"), request=request)
        vecs = [r[0] for r in results]
        dims = body.get("dimensions")
        if dims is not None and dims != len(vecs[0]):
            raise UsageError(f"dimensions={dims} is not supported: this model returns {len(vecs[0])}",
                             hint="omit dimensions")
        tokens = sum(r[1] for r in results)
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() if fmt == "base64"
                 else v} for i, v in enumerate(vecs)]
        return FastJSON({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                         **t, "providers": providers(loaded)})  # extra keys: OpenAI clients ignore them

    # -- Ollama -------------------------------------------------------------------------

    @app.post("/api/embed", openapi_extra=schemas.body(schemas.OLLAMA_EMBED))
    async def ollama_embed(request: Request) -> FastJSON:
        body = await read_json(request)
        model = body.get("model")
        if not isinstance(model, str):
            raise UsageError('"model" is required', hint="GET /api/tags lists them")
        check = _embedding_check("input")
        if body.get("truncate", True) is False:  # only then is a second tokenization worth it
            keep_alive_seconds(body.get("keep_alive"))  # a bad duration fails before the tokenizer runs
            await _refuse_long(manager, model, body.get("input"))

        loaded, results, t = await run_items(app, "ollama.embed", model, [body.get("input")],
                                             body.get("keep_alive"), check, request=request)
        return FastJSON({"model": model, "embeddings": [r[0] for r in results], **t,
                         "prompt_eval_count": sum(r[1] for r in results), "providers": providers(loaded)})

    def _ollama_model(m: dict[str, Any]) -> dict[str, Any]:
        return {"name": m["name"], "model": m["name"], "modified_at": m["created"], "size": m["size_bytes"],
                "digest": m["digest"], "details": {"format": "onnx", "family": m["task"] or "", "families": None,
                                                   "parameter_size": "", "quantization_level": "F32"}}

    @app.get("/api/tags")
    async def ollama_tags() -> dict[str, Any]:
        return {"models": [_ollama_model(m) for m in manager.available()]}

    @app.get("/api/ps")
    async def ollama_ps() -> dict[str, Any]:
        by_name = {m["name"]: m for m in manager.available()}
        return {"models": [{**_ollama_model(by_name[m.name]), "expires_at": _iso(m.expires_at),
                            "size_vram": 0, "size": m.memory_bytes,
                            **({"context_length": m.task.context} if m.scheduler is not None else {})}
                           for m in manager.models.values() if m.name in by_name]}

    # -- KServe v2 ----------------------------------------------------------------------

    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready(request: Request) -> JSONResponse:
        ok = bool(request.app.state.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name:path}/ready")
    async def v2_model_ready(name: str) -> dict[str, Any]:
        return {"name": manager.require(name), "ready": True}

    @app.post("/v2/models/{name:path}/infer", openapi_extra=schemas.body(schemas.V2_INFER))
    async def v2_infer(name: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        start = time.perf_counter()
        canonical = manager.require(name)
        rid = body.get("id", "")
        if not isinstance(rid, str):
            raise UsageError('"id" must be a string', hint="any text; it is echoed in the answer")
        if _text_request(body) and await _has_task(manager, canonical):
            return await _v2_text(app, canonical, rid, body, request)
        status = 500
        try:
            async with manager.use(canonical) as (loaded, load_s):
                # Parsing, checking, running and listing the outputs are all CPU work: off the event loop.
                outputs = await asyncio.get_running_loop().run_in_executor(None, _v2_infer, loaded, body)
                status = 200
        except Exception as exc:
            status = status_of(exc) if isinstance(exc, (InputError, UsageError)) else 500
            raise
        finally:
            manager.metrics.request(canonical, "v2.infer", status, time.perf_counter() - start, None)
        return {"model_name": canonical, "model_version": canonical.partition(":")[2],
                "id": rid, "outputs": outputs,
                "parameters": {**timings(start, load_s, None), "providers": ",".join(providers(loaded))}}

    @app.get("/v2/models/{name:path}")
    async def v2_metadata(name: str) -> dict[str, Any]:
        async with manager.use(manager.require(name)) as (loaded, _):
            return {"name": loaded.name, "versions": [loaded.name.partition(":")[2]],
                    "platform": "onnxruntime_onnx", "inputs": [_v2_spec(s) for s in loaded.model.inputs],
                    "outputs": [_v2_spec(s) for s in loaded.model.outputs]}


#: BYTES inputs a task model takes on KServe v2 instead of its graph's tensors.
TEXT_INPUTS = ("text", "text_pair", "question", "context", "image", "audio")


def _text_request(body: dict[str, Any]) -> bool:
    """Every input is a BYTES tensor named text, text_pair, question or context."""
    tensors = body.get("inputs")
    return isinstance(tensors, list) and bool(tensors) and all(
        isinstance(t, dict) and t.get("name") in TEXT_INPUTS and t.get("datatype") == "BYTES" for t in tensors)


async def _has_task(manager: ModelManager, name: str) -> bool:
    async with manager.use(name) as (loaded, _):
        return loaded.task is not None


def _text_payload(body: dict[str, Any]) -> dict[str, Any]:
    """KServe v2 BYTES columns -> the task's own payload: texts, {text, text_pair} or {question, context} rows."""
    columns: dict[str, list[str]] = {}
    for t in body["inputs"]:
        name, shape, data = t["name"], t.get("shape"), t.get("data")
        if name in columns:
            raise InputNameError(f"repeated input {name!r}", hint="send each text input once")
        if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
            raise UsageError(f"input {name!r}: data must be a non-empty list of strings", hint="one text per row")
        if not isinstance(shape, list) or shape not in ([len(data)], [len(data), 1]):
            raise InputShapeError(f"input {name!r}: shape must be [{len(data)}] for {len(data)} texts, got {shape!r}",
                                  hint="one row per text")
        columns[name] = data
    rows = {len(v) for v in columns.values()}
    if len(rows) > 1:
        raise InputShapeError("the text inputs have different numbers of rows", hint="send one row per input each")
    keys = set(columns)
    n = rows.pop()
    if keys == {"text"}:
        inputs: Any = columns["text"]
    elif keys in ({"image"}, {"audio"}):  # image and audio models: each row a data URL (bytes never a path)
        inputs = columns[keys.pop()]
    elif keys == {"text", "text_pair"}:
        inputs = [{"text": columns["text"][i], "text_pair": columns["text_pair"][i]} for i in range(n)]
    elif keys == {"question", "context"}:
        inputs = [{"question": columns["question"][i], "context": columns["context"][i]} for i in range(n)]
    else:
        raise InputNameError(f"text inputs {sorted(keys)} do not go together",
                             hint="send text; text and text_pair; question and context; image; or audio")
    params = body.get("parameters")
    return {"inputs": inputs, **({"parameters": params} if params else {})}


async def _v2_text(app: FastAPI, name: str, rid: str, body: dict[str, Any], request: Request) -> dict[str, Any]:
    """A task model on KServe v2 with text in: batched like /predict, one output tensor named by the answer.

    Embeddings come back as FP32 [n, dim] and ranking scores as FP32 [n]; every other answer (labels,
    entities, answers, fill candidates) as BYTES [n], each row that input's answer as JSON text.
    """
    import orjson

    payload = _text_payload(body)

    def check(loaded: Loaded, items: list[Any]) -> list[Any]:
        return loaded.task.items(items[0])  # type: ignore[no-any-return]

    loaded, results, t = await run_items(app, "v2.infer", name, [payload], None, check, request=request)
    key, answers = loaded.task.answer_key, [r[0] for r in results]
    wanted = _v2_outputs_named(body, key)
    if key in ("embeddings", "scores"):
        arr = np.asarray(answers, dtype=np.float32)
        out = {"name": key, "datatype": "FP32", "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}
    else:
        out = {"name": key, "datatype": "BYTES", "shape": [len(answers)],
               "data": [orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY).decode() for a in answers]}
    return {"model_name": name, "model_version": name.partition(":")[2], "id": rid,
            "outputs": [out] if wanted else [], "parameters": {**t, "providers": ",".join(providers(loaded))}}


def _v2_outputs_named(body: dict[str, Any], key: str) -> bool:
    asked = body.get("outputs")
    if asked is None:
        return True
    names = [o.get("name") for o in asked] if isinstance(asked, list) and all(isinstance(o, dict) for o in asked) \
        else None
    if names is None or any(n != key for n in names):
        raise UsageError(f"this task model answers one output, {key!r}", hint="ask for it, or leave out outputs")
    return True


def _v2_spec(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": DTYPE_V2.get(spec.dtype, spec.dtype),
            "shape": [d if isinstance(d, int) else -1 for d in (spec.shape or ())]}


def _dtype(arr: np.ndarray) -> str:
    return "string" if arr.dtype.kind in "OUS" else str(arr.dtype)


async def _refuse_long(manager: ModelManager, model: str, value: Any) -> None:
    """``truncate: false``: refuse a text longer than the model takes. The tokenizer runs in a worker
    thread (it releases the GIL): one 9.5 MB text tokenized on the event loop froze every route for 7 s."""
    async with manager.use(manager.require(model)) as (loaded, _):
        texts = _embedding_check("input")(loaded, [value])
        encode = loaded.task.encode
        longest = max(await asyncio.get_running_loop().run_in_executor(None, encode.lengths, texts))
    if longest > encode.max_length:
        raise UsageError(f"an input has {longest} tokens, over the model's {encode.max_length}",
                         hint="shorten it or set truncate: true")


def _v2_infer(loaded: Loaded, body: dict[str, Any]) -> list[dict[str, Any]]:
    """One KServe v2 call in a worker thread: the feed, the run, the outputs asked for."""
    wanted = _v2_outputs(loaded, body)
    feed = _v2_feed(loaded, body)
    try:
        out = loaded.model.run(feed)
    except InferenceError as exc:
        raise refused_by_model(exc) from exc
    return [{"name": k, "datatype": DTYPE_V2.get(_dtype(v), "BYTES"), "shape": list(v.shape),
             "data": v.reshape(-1).tolist()} for k, v in out.items() if wanted is None or k in wanted]


def _v2_outputs(loaded: Loaded, body: dict[str, Any]) -> set[str] | None:
    """The output names the request asks for (None: all), each one the model has."""
    asked = body.get("outputs")
    if asked is None:
        return None
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise UsageError('"outputs" must be a list of {"name": ...} objects', hint="or leave it out for every output")
    names = {o.name for o in loaded.model.outputs}
    unknown = [o["name"] for o in asked if o["name"] not in names]
    if unknown:
        raise UsageError(f"unknown output {unknown[0]!r}", hint=f"the model gives: {', '.join(sorted(names))}")
    return {o["name"] for o in asked} or None


def _v2_feed(loaded: Loaded, body: dict[str, Any]) -> dict[str, Any]:
    """KServe v2 typed tensors -> a checked feed; the declared datatype must be the model's.

    The values are read as JSON gave them (ints, floats, text) and cast by :meth:`Model.check`, the
    one rule the CLI uses too (zero-size dimensions included): forcing the dtype here first turned FP32 1e39 into inf silently and
    made INT64 1e300 an OverflowError (a 500).
    """
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors or not all(isinstance(t, dict) for t in tensors):
        raise UsageError('"inputs" must be a non-empty list of {name, shape, datatype, data} objects',
                         hint="see the KServe v2 spec")
    specs = {s.name: s for s in loaded.model.inputs}
    feed: dict[str, Any] = {}
    for t in tensors:
        name, dtype, shape, data = t.get("name"), t.get("datatype"), t.get("shape"), t.get("data")
        if not isinstance(name, str) or name not in specs or name in feed:
            what = "repeated" if isinstance(name, str) and name in feed else "unknown"
            raise InputNameError(f"{what} input {name!r}", hint=f"the model takes: {', '.join(specs)}")
        want = DTYPE_V2.get(specs[name].dtype, specs[name].dtype)
        if not isinstance(dtype, str) or V2_TYPES.get(dtype) != specs[name].dtype:
            raise InputTypeError(f"input {name!r} is {want}, the request says {dtype!r}", hint=f"send datatype {want}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise InputShapeError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}",
                                  hint="e.g. [2, 512]")
        if not isinstance(data, list):
            raise UsageError(f"input {name!r}: data must be a list", hint="the tensor's values, row-major")
        try:
            arr = np.asarray(data)  # no dtype: Model.check casts with the common policy
        except (ValueError, TypeError) as exc:
            raise InputShapeError(f"input {name!r}: data is a ragged list", hint="flatten it, row-major") from exc
        if arr.size != math.prod(shape):
            raise InputShapeError(f"input {name!r}: data does not fit shape {shape}: {arr.size} values for "
                                  f"{math.prod(shape)}", hint="data is the tensor's values flattened in row-major order")
        try:
            feed[name] = arr.reshape(shape)
            if arr.dtype == object:  # nulls, mixed kinds, ints past 64 bits: Model.check judges the plain values
                feed[name] = feed[name].tolist()
        except ValueError as exc:  # e.g. more dimensions than numpy allows
            raise InputShapeError(f"input {name!r}: shape {shape} is not usable: {exc}", hint="see the model's "
                                  "inputs: GET /v2/models/{name}") from exc
    return dict(loaded.model.check(feed))
