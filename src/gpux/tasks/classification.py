"""Text classification: softmax over the logits, every label with its score, highest first.

An input is a text or a sentence pair (``{"text": ..., "text_pair": ...}``, what NLI models take): the
pair is tokenized as one sequence with the separators and type ids of the model's own tokenizer.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.tasks import text_or_pairs, truncate_flag
from gpux.tasks.text import TextEncoder, TextInput

if TYPE_CHECKING:
    from gpux.engine.model import Model


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


class Classifier:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.encode = TextEncoder(model.bundle)
        self.labels: list[str] = self.encode.config["labels"]

    #: What benchmarks count per second: the unit users of this task think in.
    unit = "items"
    answer_key = "predictions"

    def items(self, payload: dict[str, Any]) -> list[TextInput]:
        """Texts or (text, text_pair) pairs."""
        return text_or_pairs(payload)

    def run_counted(self, items: list[TextInput], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """Every label with its score, highest first, per text or pair; and the tokens each used."""
        feed = self.encode(items, truncate)
        probs = softmax(self.model.run(feed)[self.encode.config["output"]].astype(np.float64))
        ranked = [[{"label": self.labels[i], "score": float(row[i])} for i in np.argsort(-row, kind="stable")]
                  for row in probs]
        return ranked, feed["attention_mask"].sum(axis=1).tolist()

    def run_batch(self, items: list[TextInput], truncate: bool | None = None) -> list[Any]:
        return self.run_counted(items, truncate)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": self.run_batch(self.items(payload), truncate_flag(payload))}
