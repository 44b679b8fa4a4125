"""Serving the text tasks of issue 10 on a real uvicorn server: /v1/rerank and /rerank (Cohere/Jina/infinity
shape), the new tasks through /predict/{model} and KServe v2 with text in. Scores are checked against
PyTorch (reranking) or against the same task run in-process, itself checked against transformers in
tests/test_text_tasks.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from serve_helpers import LiveServer
from test_text_tasks import (
    DOCUMENTS,
    NER_TEXTS,
    QUERY,
    convert_into,
    tiny_task,
    torch_scores,
)

import gpux
from gpux.serve.app import create_app
from gpux.serve.batcher import BatchConfig
from gpux.serve.manager import ModelManager
from gpux.store.local import Store

TASKS = ("text-ranking", "token-classification", "question-answering", "fill-mask", "text-classification")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rerank-home")
    src = tmp_path_factory.mktemp("rerank-src")
    refs, folders = {}, {}
    for i, task in enumerate(TASKS):
        folders[task] = tiny_task(src / f"serve-{task}", task, seed=i)
        refs[task] = convert_into(root, folders[task], task)
    return {"root": root, "ref": refs, "src": folders}


@pytest.fixture(scope="module")
def server(stored: dict[str, Any]) -> Iterator[LiveServer]:
    manager = ModelManager(store=Store(stored["root"]), batch=BatchConfig(max_batch=64, max_delay_ms=50))
    with LiveServer(create_app(manager)) as srv:
        yield srv


def _local(stored: dict[str, Any], task: str, payload: dict[str, Any]) -> Any:
    model = gpux.load(stored["ref"][task], store=Store(stored["root"]))
    return json.loads(json.dumps(model(payload), default=float))


@pytest.mark.parametrize("route", ["/v1/rerank", "/rerank"])
def test_rerank_scores_and_order_match_pytorch(server: LiveServer, stored: dict[str, Any], route: str) -> None:
    expected = torch_scores(stored["src"]["text-ranking"], [(QUERY, d) for d in DOCUMENTS], softmax=False)
    order = list(np.argsort(-expected, kind="stable"))
    body = {"model": stored["ref"]["text-ranking"], "query": QUERY, "documents": DOCUMENTS}
    res = httpx.post(f"{server.url}{route}", json=body, timeout=60)
    assert res.status_code == 200, res.text
    out = res.json()
    assert [r["index"] for r in out["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in out["results"]], expected[order], atol=1e-5)
    assert all("document" not in r for r in out["results"])  # return_documents defaults to false
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] > len(DOCUMENTS) * 5
    mixed = [DOCUMENTS[0], *({"text": d} for d in DOCUMENTS[1:])]  # strings and {"text": ...} objects
    top = httpx.post(f"{server.url}{route}", json={**body, "top_n": 2, "return_documents": True, "documents": mixed},
                     timeout=60).json()
    assert [r["index"] for r in top["results"]] == order[:2]
    assert [r["document"] for r in top["results"]] == [{"text": DOCUMENTS[i]} for i in order[:2]]


def test_concurrent_rerank_requests_share_batches(server: LiveServer, stored: dict[str, Any]) -> None:
    """8 clients at once, 5 documents each: the batcher merges their pairs (batches of more than 5)."""
    ref = stored["ref"]["text-ranking"]
    expected = torch_scores(stored["src"]["text-ranking"], [(QUERY, d) for d in DOCUMENTS], softmax=False)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return list(await asyncio.gather(*(client.post("/v1/rerank", json={
                "model": ref, "query": QUERY, "documents": DOCUMENTS}) for _ in range(8))))

    for res in asyncio.run(go()):
        assert res.status_code == 200, res.text
        got = sorted(res.json()["results"], key=lambda r: r["index"])
        np.testing.assert_allclose([r["relevance_score"] for r in got], expected, atol=1e-5)
    stats = httpx.get(f"{server.url}/stats").json()["models"][ref]
    assert max(int(k) for k in stats["batch_size_histogram"]) > len(DOCUMENTS)


def test_rerank_bad_requests_are_400s(server: LiveServer, stored: dict[str, Any]) -> None:
    ref = stored["ref"]["text-ranking"]
    cases = [({"query": QUERY, "documents": DOCUMENTS}, '"model" is required'),
             ({"model": ref, "documents": DOCUMENTS}, '"query"'),
             ({"model": ref, "query": QUERY, "documents": []}, '"documents"'),
             ({"model": ref, "query": QUERY, "documents": [1]}, "document 0"),
             ({"model": ref, "query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n"),
             ({"model": ref, "query": QUERY, "documents": DOCUMENTS, "return_documents": "yes"}, "return_documents"),
             ({"model": stored["ref"]["text-classification"], "query": QUERY, "documents": DOCUMENTS}, "not a reranker")]
    for body, needle in cases:
        res = httpx.post(f"{server.url}/v1/rerank", json=body, timeout=60)
        assert res.status_code == 400, (body, res.text)
        assert needle in res.json()["error"]["message"]  # /v1/: OpenAI's error object
    plain = httpx.post(f"{server.url}/rerank", json={"model": ref, "query": QUERY}, timeout=60)
    assert plain.status_code == 400 and "documents" in plain.json()["error"]
    missing = httpx.post(f"{server.url}/v1/rerank", json={"model": "nope", "query": "q", "documents": ["a"]})
    assert missing.status_code == 404
    schema = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for route in ("/v1/rerank", "/rerank"):
        body = schema[route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["model", "query", "documents"]


PREDICT = {
    "token-classification": {"inputs": NER_TEXTS, "parameters": {"aggregation_strategy": "simple",
                                                                 "ignore_labels": []}},
    "question-answering": {"inputs": [{"question": "Where does the cat live?",
                                       "context": "The cat lives near the old river in Paris."}],
                           "parameters": {"top_k": 2}},
    "fill-mask": {"inputs": ["paris is the [MASK] of france."], "parameters": {"top_k": 3}},
    "text-classification": {"inputs": [{"text": "A man plays.", "text_pair": "Someone makes music."}, "one text"]},
    "text-ranking": {"inputs": {"query": QUERY, "documents": DOCUMENTS}},
}


@pytest.mark.parametrize("task", list(PREDICT))
def test_predict_runs_each_task_with_its_own_inputs(server: LiveServer, stored: dict[str, Any], task: str) -> None:
    payload = PREDICT[task]
    res = httpx.post(f"{server.url}/predict/{stored['ref'][task]}", json=payload, timeout=60)
    assert res.status_code == 200, res.text
    out = res.json()
    expected = _local(stored, task, payload)
    key = next(iter(expected))
    assert out["task"] == task and key in out
    assert _skeleton(out[key]) == _skeleton(expected[key])  # same labels, words, answers; numbers below
    np.testing.assert_allclose(_numbers(out[key]), _numbers(expected[key]), rtol=1e-5)


def _skeleton(value: Any) -> Any:
    """An answer with its floats blanked: everything but the scores must match exactly."""
    if isinstance(value, float):
        return None
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_skeleton(v) for v in value]
    return value


def _numbers(value: Any) -> list[float]:
    """Every number in a nested answer, in order (scores, offsets, token ids)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


