"""What every benchmark script shares: spread statistics, the environment line, writing results.

Stdlib only: overhead.py measures child processes from a process that must stay small.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _pct(sorted_xs: list[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    k = (len(sorted_xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def spread(samples: list[float]) -> dict[str, float]:
    """Median with the quartiles and the p5..p95 range: the spread every figure carries."""
    xs = sorted(samples)
    return {"median": statistics.median(xs), **{f"p{p}": _pct(xs, p) for p in (5, 25, 75, 95)}, "n": len(xs)}


def env_line(script: str, env: dict[str, Any], extra: str = "") -> str:
    """``Measured by `benchmarks/X.py` on CPU (N cores), Python V, pkg V, ...`` for a report's header."""
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    isa = f", {' '.join(env['isa'])}" if env.get("isa") else ""
    return (f"Measured by `benchmarks/{script}` on {env['cpu']} ({env['cores_logical']} cores{extra}{isa}), "
            f"Python {env['python']}, {pkgs}.")


def write(name: str, report: dict[str, Any], markdown: str, out: Path = RESULTS) -> None:
    """Write ``name``.json and ``name``.md under ``out`` and print the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
