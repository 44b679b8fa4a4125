"""gpux serve on a real uvicorn server: real openai/ollama clients, KServe v2, batching, eviction, bad input."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import gpux
import models
from conftest import gpux as cli
from gpux.serve.app import ServeSettings, create_app
from gpux.serve.batcher import BatchConfig
from gpux.serve.manager import ModelManager
from gpux.store.local import Store
from serve_helpers import LiveServer, build_raw_models, build_with_serving

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: MiniLM pulled once, plus two tiny raw models built."""
    root = tmp_path_factory.mktemp("serve-home")
    env = {"GPUX_HOME": str(root)}
    assert cli("pull", MINILM, env=env).returncode == 0
    build_raw_models(root, tmp_path_factory.mktemp("serve-src"), (("tiny-mlp", models.mlp), ("tiny-half", models.half)))
    return root


def _server(root: Path, **kw: object) -> LiveServer:
    settings = ServeSettings(**{k: v for k, v in kw.items() if k in ("api_key", "max_body_bytes", "preload",
                                                                    "reap_interval_s")})
    manager = ModelManager(store=Store(root), budget_bytes=kw.get("budget"),  # type: ignore[arg-type]
                           keep_alive_s=float(kw.get("keep_alive", 300)),  # type: ignore[arg-type]
                           batch=kw.get("batch") or BatchConfig())  # type: ignore[arg-type]
    return LiveServer(create_app(manager, settings))


@pytest.fixture(scope="module")
def server(store_root: Path) -> Iterator[LiveServer]:
    with _server(store_root, batch=BatchConfig(max_batch=32, max_delay_ms=5)) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(store_root: Path) -> gpux.Model:
    from gpux.tasks import for_model

    model = gpux.load(MINILM, store=Store(store_root))
    return for_model(model)  # type: ignore[return-value]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_openai_client_creates_embeddings(server: LiveServer, reference: object) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    texts = ["the cat sat on the mat", "gpux serves embeddings"]
    expected = reference.run_batch(texts)  # type: ignore[attr-defined]
    for fmt in ("float", None, "base64"):  # None: the client asks for base64 itself and decodes it
        kw = {"encoding_format": fmt} if fmt else {}
        res = client.embeddings.create(model=MINILM, input=texts, **kw)  # type: ignore[arg-type]
        assert [d.index for d in res.data] == [0, 1] and res.model == MINILM
        for d, e in zip(res.data, expected):
            vec = np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64" else np.array(d.embedding)
            assert len(vec) == 384 and _cos(vec, e) > 0.99999
        assert res.usage.prompt_tokens == res.usage.total_tokens > 4
    assert MINILM in [m.id for m in client.models.list().data]


def test_ollama_client_embed_tags_ps(server: LiveServer, reference: object) -> None:
    import ollama

    client = ollama.Client(host=server.url)
    res = client.embed(model=MINILM, input=["hello world", "second"])
    expected = reference.run_batch(["hello world", "second"])  # type: ignore[attr-defined]
    assert len(res.embeddings) == 2
    assert all(_cos(np.array(a), b) > 0.99999 for a, b in zip(res.embeddings, expected))
    assert res.total_duration and res.total_duration > 0 and res.prompt_eval_count
    assert f"{MINILM}:feature-extraction" in [m.model for m in client.list().models]
    assert f"{MINILM}:feature-extraction" in [m.model for m in client.ps().models]


