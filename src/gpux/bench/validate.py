"""``gpux validate``: the phase-1 check as a command — can gpux take these models end to end?

For each model, in a fresh store (so the first pass is cold): ``gpux run MODEL`` as a
user would type it (pull, convert, parity check, run), timed; then a second pass of
the same runs, whose cache hits come from the store's own counters. Thresholds
(conversion rate, seconds per model, hit rate) decide the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT = json.dumps({"inputs": ["gpux validates this model end to end.", "A second, longer sentence to batch."]})


@dataclass
class Thresholds:
    min_conversion: float = 0.90
    max_seconds: float = 30.0
    min_hit_rate: float = 0.80


def _run(ref: str, env: dict[str, str], timeout: float) -> tuple[bool, float, str]:
    start = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "gpux", "run", ref, "-i", INPUT], env=env, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    took = time.perf_counter() - start
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        return False, took, (lines[-1] if lines else res.stderr.strip()[-300:])
    return True, took, ""


def validate(models: list[str], thresholds: Thresholds, timeout: float = 600.0) -> dict[str, Any]:
    """Run the check; returns the report (``passed`` says whether every threshold held)."""
    from gpux.store import stats
    from gpux.store.local import Store

    home = Path(tempfile.mkdtemp(prefix="gpux-validate-"))
    env = {**os.environ, "GPUX_HOME": str(home)}
    rows: list[dict[str, Any]] = []
    for ref in models:
        ok, took, error = _run(ref, env, timeout)
        row: dict[str, Any] = {"model": ref, "converted": ok, "pull_convert_run_s": round(took, 3), "error": error}
        if ok:
            store = Store(home)
            name = ref.partition("@")[0]
            folder = Path(name).expanduser()
            if folder.is_dir():  # a local HF folder: the stored conversion of its path and content
                from gpux.registry import local

                name = local.find_stored(store, folder.resolve(), local.source(folder.resolve())) or name
            try:
                conv = store.manifest(name).conversion
                row.update(task=store.manifest(name).task, exporter=conv.get("exporter"),
                           parity_cosine=conv.get("parity", {}).get("cosine_min"),
                           parity_max_abs=conv.get("parity", {}).get("max_abs"))
            except Exception:  # a model that ran but whose manifest cannot be read is reported as such
                row["error"] = "ran, but its stored manifest could not be read"
        rows.append(row)
    before = stats.load(home)
    for row in rows:
        if row["converted"]:
            ok, took, _ = _run(row["model"], env, timeout)
            row["second_pass_s"] = round(took, 3)
    after = stats.load(home)
    hits = sum(v.get("hits", 0) for v in after.values()) - sum(v.get("hits", 0) for v in before.values())
    misses = sum(v.get("misses", 0) for v in after.values()) - sum(v.get("misses", 0) for v in before.values())
    converted = sum(r["converted"] for r in rows)
    summary = {
        "models": len(rows), "converted": converted, "conversion_rate": converted / max(len(rows), 1),
        "max_pull_convert_run_s": max((r["pull_convert_run_s"] for r in rows if r["converted"]), default=None),
        "second_pass_hits": hits, "second_pass_misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
    }
    checks = {
        "conversion_rate": summary["conversion_rate"] >= thresholds.min_conversion,
        "pull_convert_run_s": all(r["pull_convert_run_s"] < thresholds.max_seconds for r in rows if r["converted"]),
        "hit_rate": (summary["hit_rate"] or 0.0) >= thresholds.min_hit_rate,
    }
    return {"rows": rows, "summary": summary, "thresholds": vars(thresholds), "checks": checks,
            "passed": all(checks.values()), "store": str(home)}


def markdown(report: dict[str, Any]) -> str:
    s, t = report["summary"], report["thresholds"]
    lines = ["| model | converted | task | parity cosine | pull+convert+run s | second run s | error |",
             "|---|:-:|---|---:|---:|---:|---|"]
    for r in report["rows"]:
        cos = f"{r['parity_cosine']:.6f}" if r.get("parity_cosine") is not None else "-"
        lines.append(f"| {r['model']} | {'yes' if r['converted'] else 'no'} | {r.get('task') or '-'} | {cos} | "
                     f"{r['pull_convert_run_s']:.1f} | {r.get('second_pass_s', '-')} | {r['error'] or ''} |")
    hit = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.0%}"
    lines += ["", f"Conversion {s['converted']}/{s['models']} ({s['conversion_rate']:.0%}, min "
              f"{t['min_conversion']:.0%}); slowest pull+convert+run {s['max_pull_convert_run_s']} s (max "
              f"{t['max_seconds']} s); second-pass cache hit rate {hit} (min {t['min_hit_rate']:.0%}). "
              + ("**passed**" if report["passed"] else "**failed**: " + ", ".join(k for k, v in report["checks"].items()
                                                                                  if not v)), ""]
    return "\n".join(lines)
