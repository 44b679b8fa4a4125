"""The HTTP layer under hostile or careless clients (issue 9): one request must never take the server down.

Real servers on 127.0.0.1 (uvicorn in a thread with gpux's connection guards, or `gpux serve` as a
subprocess where a crash or the process's own output is what is tested), real models (all-MiniLM-L6-v2,
silero-vad, tiny ONNX graphs), real clients (httpx, and raw sockets where a client must misbehave).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import models
from conftest import gpux as cli
from gpux.serve.app import ServeSettings, create_app
from gpux.serve.batcher import BatchConfig
from gpux.serve.manager import ModelManager
from gpux.serve.protocol import server_config
from gpux.store.local import Store
from serve_helpers import LiveServer, build_raw_models, build_with_serving

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parents[1]


class GuardedServer(LiveServer):
    """LiveServer with the uvicorn config `gpux serve` uses (header deadline, connection cap)."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        super().__init__(app)
        self.server = uvicorn.Server(server_config(app, settings, lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory, silero: Path) -> Path:
    """MiniLM pulled, silero-vad built from examples/, two tiny raw models built."""
    root = tmp_path_factory.mktemp("http-home")
    env = {"GPUX_HOME": str(root)}
    assert cli("pull", MINILM, env=env).returncode == 0
    assert cli("build", str(REPO / "examples" / "silero-vad"), env=env).returncode == 0
    build_raw_models(root, tmp_path_factory.mktemp("http-src"),
                     (("tiny-mlp", models.mlp), ("tiny-half", models.half), ("tiny-lookup", _lookup)))
    return root


def _lookup(path: Path) -> Path:
    """y = table[ids]: a 4-row embedding table; an id past it is refused by onnxruntime, not the signature."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "table")])
    model = helper.make_model(graph, opset_imports=models.OPSET)
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def _server(root: Path, batch: BatchConfig | None = None, **settings: Any) -> GuardedServer:
    cfg = ServeSettings(**settings)
    manager = ModelManager(store=Store(root), batch=batch or BatchConfig())
    return GuardedServer(create_app(manager, cfg), cfg)


@pytest.fixture(scope="module")
def server(store_root: Path) -> Iterator[GuardedServer]:
    with _server(store_root) as srv:
        yield srv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"gpux serve did not become ready (exit code {proc.poll()})")


@pytest.fixture(scope="module")
def served(store_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """`gpux serve silero-vad tiny-mlp` as a process: an abort in onnxruntime would kill it, not pytest."""
    port = _free_port()
    log = tmp_path_factory.mktemp("served") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", "silero-vad", "tiny-mlp", "--port", str(port)],
                                env={**os.environ, "GPUX_HOME": str(store_root)}, stdout=subprocess.DEVNULL,
                                stderr=err, text=True)
    try:
        _wait_ready(port, proc)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _tensor(name: str, shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _silero(input_shape: list[int], state_shape: list[int]) -> dict[str, Any]:
    def zeros(shape: list[int]) -> list[float]:
        n = 1
        for d in shape:
            n *= d
        return [0.0] * n
    return {"inputs": [_tensor("input", input_shape, "FP32", zeros(input_shape)),
                       _tensor("state", state_shape, "FP32", zeros(state_shape)),
                       _tensor("sr", [], "INT64", [16000])]}


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a raw socket (status, headers, body); b'' body if the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has answered (408/431) and closed, or just closed; False if it holds on."""
    try:
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True
            data += chunk
    except (socket.timeout, TimeoutError):
        return False
    except OSError:  # reset by the server
        return True


def _count_closed(socks: list[socket.socket], want: int, within_s: float) -> int:
    """How many of ``socks`` the server closed, waiting on all at once (select) until ``want`` or ``within_s``."""
    import select

    closed: set[socket.socket] = set()
    deadline = time.monotonic() + within_s
    while len(closed) < want and time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.5)
        for s in readable:
            s.settimeout(1.0)
            if _closed_by_server(s):
                closed.add(s)
    return len(closed)


# -- 1. zero-size dimensions -------------------------------------------------------------------

def test_zero_size_dimensions_are_400_and_the_server_keeps_serving(served: tuple[int, Path]) -> None:
    port, _ = served
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for input_shape, state_shape in (([0, 512], [2, 1, 128]), ([1, 512], [2, 0, 128])):
            res = c.post("/v2/models/silero-vad/infer", json=_silero(input_shape, state_shape))
            assert res.status_code == 400, res.text
            assert "zero-size" in res.json()["error"]
            assert c.get("/health").status_code == 200  # onnxruntime never saw it: the process lives
        res = c.post("/predict/tiny-half", json={"inputs": {"x": []}})
        assert res.status_code == 400 and "zero-size" in res.json()["error"]
        ok = c.post("/v2/models/silero-vad/infer", json=_silero([1, 512], [2, 1, 128]))
        assert ok.status_code == 200, ok.text
        shapes = {o["name"]: o["shape"] for o in ok.json()["outputs"]}
        assert shapes == {"output": [1, 1], "stateN": [2, 1, 128]}


