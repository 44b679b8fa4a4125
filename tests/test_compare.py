"""gpux bench compare: flags a planted regression, passes an identical pair, treats noise as noise."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conftest import gpux as cli
from gpux.bench.compare import compare, regressions


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict:
    out = tmp_path_factory.mktemp("bench") / "base.json"
    res = cli("run", str(model_dir / "mlp.onnx"), "-i", '{"x": [[1, 2, 3, 4]]}', "--benchmark", "--runs", "50",
              "-o", str(out))
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def _write(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_identical_pair_passes(tmp_path: Path, result: dict) -> None:
    res = cli("bench", "compare", _write(tmp_path, "a.json", result), _write(tmp_path, "b.json", result), "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert rows and all(r["verdict"] == "same" for r in rows)
    assert {"latency.p50_ms", "throughput_items_per_s", "peak_rss_mb"} <= {r["metric"] for r in rows}


def test_planted_regression_fails_with_the_table(tmp_path: Path, result: dict) -> None:
    worse = copy.deepcopy(result)
    for k in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"):
        worse["latency"][k] *= 3
    worse["throughput_items_per_s"] /= 3
    res = cli("bench", "compare", _write(tmp_path, "a.json", result), _write(tmp_path, "b.json", worse))
    assert res.returncode == 1
    assert "REGRESSION" in res.stdout and "latency.p50_ms" in res.stdout and "regression(s)" in res.stdout


def test_gates_noise_and_overrides() -> None:
    base = {"latency": {"mean_ms": 10.0, "std_ms": 2.0, "p50_ms": 10.0}, "throughput_items_per_s": 100.0,
            "peak_rss_mb": 100.0}
    new = {"latency": {"mean_ms": 13.0, "std_ms": 2.0, "p50_ms": 13.0}, "throughput_items_per_s": 95.0,
           "peak_rss_mb": 140.0}
    rows = {r.metric: r for r in compare(base, new)}
    assert rows["latency.p50_ms"].verdict == "noise"  # +30% but std/mean is 20% in each run
    assert rows["throughput_items_per_s"].verdict == "noise"
    assert rows["peak_rss_mb"].verdict == "REGRESSION"  # +40% > 25%, memory has no noise band
    assert [r.metric for r in regressions(list(rows.values()))] == ["peak_rss_mb"]
    assert regressions(compare(base, new, {"memory": 0.5})) == []
    better = compare(base, {**new, "peak_rss_mb": 50.0})
    assert {r.metric: r.verdict for r in better}["peak_rss_mb"] == "better"


def test_unreadable_input(tmp_path: Path) -> None:
    res = cli("bench", "compare", str(tmp_path / "nope.json"), str(tmp_path / "nope.json"))
    assert res.returncode == 2 and "cannot read benchmark result" in res.stderr


def test_bench_points_take_noise_from_their_own_latency() -> None:
    def doc(per_s: float, std: float) -> dict[str, object]:
        point = {"latency": {"mean_ms": 10.0, "std_ms": std, "p50_ms": 10.0}, "items_per_s": per_s}
        return {"models": {"m": {"precisions": {"fp32": {"gpux": {"points": {"b1": point}}}}}}}

    key = "models.m.precisions.fp32.gpux.points.b1.items_per_s"
    noisy = {r.metric: r for r in compare(doc(100.0, 2.0), doc(80.0, 2.0))}
    assert noisy[key].noise == 0.4 and noisy[key].verdict == "noise"
    steady = {r.metric: r for r in compare(doc(100.0, 0.1), doc(80.0, 0.1))}
    assert steady[key].verdict == "REGRESSION"
