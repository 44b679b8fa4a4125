"""The real `gpux` entry point in a subprocess: JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models
from conftest import gpux


def test_help_and_version_do_not_import_onnxruntime() -> None:
    code = ("import sys\nfrom gpux.cli.app import app\n"
            "try:\n    app(['--help'], prog_name='gpux')\nexcept SystemExit:\n    pass\n"
            "print('MODULES', 'onnxruntime' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "run" in out and "inspect" in out and "build" in out
    assert "MODULES False False" in out
    ver = gpux("--version")
    assert ver.returncode == 0 and ver.stdout.startswith("gpux 0.")


def test_run_path_never_imports_torch_or_transformers(model_dir: Path) -> None:
    code = ("import sys\nfrom gpux.cli.app import main\nsys.argv = ['gpux', 'run', sys.argv[1], '-i', "
            "'{\"x\": [[1, 2, 3, 4]]}']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(model_dir / "mlp.onnx")], capture_output=True,
                         text=True, check=True).stdout
    assert "HEAVY []" in out


def test_run_inline_json(model_dir: Path) -> None:
    res = gpux("run", str(model_dir / "mlp.onnx"), "--input", '{"x": [[1, 2, 3, 4], [0, 0, 0, 0]]}')
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    expected = models.mlp_expected(np.array([[1, 2, 3, 4], [0, 0, 0, 0]]))
    np.testing.assert_allclose(out["outputs"]["y"], expected, rtol=1e-6)
    assert out["providers"] == ["cpu"] and out["placement"]["cpu"] >= 1
    assert out["timings"]["load_ms"] > 0 and out["timings"]["run_ms"] > 0


def test_run_from_json_and_npz_files_to_output_file(tmp_path: Path, model_dir: Path) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    (tmp_path / "in.json").write_text(json.dumps({"x": x.tolist()}))
    np.savez(tmp_path / "in.npz", x=x)
    for src in ("in.json", "in.npz"):
        res = gpux("run", str(model_dir / "mlp.onnx"), "-i", f"@{tmp_path / src}", "-o", str(tmp_path / "o.json"))
        assert res.returncode == 0 and res.stdout == ""
        out = json.loads((tmp_path / "o.json").read_text())
        np.testing.assert_allclose(out["outputs"]["y"], models.mlp_expected(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, code, words", [
    (["-i", "{x: 1}"], 2, "--input is not valid JSON"),
    (["-i", "[1, 2]"], 2, "must be a JSON object"),
    (["-i", "@/nonexistent/in.json"], 2, "does not exist"),
    (["-i", '{"x": [[1, 2]]}'], 2, "input 'x' expects dimension 1 to be 4"),
    (["-i", '{"q": [[1, 2, 3, 4]]}'], 2, "missing input 'x'"),
    (["-i", '{"x": [[1, 2, 3, 4]]}', "--provider", "cuda"], 4, "not available on this machine; available: cpu"),
    (["-i", '{"x": [[1, 2, 3, 4]]}', "--provider", "warp"], 4, "unknown provider 'warp'"),
    (["-i", '{"x": [[1, 2, 3, 4]]}', "--optimization", "max"], 2, "--optimization 'max' is not a level"),
])
def test_bad_input_is_one_line_with_exit_code(model_dir: Path, args: list[str], code: int, words: str) -> None:
    res = gpux("run", str(model_dir / "mlp.onnx"), *args)
    assert res.returncode == code, res.stderr
    assert res.stderr.startswith("error: ") and words in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""


def test_missing_model_and_corrupt_model_exit_3(tmp_path: Path) -> None:
    res = gpux("run", "no-such-model", "-i", "{}")
    assert res.returncode == 3 and "no model 'no-such-model'" in res.stderr
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    res = gpux("run", str(tmp_path / "bad.onnx"), "-i", "{}")
    assert res.returncode == 3 and "could not load" in res.stderr


def test_inference_failure_exits_5(tmp_path: Path) -> None:
    models.reshape_to_two_rows(tmp_path / "reshape.onnx")
    res = gpux("run", str(tmp_path / "reshape.onnx"), "-i", '{"x": [1, 2, 3]}')
    assert res.returncode == 5 and "onnxruntime failed while running" in res.stderr


def test_verbose_shows_the_traceback(model_dir: Path) -> None:
    res = gpux("-v", "run", str(model_dir / "mlp.onnx"), "-i", '{"x": [1]}')
    assert res.returncode == 2 and "Traceback" in res.stderr and "InputShapeError" in res.stderr


def test_benchmark_json_has_every_field(silero: Path) -> None:
    feed = Path(__file__).parent.parent / "examples" / "silero-vad" / "input.json"
    res = gpux("run", str(silero), "-i", f"@{feed}", "--benchmark", "--runs", "50", "--warmup", "5")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["model"] == "silero_vad" and r["providers"] == ["cpu"] and r["placement"]["cpu"] > 0
    assert r["runs"] == 50 and r["warmup"] == 5 and r["batch_size"] == 1
    assert r["inputs"] == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    lat = r["latency"]
    assert list(lat) == ["mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"]
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert r["throughput_items_per_s"] == pytest.approx(1e3 / lat["mean_ms"], rel=1e-6)
    assert r["load_ms"] > 0 and r["peak_rss_mb"] > 10
    env = r["environment"]
    assert {"gpux", "onnxruntime", "numpy"} <= set(env["packages"]) and env["cpu"] and env["cores_logical"] >= 1
    assert r["session"]["intra_op_threads"] >= 1
    assert "gpux benchmark: silero_vad" in res.stderr  # the Rich table goes to stderr


def test_inspect_json_and_table(model_dir: Path) -> None:
    res = gpux("inspect", str(model_dir / "mlp.onnx"), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    g = info["graphs"]["model"]
    assert g["opsets"] == {"ai.onnx": 17} and g["producer"] == "gpux-tests 1.0"
    assert g["parameters"] == 15 and g["metadata"] == {"author": "tests", "task": "demo"}
    assert "cpu" in info["providers"]["available"]
    table = gpux("inspect", str(model_dir / "mlp.onnx"))
    assert table.returncode == 0
    for word in ("gpux-tests 1.0", "ai.onnx 17", "batch", "float32", "author"):
        assert word in table.stdout


def test_build_without_config_and_with_unknown_key(tmp_path: Path) -> None:
    res = gpux("build", str(tmp_path))
    assert res.returncode == 2 and "has no gpux.yml" in res.stderr
    (tmp_path / "gpux.yml").write_text("name: x\nmodel: {source: m.onnx}\nfoo: 1\n")
    res = gpux("build", str(tmp_path))
    assert res.returncode == 2 and "unknown key 'foo'" in res.stderr


def test_demo_example_builds_and_runs_by_name(gpux_home: Path) -> None:
    example = Path(__file__).parent.parent / "examples" / "silero-vad"
    assert gpux("build", str(example)).returncode == 0
    res = gpux("run", "silero-vad", "-i", f"@{example / 'input.json'}")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)["outputs"]
    assert 0 <= out["output"][0][0] <= 1 and np.shape(out["stateN"]) == (2, 1, 128)
