"""``gpux serve --ray`` (issue 15): the same API on Ray Serve replicas, on a two-node Ray cluster on 127.0.0.1.

A real local Ray cluster of two nodes (``ray.cluster_utils.Cluster``: two raylets on this machine, one
CPU each, so the two replicas land one per node), ``gpux serve --ray --address ...`` as a subprocess (the
driver, as a user runs it), and the plain server (gpux's app in uvicorn) on the same store, driven by the
real ``openai`` client and httpx. Models: all-MiniLM-L6-v2 (preloaded in every replica) and the real
SmolLM2 (the session's GGUF conversion, hard-linked into this module's store, loaded on first request).

Skipped only when ray is not importable (``make test`` installs the ``ray`` extra).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import gpux as cli

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
REPLICA = "x-gpux-replica"


# -- no cluster needed ------------------------------------------------------------------------------------

def test_proxy_finds_the_model_in_paths_and_bodies() -> None:
    from gpux.serve.ray.proxy import model_of_body, model_of_path

    assert model_of_path("/predict/" + MINILM) == MINILM
    assert model_of_path("/v2/models/tiny-mlp/infer") == "tiny-mlp"
    assert model_of_path("/v2/models/a%2Fb/ready") == "a/b"
    assert model_of_path("/v2/models/m:v1") == "m:v1"
    assert model_of_path("/v1/embeddings") is None and model_of_path("/v2/health/ready") is None
    assert model_of_body(b'{"input": "x", "model": "m:t"}', True) == "m:t"
    assert model_of_body(b'{"name": "smol"}', True) == "smol"  # Ollama's /api/show
    assert model_of_body(b'{"models": ["a", "b"]}', True) is None  # /ensemble: no one model
    assert model_of_body(b'{"model": 3}', True) is None and model_of_body(b"not json", True) is None
    assert model_of_body(b'{"model": "big", "input": ["' + b"x" * 70000, False) == "big"  # a prefix only
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-tiny\r\n--b--\r\n'
    assert model_of_body(form, True) == "whisper-tiny"


def test_replica_counts_come_from_flags_then_gpux_yml() -> None:
    from gpux.errors import UsageError
    from gpux.serve.ray.launch import scaling

    assert scaling(None, None, {}, 32) == {"max_ongoing_requests": 64, "num_replicas": 1}
    assert scaling(3, None, {"min_replicas": 1, "max_replicas": 8}, 32)["num_replicas"] == 3
    auto = scaling(None, "0:4", {"target_ongoing_requests": 8}, 32)
    assert auto == {"max_ongoing_requests": 16, "autoscaling_config": {
        "min_replicas": 0, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 8.0}}
    yml = scaling(None, None, {"min_replicas": 2, "max_replicas": 5}, 16)["autoscaling_config"]
    assert (yml["min_replicas"], yml["max_replicas"], yml["target_ongoing_requests"]) == (2, 5, 16.0)
    for bad in ("4:2", "x", "1:0"):
        with pytest.raises(UsageError, match="--autoscale"):
            scaling(None, bad, {}, 32)
    with pytest.raises(UsageError, match="both"):
        scaling(2, "1:3", {}, 32)


def test_gpux_yml_serving_keys_are_stored_and_checked(tmp_path: Path, model_dir: Path) -> None:
    from gpux.store.local import Store
    from serve_helpers import build_with_serving

    env = build_with_serving(tmp_path, model_dir, "scaled",
                             "batch_size: 8, min_replicas: 1, max_replicas: 3, target_ongoing_requests: 12")
    serving = Store(env["GPUX_HOME"]).manifest("scaled").serving
    assert (serving["min_replicas"], serving["max_replicas"], serving["target_ongoing_requests"]) == (1, 3, 12.0)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(model_dir / "mlp.onnx", bad / "mlp.onnx")
    (bad / "gpux.yml").write_text("name: bad\nmodel: {source: mlp.onnx}\nserving: {min_replicas: 4, max_replicas: 2}\n")
    res = cli("build", str(bad), env=env)
    assert res.returncode == 2 and "min_replicas (4) is above max_replicas (2)" in res.stderr, res.stderr


def test_kuberay_application_builder(tmp_path: Path) -> None:
    """``import_path: gpux.serve.ray.deployment:application`` (docs/scale.md's RayService) builds the app."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray.serve import Application

    from gpux.serve.ray.deployment import application

    built = application({"models": f"{MINILM}, other", "store": str(tmp_path), "max_batch_size": 8, "threads": 2})
    assert isinstance(built, Application)


def test_cli_errors_say_what_to_do(tmp_path: Path) -> None:
    res = cli("serve", "--replicas", "2")
    assert res.returncode == 2 and "--ray" in res.stderr
    shim = tmp_path / "no-ray"
    shim.mkdir()
    (shim / "ray.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    res = cli("serve", "--ray", env={"PYTHONPATH": str(shim)})
    assert res.returncode == 2 and "pip install 'gpux[ray]'" in res.stderr, res.stderr
    if importlib.util.find_spec("ray") is not None:  # nothing listens there: one line, not Ray's endless retries
        res = cli("serve", "--ray", "--address", f"127.0.0.1:{_port()}")
        assert res.returncode == 2 and "cannot reach the Ray cluster" in res.stderr, res.stderr
    code = ("import sys\nfrom gpux.cli.app import app\ntry:\n    app(['serve', '--help'], prog_name='gpux')\n"
            "except SystemExit:\n    pass\nprint('RAY', 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--autoscale" in out and "RAY False" in out


# -- a two-node cluster -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's bundle (hard links: no second conversion, no copy) and MiniLM in one store.

    The session's SmolLM2 is asked for here, not as an argument, so that without ray (``cluster`` skips
    first) nothing is converted for tests that will not run.
    """
    smol: tuple[str, Path] = request.getfixturevalue("smollm2_ref")
    root = tmp_path_factory.mktemp("ray-home")
    shutil.copytree(smol[1], root, copy_function=os.link, dirs_exist_ok=True)
    res = cli("pull", MINILM, env={"GPUX_HOME": str(root)})
    assert res.returncode == 0, res.stderr
    return root


@pytest.fixture(scope="module")
def smol(store: Path, request: pytest.FixtureRequest) -> str:
    """The name of SmolLM2 in :func:`store`."""
    return str(request.getfixturevalue("smollm2_ref")[0])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two Ray nodes on this machine, one CPU each; yields the head's address for ``--address``."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'gpux[ray]')")
    from ray.cluster_utils import Cluster

    from gpux.serve.ray.proxy import NODE_ENV

    saved = {k: os.environ.get(k) for k in NODE_ENV}
    os.environ.update(NODE_ENV)  # as docs/scale.md says to export before `ray start`: model routing in the proxies
    node = {"num_cpus": 1, "object_store_memory": 80 << 20}
    began = time.perf_counter()
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    c.wait_for_nodes()
    print(f"\ntwo-node Ray cluster up in {time.perf_counter() - began:.1f} s")
    try:
        yield c.address
    finally:
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_url(cluster: str, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``gpux serve --ray --address <cluster> --replicas 2 MiniLM``: its URL once /ready answers."""
    port = _port()
    log = tmp_path_factory.mktemp("ray-log") / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", MINILM, "--ray", "--address", cluster,
                                 "--replicas", "2", "--port", str(port)],
                                env={**os.environ, "GPUX_HOME": str(store)}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    began = time.perf_counter()
    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:  # the banner comes once serve.run returns, a moment after the replicas answer
                if "listening on" in log.read_text() and httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        print(f"\ngpux serve --ray (2 replicas, MiniLM preloaded) ready in {time.perf_counter() - began:.1f} s")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def plain_url(store: Path) -> Iterator[str]:
    from gpux.serve.app import create_app
    from gpux.serve.manager import ModelManager
    from gpux.store.local import Store
    from serve_helpers import LiveServer

    with LiveServer(create_app(ModelManager(store=Store(store)))) as server:
        yield server.url


def _openai(url: str, retries: int = 0, seen: list[int] | None = None) -> Any:
    """The real OpenAI client; ``seen`` collects the status of every HTTP answer, retried ones included."""
    import openai

    hooks = {"response": [lambda r: seen.append(r.status_code)]} if seen is not None else {}
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=retries, timeout=120,
                         http_client=httpx.Client(event_hooks=hooks, timeout=120))


