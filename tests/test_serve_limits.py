"""One request must never take the server down: per-request caps, split batches, dropped dead work, safe unload.

Each test runs a real uvicorn server on 127.0.0.1 with real MiniLM (from the installed model package) or a tiny
ONNX model, and talks to it over HTTP. "Never ran" is checked with the server's own counters (/stats: items_run,
items_dropped), which count what the batcher handed to onnxruntime.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import gpux
import models
from conftest import gpux as cli
from gpux.serve.app import ServeSettings, create_app
from gpux.serve.batcher import BatchConfig
from gpux.serve.manager import ModelManager
from gpux.store import leases
from gpux.store.local import Store
from serve_helpers import LiveServer

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
NAME = f"{MINILM}:feature-extraction"
#: A text that fills MiniLM's 128 tokens: a batch of these is what keeps the worker busy in these tests.
LONG = " ".join(f"word{i} about the slow heavy batch" for i in range(40))
HEAVY = [f"{i} {LONG}" for i in range(64)]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits-home")
    env = {"GPUX_HOME": str(root)}
    assert cli("pull", MINILM, env=env).returncode == 0
    folder = tmp_path_factory.mktemp("limits-src") / "tiny-mlp"
    folder.mkdir()
    models.mlp(folder / "tiny-mlp.onnx")
    (folder / "gpux.yml").write_text("name: tiny-mlp\nmodel: {source: tiny-mlp.onnx}\n")
    assert cli("build", str(folder), env=env).returncode == 0
    return root


@pytest.fixture(scope="module")
def heavy_s(store_root: Path) -> float:
    """Seconds one batch of 64 long texts takes on this machine.

    The tests that need the worker busy run such a batch and set their timeouts to a fraction of this, so
    they hold on slow and fast machines alike (it is never asserted on).
    """
    srv, _ = _server(store_root, BatchConfig(max_batch=64), preload=(MINILM,))
    with srv:
        res = _embed(srv.url, HEAVY)
    took = float(res.json()["inference_duration"]) / 1e9
    if took < 0.5:
        pytest.skip(f"a batch of 64 long texts takes {took:.2f} s here: too quick to hold the worker busy")
    return took


@pytest.fixture(scope="module")
def reference(store_root: Path) -> Any:
    from gpux.tasks import for_model

    return for_model(gpux.load(MINILM, store=Store(store_root)))


def _server(root: Path, batch: BatchConfig, **kw: Any) -> tuple[LiveServer, ModelManager]:
    manager = ModelManager(store=Store(root), batch=batch, budget_bytes=kw.pop("budget", None))
    return LiveServer(create_app(manager, ServeSettings(**kw))), manager


def _stats(url: str, name: str = NAME) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/stats", timeout=30).json()["models"].get(name, {}))


def _loaded(url: str) -> dict[str, Any]:
    return {m["name"]: m for m in httpx.get(f"{url}/models", timeout=30).json()["models"] if m["loaded"]}


def _until(what: Callable[[], bool], seconds: float = 60) -> None:
    """Poll ``what`` until it holds (a bound on the wait, not a measurement)."""
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.02)


def _embed(url: str, texts: list[str], timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/api/embed", json={"model": MINILM, "input": texts}, timeout=timeout)


def _busy(url: str, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """Start a request of 64 long texts and return once its batch is running (taken off the queue)."""
    heavy = pool.submit(_embed, url, HEAVY)
    _until(lambda: any(m["active_requests"] >= 1 and m["queue_depth"] == 0 for m in _loaded(url).values())
           or heavy.done())
    return heavy


def _cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- item 2: caps per request, split batches, batch memory against the budget ------------------------


def test_request_over_the_item_cap_gets_413_naming_the_flag_and_runs_nothing(store_root: Path) -> None:
    srv, _ = _server(store_root, BatchConfig(max_items_per_request=2048))
    with srv:
        texts = [f"short {i}" for i in range(10_000)]
        res = _embed(srv.url, texts)
        assert res.status_code == 413, res.text
        assert "10000 items" in res.json()["error"] and "--max-items" in res.json()["hint"]
        res = httpx.post(f"{srv.url}/v1/embeddings", json={"model": MINILM, "input": texts}, timeout=60)
        assert res.status_code == 413 and "--max-items" in res.json()["error"]["message"]
        assert _stats(srv.url).get("items_run", 0) == 0  # refused before anything ran
        assert _embed(srv.url, ["still serving"]).status_code == 200


def test_request_over_the_token_cap_gets_413_and_stops_there(store_root: Path) -> None:
    srv, _ = _server(store_root, BatchConfig(max_batch=8, max_tokens_per_request=300))
    with srv:
        assert _embed(srv.url, ["a few tokens", "and a few more"]).status_code == 200
        res = _embed(srv.url, [f"text {i}: {LONG[:120]}" for i in range(40)])  # ~30 tokens each, ~1200 in all
        assert res.status_code == 413, res.text
        assert "300 tokens" in res.json()["error"] and "--max-tokens" in res.json()["hint"]
        stats = _stats(srv.url)
        assert stats["items_run"] < 2 + 40  # it stopped once past the cap: the rest never ran
        assert stats["items_dropped"]["too_large"] > 0
        assert _embed(srv.url, ["still serving"]).status_code == 200


def _peak_rss_during(fn: Callable[[], httpx.Response]) -> tuple[httpx.Response, int]:
    """Run ``fn`` while sampling this process's RSS (the server runs in it); return its result and the growth."""
    from gpux.serve.metrics import process_memory

    base, peak, done = process_memory()[0], [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process_memory()[0])
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        res = fn()
    finally:
        done.set()
        sampler.join()
    return res, peak[0] - base