def test_predict_refuses_what_the_task_refuses(server: LiveServer, stored: dict[str, Any]) -> None:
    res = httpx.post(f"{server.url}/predict/{stored['ref']['fill-mask']}", json={"inputs": "no mask here"})
    assert res.status_code == 400 and "[MASK]" in res.json()["error"]
    res = httpx.post(f"{server.url}/predict/{stored['ref']['question-answering']}", json={"inputs": "a text"})
    assert res.status_code == 400 and "question" in res.json()["error"]
    res = httpx.post(f"{server.url}/predict/{stored['ref']['token-classification']}",
                     json={"inputs": "x", "parameters": {"aggregation_strategy": "longest"}})
    assert res.status_code == 400 and "aggregation_strategy" in res.json()["error"]


def test_kserve_v2_takes_text_for_task_models(server: LiveServer, stored: dict[str, Any]) -> None:
    ner = stored["ref"]["token-classification"]
    body = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(NER_TEXTS)], "data": NER_TEXTS}],
            "parameters": {"aggregation_strategy": "first"}}
    res = httpx.post(f"{server.url}/v2/models/{ner}/infer", json=body, timeout=60)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["id"] == "r1" and out["outputs"][0]["name"] == "entities" and out["outputs"][0]["datatype"] == "BYTES"
    expected = _local(stored, "token-classification", {"inputs": NER_TEXTS, "parameters": {"aggregation_strategy": "first"}})
    got = [json.loads(row) for row in out["outputs"][0]["data"]]
    assert [[e["word"] for e in row] for row in got] == [[e["word"] for e in row] for row in expected["entities"]]
    np.testing.assert_allclose(_numbers(got), _numbers(expected["entities"]), rtol=1e-5)

    rank = stored["ref"]["text-ranking"]
    pairs = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(DOCUMENTS)], "data": [QUERY] * len(DOCUMENTS)},
                        {"name": "text_pair", "datatype": "BYTES", "shape": [len(DOCUMENTS)], "data": DOCUMENTS}]}
    scores = httpx.post(f"{server.url}/v2/models/{rank}/infer", json=pairs, timeout=60).json()["outputs"][0]
    assert scores["name"] == "scores" and scores["datatype"] == "FP32" and scores["shape"] == [len(DOCUMENTS)]
    expected_scores = torch_scores(stored["src"]["text-ranking"], [(QUERY, d) for d in DOCUMENTS], softmax=False)
    np.testing.assert_allclose(scores["data"], expected_scores, atol=1e-5)

    qa = stored["ref"]["question-answering"]
    ask = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["Where?"]},
                      {"name": "context", "datatype": "BYTES", "shape": [1], "data": ["In Paris, by the river."]}]}
    answer = json.loads(httpx.post(f"{server.url}/v2/models/{qa}/infer", json=ask, timeout=60).json()["outputs"][0]["data"][0])
    assert "In Paris, by the river."[answer["start"]:answer["end"]] == answer["answer"]
    # The graph's own tensors still work on a task model; a text input it cannot pair is a 400.
    raw = {"inputs": [{"name": n, "datatype": "INT64", "shape": [1, 3], "data": v}
                      for n, v in (("input_ids", [101, 2054, 102]), ("attention_mask", [1, 1, 1]),
                                   ("token_type_ids", [0, 0, 0]))]}
    res = httpx.post(f"{server.url}/v2/models/{ner}/infer", json=raw, timeout=60)
    assert res.status_code == 200 and res.json()["outputs"][0]["shape"] == [1, 3, 5]
    bad = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["q"]}]}
    res = httpx.post(f"{server.url}/v2/models/{ner}/infer", json=bad, timeout=60)
    assert res.status_code == 400, res.text
