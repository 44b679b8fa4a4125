"""gpux bench MODEL...: real runners in their own processes, real files out (values and fields, never speed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hf_models
import pytest
from conftest import gpux as cli

PNG = b"\x89PNG\r\n\x1a\n"


def _latency_fields(data: Any, path: str = "") -> list[str]:
    """Every key under a ``latency`` block, with its path."""
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "latency" and isinstance(v, dict):
                out += [f"{path}.latency.{f}" for f in v]
            out += _latency_fields(v, f"{path}.{k}")
    return out


def test_bench_text_model_against_both_baselines(tmp_path: Path) -> None:
    folder = hf_models.tiny(tmp_path / "tiny-cls", "bert")
    out = tmp_path / "bench"
    res = cli("bench", str(folder), "--batch-sizes", "1,2", "--seq-lens", "8,16", "--precisions", "fp32,int8",
              "--runs", "3", "--warmup", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "gpux.bench/1" and doc["environment"]["packages"]["onnxruntime"]
    assert doc["settings"]["rounds"] == 3  # 3 runs: 3 rounds of 1, alternating between the runners
    m = doc["models"][str(folder)]
    assert (m["task"], m["unit"]) == ("text-classification", "items")
    keys = {"b1_s8", "b1_s16", "b2_s8", "b2_s16"}
    for label in ("fp32", "int8"):
        p = m["precisions"][label]
        for runner in ("gpux", "onnxruntime"):
            r = p[runner]
            assert set(r["points"]) == keys
            assert r["load"]["cold_ms"] > 0 and r["load"]["warm_ms"] > 0 and r["peak_rss_mb"] > 10
            for key, pt in r["points"].items():
                b = int(key[1:key.index("_")])
                assert pt["batch_size"] == b and pt["seq_len"] == int(key.rsplit("s", 1)[1]) and pt["runs"] == 3
                assert pt["items_per_s"] == pytest.approx(b * 1e3 / pt["latency"]["mean_ms"])
                assert pt["latency"]["p50_ms"] <= pt["latency"]["p99_ms"] <= pt["latency"]["max_ms"]
        assert p["gpux"]["providers"] == ["cpu"]
        for key in keys:
            ratio = p["ratios"][key]
            got = p["gpux"]["points"][key]["items_per_s"]
            assert ratio["vs_onnxruntime"] == pytest.approx(got / p["onnxruntime"]["points"][key]["items_per_s"])
            assert ratio["vs_pytorch"] == pytest.approx(got / m["pytorch"]["points"][key]["items_per_s"])
    assert m["precisions"]["int8"]["size_mb"] < m["precisions"]["fp32"]["size_mb"]
    assert m["precisions"]["int8"]["parity_vs_fp32"]["cosine_min"] > 0.9
    assert m["pytorch"]["load"]["cold_ms"] > m["pytorch"]["load"]["warm_ms"] > 0
    fields = _latency_fields(doc)
    assert fields and all(f.endswith("_ms") for f in fields)
    report = (out / "report.md").read_text()
    assert "| int8 | 2 | 16 |" in report and "PyTorch eager fp32" in report and "× raw ORT" in report
    for name in ("latency_vs_batch.png", "throughput_vs_precision.png", "ratio_vs_baselines.png"):
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in report
    # The variant built for the benchmark is a store entry now: a second run reuses it.
    tags = cli("ls").stdout
    assert "text-classification-int8" in tags
    # Two runs of the same thing compare without a regression past the gates and the noise.
    again = tmp_path / "again"
    assert cli("bench", str(folder), "--batch-sizes", "1", "--seq-lens", "8", "--runs", "3", "--baseline", "none",
               "--out", str(again)).returncode == 0
    same = cli("bench", "compare", str(again / "results.json"), str(again / "results.json"))
    assert same.returncode == 0 and "0 regression(s)" in same.stdout


def test_bench_raw_onnx_synthesises_inputs_and_reports_what_it_cannot_do(tmp_path: Path, model_dir: Path) -> None:
    suite = tmp_path / "suite.yml"
    suite.write_text(f"models:\n  - {{model: {model_dir / 'mlp.onnx'}, batch_sizes: [1, 8]}}\n"
                     "precisions: [fp32, int8]\nruns: 5\nwarmup: 1\n")
    out = tmp_path / "raw"
    res = cli("bench", "--suite", str(suite), "--out", str(out))
    assert res.returncode == 1  # the int8 variant of a raw ONNX file cannot be made: said, and exit 1
    assert "int8 needs a model converted by gpux pull" in res.stderr
    m = json.loads((out / "results.json").read_text())["models"][str(model_dir / "mlp.onnx")]
    assert set(m["precisions"]["fp32"]["gpux"]["points"]) == {"b1", "b8"}  # no free non-batch dim: no seq
    assert m["precisions"]["fp32"]["ratios"]["b8"]["vs_onnxruntime"] > 0
    assert "given as ONNX" in m["pytorch"]["skipped"]
    assert "precision int8 needs" in m["precisions"]["int8"]["error"]
    report = (out / "report.md").read_text()
    assert "Not measured:" in report and "PyTorch eager baseline: skipped" in report


@pytest.mark.parametrize(("args", "needle"), [
    (["--batch-sizes", "1,x"], "--batch-sizes '1,x' is not a comma-separated list of ints"),
    (["--precisions", "fp8"], "precision 'fp8' is not one of"),
    (["--baseline", "tensorflow"], "baselines.0"),
    (["--seq-lens", "4096"], "sequence length 4096 is outside this model's"),
])
def test_bench_bad_flags_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    folder = hf_models.tiny(tmp_path / "tiny-cls", "bert")
    res = cli("bench", str(folder), *args, "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_bench_suite_is_strict(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yml"
    suite.write_text("models: [a]\nbatch_size: [1]\n")
    res = cli("bench", "--suite", str(suite))
    assert res.returncode == 2 and "unknown key 'batch_size'" in res.stderr
    assert cli("bench", "--suite", str(tmp_path / "none.yml")).returncode == 2
