"""``gpux bench`` for text-generation models: time to first token, decode rate, inter-token latency, memory.

Per point (prompt length x new tokens x batch size) and engine, each timed run records the time to the
first token (prefill plus one sampled token), every later token's arrival, and from them the decode rate
(tokens after the first over the time after the first) and the prefill rate (prompt tokens over TTFT).
Prompts are token ids drawn from the vocabulary, so every engine reads exactly the same tokens; generation
is greedy with end-of-sequence masked, so every run makes exactly ``new_tokens`` tokens.

Engines, each in its own process (its peak RSS is the engine's own), in alternating rounds (this
machine's speed drifts 15-25% over minutes: one engine measured first would own the quiet minutes):

- ``gpux`` at every precision asked for (``fp32``, ``int8``, ``int4``; missing variants are built);
- ``pytorch``: transformers' ``generate`` (eager attention) on the folder gpux converted from;
- ``llamacpp``: llama-cpp-python on the GGUF gpux pulled the model from (only for GGUF sources: for
  others it says so), batch size 1 (its Python API runs one sequence).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("gpux", "pytorch", "llamacpp")


def _prompt(vocab: int, length: int, row: int) -> list[int]:
    rng = np.random.default_rng(1000 + row)
    return [int(t) for t in rng.integers(100, max(101, vocab - 100), length)]


def _run_gpux(spec: dict[str, Any]) -> Any:
    import gpux
    from gpux.generate.sampling import SamplingParams
    from gpux.tasks.generation import Request

    model = gpux.load(spec["ref"], intra_op_threads=spec.get("threads"))
    task = model.task
    graph = model.graphs["model" if "model" in model.graphs else "decoder"]  # an encoder–decoder's logits
    vocab = int(graph.session.get_outputs()[0].shape[-1] or 32000)

    def once(point: dict[str, Any]) -> list[float]:
        params = SamplingParams(max_new_tokens=point["new_tokens"], min_new_tokens=point["new_tokens"])
        reqs = [Request(_prompt(vocab, point["prompt_len"], r), params) for r in range(point["batch"])]
        marks = [time.perf_counter()]
        for _ in task.events(reqs):  # type: ignore[union-attr]
            marks.append(time.perf_counter())
        return marks

    return once


def _run_pytorch(spec: dict[str, Any]) -> Any:
    import torch
    import transformers

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    auto = getattr(transformers, "AutoModelForSeq2SeqLM" if spec.get("seq2seq") else "AutoModelForCausalLM")
    model = auto.from_pretrained(spec["folder"], attn_implementation="eager").eval()
    vocab = int(model.config.vocab_size)

    class Marks:
        def __init__(self) -> None:
            self.marks: list[float] = []

        def put(self, _value: Any) -> None:  # the prompt first, then each new token
            self.marks.append(time.perf_counter())

        def end(self) -> None:
            pass

    def once(point: dict[str, Any]) -> list[float]:
        ids = torch.tensor([_prompt(vocab, point["prompt_len"], r) for r in range(point["batch"])])
        streamer = Marks()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=point["new_tokens"],
                           min_new_tokens=point["new_tokens"], do_sample=False, streamer=streamer,
                           pad_token_id=model.config.eos_token_id)
        return [start, *streamer.marks[1:]]

    return once


def _run_llamacpp(spec: dict[str, Any]) -> Any:
    from llama_cpp import Llama

    llm = Llama(model_path=spec["gguf"], n_threads=spec.get("threads") or 2, n_ctx=2048, verbose=False)
    vocab = llm.n_vocab()

    def once(point: dict[str, Any]) -> list[float]:
        llm.reset()
        marks = [time.perf_counter()]
        # llama.cpp's own token loop, greedy; it never stops at end-of-sequence, so exactly new_tokens come.
        for _ in llm.generate(_prompt(vocab, point["prompt_len"], 0), top_k=1, temp=0.0, repeat_penalty=1.0,
                              reset=True):
            marks.append(time.perf_counter())
            if len(marks) > point["new_tokens"]:
                break
        return marks

    return once


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure every point of ``spec`` in this process; marks per run, plus load time and peak RSS."""
    from gpux.bench.env import peak_rss_mb

    start = time.perf_counter()
    once = {"gpux": _run_gpux, "pytorch": _run_pytorch, "llamacpp": _run_llamacpp}[spec["engine"]](spec)
    load_ms = (time.perf_counter() - start) * 1e3
    points = {}
    for point in spec["points"]:
        if spec["engine"] == "llamacpp" and point["batch"] > 1:
            continue
        for _ in range(spec["warmup"]):
            once(point)
        points[point["key"]] = [once(point) for _ in range(spec["runs"])]
    return {"load_ms": load_ms, "peak_rss_mb": peak_rss_mb(), "runs": points}


