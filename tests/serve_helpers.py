"""A real uvicorn server on a random 127.0.0.1 port, in a thread, for the serve tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import uvicorn


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def build_raw_models(root: Path, src: Path, builders: Iterable[tuple[str, Callable[[Path], Path]]]) -> None:
    """Store each tiny ONNX model (name, builder) in the store at ``root`` as ``gpux build`` of a gpux.yml folder."""
    from conftest import gpux as cli

    for name, builder in builders:
        folder = src / name
        folder.mkdir()
        graph = builder(folder / f"{name}.onnx")
        (folder / "gpux.yml").write_text(f"name: {name}\nmodel: {{source: {graph.name}}}\n")
        assert cli("build", str(folder), env={"GPUX_HOME": str(root)}).returncode == 0


def build_with_serving(tmp_path: Path, model_dir: Path, name: str, serving: str) -> dict[str, str]:
    """Build ``model_dir``'s mlp.onnx as ``name`` with gpux.yml ``serving: {serving}`` into a store under
    ``tmp_path``; returns the environment (GPUX_HOME set) to run `gpux serve` in."""
    import os
    import shutil

    from conftest import gpux as cli

    proj = tmp_path / "cfg"
    proj.mkdir()
    shutil.copy(model_dir / "mlp.onnx", proj / "mlp.onnx")
    (proj / "gpux.yml").write_text(f"name: {name}\nmodel: {{source: mlp.onnx}}\nserving: {{{serving}}}\n")
    env = {**os.environ, "GPUX_HOME": str(tmp_path / "home")}
    assert cli("build", str(proj), env=env).returncode == 0
    return env

