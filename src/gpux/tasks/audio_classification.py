"""Audio classification (``…ForAudioClassification``): every label with its score per clip, highest first.

``{"inputs": ["a.wav", "data:audio/flac;base64,..."]}`` -> ``{"predictions": [[{"label", "score"}, ...], ...]}``.
Clips of different lengths run one by one when the model takes no attention mask (zero padding would
change its answer; transformers' pipeline runs them one by one too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpux.tasks.media import AudioTask, ranked, softmax


class AudioClassifier(AudioTask):
    unit = "clips"

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        groups = [items] if "attention_mask" in self.config["inputs"] or len({len(x) for x in items}) == 1 \
            else [[x] for x in items]
        out = [self.model.run(self.feed(g))[self.config["output"]] for g in groups]
        return self.answers(np.concatenate(out), items), [1] * len(items)

    def answers(self, output: np.ndarray, items: list[Any]) -> list[Any]:
        return ranked(softmax(output.astype(np.float64)), self.config["labels"])