def test_a_large_request_runs_in_max_batch_chunks_in_order_with_bounded_memory(store_root: Path,
                                                                               reference: Any) -> None:
    texts = [f"sentence number {i} is about {'cats' if i % 2 else 'dogs'} and the weather" for i in range(3000)]
    srv, _ = _server(store_root, BatchConfig(max_batch=16, max_items_per_request=5000), preload=(MINILM,))
    with srv:
        assert _embed(srv.url, texts[:16]).status_code == 200  # warm: the session's arena holds one batch
        res, grew = _peak_rss_during(lambda: _embed(srv.url, texts, timeout=300))
        assert res.status_code == 200, res.text
        got = res.json()["embeddings"]
        assert len(got) == 3000
        picks = [0, 1, 15, 16, 1777, 2999]  # chunk edges and the end: results come back in order
        for i, e in zip(picks, reference.run_batch([texts[i] for i in picks])):
            assert _cos(got[i], e) > 0.99999
        stats = _stats(srv.url)
        assert max(int(k) for k in stats["batch_size_histogram"]) <= 16
        assert stats["items_run"] == 16 + 3000
        # As one 3000-item call RSS grew by ~1 GB here; in chunks of 16 by ~36 MB (mostly the response).
        assert grew < 200e6, f"RSS grew by {grew / 1e6:.0f} MB"


def test_batch_memory_counts_against_the_budget(store_root: Path) -> None:
    srv, manager = _server(store_root, BatchConfig(max_batch=64))
    with srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        files = Store(store_root).size(Store(store_root).manifest(NAME))
        before = c.post("/models/load", json={"model": MINILM}).json()["memory_bytes"]
        assert c.post("/models/load", json={"model": "tiny-mlp"}).status_code == 200
        used = c.get("/models").json()["memory_used_bytes"]
        manager.budget = used + 2_000_000  # both fit, with 2 MB to spare: a batch of long texts needs more
        assert _embed(srv.url, HEAVY).status_code == 200
        after = _loaded(srv.url)[NAME]["memory_bytes"]
        assert after > before + 2_000_000  # the batch's growth is charged to the model
        # ... so the idle model that no longer fits beside it is evicted
        _until(lambda: _stats(srv.url, "tiny-mlp:latest").get("unloads") == {"evicted": 1}, 30)
        manager.budget = None
        assert c.post("/models/unload", json={"model": MINILM}).json()["unloaded"] is True
        again = c.post("/models/load", json={"model": MINILM}).json()["memory_bytes"]
        assert again >= files + (after - before)  # remembered: the next load is charged for it up front


# -- item 3: work nobody waits for never runs ---------------------------------------------------------


def test_timed_out_requests_are_dropped_before_they_run_and_fresh_ones_are_served(store_root: Path,
                                                                                 heavy_s: float) -> None:
    srv, _ = _server(store_root, BatchConfig(max_batch=64, timeout_s=min(0.5, heavy_s / 4)), preload=(MINILM,))
    with srv, ThreadPoolExecutor(8) as pool:
        heavy = _busy(srv.url, pool)
        waiting = [pool.submit(_embed, srv.url, [f"queued {i}"]) for i in range(5)]
        codes = [f.result().status_code for f in waiting]
        assert codes == [504] * 5, codes  # they waited behind the running batch past the timeout
        heavy.result()
        _until(lambda: _stats(srv.url).get("items_run", 0) >= 64)
        fresh = _embed(srv.url, ["a fresh request"])
        assert fresh.status_code == 200, fresh.text  # the dead ones did not stand in its way
        stats = _stats(srv.url)
        assert stats["items_run"] == 64 + 1  # the five timed-out requests never ran
        assert stats["items_dropped"] == {"timeout": 5}
        assert _loaded(srv.url)[NAME]["queue_depth"] == 0