def test_kserve_v2_typed_tensors(server: LiveServer) -> None:
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").status_code == 200
        meta = c.get("/v2/models/tiny-mlp").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert c.get("/v2/models/tiny-mlp/ready").json() == {"name": "tiny-mlp:latest", "ready": True}
        body = {"id": "r1", "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
        res = c.post("/v2/models/tiny-mlp/infer", json=body).json()
        assert res["id"] == "r1" and res["model_name"] == "tiny-mlp:latest"
        (out,) = res["outputs"]
        assert out["name"] == "y" and out["datatype"] == "FP32" and out["shape"] == [3, 3]
        np.testing.assert_allclose(np.array(out["data"]).reshape(3, 3), models.mlp_expected(x), rtol=1e-5, atol=1e-6)
        bad = c.post("/v2/models/tiny-mlp/infer", json={"inputs": [{**body["inputs"][0], "datatype": "INT64"}]})
        assert bad.status_code == 400 and "FP32" in bad.json()["error"]
        bad = c.post("/v2/models/tiny-mlp/infer", json={"inputs": [{**body["inputs"][0], "shape": [5, 4]}]})
        assert bad.status_code == 400 and "does not fit shape" in bad.json()["error"]


def test_native_routes(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").status_code == 200
        res = c.post(f"/predict/{MINILM}", json={"inputs": ["one", "two", "three"]}).json()
        assert len(res["embeddings"]) == 3 and res["providers"] == ["cpu"] and res["task"] == "feature-extraction"
        for key in ("total_duration", "load_duration", "queue_duration", "inference_duration"):
            assert isinstance(res[key], int) and res[key] >= 0
        raw = c.post("/predict/tiny-half", json={"inputs": {"x": [1.5, -2]}}).json()
        assert raw["outputs"] == {"y": [3.0, -4.0]}
        listed = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert listed["tiny-half:latest"]["loaded"] and listed["tiny-half:latest"]["memory_bytes"] > 0
        assert c.post("/models/unload", json={"model": "tiny-half"}).json() == {"name": "tiny-half:latest",
                                                                               "unloaded": True}
        assert not {m["name"]: m for m in c.get("/models").json()["models"]}["tiny-half:latest"]["loaded"]
        loaded = c.post("/models/load", json={"model": "tiny-half", "keep_alive": "10m"}).json()
        assert loaded["name"] == "tiny-half:latest" and loaded["load_duration"] > 0
        stats = c.get("/stats").json()["models"][f"{MINILM}:feature-extraction"]
        assert stats["requests"] >= 1 and stats["latency"]["p50_ms"] > 0 and stats["batch_size_histogram"]
        metrics = c.get("/metrics").text
        assert 'gpux_requests_total{model="tiny-half:latest",route="predict",status="200"}' in metrics


@pytest.mark.parametrize("method, path, body, status, words", [
    ("post", f"/predict/{MINILM}", b"{not json", 400, "not valid JSON"),
    ("post", f"/predict/{MINILM}", b"[1, 2]", 400, "JSON object"),
    ("post", f"/predict/{MINILM}", {"inputs": [1, 2]}, 400, "must be a string"),
    ("post", f"/predict/{MINILM}", {"text": "x"}, 400, '"inputs"'),
    ("post", "/predict/tiny-mlp", {"inputs": {"x": [[1, 2]]}}, 400, "dimension 1 to be 4"),
    ("post", "/predict/tiny-mlp", {"inputs": {"x": [["a", "b", "c", "d"]]}}, 400, "expects float32"),
    ("post", "/predict/no-such-model", {"inputs": "x"}, 404, "not in the store"),
    ("post", "/predict/..%2F..%2Fetc", {"inputs": "x"}, 400, "invalid model name"),
    ("post", "/v1/embeddings", {"model": "tiny-mlp", "input": "x"}, 400, "not an embedding model"),
    ("post", "/v1/embeddings", {"model": MINILM, "input": [[1, 2, 3]]}, 400, "token-id inputs"),
    ("post", "/api/embed", {"model": MINILM, "input": "x", "keep_alive": "soon"}, 400, "not a duration"),
    ("post", "/api/embed", {"model": MINILM, "input": "word " * 400, "truncate": False}, 400, "over the model"),
])
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server: LiveServer, method: str, path: str,
                                                                body: object, status: int, words: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        res = getattr(c, method)(path, **kw)
        assert res.status_code == status, res.text
        err = res.json()["error"]
        assert words in (err["message"] if isinstance(err, dict) else err)
        assert c.get("/health").status_code == 200


def test_hundred_concurrent_clients_all_correct_and_batched(server: LiveServer, reference: object) -> None:
    texts = [f"request number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(100)]
    expected = reference.run_batch(texts)  # type: ignore[attr-defined]

    async def one(client: httpx.AsyncClient, i: int) -> np.ndarray:
        res = await client.post("/api/embed", json={"model": MINILM, "input": texts[i]})
        assert res.status_code == 200, res.text
        return np.array(res.json()["embeddings"][0])

    async def main() -> list[np.ndarray]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(100))), 120)

    got = asyncio.run(main())
    assert all(_cos(g, e) > 0.99999 for g, e in zip(got, expected))
    hist = httpx.get(f"{server.url}/stats").json()["models"][f"{MINILM}:feature-extraction"]["batch_size_histogram"]
    assert max(int(k) for k in hist) > 1  # concurrent requests were merged into batches


