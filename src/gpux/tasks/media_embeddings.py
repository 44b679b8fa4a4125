"""Image and audio embeddings: a backbone's pooled output (``pooler_output``, else the mean over positions).

``{"inputs": ["a.png"]}`` -> ``{"embeddings": [[...], ...]}``, one vector per input, as the text
feature-extraction task answers (not normalised: the backbone's own vector).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpux.tasks.media import AudioTask, ImageTask


class ImageEmbeddings(ImageTask):
    answer_key = "embeddings"
    unit = "vectors"

    def embedding_items(self, value: Any) -> list[Any]:
        """``/v1/embeddings`` inputs: image data URLs (or bytes)."""
        return self.items({"inputs": value})

    def answers(self, output: np.ndarray, items: list[Any]) -> list[Any]:
        return [row.astype(np.float32) for row in output]


class AudioEmbeddings(AudioTask):
    answer_key = "embeddings"
    unit = "vectors"

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        groups = [items] if "attention_mask" in self.config["inputs"] or len({len(x) for x in items}) == 1 \
            else [[x] for x in items]
        out = [np.asarray(self.model.run(self.feed(g))[self.config["output"]]) for g in groups]
        return [row.astype(np.float32) for row in np.concatenate(out)], [1] * len(items)
