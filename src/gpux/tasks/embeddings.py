"""Sentence embeddings: token states pooled (mean/CLS/max) as the model's config says, optionally normalised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.tasks import texts, truncate_flag
from gpux.tasks.text import TextEncoder

if TYPE_CHECKING:
    from gpux.engine.model import Model


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool [batch, seq, dim] token states over real tokens; matches sentence-transformers' Pooling."""
    if mode == "cls":
        out: np.ndarray = hidden[:, 0]
        return out
    m = mask[..., None].astype(hidden.dtype)
    if mode == "max":
        out = np.where(m > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    else:
        out = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return out


class Embeddings:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.encode = TextEncoder(model.bundle)
        self.mode: str = self.encode.config.get("pooling", "mean")
        self.normalize: bool = bool(self.encode.config.get("normalize", False))

    #: What benchmarks count per second: the unit users of this task think in.
    unit = "vectors"
    answer_key = "embeddings"

    @property
    def dimensions(self) -> int:
        return int(self.model.outputs[0].shape[-1]) if self.model.outputs[0].shape else 0

    def items(self, payload: dict[str, Any]) -> list[str]:
        """Texts: ``"one"`` or ``["a", "b"]``."""
        return texts(payload)

    def run_counted(self, items: list[str], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """One vector per text, and the tokens each text used (after truncation)."""
        feed = self.encode(items, truncate)
        hidden = self.model.run(feed)[self.encode.config["output"]]
        vecs = pool(hidden, feed["attention_mask"], self.mode)
        if self.normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return list(vecs), feed["attention_mask"].sum(axis=1).tolist()

    def run_batch(self, items: list[str], truncate: bool | None = None) -> list[Any]:
        """One vector per text: the unit the server's batcher merges and splits."""
        return self.run_counted(items, truncate)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"embeddings": np.stack(self.run_batch(self.items(payload), truncate_flag(payload)))}