def test_a_disconnected_clients_request_is_dropped_before_it_runs(store_root: Path, heavy_s: float) -> None:
    srv, _ = _server(store_root, BatchConfig(max_batch=64, timeout_s=60), preload=(MINILM,))
    with srv, ThreadPoolExecutor(4) as pool:
        heavy = _busy(srv.url, pool)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            _embed(srv.url, ["nobody will read this"], timeout=min(0.3, heavy_s / 4))
        _until(lambda: _stats(srv.url).get("items_dropped") == {"cancelled": 1})
        assert _loaded(srv.url)[NAME]["queue_depth"] == 0  # gone from the queue at once
        assert heavy.result().status_code == 200
        assert _embed(srv.url, ["a fresh request"]).status_code == 200  # queued behind it, had it stayed
        assert _stats(srv.url)["items_run"] == 64 + 1
        assert 'status="499"' in httpx.get(f"{srv.url}/metrics").text


# -- item 4: unload while a batch runs ------------------------------------------------------------------


def test_unload_lets_the_running_batch_answer_and_fails_queued_requests_with_503(store_root: Path, heavy_s: float,
                                                                                 reference: Any) -> None:
    srv, _ = _server(store_root, BatchConfig(max_batch=64, timeout_s=20), preload=(MINILM,))
    with srv, ThreadPoolExecutor(4) as pool:
        heavy = _busy(srv.url, pool)
        queued = pool.submit(_embed, srv.url, ["queued behind the running batch"])
        _until(lambda: _loaded(srv.url)[NAME]["queue_depth"] == 1 or queued.done())
        unload = pool.submit(httpx.post, f"{srv.url}/models/unload", json={"model": MINILM}, timeout=60)
        res = queued.result()
        assert res.status_code == 503, res.text  # at once, not at its timeout, and not a 500
        assert "unloaded" in res.json()["error"] and "send the request again" in res.json()["hint"]
        _until(lambda: NAME not in _loaded(srv.url) or heavy.done())
        assert NAME not in _loaded(srv.url)  # atomic: no longer listed, so no new work reaches it
        answered = heavy.result()
        assert answered.status_code == 200, answered.text  # the running batch finished and answered
        got = answered.json()["embeddings"]
        assert _cos(got[5], reference.run_batch([HEAVY[5]])[0]) > 0.99999
        assert unload.result().json() == {"name": NAME, "unloaded": True}
        assert _embed(srv.url, ["after the unload"]).status_code == 200  # loads it again
        stats = _stats(srv.url)
        assert stats["loads"] == 2 and stats["unloads"] == {"unloaded": 1}
        assert stats["items_dropped"] == {"unloaded": 1}


def test_a_request_during_an_unload_waits_for_it_and_reloads(store_root: Path, heavy_s: float) -> None:
    srv, _ = _server(store_root, BatchConfig(max_batch=64, timeout_s=20), preload=(MINILM,))

    async def active() -> int:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
            listed = {m["name"]: m for m in (await ac.get("/models")).json()["models"]}
        return int(listed[NAME].get("active_requests") or 0)

    async def unload_then_request() -> tuple[bool, int]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
            heavy = asyncio.ensure_future(ac.post("/api/embed", json={"model": MINILM, "input": HEAVY}))
            while not await active():
                await asyncio.sleep(0.02)
            unload = asyncio.ensure_future(ac.post("/models/unload", json={"model": MINILM}))
            while any(m["loaded"] and m["name"] == NAME for m in (await ac.get("/models")).json()["models"]):
                await asyncio.sleep(0.01)
            late = await ac.post("/api/embed", json={"model": MINILM, "input": "arrived during the unload"})
            assert (await heavy).status_code == 200
            return bool((await unload).json()["unloaded"]), late.status_code

    with srv:
        assert asyncio.run(unload_then_request()) == (True, 200)
        assert _stats(srv.url)["loads"] == 2  # the late request loaded a fresh copy after the old one was gone


# -- leases ---------------------------------------------------------------------------------------------


def test_leases_follow_the_loaded_models_and_go_with_the_server(store_root: Path) -> None:
    srv, _ = _server(store_root, BatchConfig())
    mine = lambda: [lease["models"] for lease in leases.active(store_root)  # noqa: E731
                    if lease["pid"] == os.getpid()]
    with srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.post("/predict/tiny-mlp", json={"inputs": {"x": [[1, 2, 3, 4]]}}).status_code == 200
        assert mine() == [["tiny-mlp:latest"]]
        assert leases.holders(store_root, "tiny-mlp")
        assert c.post("/models/unload", json={"model": "tiny-mlp"}).json()["unloaded"] is True
        assert mine() == [[]]
    assert mine() == []  # a clean stop removes the lease