# -- 8. KServe v2: malformed input and model-side refusals are 400 -----------------------------

_IDS = [101, 7592, 102]


def _minilm(ids: list[int], types: list[int] | None = None, datatype: str = "INT64") -> dict[str, Any]:
    n = len(ids)
    return {"inputs": [_tensor("input_ids", [1, n], datatype, ids), _tensor("attention_mask", [1, n], "INT64", [1] * n),
                       _tensor("token_type_ids", [1, n], "INT64", types or [0] * n)]}


_MLP = "/v2/models/tiny-mlp/infer"
_LM = f"/v2/models/{MINILM}/infer"


@pytest.mark.parametrize("path, body, words", [
    (_MLP, {"inputs": [1]}, "must be a non-empty list"),
    (_MLP, {"inputs": ["x"]}, "must be a non-empty list"),
    (_MLP, {"inputs": [None]}, "must be a non-empty list"),
    (_MLP, {"inputs": [_tensor({}, [1, 4], "FP32", [0, 0, 0, 0])]}, "unknown input"),  # type: ignore[arg-type]
    (_MLP, {"inputs": [_tensor("x", [1, 4], "FP32", [0, 0, 0, 0])], "outputs": "abc"}, '"outputs"'),
    (_MLP, {"inputs": [_tensor("x", [1, 4], "FP32", [0, 0, 0, 0])], "outputs": [{"name": "z"}]}, "unknown output"),
    (_MLP, {"inputs": [_tensor("x", "14", "FP32", [0, 0, 0, 0])]}, "shape must be"),  # type: ignore[arg-type]
    (_MLP, {"inputs": [_tensor("x", [1, 4], "FP32", "abcd")]}, "data must be a list"),  # type: ignore[arg-type]
    (_MLP, {"inputs": [_tensor("x", [1, 4], "FP32", [1, None, 3, 4])]}, "null"),
    (_MLP, {"inputs": [_tensor("x", [1, 4], "FP32", [1e39, 0, 0, 0])]}, "range"),
    (_MLP, {"inputs": [_tensor("x", [2, 4], "FP32", [[0, 0], [0]])]}, "ragged"),
    (_MLP, {"inputs": [_tensor("x", [1, 4], "FP32", [0, 0, 0, 0])], "id": {"a": 1}}, '"id"'),
    (_LM, {"inputs": [_tensor("input_ids", [1, 3], "INT64", [1e300, 1, 2]), *_minilm(_IDS)["inputs"][1:]]},
     "range"),
    (_LM, _minilm(_IDS, [0, 7, 0]), "could not run on these inputs"),  # token_type_ids past the table
    (_LM, _minilm([101] + [7592] * 598 + [102]), "could not run on these inputs"),  # 600 > 512 positions
])
def test_kserve_bad_input_is_400_with_a_json_error(server: GuardedServer, path: str, body: dict[str, Any],
                                                   words: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        res = c.post(path, json=body)
        assert res.status_code == 400, res.text
        assert words in res.json()["error"], res.json()
        assert c.get("/health").status_code == 200


def test_onnxruntime_refusing_a_clients_tensor_is_400_on_predict_and_v2(server: GuardedServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.post("/predict/tiny-lookup", json={"inputs": {"ids": [3, 0]}}).json()["outputs"] == {
            "y": [[6.0, 7.0], [0.0, 1.0]]}
        native = c.post("/predict/tiny-lookup", json={"inputs": {"ids": [9]}})
        v2 = c.post("/v2/models/tiny-lookup/infer", json={"inputs": [_tensor("ids", [1], "INT64", [9])]})
        for res in (native, v2):
            assert res.status_code == 400 and "could not run on these inputs" in res.json()["error"], res.text
        assert c.get("/health").status_code == 200


def test_fp32_overflow_is_refused_the_same_way_on_every_route(server: GuardedServer) -> None:
    """One numeric rule: 1e39 does not fit float32 on /predict, on KServe v2 and in `gpux run`."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        native = c.post("/predict/tiny-mlp", json={"inputs": {"x": [[1e39, 0, 0, 0]]}})
        v2 = c.post(_MLP, json={"inputs": [_tensor("x", [1, 4], "FP32", [1e39, 0, 0, 0])]})
    assert native.status_code == v2.status_code == 400
    assert native.json()["error"] == v2.json()["error"]


# -- 9. keep_alive is bounded ------------------------------------------------------------------

def test_huge_keep_alive_is_400_and_api_ps_keeps_answering(server: GuardedServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for value in ("99999999999999999999999h", 10**30, "9" * 400):
            res = c.post("/api/embed", json={"model": MINILM, "input": "x", "keep_alive": value})
            assert res.status_code == 400 and "keep_alive" in res.json()["error"], res.text
        assert c.post("/api/embed", json={"model": MINILM, "input": "x", "keep_alive": -1}).status_code == 200
        ps = c.get("/api/ps")
        assert ps.status_code == 200 and ps.json()["models"], ps.text
        assert c.get("/models").status_code == 200


# -- 6. no tokenizing on the event loop ---------------------------------------------------------

def test_truncate_false_length_check_leaves_the_event_loop_free(server: GuardedServer) -> None:
    text = "lorem ipsum dolor sit amet " * 150_000  # ~4 MB: seconds of tokenizing
    body = json.dumps({"model": MINILM, "input": text, "truncate": False}).encode()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.post("/api/embed", json={"model": MINILM, "input": "warm up"}).status_code == 200
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
        sock.sendall(_post_head("/api/embed", len(body)) + body)
        time.sleep(0.5)  # the body is in; the server is tokenizing it now
        answered: list[int] = []
        result: list[tuple[int, dict[str, str], bytes]] = []
        reader = threading.Thread(target=lambda: result.append(_read_response(sock)))
        reader.start()
        while reader.is_alive() and len(answered) < 5:
            answered.append(c.get("/health").status_code)
        reader.join(120)
        sock.close()
    status, _, payload = result[0]
    assert status == 400 and "over the model" in json.loads(payload)["error"]
    assert answered == [200] * 5  # five /health answers while the long text was still being tokenized


# -- 7. overload is shed before bodies are read ------------------------------------------------

def test_at_capacity_a_post_gets_429_before_its_body_is_read(store_root: Path) -> None:
    with _server(store_root, max_in_flight=2) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        good = json.dumps({"model": "tiny-mlp", "inputs": {"x": [[1, 2, 3, 4]]}}).encode()
        holders = []
        for _ in range(2):  # two requests inside the app, waiting for the rest of their bodies
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            s.sendall(_post_head("/predict/tiny-mlp", len(good)) + good[:10])
            holders.append(s)
        time.sleep(0.3)
        third = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        third.sendall(_post_head("/predict/tiny-mlp", len(good)))  # headers only: no body ever sent
        status, headers, payload = _read_response(third)
        assert status == 429 and headers["retry-after"] == "1"
        assert "capacity" in json.loads(payload)["error"]
        assert c.get("/health").status_code == 200 and c.get("/models").status_code == 200  # GETs still answer
        waiter = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        waiter.sendall(_post_head("/predict/tiny-mlp", len(good)) + good)  # waits (up to 1 s) for a slot ...
        holders[0].sendall(good[10:])  # ... which this one hands over as it finishes
        assert _read_response(holders[0])[0] == 200
        assert _read_response(waiter)[0] == 200
        holders[1].sendall(good[10:])
        assert _read_response(holders[1])[0] == 200
        for s in (*holders, third, waiter):
            s.close()
        assert c.post("/predict/tiny-mlp", content=good).status_code == 200  # slots were given back


def test_a_flood_is_shed_with_429s_and_every_client_that_retries_is_served(store_root: Path) -> None:
    batch = BatchConfig(max_batch=4, max_queue=4)
    with _server(store_root, batch=batch, max_in_flight=8, preload=(MINILM,)) as srv:
        refused: list[httpx.Response] = []

        async def client(ac: httpx.AsyncClient, i: int) -> int:
            for _ in range(400):
                res = await ac.post("/api/embed", json={"model": MINILM, "input": f"text {i}"})
                if res.status_code != 429:
                    return res.status_code
                refused.append(res)
                await asyncio.sleep(0.05)  # Retry-After says 1 s; shorter keeps the test quick
            return 429

        async def flood() -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=httpx.Limits(max_connections=120)) as ac:
                return await asyncio.gather(*(client(ac, i) for i in range(120)))

        assert asyncio.run(flood()) == [200] * 120  # nothing but answers and 429s, and everyone got through
        assert refused and all(r.headers["retry-after"] == "1" and r.json()["error"] for r in refused)
        assert httpx.get(f"{srv.url}/health").status_code == 200


# -- 5. slowloris: header deadline, connection cap, body deadline ------------------------------

def test_connections_that_never_finish_their_headers_are_closed(store_root: Path) -> None:
    with _server(store_root, header_timeout_s=1.0) as srv:
        socks = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
            if i % 10:  # most trickle a head that never ends; some send nothing at all
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(s)
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
        closed = sum(_closed_by_server(s) for s in socks)
        for s in socks:
            s.close()
        assert closed == 200
        late = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
        late.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        status, headers, payload = _read_response(late)
        assert status == 408 and headers["connection"] == "close" and "did not arrive" in payload.decode()
        late.close()
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200


def test_past_the_connection_cap_slow_connections_make_room(store_root: Path) -> None:
    with _server(store_root, header_timeout_s=60.0, max_connections=50) as srv:
        socks = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
            s.sendall(b"GET /health HTTP/1.1\r\n")
            socks.append(s)
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200  # a real client still gets in
        closed = _count_closed(socks, want=50, within_s=20.0)  # well before the 60 s header deadline
        for s in socks:
            s.close()
        assert closed >= 50
        huge = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        huge.sendall(b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n")
        assert _read_response(huge)[0] == 431
        huge.close()


def test_a_body_that_stalls_gets_408(store_root: Path) -> None:
    with _server(store_root, body_timeout_s=1.0) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
        s.sendall(_post_head("/predict/tiny-mlp", 100) + b'{"inputs"')
        status, headers, payload = _read_response(s)
        s.close()
        assert status == 408 and headers["connection"] == "close"
        assert "did not arrive" in json.loads(payload)["error"]
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200


# -- 11. no server paths in errors -------------------------------------------------------------

def test_error_bodies_do_not_show_server_paths(store_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "store"
    shutil.copytree(store_root, root, symlinks=True)
    manifest = root / "manifests" / "tiny-half" / "latest.json"
    manifest.chmod(0o600)
    manifest.write_text("{not json")  # the store says "<its path> cannot be read"
    with _server(root) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for res in (c.post("/predict/tiny-half", json={"inputs": {"x": [1]}}), c.get("/v2/models/tiny-half")):
            assert res.status_code == 500 and "cannot be read" in res.json()["error"], res.text
            assert str(root) not in res.text and str(tmp_path) not in res.text and "<store>" in res.text, res.text
        assert c.get("/health").status_code == 200


# -- OpenAPI: every POST declares its body -----------------------------------------------------

def test_openapi_declares_every_post_body(server: GuardedServer) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    # predict, models load/unload, embeddings, embed, v2 infer, rerank twice; generation: OpenAI 2, Ollama 3,
    # /generate, /ensemble, KServe generate and generate_stream; /v1/audio/transcriptions and translations (multipart)
    assert len(posts) == 19
    for path, op in posts.items():
        content = op["requestBody"]["content"]
        schema = content["multipart/form-data" if path.startswith("/v1/audio/") else "application/json"]["schema"]
        assert schema["type"] == "object" and schema["properties"], path


# -- 10 and 12. `gpux serve`: where it listens, what it says, a busy port ---------------------

def test_gpux_serve_says_where_it_listens_and_what_is_loaded(served: tuple[int, Path]) -> None:
    port, log = served
    text = log.read_text()
    assert f"listening on http://127.0.0.1:{port}" in text
    assert "silero-vad:latest" in text and "tiny-mlp:latest" in text
    assert f"http://127.0.0.1:{port}/docs" in text
    assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200


def test_a_busy_port_is_one_line_naming_port_and_exit_2(store_root: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = cli("serve", "tiny-mlp", "--port", str(port), env={"GPUX_HOME": str(store_root)})
        assert res.returncode == 2, res.stderr
        assert "already in use" in res.stderr and "--port" in res.stderr and "Traceback" not in res.stderr
        # Leaving loopback without a key warns before binding (the busy port keeps this test off the network).
        res = cli("serve", "tiny-mlp", "--host", "0.0.0.0", "--port", str(port), env={"GPUX_HOME": str(store_root)})
        assert res.returncode == 2 and "without --api-key" in res.stderr, res.stderr


def test_a_preload_that_fails_is_one_line_with_its_exit_code(store_root: Path) -> None:
    res = cli("serve", MINILM, "--port", "0", "--memory-budget", "1MB", env={"GPUX_HOME": str(store_root)})
    assert res.returncode == 7, res.stderr  # ModelTooLargeError's family
    assert "more than the whole memory budget" in res.stderr and "--memory-budget" in res.stderr
    assert "Traceback" not in res.stderr and "startup failed" not in res.stderr, res.stderr


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(addr)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the kernel's socket table")
def test_gpux_yml_cannot_open_the_server_to_the_network(tmp_path: Path, model_dir: Path) -> None:
    port = _free_port()
    env = build_with_serving(tmp_path, model_dir, "exposed", f"host: 0.0.0.0, port: {port}")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", "exposed"], env=env,
                                stdout=subprocess.DEVNULL, stderr=fh, text=True)
    try:
        _wait_ready(port, proc)  # gpux.yml's port is used ...
        assert _listening(port) == {"0100007F"}  # ... but only on 127.0.0.1, not 0.0.0.0
        text = err.read_text()
        assert "serving.host 0.0.0.0" in text and "--host 0.0.0.0" in text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
