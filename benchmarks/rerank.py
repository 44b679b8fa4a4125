"""Reranking 1 query × 100 documents: gpux vs sentence-transformers' CrossEncoder (PyTorch), and served.

The model is a MiniLM-size cross-encoder with random weights (BertForSequenceClassification, num_labels=1,
hidden 384, 6 layers, 12 heads: the shape of cross-encoder/ms-marco-MiniLM-L6-v2, which is not available
offline here) and the real all-MiniLM-L6-v2 tokenizer. It is pulled with ``gpux pull`` (export + parity
check + store) into a temporary store.

1. Offline, in this process: ``gpux.load(...)({"inputs": {"query", "documents"}})`` (tokenize, run, sigmoid)
   against ``CrossEncoder.rank(query, documents)`` (its default batch size 32) and ``CrossEncoder.predict`` at
   batch 100, in alternating rounds (this machine's speed drifts 15-25% over minutes); median and spread
   of each. Scores and order are checked equal first.
2. Served: ``gpux serve`` (its own process, default flags) with 8 keep-alive clients posting the same
   100-document ``/v1/rerank`` request, alternating with the offline ceiling (gpux offline in a fresh
   process without torch, documents/s, best of batch 32 and 100), in rounds; the ratio served/offline.

Writes benchmarks/results/rerank.json and .md. Run: ``.venv/bin/python benchmarks/rerank.py`` (needs
sentence-transformers in the venv; it is no dependency of gpux).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
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
from serve_load import _post  # noqa: E402

WORDS = ("the a cats dogs sleep many hours each day while owners work in cities near rivers and parks "
         "markets fell sharply on news about rates inflation growth science shows animals need rest "
         "paris london berlin travel food music history sport weather climate energy").split()
QUERY = "how many hours do cats sleep each day"


def documents(n: int = 100) -> list[str]:
    """``n`` documents of 12 to 72 words (varied, as search results are)."""
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12 + (i * 13) % 61)) for i in range(n)]


def build_model(folder: Path) -> Path:
    import torch
    import transformers as tf

    import hf_models

    cfg = tf.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in hf_models.TOKENIZER_FILES:
        shutil.copy(hf_models.minilm_folder() / name, folder / name)
    return folder


def timed(fn: Any, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def offline(home: Path, ref: str, folder: Path, rounds: int, calls: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    import gpux
    from gpux.store.local import Store

    docs = documents()
    model = gpux.load(ref, store=Store(home))
    payload = {"inputs": {"query": QUERY, "documents": docs}}
    ce = CrossEncoder(str(folder), device="cpu")
    mine = np.array(model(payload)["scores"])
    theirs = ce.predict([(QUERY, d) for d in docs], batch_size=100)
    ranked = ce.rank(QUERY, docs)
    parity = {"max_abs_diff": float(np.abs(mine - theirs).max()),
              "order_identical": [int(i) for i in np.argsort(-mine, kind="stable")] == [r["corpus_id"] for r in ranked]}
    sides = {"gpux": lambda: model(payload),
             "CrossEncoder.rank (batch 32)": lambda: ce.rank(QUERY, docs),
             "CrossEncoder.predict (batch 100)": lambda: ce.predict([(QUERY, d) for d in docs], batch_size=100)}
    for fn in sides.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in sides}
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        medians = {}
        for k in order:
            xs = timed(sides[k], calls)
            samples[k] += xs
            medians[k] = statistics.median(xs)
        per_round.append({**medians, "load_avg_1m": os.getloadavg()[0]})
    ratios = [x["CrossEncoder.rank (batch 32)"] / x["gpux"] for x in per_round]
    return {"documents": len(docs), "parity": parity, "torch_threads": torch.get_num_threads(),
            "latency_ms": {k: spread(v) for k, v in samples.items()}, "rounds": per_round,
            "speedup_vs_rank": spread(ratios)}


def ceiling(home: Path, ref: str, seconds: float) -> dict[str, float]:
    """gpux offline documents/s: the task on batches of 32 and 100 pairs, tokenization included, with the
    session settings ``gpux serve`` uses."""
    import gpux
    from gpux.store.local import Store
    from gpux.tasks import for_model

    # The server's session settings: no spinning intra-op threads (serve/manager.py).
    task = for_model(gpux.load(ref, store=Store(home), spinning=False))
    assert task is not None
    pairs = [(QUERY, d) for d in documents()]
    task.run_batch(pairs[:32])  # warm-up: the first run sizes onnxruntime's arena
    out = {}
    for batch in (32, 100):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(0, len(pairs), batch):
                task.run_batch(pairs[i:i + batch])
            done += len(pairs)
        out[str(batch)] = done / (time.perf_counter() - start)
    return out


def ceiling_apart(home: Path, ref: str, seconds: float) -> dict[str, float]:
    """:func:`ceiling` in a fresh process: this one has torch loaded (its idle OpenMP threads) and would
    understate gpux."""
    import json

    done = subprocess.run([sys.executable, __file__, "--ceiling", str(home), ref, str(seconds)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def load(url: str, ref: str, clients: int, seconds: float) -> dict[str, Any]:
    import orjson

    host, port = url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": ref, "query": QUERY, "documents": documents()})
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                status, data = await _post(reader, writer, "/v1/rerank", body)
                if status == 200 and len(orjson.loads(data)["results"]) == 100:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "requests_per_s": len(latencies) / wall, "documents_per_s": 100 * len(latencies) / wall,
            "latency_ms": spread([x * 1e3 for x in latencies]) if latencies else {}}


def served(home: Path, ref: str, rounds: int, seconds: float) -> dict[str, Any]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gpux", "serve", ref, "--port", str(port)],
                            env={**os.environ, "GPUX_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gpux serve did not become ready")
            time.sleep(0.2)
        asyncio.run(load(url, ref, 8, 2.0))  # warm-up
        out = []
        for _ in range(rounds):
            best = max(ceiling_apart(home, ref, seconds / 2).values())
            run = asyncio.run(load(url, ref, 8, seconds))
            out.append({"offline_documents_per_s": best, **run, "ratio": run["documents_per_s"] / best,
                        "load_avg_1m": os.getloadavg()[0]})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"rounds": out, "ratio": spread([r["ratio"] for r in out]),
            "latency_ms": spread([r["latency_ms"]["median"] for r in out])}


def main() -> None:
    if sys.argv[1:2] == ["--ceiling"]:  # the worker of ceiling_apart
        import json

        print(json.dumps(ceiling(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per side per round (offline)")
    ap.add_argument("--seconds", type=float, default=20.0, help="served load per round")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from gpux.bench.env import environment

    work = Path(tempfile.mkdtemp(prefix="gpux-rerank-"))
    home = work / "home"
    folder = build_model(work / "minilm-cross-encoder")
    done = subprocess.run([sys.executable, "-m", "gpux", "pull", str(folder)], env={**os.environ, "GPUX_HOME": str(home)},
                          check=True, capture_output=True, text=True)
    ref = done.stdout.strip().splitlines()[-1]
    report = {"model": "random-weight MiniLM-L6 cross-encoder (BertForSequenceClassification, num_labels=1, "
                       "hidden 384, 6 layers)", "ref": ref, "query": QUERY,
              "offline": offline(home, ref, folder, args.rounds, args.calls),
              "served": served(home, ref, max(3, args.rounds - 2), args.seconds),
              "environment": environment(("sentence-transformers", "torch", "transformers", "fastapi", "uvicorn")),
              "date": time.strftime("%Y-%m-%d")}
    shutil.rmtree(work, ignore_errors=True)
    write("rerank", report, markdown(report), *([args.out] if args.out else []))


def markdown(r: dict[str, Any]) -> str:
    off, srv = r["offline"], r["served"]
    lines = ["# Reranking 1 query × 100 documents", "",
             env_line("rerank.py", r["environment"]) + f" PyTorch threads: {off['torch_threads']}.", "",
             f"Model: {r['model']}; the all-MiniLM-L6-v2 tokenizer. gpux and PyTorch scores: max |diff| "
             f"{off['parity']['max_abs_diff']:.1e}, order identical: {off['parity']['order_identical']}.", "",
             f"## Offline ({len(off['rounds'])} alternating rounds)", "",
             "| runner | median ms | p25–p75 ms | p5–p95 ms | calls |", "|---|---:|---:|---:|---:|"]
    for k, s in off["latency_ms"].items():
        lines.append(f"| {k} | {s['median']:.1f} | {s['p25']:.1f}–{s['p75']:.1f} | {s['p5']:.1f}–{s['p95']:.1f} | "
                     f"{s['n']} |")
    sp = off["speedup_vs_rank"]
    lines += ["", f"CrossEncoder.rank ÷ gpux per round: **{sp['median']:.2f}×** (median; "
              f"{min(x['CrossEncoder.rank (batch 32)'] / x['gpux'] for x in off['rounds']):.2f}–"
              f"{max(x['CrossEncoder.rank (batch 32)'] / x['gpux'] for x in off['rounds']):.2f}×).", "",
              f"## Served: `/v1/rerank`, 8 clients, default `gpux serve` flags ({len(srv['rounds'])} rounds)", "",
              "| round | requests/s | documents/s | p50 ms | offline ceiling docs/s | served ÷ ceiling | errors |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for i, x in enumerate(srv["rounds"], 1):
        lines.append(f"| {i} | {x['requests_per_s']:.2f} | {x['documents_per_s']:.0f} | "
                     f"{x['latency_ms'].get('median', float('nan')):.0f} | {x['offline_documents_per_s']:.0f} | "
                     f"{x['ratio']:.2f} | {x['errors']} |")
    loads = [x["load_avg_1m"] for x in (*off["rounds"], *srv["rounds"])]
    lines += ["", f"Served ÷ offline ceiling: **{srv['ratio']['median']:.2f}×** (median of rounds). The ceiling "
              "is gpux offline, in a process of its own with the server's session settings, on batches of 32 "
              "and 100 pairs (the better); server and clients share the machine's cores.", "",
              f"The machine's 1-minute load average after each round: {min(loads):.1f}–{max(loads):.1f} "
              f"on {r['environment']['cores_logical']} cores (other work was running: absolute times are slower "
              "than on a quiet machine; the alternating rounds keep it out of the ratios).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
