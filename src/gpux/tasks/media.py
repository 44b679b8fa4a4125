"""What the image and audio tasks share: the bundle's processor, sources -> model inputs, one batched run.

An item is one input already prepared for the graph (an image's ``(3, H, W)`` pixels, a waveform at the
model's rate), so the server's dynamic batcher merges requests of any size; preparing happens in
:meth:`MediaTask.items`, so a bad file is refused (400/413) before anything is queued.

Sources: bytes, base64 data URLs and arrays from Python; file paths only where the caller allows them
(``allow_paths``: the CLI and the Python API do, the server never does — a request must not make gpux
read the server's own disk).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    from gpux.engine.model import Model


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def ranked(probs: np.ndarray, labels: list[str]) -> list[list[dict[str, Any]]]:
    """Every label with its score, highest first, per row (the pipelines' shape with top_k = all)."""
    return [[{"label": labels[i], "score": float(row[i])} for i in np.argsort(-row, kind="stable")] for row in probs]


class MediaTask:
    """Base of the image and audio tasks; subclasses say how sources are prepared and outputs read."""

    unit = "items"
    answer_key = "predictions"
    #: Whether sources may be file paths (the CLI and Python API: yes; the server: never).
    allow_paths = False

    def __init__(self, model: Model) -> None:
        self.model = model
        bundle = model.bundle
        try:
            self.config: dict[str, Any] = json.loads((bundle.root / bundle.manifest.assets["task_config"]).read_text())
            self.processor_config: dict[str, Any] = json.loads(
                (bundle.root / bundle.manifest.assets["processor"]).read_text())
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"bundle {bundle.name!r} lacks a readable processor or task config: {exc}",
                                 hint="pull the model again (gpux pull)") from exc

    def sources(self, payload: dict[str, Any]) -> list[Any]:
        inputs = payload.get("inputs")
        items = inputs if isinstance(inputs, list) else [inputs]
        if inputs is None or not items:
            raise UsageError('the payload needs "inputs": a file, a data URL, or a list of them',
                             hint='{"inputs": ["cat.png"]} (the server takes data URLs or uploaded bytes)')
        return items

    def items(self, payload: dict[str, Any]) -> list[Any]:
        return [self.prepare(s, i) for i, s in enumerate(self.sources(payload))]

    def prepare(self, source: Any, index: int) -> Any:
        raise NotImplementedError

    def feed(self, items: list[Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def answers(self, output: np.ndarray, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        out = self.model.run(self.feed(items))[self.config["output"]]
        return self.answers(np.asarray(out), items), [1] * len(items)

    def run_batch(self, items: list[Any], truncate: bool | None = None) -> list[Any]:
        return self.run_counted(items)[0]

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {self.answer_key: self.run_batch(self.items(payload))}


class ImageTask(MediaTask):
    """Images in: each source decoded, oriented, made RGB, resized, cropped and normalised as the processor says."""

    unit = "images"

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        from gpux.preprocess.image_processor import ImageProcessor

        self.processor = ImageProcessor.from_config(self.processor_config)

    def prepare(self, source: Any, index: int) -> np.ndarray:
        return self.processor.process_one(source, allow_paths=self.allow_paths)  # type: ignore[no-any-return]

    def feed(self, items: list[Any]) -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack(items).astype(np.float32, copy=False)}


class AudioTask(MediaTask):
    """Audio in: each source decoded, mixed to mono, resampled to the model's rate, then its features."""

    unit = "audio"
    #: Longest clip accepted (checked from the file's header before decoding where it can be); past it 413.
    max_seconds = 600.0

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        from gpux.preprocess.audio_features import AudioProcessor

        self.rate = int(self.config.get("sampling_rate") or self.processor_config.get("sampling_rate") or 16000)
        self.processor = AudioProcessor.from_config(self.processor_config)

    def prepare(self, source: Any, index: int) -> np.ndarray:
        from gpux.preprocess.audio import load_audio

        return load_audio(source, self.rate, allow_paths=self.allow_paths,  # type: ignore[no-any-return]
                          max_seconds=self.max_seconds)

    def feed(self, items: list[Any]) -> dict[str, np.ndarray]:
        features = self.processor(items)
        return {name: np.asarray(features[name]) for name in self.config["inputs"]}
