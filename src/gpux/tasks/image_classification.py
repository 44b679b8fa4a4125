"""Image classification (``…ForImageClassification``): every label with its score per image, highest first.

``{"inputs": ["cat.png", "data:image/jpeg;base64,..."]}`` -> ``{"predictions": [[{"label", "score"}, ...], ...]}``,
the shape of Hugging Face's image-classification pipeline with ``top_k`` = every label (softmax).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpux.tasks.media import ImageTask, ranked, softmax


class ImageClassifier(ImageTask):
    def answers(self, output: np.ndarray, items: list[Any]) -> list[Any]:
        return ranked(softmax(output.astype(np.float64)), self.config["labels"])
