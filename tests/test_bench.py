"""Benchmark statistics and runner on a real session (values, not timings, are asserted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpux
from gpux.bench.runner import batch_size, benchmark
from gpux.bench.stats import summarize_ms


def test_summary_matches_numpy() -> None:
    samples = list(np.random.default_rng(3).gamma(2.0, 1.5, size=1001))
    s = summarize_ms(samples)
    arr = np.asarray(samples)
    assert s["mean_ms"] == pytest.approx(arr.mean()) and s["std_ms"] == pytest.approx(arr.std())
    for p in (50, 90, 95, 99):
        assert s[f"p{p}_ms"] == pytest.approx(np.percentile(arr, p))
    assert (s["min_ms"], s["max_ms"]) == (arr.min(), arr.max())
    with pytest.raises(ValueError):
        summarize_ms([])


def test_runner_counts_items_by_batch(model_dir: Path) -> None:
    m = gpux.load(model_dir / "mlp.onnx", placement=True)
    feed = {"x": np.ones((8, 4), np.float32)}
    assert batch_size(m, feed) == 8
    r = benchmark(m, feed, runs=20, warmup=2)
    assert r["batch_size"] == 8 and r["runs"] == 20 and r["inputs"] == {"x": [8, 4]}
    assert r["throughput_items_per_s"] == pytest.approx(8e3 / r["latency"]["mean_ms"], rel=1e-9)
    assert r["placement"] == {"cpu": sum(r["placement"].values())} and r["placement"]["cpu"] >= 1
    # Dim 0 of the first non-scalar input, fixed or not; all-scalar inputs count one item.
    fixed = gpux.load(model_dir / "intbool.onnx")
    assert batch_size(fixed, {"ids": np.ones((2, 3), np.int64), "flags": np.ones(3, bool)}) == 2
    scale = gpux.load(model_dir / "scale.onnx")
    assert batch_size(scale, {"x": np.ones(3, np.float32), "s": np.array(2, np.int32)}) == 3
    with pytest.raises(ValueError):
        benchmark(m, feed, runs=0)
