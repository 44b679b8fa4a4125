"""gpux: pull, convert, run, benchmark and serve ML models on the best ONNX Runtime provider.

``gpux.load(path_or_name)`` returns a :class:`gpux.engine.model.Model`. Heavy
modules (numpy, onnxruntime) are imported on first use, so ``import gpux`` and
``gpux --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpux._version import __version__

if TYPE_CHECKING:
    from gpux.engine.model import Model, load

__all__ = ["Model", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        from gpux.engine import model

        return getattr(model, name)
    raise AttributeError(f"module 'gpux' has no attribute {name!r}")
