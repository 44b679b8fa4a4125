"""``gpux serve --ray`` (one replica) against the plain ``gpux serve``: all-MiniLM-L6-v2 embeddings.

Both servers run at once as their own processes on loopback, with the same flags; the clients are
serve_load.py's asyncio keep-alive connections (one sentence per ``/api/embed`` request). Each round
measures 1, 8 and 64 clients on both servers, alternating which goes first, so the machine's drift
(15-25% over minutes here) falls on both sides; the ratio (Ray / plain) is taken per round and reported
as a median with its spread. What Ray adds is its HTTP proxy and one actor call per request: that
hop is what this measures. Start-up: seconds from launching ``gpux serve --ray`` (a local Ray instance
started by it) to ``/ready`` answering 200, and the same for the plain server.

Writes benchmarks/results/serve_ray.json and .md. Run: ``python benchmarks/serve_ray.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from _common import env_line, spread, write  # noqa: E402
from serve_load import MODEL, load  # noqa: E402

FLAGS = ("--max-batch-size", "64", "--max-queue", "1024")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(home: Path, ray: bool, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """Launch a server; (process, url, seconds until /ready answered 200)."""
    import httpx

    port = _port()
    extra = ("--ray", "--replicas", "1") if ray else ()
    began = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", MODEL, "--port", str(port), *FLAGS, *extra],
                                env={**os.environ, "GPUX_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - began
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{'gpux serve --ray' if ray else 'gpux serve'} did not become ready:\n{log.read_text()[-3000:]}")


def rss_mib(plain_pid: int) -> dict[str, float]:
    """Resident memory (MiB) now: the plain server; the replica; Ray's own processes (GCS, raylet, controller,
    proxy, agents) plus the ``gpux serve --ray`` driver: what each node, and the head, carry besides models."""
    out = {"plain_server": 0.0, "ray_replica": 0.0, "ray_system_and_driver": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            rss = next(int(line.split()[1]) for line in (entry / "status").read_text().splitlines()
                       if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration, ValueError):
            continue
        if int(entry.name) == plain_pid:
            out["plain_server"] += rss
        elif b"ServeReplica:gpux" in cmd:
            out["ray_replica"] += rss
        elif cmd.startswith(b"ray::") or b"site-packages/ray/" in cmd or (b"gpux" in cmd and b"--ray" in cmd):
            out["ray_system_and_driver"] += rss
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--clients", default="1,8,64", help="concurrency levels, comma-separated")
    ap.add_argument("--max-requests", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    from gpux.bench.env import environment

    levels = [int(c) for c in args.clients.split(",")]
    home = Path(tempfile.mkdtemp(prefix="gpux-serve-ray-"))
    subprocess.run([sys.executable, "-m", "gpux", "pull", MODEL], env={**os.environ, "GPUX_HOME": str(home)},
                   check=True, capture_output=True)
    load_before = os.getloadavg()
    plain, plain_url, plain_start = start(home, False, home / "plain.log")
    try:
        ray, ray_url, ray_start = start(home, True, home / "ray.log")
    except BaseException:
        stop(plain)
        raise
    urls = {"plain": plain_url, "ray": ray_url}
    rounds: list[dict[str, Any]] = []
    try:
        for url in urls.values():
            asyncio.run(load(url, 8, 1.0, 200))  # warm up both
        for r in range(args.rounds):
            order = ("plain", "ray") if r % 2 == 0 else ("ray", "plain")
            row: dict[str, Any] = {"order": list(order), "levels": {}}
            for clients in levels:
                row["levels"][str(clients)] = {side: asyncio.run(load(urls[side], clients, args.seconds,
                                                                      args.max_requests)) for side in order}
            rounds.append(row)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        memory = rss_mib(plain.pid)
    finally:
        stop(ray)
        stop(plain)
    report = {"model": MODEL, "flags": list(FLAGS), "seconds": args.seconds, "rounds": rounds,
              "summary": summarize(rounds, levels),
              "startup_s": {"ray_local_instance_to_ready": ray_start, "plain_to_ready": plain_start},
              "rss_mib_after_load": memory,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "environment": environment(("fastapi", "uvicorn", "ray")), "date": time.strftime("%Y-%m-%d")}
    write("serve_ray", report, markdown(report), *([args.out] if args.out else []))


def summarize(rounds: list[dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    """Per client count: each side's median req/s, p50 and p99; the per-round ratio and p50 difference."""
    out: dict[str, Any] = {}
    for clients in levels:
        runs = [r["levels"][str(clients)] for r in rounds]
        side = {s: {"requests_per_s": spread([x[s]["requests_per_s"] for x in runs]),
                    "p50_ms": spread([x[s]["latency_ms"]["median"] for x in runs]),
                    "p99_ms": spread([x[s]["latency_ms"]["p99"] for x in runs]),
                    "errors": sum(x[s]["errors"] for x in runs)} for s in ("plain", "ray")}
        out[str(clients)] = {**side,
                             "ratio_rps": spread([x["ray"]["requests_per_s"] / x["plain"]["requests_per_s"]
                                                  for x in runs]),
                             "p50_delta_ms": spread([x["ray"]["latency_ms"]["median"] -
                                                     x["plain"]["latency_ms"]["median"] for x in runs])}
    return out


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [f"# gpux serve --ray (1 replica) vs gpux serve: {r['model']} embeddings", "",
             env_line("serve_ray.py", r["environment"]) + " Both servers, Ray's processes and the clients "
             f"share the machine's cores; load average {r['load_average_before'][0]:.2f} before, "
             f"{r['load_average_after'][0]:.2f} after. Flags on both: `{' '.join(r['flags'])}`.", "",
             f"{len(r['rounds'])} rounds of {r['seconds']:g} s per server and client count, alternating which "
             "server goes first; medians over rounds (p5–p95 of the rounds in brackets).", "",
             "| clients | plain req/s | ray req/s | ray / plain | plain p50 ms | ray p50 ms | ray − plain p50 ms "
             "| plain p99 ms | ray p99 ms | errors (plain, ray) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for clients, x in s.items():
        q, d = x["ratio_rps"], x["p50_delta_ms"]
        lines.append(f"| {clients} | {x['plain']['requests_per_s']['median']:.1f} | "
                     f"{x['ray']['requests_per_s']['median']:.1f} | **{q['median']:.2f}×** ({q['p5']:.2f}–"
                     f"{q['p95']:.2f}) | {x['plain']['p50_ms']['median']:.1f} | {x['ray']['p50_ms']['median']:.1f} | "
                     f"**{d['median']:+.1f}** ({d['p5']:+.1f}–{d['p95']:+.1f}) | "
                     f"{x['plain']['p99_ms']['median']:.1f} | {x['ray']['p99_ms']['median']:.1f} | "
                     f"{x['plain']['errors']}, {x['ray']['errors']} |")
    st = r["startup_s"]
    lines += ["", f"Start-up to `/ready` (model preloaded): `gpux serve --ray` {st['ray_local_instance_to_ready']:.1f} s "
              f"(a local Ray instance started by it), plain `gpux serve` {st['plain_to_ready']:.1f} s.",
              "", "Resident memory after the rounds (MiB): plain server {plain_server:.0f}; the Ray replica "
              "{ray_replica:.0f}; Ray's own processes and the driver {ray_system_and_driver:.0f}.".format(
                  **r["rss_mib_after_load"]),
              "", "Goals (issue 15): ≥ 0.8× the plain server's requests/s at 64 clients, ≤ +5 ms p50 at 1 client.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
