"""Regression gates: compare two benchmark results metric by metric, honestly about noise.

Works on any gpux benchmark JSON (``gpux run --benchmark``, ``gpux bench`` on any model, text-generation
included, benchmarks/*.py results): every numeric leaf whose name says what it is becomes a metric.

**Which name.** A leaf that is itself a statistic (``p50``, ``p95``, ``median``, ``p5``, ``mean``, ``min``,
``max``: see :data:`STATISTICS`) says nothing about what was measured, so the block it sits in names the
metric: ``ttft_ms.p50`` is a time to first token, ``decode_tokens_per_s.median`` a decode rate. Any other
leaf names itself (``latency.p50_ms``, ``itl_p99_ms``, ``peak_rss_mb``); a statistic glued to it
(``load_ms_median``, ``itl_ms_p99``) is set aside before classifying. Counts in a block (``n``) and
spreads (``std``) are not metrics. Kinds, first match wins:

- ttft (lower is better, gate +20%): ``ttft`` with a time unit (``ttft_ms``; a bare ``ttft`` is a ratio
  between engines — ``gpux bench``'s ``ratios`` — and is not gated: the times it is made of are);
- tokens_per_s (higher is better, gate −15%): ``tokens_per_s``, ``tok_s``, ``tok_per_s``
  (``decode_tokens_per_s``, ``prefill_tokens_per_s``, ``decode_tok_s``);
- latency (lower is better, gate +50%; "API latency"): names ending in ``_ms`` (``p50_ms``, ``mean_ms``,
  ``itl_p99_ms``, ``load_ms_median``), except ``std*``;
- throughput (higher is better, gate −15%): names containing ``per_s`` (``throughput_items_per_s``);
- memory (lower is better, gate +25%): names ending in ``_mb`` / ``_mib`` / ``_bytes``.

Each gate is configurable (``gpux bench compare --ttft --tokens-per-s --latency --throughput --memory``).

**Noise.** A metric regresses when it moves the wrong way by more than its gate *and* by more than the
noise: the relative spread each run reports for it, summed over both runs. A delta inside the spread is
reported as ``noise``, never as a regression. The spread of one run is

- for a latency or throughput that sits beside a latency block (``gpux run --benchmark``, ``gpux bench``
  points of non-generation models): ``std_ms / mean_ms`` of that latency, as before;
- for a statistic of a block (generation points, benchmarks/*.py): the block's own dispersion on the side a
  regression lies on — the slow tail for what should be low, the slow end for what should be high. So TTFT
  takes ``(p95 − p50) / p50`` and decode tok/s ``(median − p5) / median``, each divided by the normal
  quantile of that percentile (1.645 for p5/p95; p90, p99, p75 likewise when p95 is absent): the standard
  deviation a normal distribution with that centre and that tail would have, i.e. the same one-σ band
  ``std / mean`` gives the other results, so generation and non-generation gates mean the same thing.
  Why a tail and not ``p5..p95``: a run whose slow tail is long can give a slow median next time; its fast
  tail says nothing about that. A block with a ``std`` uses ``std / centre`` directly;
- for a generation point's rates and latencies that carry no percentiles of their own, the block they are
  made of: ``prefill_tokens_per_s`` (prompt tokens ÷ TTFT) takes TTFT's spread, ``itl_*`` (the gaps decode
  tok/s is made of) takes the decode rate's;
- memory has no noise band: a process's high-water mark does not jitter as time does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

#: Default gates from the project's seeds: allowed relative change in the bad direction.
GATES = {"latency": 0.50, "throughput": 0.15, "memory": 0.25, "ttft": 0.20, "tokens_per_s": 0.15}

#: Leaves that are statistics of the block they sit in (the block names the metric).
STATISTICS = re.compile(r"p\d{1,2}|median|mean|avg|min|max")
#: Kinds where a larger value is worse.
LOWER_IS_BETTER = ("latency", "memory", "ttft")

_TOKENS_PER_S = re.compile(r"tok(?:en)?s?_(?:per_)?s(?:$|_)")
_TIME_UNIT = re.compile(r"(?:^|_)(?:ms|us|s)(?:$|_)")
#: A flat generation metric -> the prefix of the sibling block whose spread it shares.
_DERIVED_FROM = (("prefill", "ttft"), ("itl", "decode"))


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


def _kind_of_name(name: str) -> str | None:
    if "ttft" in name and _TIME_UNIT.search(name):
        return "ttft"
    if _TOKENS_PER_S.search(name):
        return "tokens_per_s"
    if name.endswith("_ms") and not name.startswith("std"):
        return "latency"
    if "per_s" in name:
        return "throughput"
    if name.endswith(("_mb", "_mib", "_bytes")):
        return "memory"
    return None


def _is_stat(part: str) -> bool:
    return STATISTICS.fullmatch(part) is not None


def _kind(name: str) -> str | None:
    """The kind of metric at path ``name`` (dotted), or None if it is not one."""
    parts = name.split(".")
    if _is_stat(parts[-1]):  # ttft_ms.p50: the block names the metric
        if len(parts) < 2:
            return None
        parts.pop()
    leaf = parts[-1]
    kind = _kind_of_name(leaf)
    if kind is None:  # load_ms_median, itl_ms_p99(.median): set the glued statistic aside
        bare = "_".join(w for w in leaf.split("_") if not _is_stat(w))
        kind = _kind_of_name(bare) if bare and bare != leaf else None
    return kind


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


def _z(q: int) -> float:
    return abs(NormalDist().inv_cdf(q / 100))


def _block_spread(flat: dict[str, float], block: str, lower_is_better: bool) -> float | None:
    """One-σ relative spread of a statistics block (see the module docstring), or None if it has none."""
    centre = next((flat[f"{block}.{s}"] for s in ("median", "p50", "mean") if f"{block}.{s}" in flat), None)
    if not centre:
        return None
    if f"{block}.std" in flat:
        return abs(flat[f"{block}.std"] / centre)
    slow, fast = (95, 90, 99, 75), (5, 10, 1, 25)
    for q in (slow + fast) if lower_is_better else (fast + slow):
        tail = flat.get(f"{block}.p{q}")
        if tail is not None:
            return abs(tail - centre) / abs(centre) / _z(q)
    return None


def _sibling_spread(flat: dict[str, float], scope: str, leaf: str) -> float | None:
    """A generation point's flat rate or latency takes the spread of the block it is made of."""
    for prefix, source in _DERIVED_FROM:
        if not leaf.startswith(prefix):
            continue
        head = f"{scope}." if scope else ""
        blocks = sorted({k[len(head):].split(".", 1)[0] for k in flat if k.startswith(head + source)})
        for block in blocks:
            kind = _kind_of_name(block)
            if kind is None:
                continue
            spread = _block_spread(flat, head + block, kind in LOWER_IS_BETTER)
            if spread is not None:
                return spread
    return None


def _spread(flat: dict[str, float], name: str, kind: str) -> float:
    """Relative noise of one run for ``name`` (see the module docstring)."""
    if kind == "memory":
        return 0.0
    scope, _, leaf = name.rpartition(".")
    if _is_stat(leaf) and scope:  # a statistic of a block: the block's own dispersion
        spread = _block_spread(flat, scope, kind in LOWER_IS_BETTER)
        if spread is not None:
            return spread
    else:
        spread = _sibling_spread(flat, scope, leaf)
        if spread is not None:
            return spread
    std = flat.get(f"{scope}.std_ms" if scope else "std_ms")
    mean = flat.get(f"{scope}.mean_ms" if scope else "mean_ms")
    if std is None or not mean:  # throughput sits beside its latency block (gpux bench points)
        std, mean = flat.get(f"{scope}.latency.std_ms"), flat.get(f"{scope}.latency.mean_ms")
    if std is None or not mean:  # ... or beside the one latency block of a gpux run --benchmark result
        std, mean = flat.get("latency.std_ms"), flat.get("latency.mean_ms")
    if std is None or not mean:
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
        worse = (n - b) / b if kind in LOWER_IS_BETTER else (b - n) / b
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