def summarize(point: dict[str, Any], runs: list[list[float]]) -> dict[str, Any]:
    """TTFT percentiles, decode and prefill rates, inter-token latency p99 over a point's runs."""
    ttft = np.array([(m[1] - m[0]) * 1e3 for m in runs])
    decode = np.array([point["batch"] * (len(m) - 2) / (m[-1] - m[1]) for m in runs if len(m) > 2 and m[-1] > m[1]])
    gaps = np.concatenate([np.diff(m[1:]) * 1e3 for m in runs if len(m) > 2] or [np.zeros(1)])
    return {"ttft_ms": {q: float(np.percentile(ttft, int(q[1:]))) for q in ("p50", "p95", "p99")},
            "decode_tokens_per_s": {"median": float(np.median(decode)), "p5": float(np.percentile(decode, 5))}
            if len(decode) else None,
            "prefill_tokens_per_s": float(np.median(point["batch"] * point["prompt_len"] / (ttft / 1e3))),
            "itl_p99_ms": float(np.percentile(gaps, 99)), "runs": len(runs)}


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker process (its own memory); ``{"error": ...}`` if it fails."""
    done = subprocess.run([sys.executable, "-m", "gpux.bench.generation", json.dumps(spec)], capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail[:300]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(engines: dict[str, dict[str, Any]], points: list[dict[str, Any]], *, runs: int, warmup: int, rounds: int,
        threads: int | None, progress: Any = None) -> dict[str, Any]:
    """Alternate rounds over ``engines`` (label -> spec without points), then summarise each engine's runs."""
    per_round = max(1, runs // rounds)
    gathered: dict[str, dict[str, Any]] = {label: {"runs": {}, "load_ms": [], "peak_rss_mb": 0.0} for label in engines}
    for r in range(rounds):
        for label, spec in engines.items():
            if "error" in gathered[label] or "skipped" in spec:
                continue
            if progress:
                progress(f"round {r + 1}/{rounds}: {label}", 1)
            got = spawn({**spec, "points": points, "runs": per_round, "warmup": warmup, "threads": threads})
            if "error" in got:
                gathered[label]["error"] = got["error"]
                continue
            g = gathered[label]
            g["load_ms"].append(got["load_ms"])
            g["peak_rss_mb"] = max(g["peak_rss_mb"], got["peak_rss_mb"])
            for key, marks in got["runs"].items():
                g["runs"].setdefault(key, []).extend(marks)
    out: dict[str, Any] = {}
    for label, g in gathered.items():
        if "skipped" in engines[label]:
            out[label] = {"skipped": engines[label]["skipped"]}
            continue
        if "error" in g and not g["runs"]:
            out[label] = {"error": g["error"]}
            continue
        out[label] = {"load_ms_median": float(np.median(g["load_ms"])), "peak_rss_mb": g["peak_rss_mb"],
                      "points": {p["key"]: {**{k: p[k] for k in ("prompt_len", "new_tokens", "batch")},
                                            **summarize(p, g["runs"][p["key"]])}
                                 for p in points if p["key"] in g["runs"]}}
    return out


def ratios(results: dict[str, Any], label: str, base: str) -> dict[str, dict[str, float]]:
    """Per point: decode-rate ratio and TTFT ratio of engine ``label`` over ``base``."""
    mine, theirs = results.get(label, {}).get("points", {}), results.get(base, {}).get("points", {})
    out = {}
    for key, p in mine.items():
        q = theirs.get(key)
        if q and p.get("decode_tokens_per_s") and q.get("decode_tokens_per_s"):
            out[key] = {"decode": p["decode_tokens_per_s"]["median"] / q["decode_tokens_per_s"]["median"],
                        "ttft": p["ttft_ms"]["p50"] / q["ttft_ms"]["p50"]}
    return out


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [f"# gpux bench: {doc['model']} (text-generation)", "",
             f"CPU {env['cpu']} ({', '.join(env.get('isa', []))}), {env.get('cores_logical')} cores, threads "
             f"{doc['threads'] or 'default'}, {doc['rounds']} alternating rounds, {doc['runs']} runs per point.", "",
             "| engine | prompt | new | batch | TTFT p50 ms | p95 | p99 | decode tok/s (median, p5) | prefill tok/s "
             "| ITL p99 ms | peak RSS MB | × pytorch decode | × llamacpp decode |", "|" + "---|" * 13]
    for label, r in doc["engines"].items():
        if "points" not in r:
            lines.append(f"| {label} | {r.get('error') or r.get('skipped')} |" + " |" * 12)
            continue
        for key, p in r["points"].items():
            d = p["decode_tokens_per_s"] or {"median": 0.0, "p5": 0.0}
            vs = [doc["ratios"].get(f"{label}/{b}", {}).get(key, {}).get("decode") for b in ("pytorch", "llamacpp")]
            lines.append(f"| {label} | {p['prompt_len']} | {p['new_tokens']} | {p['batch']} | {p['ttft_ms']['p50']:.1f} "
                         f"| {p['ttft_ms']['p95']:.1f} | {p['ttft_ms']['p99']:.1f} | {d['median']:.1f} ({d['p5']:.1f}) "
                         f"| {p['prefill_tokens_per_s']:.0f} | {p['itl_p99_ms']:.1f} | {r['peak_rss_mb']:.0f} | "
                         + " | ".join("—" if v is None else f"{v:.2f}" for v in vs) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))


