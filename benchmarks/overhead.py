"""What gpux costs over plain onnxruntime, measured side by side in one run.

1. Per call: ``Model.run`` vs ``InferenceSession.run`` on a tiny model, calls
   interleaved in one process (the same session, so only the wrapper differs;
   a separately created default session is a second baseline).
2. Start-up: ``gpux --help`` wall time vs a bare ``python -c pass``.
3. One-shot CLI: ``gpux run`` of a small built model (silero-vad) vs a plain
   5-line onnxruntime script doing the same work, wall time and peak RSS.

Writes benchmarks/results/overhead.json and overhead.md. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# numpy, onnxruntime and gpux are imported inside the functions that need them: the
# process measurements run in a stdlib-only child, because a forked child's peak
# RSS (ru_maxrss) starts at its parent's size.

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RESULTS, env_line, spread, write  # noqa: E402
EXAMPLE = ROOT / "examples" / "silero-vad"

PLAIN_SCRIPT = """\
import json, sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
d = json.load(open(sys.argv[2]))
feed = {i.name: np.asarray(d[i.name], np.float32 if "float" in i.type else np.int64) for i in s.get_inputs()}
print(json.dumps({o.name: v.tolist() for o, v in zip(s.get_outputs(), s.run(None, feed))}))
"""


def tiny_model(path: Path, width: int) -> Path:
    """relu(x @ W + b), x [batch, width]: small enough that per-call overhead shows."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(width, width)).astype(np.float32)
    b = rng.normal(size=(width,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def per_call(path: Path, calls: int) -> dict[str, Any]:
    """Interleave gpux and raw calls in random order per round; time each call alone."""
    import numpy as np
    import onnxruntime as ort

    import gpux

    model = gpux.load(path)
    same = model.graphs["model"].session
    default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)}
    np.testing.assert_allclose(model.run(feed)["y"], same.run(None, feed)[0])
    runners = {
        "gpux Model.run": lambda: model.run(feed),
        "onnxruntime run (same session)": lambda: same.run(None, feed),
        "onnxruntime run (default session)": lambda: default.run(None, feed),
    }
    for fn in runners.values():  # warm up every path
        for _ in range(200):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners.items())
    clock = time.perf_counter_ns
    for _ in range(calls):
        random.shuffle(order)
        for name, fn in order:
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) / 1e3)
    stats = {k: spread(v) for k, v in samples.items()}
    base = stats["onnxruntime run (same session)"]["median"]
    # Paired ratio per round: robust to drifts that hit both sides of a round alike.
    paired = [g / r for g, r in zip(samples["gpux Model.run"], samples["onnxruntime run (same session)"])]
    return {
        "model": "tiny MLP relu(x@W+b), x float32 [1, 64], W 64x64",
        "calls_each": calls,
        "latency_us": stats,
        "ratio_of_medians_vs_same_session": stats["gpux Model.run"]["median"] / base,
        "ratio_of_medians_vs_default_session":
            stats["gpux Model.run"]["median"] / stats["onnxruntime run (default session)"]["median"],
        "paired_ratio": spread(paired),
        "overhead_us_median": stats["gpux Model.run"]["median"] - base,
        "session": model.settings,
    }