def test_two_instances_run_batches_at_once_and_answer_correctly(store_root: Path, reference: object) -> None:
    texts = [f"instance test {i}: {'rain' if i % 3 else 'sun'} over the hills" for i in range(64)]
    expected = reference.run_batch(texts)  # type: ignore[attr-defined]
    with _server(store_root, batch=BatchConfig(max_batch=4, instances=2), preload=(MINILM,)) as srv:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=httpx.Limits(max_connections=64)) as ac:
                return await asyncio.wait_for(asyncio.gather(*(ac.post("/api/embed", json={"model": MINILM, "input": t})
                                                               for t in texts)), 120)

        got = [np.array(r.json()["embeddings"][0]) for r in asyncio.run(main())]
        assert all(_cos(g, e) > 0.99999 for g, e in zip(got, expected))
        view = httpx.get(f"{srv.url}/stats").json()["loaded"][0]
        from gpux.engine.options import cpu_count

        assert (view["instances"], view["batches_in_flight_peak"]) == (2, 2)
        assert view["threads"] == max(1, cpu_count() // 2)  # the cores are split between the instances


def test_eviction_under_a_small_budget_and_a_model_that_never_fits(store_root: Path) -> None:
    store = Store(store_root)
    small = max(store.size(store.manifest("tiny-mlp")), store.size(store.manifest("tiny-half")))
    with _server(store_root, budget=small * 3 // 2) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.post("/predict/tiny-mlp", json={"inputs": {"x": [[1, 2, 3, 4]]}}).status_code == 200
        assert c.post("/predict/tiny-half", json={"inputs": {"x": [1]}}).status_code == 200
        loaded = [m["name"] for m in c.get("/models").json()["models"] if m["loaded"]]
        assert loaded == ["tiny-half:latest"]  # tiny-mlp was idle and least recently used
        assert c.get("/stats").json()["models"]["tiny-mlp:latest"]["unloads"] == {"evicted": 1}
        res = c.post(f"/predict/{MINILM}", json={"inputs": "x"})
        assert res.status_code == 507 and "more than the whole memory budget" in res.json()["error"]
        assert c.post("/predict/tiny-mlp", json={"inputs": {"x": [[1, 2, 3, 4]]}}).status_code == 200


def test_keep_alive_expiry_and_single_flight_loading(store_root: Path) -> None:
    with _server(store_root, reap_interval_s=0.1) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
                rs = await asyncio.gather(*(ac.post("/predict/tiny-mlp", json={"inputs": {"x": [[0, 0, 0, 0]]},
                                                                              "keep_alive": "0.5s"})
                                            for _ in range(10)))
                return [r.status_code for r in rs]

        assert asyncio.run(burst()) == [200] * 10
        assert c.get("/stats").json()["models"]["tiny-mlp:latest"]["loads"] == 1  # ten requests, one load
        deadline = time.monotonic() + 10
        while any(m["loaded"] for m in c.get("/models").json()["models"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(m["loaded"] for m in c.get("/models").json()["models"])
        assert c.get("/stats").json()["models"]["tiny-mlp:latest"]["unloads"] == {"expired": 1}
        c.post("/predict/tiny-half", json={"inputs": {"x": [1]}, "keep_alive": 0})
        assert not any(m["loaded"] for m in c.get("/models").json()["models"])  # unloaded right after


def test_back_pressure_429_and_timeout_504(store_root: Path) -> None:
    with _server(store_root, batch=BatchConfig(max_batch=1, max_delay_ms=0, max_queue=2, timeout_s=30)) as srv:

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
                return await asyncio.gather(*(ac.post(f"/predict/{MINILM}", json={"inputs": ["text " * 50] * 8})
                                              for _ in range(40)))

        codes = [r.status_code for r in asyncio.run(flood())]
        assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) >= 2
        limited = next(r for r in asyncio.run(flood()) if r.status_code == 429)
        assert limited.headers["retry-after"] == "1" and "queue" in limited.json()["error"]
        assert httpx.get(f"{srv.url}/health").status_code == 200
    with _server(store_root, batch=BatchConfig(timeout_s=0.0001)) as srv:
        res = httpx.post(f"{srv.url}/predict/{MINILM}", json={"inputs": ["x"] * 64}, timeout=60)
        assert res.status_code == 504 and "timed out" in res.json()["error"]


def test_api_key_and_body_limit(store_root: Path) -> None:
    with _server(store_root, api_key="s3cret", max_body_bytes=2000) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/health").status_code == 200
        res = c.get("/models")
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/models", headers=auth).status_code == 200
        res = c.post(f"/predict/{MINILM}", json={"inputs": ["x" * 3000]}, headers=auth)
        assert res.status_code == 413 and "over the limit" in res.json()["error"]


def test_gpux_serve_command(store_root: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GPUX_HOME": str(store_root)}
    proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", "tiny-mlp", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        models_ = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"]
        assert [m["name"] for m in models_ if m["loaded"]] == ["tiny-mlp:latest"]  # preloaded
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = cli("serve", "no-such-model", "--port", str(port), env={"GPUX_HOME": str(store_root)})
    assert bad.returncode == 3 and "not in the store" in bad.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_serve_takes_host_port_batch_size_and_instances_from_gpux_yml(tmp_path: Path, model_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = build_with_serving(tmp_path, model_dir, "served", f"host: 127.0.0.1, port: {port}, batch_size: 4, instances: 2")
    proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", "served"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, ready = time.monotonic() + 60, False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready  # it bound the port gpux.yml names
        res = httpx.post(f"http://127.0.0.1:{port}/predict/served", json={"inputs": {"x": [[1, 2, 3, 4]]}})
        np.testing.assert_allclose(res.json()["outputs"]["y"], models.mlp_expected(np.array([[1, 2, 3, 4]])),
                                   rtol=1e-6)
        assert httpx.get(f"http://127.0.0.1:{port}/stats").json()["loaded"][0]["instances"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=20)
