"""``POST /v1/rerank`` and ``POST /rerank``: the reranking API that Cohere, Jina and infinity share.

``{"model", "query", "documents", "top_n", "return_documents"}`` in; ``{"results": [{"index",
"relevance_score", "document"?}], "usage"}`` out, best first. Each (query, document) pair is one item of
the model's dynamic batcher, so documents of concurrent requests share batches and a request with more
documents than ``--max-batch-size`` runs as several batches (longest documents first, so each batch pads
little). Documents are strings or ``{"text": ...}``
objects; a returned document is ``{"text": ...}`` (Cohere's and Jina's shape). ``return_documents``
defaults to false (Cohere v2, infinity).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request

from gpux.errors import UsageError
from gpux.serve import schemas
from gpux.serve.app import FastJSON, providers, read_json, run_items
from gpux.serve.manager import Loaded

RANKING = "text-ranking"


def _check(loaded: Loaded, items: list[Any]) -> list[Any]:
    task = loaded.model.bundle.manifest.task
    if task != RANKING:
        raise UsageError(f"model {loaded.name} is not a reranker (task: {task})",
                         hint="use a text-ranking model (a cross-encoder); GET /models shows each model's task")
    return items


def _options(body: dict[str, Any]) -> tuple[str, list[tuple[str, str]], int | None, bool]:
    """The body's model, (query, document) pairs, top_n and return_documents, checked."""
    from gpux.tasks.ranking import pairs_of

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise UsageError('"model" is required', hint="GET /v1/models lists them")
    pairs = pairs_of(body.get("query"), body.get("documents"))
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise UsageError(f'"top_n" must be a positive integer, not {top_n!r}', hint="or leave it out for all")
    back = body.get("return_documents", False)
    if not isinstance(back, bool):
        raise UsageError(f'"return_documents" must be true or false, not {back!r}', hint="default: false")
    return model, pairs, top_n, back


def register(app: FastAPI) -> None:
    async def rerank(request: Request, route: str) -> FastJSON:
        body = await read_json(request)
        model, pairs, top_n, back = _options(body)
        # Longest documents first: the batcher slices a request in order, so each batch then holds documents
        # of similar length and pads little (characters stand in for tokens: no tokenizing on the event loop).
        by_length = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1]))
        loaded, ran, t = await run_items(app, route, model, [pairs[i] for i in by_length], body.get("keep_alive"),
                                         _check, request=request)
        results: list[Any] = [None] * len(pairs)
        for i, r in zip(by_length, ran):
            results[i] = r
        order = sorted(range(len(results)), key=lambda i: -results[i][0])[:top_n]
        tokens = sum(int(r[1]) for r in results)
        return FastJSON({
            "object": "rerank", "id": str(uuid.uuid4()), "created": int(time.time()), "model": model,
            "results": [{"index": i, "relevance_score": results[i][0],
                         **({"document": {"text": pairs[i][1]}} if back else {})} for i in order],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, **t, "providers": providers(loaded)})

    @app.post("/v1/rerank", openapi_extra=schemas.body(schemas.RERANK))
    async def rerank_v1(request: Request) -> FastJSON:
        return await rerank(request, "rerank")

    @app.post("/rerank", openapi_extra=schemas.body(schemas.RERANK))
    async def rerank_plain(request: Request) -> FastJSON:
        return await rerank(request, "rerank")