def _child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of one child process, via wait4."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read() if proc.stdout else b""  # drain so the child never blocks
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {err.decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def processes(rounds: int) -> dict[str, Any]:
    """gpux --help vs python -c pass, and gpux run vs a plain onnxruntime script, interleaved."""
    home = tempfile.mkdtemp(prefix="gpux-bench-home-")
    env = {**os.environ, "GPUX_HOME": home}
    gpux_bin = [sys.executable, "-m", "gpux"]
    subprocess.run([*gpux_bin, "build", str(EXAMPLE)], check=True, env=env, capture_output=True)
    info = subprocess.run([*gpux_bin, "inspect", "silero-vad", "--json"], check=True, env=env,
                          capture_output=True, text=True).stdout
    graph = Path(json.loads(info)["graphs"]["model"]["file"])  # the stored bundle's graph
    script = Path(home) / "plain.py"
    script.write_text(PLAIN_SCRIPT)
    feed = str(EXAMPLE / "input.json")
    cases = {
        "gpux --help": [*gpux_bin, "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "gpux run silero-vad": [*gpux_bin, "run", "silero-vad", "-i", f"@{feed}"],
        "plain onnxruntime script": [sys.executable, str(script), str(graph), feed],
    }
    # Same answer from both one-shot paths, or the comparison means nothing.
    a = json.loads(_child(cases["gpux run silero-vad"], env)[2])["outputs"]["output"][0][0]
    b = json.loads(_child(cases["plain onnxruntime script"], env)[2])["output"][0][0]
    if abs(a - b) > 1e-5 * max(1.0, abs(b)):
        raise RuntimeError(f"gpux run and the plain script disagree: {a} vs {b}")
    walls: dict[str, list[float]] = {k: [] for k in cases}
    rss: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases.items())
    for _ in range(rounds):
        random.shuffle(order)
        for name, cmd in order:
            w, r, _ = _child(cmd, env)
            walls[name].append(w)
            rss[name].append(r)
    wall = {k: spread(v) for k, v in walls.items()}
    mem = {k: spread(v) for k, v in rss.items()}
    return {
        "rounds": rounds,
        "wall_s": wall,
        "peak_rss_mib": mem,
        "help_wall_s_median": wall["gpux --help"]["median"],
        "run_wall_ratio": wall["gpux run silero-vad"]["median"] / wall["plain onnxruntime script"]["median"],
        "run_rss_ratio": mem["gpux run silero-vad"]["median"] / mem["plain onnxruntime script"]["median"],
        "plain_script": PLAIN_SCRIPT,
    }


def markdown(r: dict[str, Any]) -> str:
    pc, pr = r["per_call"], r["processes"]
    env = r["environment"]
    lines = [
        "# gpux overhead vs plain onnxruntime",
        "",
        env_line("overhead.py", env),
        "",
        f"## Per call ({pc['model']}, {pc['calls_each']} interleaved calls each)",
        "",
        "| path | median µs | p25–p75 µs | p5–p95 µs |",
        "|---|---:|---:|---:|",
    ]
    for k, s in pc["latency_us"].items():
        lines.append(f"| {k} | {s['median']:.2f} | {s['p25']:.2f}–{s['p75']:.2f} | {s['p5']:.2f}–{s['p95']:.2f} |")
    p = pc["paired_ratio"]
    lines += [
        "",
        f"Ratio of medians, gpux / same session: **{pc['ratio_of_medians_vs_same_session']:.3f}×** "
        f"(gpux / default session: {pc['ratio_of_medians_vs_default_session']:.3f}×); "
        f"paired per-round ratio median {p['median']:.3f} (p25–p75 {p['p25']:.3f}–{p['p75']:.3f}); "
        f"overhead {pc['overhead_us_median']:+.2f} µs/call. Goal: ≤ 1.05×.",
        "",
        f"## Processes ({pr['rounds']} interleaved rounds)",
        "",
        "| command | median wall s | p25–p75 s | median peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for k, s in pr["wall_s"].items():
        lines.append(f"| `{k}` | {s['median']:.3f} | {s['p25']:.3f}–{s['p75']:.3f} | "
                     f"{pr['peak_rss_mib'][k]['median']:.1f} |")
    lines += [
        "",
        f"`gpux --help`: **{pr['help_wall_s_median']:.3f} s** (goal ≤ 0.3 s). "
        f"`gpux run` / plain script: wall **{pr['run_wall_ratio']:.2f}×**, peak RSS "
        f"**{pr['run_rss_ratio']:.2f}×** (goal ≤ 1.5× each).",
        "",
        "Peak RSS comes from wait4() on each child, launched from a stdlib-only Python process; a child's",
        "figure cannot fall below that launcher's own RSS at fork (about 15 MiB), which is why",
        "`python -c pass` reads about 15 MiB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000, help="interleaved calls per path (>= 2000)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved process rounds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--processes-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.processes_only:  # the stdlib-only child: print JSON and stop
        print(json.dumps(processes(args.rounds)))
        return
    child = subprocess.run([sys.executable, __file__, "--processes-only", "--rounds", str(args.rounds)],
                           check=True, capture_output=True, text=True)
    procs = json.loads(child.stdout)
    from gpux.bench.env import environment

    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model(Path(tmp) / "tiny.onnx", 64)
        result = {"per_call": per_call(path, args.calls), "processes": procs,
                  "environment": environment(), "date": time.strftime("%Y-%m-%d")}
    write("overhead", result, markdown(result), args.out)


if __name__ == "__main__":
    main()
