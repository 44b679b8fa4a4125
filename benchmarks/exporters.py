"""Which exporter gpux tries first, decided by measurement: TorchScript vs dynamo on real MiniLM.

For each exporter, in one run: export wall time, parity against PyTorch (gpux's
own check: cosine and max-abs over 3 batch/length cases), graph size, and
onnxruntime latency of the exported graph at batch 1 x 128 tokens.

Writes benchmarks/results/exporters.json and .md. Run: ``make bench``.
"""

from __future__ import annotations

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


def main() -> None:
    import onnxruntime as ort

    import hf_models
    from gpux.bench.env import environment
    from gpux.convert.export import EXPORTERS, export

    folder = hf_models.minilm_folder()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        export(folder, "feature-extraction", Path(tmp) / "warm.onnx", exporters=("torchscript",))  # pay lazy imports
        walls: dict[str, list[float]] = {k: [] for k in EXPORTERS}
        for order in (EXPORTERS, EXPORTERS[::-1], EXPORTERS):
            for kind in order:
                t = time.perf_counter()
                done = export(folder, "feature-extraction", Path(tmp) / f"{kind}.onnx", exporters=(kind,))
                walls[kind].append(time.perf_counter() - t)
        for kind in EXPORTERS:
            out = Path(tmp) / f"{kind}.onnx"
            done = export(folder, "feature-extraction", out, exporters=(kind,))
            wall = float(np.median(walls[kind]))
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            feed = {"input_ids": np.full((1, 128), 2000, np.int64), "attention_mask": np.ones((1, 128), np.int64),
                    "token_type_ids": np.zeros((1, 128), np.int64)}
            for _ in range(3):
                sess.run(None, feed)
            lat = []
            for _ in range(30):
                s = time.perf_counter()
                sess.run(None, feed)
                lat.append((time.perf_counter() - s) * 1e3)
            rows[kind] = {"export_and_parity_s": wall, "parity": done.parity, "graph_bytes": out.stat().st_size,
                          "ort_latency_ms_b1_s128": {"median": float(np.median(lat)),
                                                     "p25": float(np.percentile(lat, 25)),
                                                     "p75": float(np.percentile(lat, 75))}}
    report = {"model": "sentence-transformers/all-MiniLM-L6-v2 (feature-extraction)", "exporters": rows,
              "environment": environment(("torch", "transformers", "onnxscript")), "date": time.strftime("%Y-%m-%d")}
    lines = ["# Exporters on all-MiniLM-L6-v2", "", env_line("exporters.py", report["environment"]), "",
             "| exporter | load + export + parity s (median of 3) | parity cosine min | max-abs | graph MB | ORT ms (b1, 128 tok, p25–p75) |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind, r in rows.items():
        lat = r["ort_latency_ms_b1_s128"]
        lines.append(f"| {kind} | {r['export_and_parity_s']:.2f} | {r['parity']['cosine_min']:.6f} | "
                     f"{r['parity']['max_abs']:.2e} | {r['graph_bytes'] / 1e6:.1f} | "
                     f"{lat['median']:.2f} ({lat['p25']:.2f}–{lat['p75']:.2f}) |")
    lines.append("")
    write("exporters", report, "\n".join(lines))


if __name__ == "__main__":
    main()
