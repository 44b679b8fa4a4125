"""gpux vs Hugging Face transformers (PyTorch eager) on a DistilBERT-base classifier, seq 128.

Same weights (random, DistilBERT-base architecture: 6 layers, dim 768, 2 labels), same
tokenized inputs padded to 128 tokens, same thread count, calls interleaved in one
process at batch 1 and 16. Raw onnxruntime on gpux's own session is a third column,
so the wrapper's cost is visible too. Also reports argmax agreement on a fixed set of
64 sentences and effective GFLOP/s.

Writes benchmarks/results/vs_pytorch.json and .md. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RESULTS, env_line, spread, write  # noqa: E402

WORDS = ("the film was great terrible boring moving slow brilliant plot actors music ending story "
         "never again loved hated fine okay strange beautiful weak strong").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) for _ in range(n)]


def distilbert_base(folder: Path) -> tuple[Any, Any]:
    """Save a DistilBERT-base classifier (random weights, seed 0) with the MiniLM WordPiece tokenizer
    (same 30522-token vocabulary); returns (config, the PyTorch model)."""
    import torch
    import transformers as tf

    import hf_models

    cfg = tf.DistilBertConfig(num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                              label2id={"NEGATIVE": 0, "POSITIVE": 1})
    cfg.architectures = ["DistilBertForSequenceClassification"]
    torch.manual_seed(0)
    pt = tf.AutoModelForSequenceClassification.from_config(cfg).eval()
    pt.save_pretrained(folder)
    for name in hf_models.TOKENIZER_FILES:
        (folder / name).write_bytes((hf_models.minilm_folder() / name).read_bytes())
    return cfg, pt


def flops_per_sequence(cfg: Any, seq: int) -> float:
    """Multiply-adds x2 of the encoder's matmuls for one sequence (embeddings excluded)."""
    d, ff, layers = cfg.dim, cfg.hidden_dim, cfg.n_layers
    per_layer = 2 * seq * (4 * d * d + 2 * d * ff) + 2 * 2 * seq * seq * d
    return float(layers * per_layer + 2 * seq * d * d + 2 * d * cfg.num_labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs1", type=int, default=40, help="interleaved calls per path at batch 1")
    ap.add_argument("--runs16", type=int, default=8, help="interleaved calls per path at batch 16")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch
    import transformers as tf

    from gpux.bench.env import environment
    from gpux.convert.pipeline import convert
    from gpux.engine.model import load
    from gpux.engine.options import cpu_count
    from gpux.store.local import Store

    threads = cpu_count()
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="gpux-vs-pytorch-"))
    folder = work / "distilbert-base-sst2-shaped"
    cfg, pt = distilbert_base(folder)

    t0 = time.perf_counter()
    bundle = convert(folder, name="distilbert-base-bench", source={"kind": "local", "path": str(folder)},
                     store=Store(work / "home"))
    convert_s = time.perf_counter() - t0
    model = load(bundle)
    session = model.graphs["model"].session
    tok = tf.AutoTokenizer.from_pretrained(folder)

    texts = sentences(64)
    enc = tok(texts, padding="max_length", truncation=True, max_length=args.seq, return_tensors="np")
    feed_all = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    with torch.no_grad():
        pt_logits = pt(**{k: torch.from_numpy(v) for k, v in feed_all.items()}).logits.numpy()
    ox_logits = model.run(feed_all)["logits"]
    agree = float((pt_logits.argmax(-1) == ox_logits.argmax(-1)).mean())
    max_abs = float(np.abs(pt_logits - ox_logits).max())

    results: dict[str, Any] = {}
    for batch, runs in ((1, args.runs1), (16, args.runs16)):
        feed = {k: v[:batch] for k, v in feed_all.items()}
        tfeed = {k: torch.from_numpy(v) for k, v in feed.items()}
        paths = {
            "gpux Model.run": lambda f=feed: model.run(f),
            "onnxruntime session.run": lambda f=feed: session.run(None, f),
            "PyTorch eager": lambda f=tfeed: pt(**f),
        }
        with torch.no_grad():
            for fn in paths.values():
                fn()
                fn()
            samples: dict[str, list[float]] = {k: [] for k in paths}
            order = list(paths.items())
            for _ in range(runs):
                random.shuffle(order)
                for name, fn in order:
                    t = time.perf_counter()
                    fn()
                    samples[name].append((time.perf_counter() - t) * 1e3)
        stats = {k: spread(v) for k, v in samples.items()}
        gflop = flops_per_sequence(cfg, args.seq) * batch / 1e9
        results[f"batch_{batch}"] = {
            "latency_ms": stats,
            "throughput_items_per_s": {k: batch * 1e3 / s["median"] for k, s in stats.items()},
            "effective_gflops": {k: gflop / (s["median"] / 1e3) for k, s in stats.items()},
            "speedup_vs_pytorch": stats["PyTorch eager"]["median"] / stats["gpux Model.run"]["median"],
            "gpux_over_raw_onnxruntime": stats["gpux Model.run"]["median"] / stats["onnxruntime session.run"]["median"],
        }
    report = {
        "model": "DistilBERT-base architecture (random weights), sequence classification, 2 labels",
        "sequence_length": args.seq,
        "threads": threads,
        "convert_seconds": convert_s,
        "parity": bundle.manifest.conversion["parity"],
        "argmax_agreement_64_sentences": agree,
        "logits_max_abs_diff": max_abs,
        "results": results,
        "environment": environment(("torch", "transformers")),
        "date": time.strftime("%Y-%m-%d"),
    }
    write("vs_pytorch", report, markdown(report), args.out)


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [
        "# gpux vs PyTorch eager: DistilBERT-base classifier",
        "",
        env_line("vs_pytorch.py", env, f", {r['threads']} threads for both"),
        f"Sequence length {r['sequence_length']} (padded), fp32. Conversion took {r['convert_seconds']:.1f} s; parity "
        f"cosine {r['parity']['cosine_min']:.6f}; argmax agreement on 64 sentences "
        f"{r['argmax_agreement_64_sentences']:.0%}, logits max-abs diff {r['logits_max_abs_diff']:.2e}.",
        "",
        "| batch | path | median ms | p25–p75 ms | p5–p95 ms | items/s | GFLOP/s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for key, res in r["results"].items():
        b = key.split("_")[1]
        for name, s in res["latency_ms"].items():
            lines.append(f"| {b} | {name} | {s['median']:.2f} | {s['p25']:.2f}–{s['p75']:.2f} | "
                         f"{s['p5']:.2f}–{s['p95']:.2f} | {res['throughput_items_per_s'][name]:.1f} | "
                         f"{res['effective_gflops'][name]:.1f} |")
    lines.append("")
    for key, res in r["results"].items():
        goal = " (goal: ≥ 1.5×)" if key == "batch_1" else ""
        lines.append(f"- {key.replace('_', ' ')}: gpux is **{res['speedup_vs_pytorch']:.2f}×** PyTorch eager's speed"
                     f"{goal}; gpux / raw onnxruntime on the same session = {res['gpux_over_raw_onnxruntime']:.3f}.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
