from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402


@pytest.fixture(autouse=True)
def gpux_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty store."""
    home = tmp_path / "gpux-home"
    monkeypatch.setenv("GPUX_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    models.mlp(d / "mlp.onnx", metadata={"author": "tests", "task": "demo"})
    models.add_pair(d / "pair.onnx")
    models.half(d / "half.onnx")
    models.int_and_bool(d / "intbool.onnx")
    models.strings(d / "strings.onnx")
    models.scalar_scale(d / "scale.onnx")
    return d


@pytest.fixture(scope="session")
def silero() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("silero-vad is not installed: run `make test`, which installs it with --no-deps")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


def gpux(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `gpux` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "gpux", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=120)
