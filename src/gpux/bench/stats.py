"""Latency statistics in the shape every gpux report uses (field names end in ``_ms``)."""

from __future__ import annotations

from collections.abc import Sequence

PERCENTILES = (50, 90, 95, 99)


def summarize_ms(samples_ms: Sequence[float]) -> dict[str, float]:
    """mean, std (population), min, p50, p90, p95, p99, max of ``samples_ms``.

    Percentiles interpolate linearly between ranks (numpy's default), so a
    result can be checked against ``numpy.percentile`` exactly.
    """
    import numpy as np

    if not samples_ms:
        raise ValueError("no samples to summarise")
    arr = np.asarray(samples_ms, dtype=np.float64)
    out = {"mean_ms": float(arr.mean()), "std_ms": float(arr.std()), "min_ms": float(arr.min())}
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES)):
        out[f"p{p}_ms"] = float(v)
    out["max_ms"] = float(arr.max())
    return out
