"""State and helpers shared by the commands (kept import-light)."""

from __future__ import annotations

from typing import Any

#: Set by the root callback: -v shows tracebacks and onnxruntime's warnings.
state: dict[str, Any] = {"verbose": False}


def ort_log_level() -> int:
    """onnxruntime log level: warnings (2) with -v, errors only (3) otherwise."""
    return 2 if state["verbose"] else 3


def err_console() -> Any:
    """A Rich console on stderr: tables and progress never mix into JSON on stdout."""
    from rich.console import Console

    return Console(stderr=True)
