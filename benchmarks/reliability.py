"""The reliability campaign of issue 9, bounded: fuzzing, overload, kill -9 faults, memory under the item cap.

Every phase drives the real ``gpux`` processes on 127.0.0.1 and records what it saw:

1. **fuzz**: schemathesis over the server's own OpenAPI schema (every POST route declares its body), with
   the ``not_a_server_error`` check: the count of 5xx answers and of operations tested.
2. **100 clients**: keep-alive clients on ``/api/embed`` for ``--seconds``; "lost" is a request with no
   answer (connection error, time-out) or a 5xx. 429s are counted and honoured (Retry-After).
3. **1,000 connections**: the same with 1,000 clients; goodput (200s per second) against the 100-client
   rate, and whether every 429 carried Retry-After.
4. **kill -9**: ``--faults`` faults spread over ``gpux pull`` (conversion of a local folder), ``gpux pull`` of
   a Hub model from the local Hub-compatible server, and ``gpux serve`` under load, each killed at a random
   moment; after each the store is checked (every manifest's blobs present and hashing to their names), then
   ``gpux prune`` runs and the scratch left under ``tmp/`` is counted; a clean pull and run must still work.
5. **memory**: concurrent requests at the per-request item cap against ``--memory-budget 300MB``: the
   server's peak RSS (VmHWM) and the status of one request over the cap.

Writes benchmarks/results/reliability.json and .md. Run: ``python benchmarks/reliability.py`` (needs the
dev, convert and serve extras plus ``schemathesis``; ``make reliability`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import env_line, spread, write  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WORDS = "the quick brown fox jumps over a lazy dog while servers batch many small requests together".split()


def sentence(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(8 + i % 8))


def gpux(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpux", *args], env={**os.environ, "GPUX_HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", *args, "--port", str(port)],
                            env={**os.environ, "GPUX_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gpux serve {' '.join(args)} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- a minimal keep-alive HTTP/1.1 client (httpx's pool tops out far below the server here) ---------------------

async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                   body: bytes) -> tuple[int, dict[str, str], bytes]:
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def load(url: str, clients: int, seconds: float, items: int = 1, timeout: float = 60.0) -> dict[str, Any]:
    """``clients`` connections posting to /api/embed until ``seconds`` pass; every outcome counted."""
    import orjson

    host, port = url.removeprefix("http://").split(":")
    counts = {"ok": 0, "429": 0, "429_without_retry_after": 0, "4xx": 0, "5xx": 0, "lost": 0}
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(cid: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        i = cid
        while time.perf_counter() < stop_at:
            body = orjson.dumps({"model": MODEL, "input": [sentence(i + k) for k in range(items)]})
            i += clients
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
                status, headers, data = await asyncio.wait_for(_request(*conn, "/api/embed", body), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
                counts["lost"] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                await asyncio.sleep(0.05)
                continue
            if headers.get("connection", "").lower() == "close":
                conn[1].close()
                conn = None
            if status == 200:
                counts["ok"] += 1
                latencies.append(time.perf_counter() - t)
            elif status == 429:
                counts["429"] += 1
                retry = headers.get("retry-after")
                if retry is None:
                    counts["429_without_retry_after"] += 1
                # A polite client honours Retry-After (capped so the run stays bounded), with jitter.
                await asyncio.sleep(min(float(retry or 1), 1.0) * random.uniform(0.5, 1.0))
            elif status >= 500:
                counts["5xx"] += 1
            else:
                counts["4xx"] += 1
        if conn is not None:
            conn[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "seconds": wall, **counts, "goodput_per_s": counts["ok"] / wall,
            "latency_ms": spread([x * 1e3 for x in latencies]) if latencies else {}}


# -- phases ---------------------------------------------------------------------------------------------------

def phase_fuzz(home: Path, examples: int, out: Path) -> dict[str, Any]:
    """schemathesis against every operation of the served schema; 5xx answers are the failures.

    Two passes: the schema as served (model names are free strings, so most cases end in 404 before any
    model code runs), then the same schema with every model name (the ``model`` body field and the model
    path parameters) pinned to the stored models, so generated bodies reach the tensors and texts.
    """
    import httpx

    proc, url = start_server(home, MODEL, "silero-vad")
    try:
        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
        posts = [(p, "post") for p, ops in schema["paths"].items() if "post" in ops]
        declared = [p for p, m in posts if "requestBody" in schema["paths"][p][m]]
        names = [m["name"] for m in httpx.get(f"{url}/models", timeout=10).json()["models"]]
        pinned = out / "openapi-pinned.json"
        pinned.write_text(json.dumps(_pin_models(schema, names)))
        passes = {label: _schemathesis(location, url, examples, out / f"schemathesis-{label}.ndjson", out)
                  for label, location in (("as served", f"{url}/openapi.json"), ("model names pinned", str(pinned)))}
        alive = proc.poll() is None and httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        stop(proc)
    return {"post_routes": len(posts), "post_routes_declaring_a_body": len(declared), "passes": passes,
            "server_errors": sum(p["server_errors"] for p in passes.values()), "server_alive_after": alive}


def _pin_models(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A copy of ``schema`` whose model-name fields only take ``names`` (stored models)."""
    pinned = json.loads(json.dumps(schema))
    enum = {"type": "string", "enum": names}
    for ops in pinned["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param.get("name") in ("model", "name"):
                    param["schema"] = enum
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "model" in body.get("properties", {}):
                body["properties"]["model"] = enum
    return pinned


def _schemathesis(location: str, url: str, examples: int, report: Path, cwd: Path) -> dict[str, Any]:
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    res = subprocess.run([st, "run", location, "--url", url, "--checks", "not_a_server_error",
                          "--max-examples", str(examples), "--seed", "1", "--workers", "1",
                          "--request-timeout", "60", "--no-color", "--phases", "examples,coverage,fuzzing",
                          "--report", "ndjson", "--report-ndjson-path", str(report)],
                         capture_output=True, text=True, timeout=1800, cwd=cwd)
    failures, cases, operations, statuses = _schemathesis_counts(report)
    return {"operations_tested": operations, "test_cases": cases, "server_errors": failures,
            "statuses": statuses, "schemathesis_exit": res.returncode,
            "summary": "\n".join(res.stdout.strip().splitlines()[-12:])}


def _schemathesis_counts(report: Path) -> tuple[int, int, int, dict[str, int]]:
    """(5xx answers, test cases, operations, answers by status) from schemathesis' ndjson event stream.

    A 5xx is counted from the recorded responses themselves (any ``status_code`` >= 500), and from
    ``not_a_server_error`` check results marked as failures, whichever is larger.
    """
    answers_5xx = check_failures = cases = 0
    operations: set[str] = set()
    statuses: dict[str, int] = {}
    if not report.is_file():
        return -1, 0, 0, {}

    def walk(node: Any) -> None:
        nonlocal answers_5xx, check_failures
        if isinstance(node, dict):
            code = node.get("status_code")
            if isinstance(code, int):
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                answers_5xx += code >= 500
            if node.get("name") == "not_a_server_error" and str(node.get("status", "")).lower() == "failure":
                check_failures += 1
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for line in report.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            walk(event)
            for kind, body in event.items():
                if kind == "ScenarioFinished" and isinstance(body, dict):
                    label = body.get("label") or (body.get("recorder") or {}).get("label")
                    if label:
                        operations.add(str(label))
                    cases += len((body.get("recorder") or {}).get("cases") or {})
    return max(answers_5xx, check_failures), cases, len(operations), dict(sorted(statuses.items()))


def phase_load(home: Path, clients: int, seconds: float) -> dict[str, Any]:
    proc, url = start_server(home, MODEL, "--max-batch-size", "64")
    try:
        asyncio.run(load(url, 8, 2.0))  # warm up
        result = asyncio.run(load(url, clients, seconds))
        result["server_alive_after"] = proc.poll() is None
    finally:
        stop(proc)
    return result


def phase_memory(home: Path, items: int, clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    proc, url = start_server(home, MODEL, "--memory-budget", "300MB", "--max-items", str(items))
    try:
        idle = vm_hwm_mb(proc.pid)
        run = asyncio.run(load(url, clients, seconds, items=items, timeout=120))
        peak = vm_hwm_mb(proc.pid)
        over = httpx.post(f"{url}/api/embed", json={"model": MODEL, "input": ["x"] * (items + 1)}, timeout=60)
    finally:
        stop(proc)
    return {"items_per_request": items, "clients": clients, "ok": run["ok"], "lost": run["lost"], "5xx": run["5xx"],
            "rss_before_load_mb": idle, "peak_rss_mb": peak, "over_cap_status": over.status_code,
            "over_cap_error": over.json().get("error")}


def store_consistency(home: Path) -> dict[str, Any]:
    """Every manifest's blobs present and hashing to their names; scratch left after ``gpux prune``."""
    bad: list[str] = []
    manifests = 0
    for path in (home / "manifests").rglob("*.json") if (home / "manifests").is_dir() else []:
        manifests += 1
        try:
            m = json.loads(path.read_text())
            for rel, entry in m["files"].items():
                blob = home / "blobs" / f"sha256-{entry['sha256']}"
                h = hashlib.sha256(blob.read_bytes()).hexdigest()
                if h != entry["sha256"] or blob.stat().st_size != entry["size"]:
                    bad.append(f"{path.relative_to(home)}:{rel}")
        except (OSError, ValueError, KeyError) as exc:
            bad.append(f"{path.relative_to(home)}: {type(exc).__name__}")
    prune = gpux(home, "prune")
    tmp = home / "tmp"
    left = sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
    return {"manifests": manifests, "inconsistent": bad, "prune_exit": prune.returncode, "scratch_left": left}


def phase_kill(home: Path, faults: int, rng: random.Random, work: Path) -> dict[str, Any]:
    import hf_models
    from hf_server import HubServer

    folder = hf_models.tiny(work / "kill-tiny", "bert")
    hub_folder = hf_models.tiny(work / "kill-hub", "distilbert", seed=1)
    rows: list[dict[str, Any]] = []
    with HubServer({"org/kill-hub": hub_folder}) as hub:
        hub_env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(work / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        kinds = ["pull-local", "pull-hub", "serve"]
        for i in range(faults):
            kind = kinds[i % len(kinds)]
            delay = rng.uniform(0.3, 8.0) if kind != "serve" else rng.uniform(0.5, 3.0)
            env = {**os.environ, "GPUX_HOME": str(home), **(hub_env if kind == "pull-hub" else {})}
            if kind == "serve":
                proc, url = start_server(home, MODEL)
                loader = subprocess.Popen([sys.executable, "-c", _LOAD_SNIPPET, url], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                loader.wait(timeout=60)
                finished = False
            else:
                if kind == "pull-hub":  # a fresh Hub cache, so the download is part of what gets killed
                    shutil.rmtree(work / "hf-home", ignore_errors=True)
                target = str(folder) if kind == "pull-local" else "org/kill-hub"
                proc2 = subprocess.Popen([sys.executable, "-m", "gpux", "pull", target, "--force"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(delay)
                finished = proc2.poll() is not None
                if not finished:
                    proc2.send_signal(signal.SIGKILL)
                proc2.wait()
            check = store_consistency(home)
            rows.append({"fault": i + 1, "kind": kind, "killed_after_s": round(delay, 2),
                         "finished_before_kill": finished, **check})
        # After all faults: a clean pull and run of each still works.
        after_local = gpux(home, "pull", str(folder))
        after_hub = subprocess.run([sys.executable, "-m", "gpux", "pull", "org/kill-hub"], capture_output=True,
                                   text=True, env={**os.environ, "GPUX_HOME": str(home), **hub_env}, timeout=600)
    run = gpux(home, "run", MODEL, "--input", '{"inputs": ["still works"]}')
    return {"faults": rows, "consistent_after_every_fault": all(not r["inconsistent"] for r in rows),
            "scratch_left_after_prune": sum(len(r["scratch_left"]) for r in rows),
            "pull_local_after": after_local.returncode, "pull_hub_after": after_hub.returncode,
            "run_after": run.returncode}


_LOAD_SNIPPET = """
import sys, httpx
url = sys.argv[1]
with httpx.Client(timeout=5) as c:
    for i in range(2000):
        try:
            c.post(url + "/api/embed", json={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["t %d" % i] * 8})
        except httpx.TransportError:
            break
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 100-client run")
    ap.add_argument("--burst-seconds", type=float, default=20.0, help="length of the 1,000-connection run")
    ap.add_argument("--examples", type=int, default=30, help="schemathesis examples per operation")
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--items", type=int, default=2048, help="the per-request item cap for the memory phase")
    ap.add_argument("--phases", default="fuzz,load,burst,kill,memory")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    from gpux.bench.env import environment

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))  # 1,000 clients + the server
    work = Path(tempfile.mkdtemp(prefix="gpux-reliability-"))
    home = work / "home"
    for step in (("pull", MODEL), ("build", str(ROOT / "examples" / "silero-vad"))):
        res = gpux(home, *step)
        if res.returncode != 0:
            raise SystemExit(f"setup {' '.join(step)} failed: {res.stderr}")
    phases = args.phases.split(",")
    report: dict[str, Any] = {"model": MODEL, "args": vars(args) | {"out": str(args.out or "")}}
    if "fuzz" in phases:
        report["fuzz"] = phase_fuzz(home, args.examples, work)
    if "load" in phases:
        report["load_100"] = phase_load(home, 100, args.seconds)
    if "burst" in phases:
        report["burst_1000"] = phase_load(home, 1000, args.burst_seconds)
        if "load_100" in report:
            report["burst_goodput_vs_100"] = report["burst_1000"]["goodput_per_s"] / report["load_100"]["goodput_per_s"]
    if "kill" in phases:
        report["kill"] = phase_kill(home, args.faults, random.Random(args.seed), work)
    if "memory" in phases:
        report["memory"] = phase_memory(home, args.items, 4, 15.0)
    report["environment"] = environment(("fastapi", "uvicorn", "schemathesis"))
    report["date"] = time.strftime("%Y-%m-%d")
    write("reliability", report, markdown(report), *([args.out] if args.out else []))
    shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Reliability campaign (issue 9), bounded", "",
             env_line("reliability.py", r["environment"]) + " Server, clients and faults share the cores.", ""]
    if "fuzz" in r:
        f = r["fuzz"]
        lines += ["## Fuzzing (schemathesis, `not_a_server_error`)", "",
                  f"{f['post_routes_declaring_a_body']} of {f['post_routes']} POST routes declare their body. "
                  f"**{f['server_errors']} server errors** in all; server alive after: {f['server_alive_after']}.", "",
                  "| schema | operations | test cases | 5xx | answers by status |", "|---|---:|---:|---:|---|"]
        lines += [f"| {label} | {x['operations_tested']} | {x['test_cases']} | {x['server_errors']} | "
                  + ", ".join(f"{k}: {v}" for k, v in x["statuses"].items()) + " |" for label, x in f["passes"].items()]
        lines += [""]
    for key, title in (("load_100", "100 clients"), ("burst_1000", "1,000 connections")):
        if key in r:
            x = r[key]
            lat = x.get("latency_ms") or {}
            lines += [f"## {title}, {x['seconds']:.0f} s on /api/embed", "",
                      "| 200s | goodput/s | 429 | 429 w/o Retry-After | other 4xx | 5xx | lost | p50 ms | p95 ms |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                      f"| {x['ok']} | {x['goodput_per_s']:.1f} | {x['429']} | {x['429_without_retry_after']} | "
                      f"{x['4xx']} | {x['5xx']} | {x['lost']} | {lat.get('median', 0):.1f} | {lat.get('p95', 0):.1f} |",
                      ""]
    if "burst_goodput_vs_100" in r:
        lines += [f"Goodput at 1,000 connections: **{r['burst_goodput_vs_100']:.2f}×** the 100-client rate "
                  "(goal ≥ 0.80).", ""]
    if "kill" in r:
        k = r["kill"]
        lines += ["## kill -9 faults", "", "| # | what | killed after s | had finished | manifests | inconsistent | "
                  "scratch left after prune |", "|---:|---|---:|---|---:|---:|---:|"]
        lines += [f"| {x['fault']} | {x['kind']} | {x['killed_after_s']} | {x['finished_before_kill']} | "
                  f"{x['manifests']} | {len(x['inconsistent'])} | {len(x['scratch_left'])} |" for x in k["faults"]]
        lines += ["", f"Consistent after every fault: **{k['consistent_after_every_fault']}**; afterwards pull "
                  f"(local) exit {k['pull_local_after']}, pull (Hub) exit {k['pull_hub_after']}, run exit "
                  f"{k['run_after']}.", ""]
    if "memory" in r:
        m = r["memory"]
        lines += ["## Memory under the item cap (`--memory-budget 300MB`)", "",
                  f"{m['clients']} clients sending {m['items_per_request']} texts per request: {m['ok']} answered, "
                  f"{m['lost']} lost, {m['5xx']} 5xx; server RSS before the load {m['rss_before_load_mb']:.0f} MiB, "
                  f"peak {m['peak_rss_mb']:.0f} MiB. One request of {m['items_per_request'] + 1} texts: HTTP "
                  f"{m['over_cap_status']} ({m['over_cap_error']}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
