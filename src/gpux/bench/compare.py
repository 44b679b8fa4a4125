"""Regression gates: compare two benchmark results metric by metric, honestly about noise.

Works on any gpux benchmark JSON (``gpux run --benchmark``, benchmarks/*.py results):
every numeric leaf whose name says what it is becomes a metric —

- latency (lower is better): names ending in ``_ms`` (``p50_ms``, ``mean_ms``, ``ttft_ms``...);
- throughput (higher is better): names containing ``per_s`` (``throughput_items_per_s``, ``tokens_per_s``);
- memory (lower is better): names ending in ``_mb`` / ``_mib`` / ``_bytes``.

A metric regresses when it moves the wrong way by more than its gate *and* by more
than the noise: the spread the results report (``std_ms`` beside a latency, the
relative std of latency for a throughput), summed over both runs. A delta inside
the spread is reported as ``noise``, never as a regression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Default gates from the project's seeds: allowed relative change in the bad direction.
GATES = {"latency": 0.50, "throughput": 0.15, "memory": 0.25, "ttft": 0.20, "tokens_per_s": 0.15}


@dataclass
class Row:
    metric: str
    kind: str
    base: float
    new: float
    gate: float
    noise: float
    verdict: str

    @property
    def delta(self) -> float:
        return (self.new - self.base) / self.base if self.base else 0.0


def _kind(name: str) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    if "ttft" in leaf:
        return "ttft"
    if "tokens_per_s" in leaf:
        return "tokens_per_s"
    if leaf.endswith("_ms") and not leaf.startswith("std"):
        return "latency"
    if "per_s" in leaf:
        return "throughput"
    if leaf.endswith(("_mb", "_mib", "_bytes")):
        return "memory"
    return None


def _flatten(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if k in ("environment", "session", "inputs"):
                continue  # context, not metrics
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix] = float(data)
    return out


def _spread(flat: dict[str, float], name: str, kind: str) -> float:
    """Relative noise of one run for ``name``: std/mean of the latency it belongs to."""
    scope = name.rsplit(".", 1)[0] if "." in name else ""
    std = flat.get(f"{scope}.std_ms" if scope else "std_ms")
    mean = flat.get(f"{scope}.mean_ms" if scope else "mean_ms")
    if std is None or not mean:  # throughput sits beside its latency block (gpux bench points)
        std, mean = flat.get(f"{scope}.latency.std_ms"), flat.get(f"{scope}.latency.mean_ms")
    if std is None or not mean:  # ... or beside the one latency block of a gpux run --benchmark result
        std, mean = flat.get("latency.std_ms"), flat.get("latency.mean_ms")
    if std is None or not mean or kind == "memory":
        return 0.0
    return std / mean


def compare(base: dict[str, Any], new: dict[str, Any], gates: dict[str, float] | None = None) -> list[Row]:
    """One row per metric present in both results."""
    gates = {**GATES, **(gates or {})}
    fb, fn = _flatten(base), _flatten(new)
    rows = []
    for name in sorted(set(fb) & set(fn)):
        kind = _kind(name)
        if kind is None or fb[name] == 0:
            continue
        b, n = fb[name], fn[name]
        noise = _spread(fb, name, kind) + _spread(fn, name, kind)
        worse = (n - b) / b if kind in ("latency", "memory", "ttft") else (b - n) / b
        gate = gates[kind]
        if worse <= 0:
            verdict = "better" if worse < -noise else "same"
        elif worse <= noise:
            verdict = "noise"
        elif worse > gate:
            verdict = "REGRESSION"
        else:
            verdict = "within gate"
        rows.append(Row(name, kind, b, n, gate, noise, verdict))
    return rows


def regressions(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.verdict == "REGRESSION"]
