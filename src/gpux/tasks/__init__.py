"""The tasks box: text in -> tensors -> session -> answers out, one module per task.

A new task is a module here plus one row in :data:`TASKS`. Nothing here imports
torch or transformers: tokenization uses the ``tokenizers`` library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from gpux.errors import UsageError

if TYPE_CHECKING:
    from gpux.engine.model import Model

#: Task name -> "module:class" implementing it.
TASKS: dict[str, str] = {
    "feature-extraction": "gpux.tasks.embeddings:Embeddings",
    "text-classification": "gpux.tasks.classification:Classifier",
}


class Task(Protocol):
    #: The key of the answer in a response ("embeddings", "predictions").
    answer_key: str
    #: What one answer is, for throughput figures ("vectors" -> vectors/s, "items" -> items/s).
    unit: str

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The answer for a ``{"inputs": ..., "truncate": bool}`` payload; texts over the model's
        limit are cut with a :class:`~gpux.tasks.text.TruncationWarning`, or refused with ``"truncate": false``."""
        ...

    def run_batch(self, items: list[str], truncate: bool | None = None) -> list[Any]:
        """One answer per text; what the server's dynamic batcher merges requests into."""
        ...

    def run_counted(self, items: list[str], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """``run_batch`` plus the tokens each text used, for usage fields."""
        ...


def for_model(model: Model) -> Task | None:
    """The task pipeline for ``model``'s manifest task, or None for a raw-tensor model."""
    cls = task_class(model.bundle.manifest.task)
    return cls(model) if cls is not None else None  # type: ignore[no-any-return]


def task_class(name: str | None) -> type | None:
    """The class implementing task ``name`` (imported), or None for a raw-tensor model."""
    if name is None or name not in TASKS:
        return None
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def unit_of(name: str | None) -> str:
    """Throughput unit of task ``name``; a raw-tensor model counts rows of its batch as items."""
    cls = task_class(name)
    return str(getattr(cls, "unit", "items")) if cls is not None else "items"


def texts(payload: dict[str, Any]) -> list[str]:
    """``{"inputs": "one"}`` or ``{"inputs": ["a", "b"]}`` -> a list of strings, or :class:`UsageError`."""
    if "inputs" not in payload:
        raise UsageError('the input needs an "inputs" key', hint='give {"inputs": "text"} or {"inputs": ["a", "b"]}')
    value = payload["inputs"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise UsageError('"inputs" must be a string or a non-empty list of strings',
                         hint='give {"inputs": ["first text", "second text"]}')
    return items


def truncate_flag(payload: dict[str, Any]) -> bool:
    """The payload's ``"truncate"`` (default true: cut long texts, with a warning); false refuses them."""
    value = payload.get("truncate", True)
    if not isinstance(value, bool):
        raise UsageError(f'"truncate" must be true or false, not {value!r}',
                         hint='"truncate": false refuses texts longer than the model takes')
    return value