def test_same_embeddings_and_streamed_greedy_chat(ray_url: str, plain_url: str, smol: str) -> None:
    texts = ["gpux runs models anywhere", "Ray Serve adds replicas"]
    want, got = (np.array([d.embedding for d in _openai(u).embeddings.create(model=MINILM, input=texts).data])
                 for u in (plain_url, ray_url))
    assert want.shape == (2, 384) and np.allclose(got, want, atol=1e-5)

    def stream(url: str) -> tuple[str, str | None]:
        chunks = list(_openai(url).chat.completions.create(model=smol, messages=CHAT, temperature=0,
                                                           max_tokens=16, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, next(c.choices[0].finish_reason for c in reversed(chunks) if c.choices)
    plain = stream(plain_url)
    assert plain[0] and stream(ray_url) == plain


def test_unknown_model_and_bad_input_get_the_plain_servers_4xx(ray_url: str, plain_url: str) -> None:
    cases: list[tuple[str, Any]] = [
        ("/v1/embeddings", {"model": "no-such-model", "input": "x"}),
        ("/api/embed", {"model": "no-such-model", "input": "x"}),
        ("/predict/no-such-model", {"inputs": "x"}),
        ("/v1/embeddings", {"model": MINILM, "input": 5}),
        ("/api/embed", {"model": MINILM}),
        ("/v1/embeddings", b"{not json"),
        ("/v2/models/" + MINILM + "/infer", {"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}),
    ]
    for path, body in cases:
        answers = [httpx.post(u + path, timeout=60, **({"content": body} if isinstance(body, bytes) else {"json": body}))
                   for u in (plain_url, ray_url)]
        assert 400 <= answers[0].status_code < 500, (path, answers[0].text)
        assert answers[1].status_code == answers[0].status_code and answers[1].json() == answers[0].json(), path
    missing = [httpx.get(u + "/no/such/route", timeout=30) for u in (plain_url, ray_url)]
    assert missing[1].status_code == missing[0].status_code == 404 and missing[1].json() == missing[0].json()


def _replicas(url: str, n: int, clients: int = 8, model: str = MINILM) -> list[str]:
    def one(i: int) -> str:
        r = httpx.post(url + "/api/embed", json={"model": model, "input": f"sentence {i}"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers[REPLICA]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n)))


def test_both_replicas_take_traffic(ray_url: str) -> None:
    seen = _replicas(ray_url, 48)
    assert len(set(seen)) == 2, seen
    assert min(seen.count(r) for r in set(seen)) >= 4, seen  # both preloaded and advertised MiniLM


def test_requests_for_a_model_go_to_the_replica_that_has_it(ray_url: str, smol: str) -> None:
    """SmolLM2 is on one replica only (the chat test loaded it there): Ray's multiplexed routing keeps it there.

    Routed at random, eight requests in a row would all land on one of two replicas 1 time in 128.
    """
    body = {"model": smol, "messages": CHAT, "max_tokens": 1, "temperature": 0}
    first = httpx.post(ray_url + "/v1/chat/completions", json=body, timeout=120)
    assert first.status_code == 200, first.text
    time.sleep(1.5)  # the replica's model list reaches the proxy's router
    seen = {httpx.post(ray_url + "/v1/chat/completions", json=body, timeout=120).headers[REPLICA] for _ in range(8)}
    assert seen == {first.headers[REPLICA]}


def _replica_pids() -> list[int]:
    """The gpux replicas' worker processes (Ray titles them ``ray::ServeReplica:gpux:gpux``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ServeReplica:gpux:gpux" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_killed_replica_loses_no_retried_request_and_comes_back(ray_url: str) -> None:
    before = set(_replicas(ray_url, 24))
    pids = _replica_pids()
    assert len(pids) == 2, pids
    statuses: list[int] = []
    client = _openai(ray_url, retries=5, seen=statuses)  # the SDK's own retry (5xx, connection errors): scale.md

    def one(i: int) -> int:
        return len(client.embeddings.create(model=MINILM, input=f"request {i}").data[0].embedding)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        work = [pool.submit(one, i) for i in range(120)]
        while sum(f.done() for f in work) < 20:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # mid-load
        assert [f.result(timeout=180) for f in work] == [384] * 120  # every request answered
    killed_at = time.monotonic()
    print(f"\nreplica killed: answers {sorted(set(statuses))}, {sum(s != 200 for s in statuses)} retried")
    deadline = time.monotonic() + 120
    while True:  # Ray starts a new replica; it serves traffic again
        after = set(_replicas(ray_url, 24))
        if len(after) == 2 and after - before:
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(2)
    assert len(_replica_pids()) == 2
    print(f"both replicas answering again {time.monotonic() - killed_at:.1f} s after the load ended")
