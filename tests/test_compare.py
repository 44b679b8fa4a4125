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


# --- generation results (gpux bench on a text-generation model; benchmarks/generate.py) ---------------------

GENERATE_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "generate.json"
POINT = "engines.gpux fp32.points.p8-n6-b1"


@pytest.fixture(scope="module")
def generation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The results.json of a real ``gpux bench`` on a random-weight LLaMA (converted in seconds)."""
    from gpux.convert.pipeline import convert
    from gpux.store.local import Store
    from lm_models import tiny_lm

    root, src = tmp_path_factory.mktemp("gen-home"), tmp_path_factory.mktemp("gen-src")
    folder = tiny_lm(src / "tiny-llama", "llama")
    convert(folder, name=folder.name, source={"kind": "local", "path": str(folder)}, store=Store(root))
    out = tmp_path_factory.mktemp("gen-bench")
    res = cli("bench", f"{folder.name}:text-generation", "--precisions", "fp32", "--seq-lens", "8", "--new-tokens",
              "6", "--runs", "6", "--warmup", "1", "--threads", "1", "--baseline", "none", "--out", str(out),
              env={"GPUX_HOME": str(root)})
    assert res.returncode == 0, res.stderr
    return json.loads((out / "tiny-llama" / "results.json").read_text())


def _steady(doc: dict) -> dict:
    """``doc`` with a known, small spread in every block: TTFT p95 = p50 × 1.02, decode p5 = median × 0.98."""
    doc = copy.deepcopy(doc)
    for engine in doc["engines"].values():
        for p in engine["points"].values():
            p["ttft_ms"]["p95"], p["ttft_ms"]["p99"] = p["ttft_ms"]["p50"] * 1.02, p["ttft_ms"]["p50"] * 1.05
            p["decode_tokens_per_s"]["p5"] = p["decode_tokens_per_s"]["median"] * 0.98
    return doc


def _slower(doc: dict, ttft: float = 1.3, rate: float = 0.8) -> dict:
    """TTFT × ``ttft`` and every tokens/s × ``rate`` at every point."""
    doc = copy.deepcopy(doc)
    for engine in doc["engines"].values():
        for p in engine["points"].values():
            p["ttft_ms"] = {k: v * ttft for k, v in p["ttft_ms"].items()}
            p["decode_tokens_per_s"] = {k: v * rate for k, v in p["decode_tokens_per_s"].items()}
            p["prefill_tokens_per_s"] *= rate
    return doc


def test_generation_metrics_are_classified_by_their_whole_path(generation: dict) -> None:
    rows = {r.metric: r for r in compare(generation, generation)}
    kinds = {m: r.kind for m, r in rows.items()}
    assert kinds == {
        **{f"{POINT}.ttft_ms.{q}": "ttft" for q in ("p50", "p95", "p99")},
        **{f"{POINT}.decode_tokens_per_s.{q}": "tokens_per_s" for q in ("median", "p5")},
        f"{POINT}.prefill_tokens_per_s": "tokens_per_s",
        f"{POINT}.itl_p99_ms": "latency",
        "engines.gpux fp32.peak_rss_mb": "memory",
        "engines.gpux fp32.load_ms_median": "latency",
    }  # and not runs, batch, prompt_len, new_tokens, threads, warmup
    assert all(r.verdict == "same" for r in rows.values())
    assert {r.gate for r in rows.values() if r.kind == "ttft"} == {0.20}
    assert {r.gate for r in rows.values() if r.kind == "tokens_per_s"} == {0.15}
    # Noise: each run's block spread on the bad side, as one sigma (p95 and p5 sit 1.645 sigma out), both runs.
    p = generation["engines"]["gpux fp32"]["points"]["p8-n6-b1"]
    ttft_noise = 2 * (p["ttft_ms"]["p95"] - p["ttft_ms"]["p50"]) / p["ttft_ms"]["p50"] / 1.6448536
    decode = p["decode_tokens_per_s"]
    decode_noise = 2 * (decode["median"] - decode["p5"]) / decode["median"] / 1.6448536
    assert rows[f"{POINT}.ttft_ms.p99"].noise == pytest.approx(ttft_noise, rel=1e-6)
    assert rows[f"{POINT}.decode_tokens_per_s.median"].noise == pytest.approx(decode_noise, rel=1e-6)
    assert rows[f"{POINT}.prefill_tokens_per_s"].noise == pytest.approx(ttft_noise, rel=1e-6)  # prompt / TTFT
    assert rows[f"{POINT}.itl_p99_ms"].noise == pytest.approx(decode_noise, rel=1e-6)  # the gaps decode is made of
    assert rows["engines.gpux fp32.peak_rss_mb"].noise == 0.0


def test_generation_regressions_and_custom_gates(generation: dict) -> None:
    base = _steady(generation)
    rows = {r.metric: r for r in compare(base, _slower(base))}
    for q in ("p50", "p95", "p99"):
        assert rows[f"{POINT}.ttft_ms.{q}"].verdict == "REGRESSION"  # +30% > 20%, noise 2 x 1.2%
    for name in ("decode_tokens_per_s.median", "decode_tokens_per_s.p5", "prefill_tokens_per_s"):
        assert rows[f"{POINT}.{name}"].verdict == "REGRESSION"  # -20% > 15%
    assert rows["engines.gpux fp32.peak_rss_mb"].verdict == "same"
    relaxed = {r.metric: r for r in compare(base, _slower(base), {"ttft": 0.35, "tokens_per_s": 0.25})}
    assert regressions(list(relaxed.values())) == []
    assert relaxed[f"{POINT}.ttft_ms.p50"].verdict == "within gate"
    strict = compare(base, _slower(base, ttft=1.1, rate=0.95), {"ttft": 0.05, "tokens_per_s": 0.02})
    assert {r.kind for r in regressions(strict)} == {"ttft", "tokens_per_s"}
    assert regressions(compare(base, _slower(base, ttft=1.1, rate=0.95))) == []  # inside the default gates


def test_generation_noise_comes_from_the_blocks_own_tail(generation: dict) -> None:
    wide = _steady(generation)
    p = wide["engines"]["gpux fp32"]["points"]["p8-n6-b1"]
    p["ttft_ms"]["p95"] = p["ttft_ms"]["p50"] * 1.5  # a slow tail: sigma ~ 30% per run
    p["decode_tokens_per_s"]["p5"] = p["decode_tokens_per_s"]["median"] * 0.6
    rows = {r.metric: r for r in compare(wide, _slower(wide))}
    assert rows[f"{POINT}.ttft_ms.p50"].verdict == "noise"
    assert rows[f"{POINT}.decode_tokens_per_s.median"].verdict == "noise"
    assert rows[f"{POINT}.prefill_tokens_per_s"].verdict == "noise"  # made of TTFT, so as noisy
    better = {r.metric: r.verdict for r in compare(_steady(generation), _slower(_steady(generation), 0.5, 2.0))}
    assert better[f"{POINT}.ttft_ms.p50"] == better[f"{POINT}.decode_tokens_per_s.median"] == "better"


def test_generation_ratios_and_counts_are_not_gated() -> None:
    doc = {"ratios": {"gpux fp32/pytorch": {"p8-n6-b1": {"ttft": 1.0, "decode": 1.0}}},
           "ttft_ms": {"p50": 10.0, "n": 5, "std": 1.0}}
    rows = compare(doc, doc)
    assert [(r.metric, r.noise) for r in rows] == [("ttft_ms.p50", 0.2)]  # a block's std is used as given


def test_committed_generate_results_gate_ttft_and_tokens_per_s() -> None:
    base = json.loads(GENERATE_JSON.read_text())
    new = copy.deepcopy(base)
    for engine in new["results"].values():
        for block, factor in (("ttft_ms", 1.3), ("decode_tok_s", 0.8)):
            if isinstance(engine.get(block), dict):
                engine[block] = {k: v if k == "n" else v * factor for k, v in engine[block].items()}
    rows = {r.metric: r for r in compare(base, new)}
    assert rows["results.gpux fp32.ttft_ms.median"].kind == "ttft"
    assert rows["results.gpux fp32.decode_tok_s.median"].kind == "tokens_per_s"
    assert rows["results.gpux fp32.itl_ms_p99.median"].kind == "latency"
    assert rows["results.gpux fp32.rss_mb.median"].kind == "memory"
    assert "results.gpux fp32.ttft_ms.n" not in rows
    for engine in ("gpux fp32", "gpux int8", "transformers fp32"):
        assert rows[f"results.{engine}.ttft_ms.median"].verdict == "REGRESSION"
        assert rows[f"results.{engine}.decode_tok_s.median"].verdict == "REGRESSION"
        assert rows[f"results.{engine}.itl_ms_p99.median"].verdict == "same"
    # llama-cpp-python Q4_0's TTFT spread in that run was wide: +30% there is within its noise.
    assert rows["results.llama-cpp-python Q4_0.ttft_ms.median"].verdict == "noise"
    assert all(r.verdict in ("same", "noise", "REGRESSION") for r in rows.values())


def test_cli_gates_generation_results(tmp_path: Path, generation: dict) -> None:
    base = _steady(generation)
    a, b = _write(tmp_path, "base.json", base), _write(tmp_path, "new.json", _slower(base))
    res = cli("bench", "compare", a, b)
    assert res.returncode == 1, res.stderr
    assert "REGRESSION" in res.stdout and "ttft_ms.p50" in res.stdout and "decode_tokens_per_s.median" in res.stdout
    res = cli("bench", "compare", a, b, "--ttft", "0.35", "--tokens-per-s", "0.25", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["regressions"] == 0
    gates = {r["kind"]: r["gate"] for r in out["rows"]}
    assert gates == {"ttft": 0.35, "tokens_per_s": 0.25, "latency": 0.5, "memory": 0.25}
    res = cli("bench", "compare", a, b, "--ttft", "0.35")  # tokens/s still past its default gate
    assert res.returncode == 1 and "decode_tokens_per_s" in res.stdout
    committed = str(GENERATE_JSON)
    assert cli("bench", "compare", committed, committed).returncode == 0


def test_cli_refuses_a_negative_gate(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.json", {"ttft_ms": {"p50": 1.0}})
    res = cli("bench", "compare", a, a, "--ttft", "-0.1")
    assert res.returncode == 2