def engines_for(bundle: Any, precisions: list[str], baselines: list[str], store: Any,
                min_agreement: float | None = None) -> dict[str, dict[str, Any]]:
    """label -> worker spec for gpux at each precision (variants built when missing) and each baseline."""
    import importlib.util

    from gpux.errors import GpuxError
    from gpux.registry import source_folder

    m = bundle.manifest
    base = f"{m.name}:{m.conversion.get('base', m.tag).rpartition(':')[2] if m.conversion.get('base') else m.tag}"
    engines: dict[str, dict[str, Any]] = {}
    for label in precisions:
        if label == "fp32":
            engines["gpux fp32"] = {"engine": "gpux", "ref": base}
            continue
        try:
            ref = f"{base}-{label}"
            try:
                store.get(ref)
            except GpuxError:
                if "decoder" in m.graphs:  # an encoder–decoder
                    from gpux.convert import seq2seq_variants

                    seq2seq_variants.make(base, label, store=store, min_agreement=min_agreement)
                else:
                    from gpux.convert.lm_variants import make

                    make(base, label, store=store, min_agreement=min_agreement)
            engines[f"gpux {label}"] = {"engine": "gpux", "ref": ref}
        except GpuxError as exc:
            engines[f"gpux {label}"] = {"skipped": exc.message}
    source = store.manifest(base).source
    if "pytorch" in baselines:
        folder = source_folder(source)
        engines["pytorch"] = {"engine": "pytorch", "folder": str(folder),
                              "seq2seq": "decoder" in m.graphs} if folder is not None else {
            "skipped": "the folder the model was converted from is not on this machine"}
    if "llamacpp" in baselines:
        if source.get("kind") != "gguf":
            engines["llamacpp"] = {"skipped": "llama.cpp runs GGUF files; this model was not pulled from one"}
        elif importlib.util.find_spec("llama_cpp") is None:
            engines["llamacpp"] = {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
        else:
            engines[f"llamacpp {source.get('file_type') or ''}".strip()] = {"engine": "llamacpp",
                                                                           "gguf": str(source["path"])}
    return engines


def bench(bundle: Any, *, prompt_lens: list[int], new_tokens: int, batch_sizes: list[int], precisions: list[str],
          baselines: list[str], runs: int, warmup: int, threads: int | None, store: Any, progress: Any = None,
          min_agreement: float | None = None) -> dict[str, Any]:
    """The whole results document of one text-generation model."""
    from gpux.bench.env import environment

    engines = engines_for(bundle, precisions, baselines, store, min_agreement)
    points = [{"key": f"p{p}-n{new_tokens}-b{b}", "prompt_len": p, "new_tokens": new_tokens, "batch": b}
              for p in prompt_lens for b in batch_sizes]
    rounds = min(3, runs)
    results = run(engines, points, runs=runs, warmup=warmup, rounds=rounds, threads=threads, progress=progress)
    gpux_labels = [label for label in results if label.startswith("gpux")]
    baseline_labels = [label for label in results if not label.startswith("gpux")]
    doc = {"model": f"{bundle.name}:{bundle.manifest.tag}", "task": bundle.manifest.task,
           "environment": environment(("llama-cpp-python", "torch", "transformers")), "threads": threads,
           "rounds": rounds, "runs": runs, "warmup": warmup, "engines": results,
           "ratios": {f"{g}/{b.split()[0]}": ratios(results, g, b) for g in gpux_labels for b in baseline_labels}}
    return doc


def write(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md"}
    paths["results"].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    paths["report"].write_text(markdown(doc), encoding="utf-8")
    return paths
