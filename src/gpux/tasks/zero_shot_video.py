"""Zero-shot video classification (X-CLIP): a clip against label texts, scored by the whole model at once.

``{"inputs": video | [video, ...], "parameters": {"candidate_labels": [...], "hypothesis_template": "{}"}}`` ->
``{"predictions": [[{"label", "score"}, ...], ...]}``; a video is a file (bytes, a ``data:video/...`` URL, a
path in the CLI) decoded with PyAV, or a list of frame images. The model's ``num_frames`` frames are
sampled evenly, each prepared by the model's image processor; scores are the softmax over the labels of
``logits_per_video``, as X-CLIP's model card computes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpux.errors import UsageError
from gpux.tasks import parameters
from gpux.tasks.media import MediaTask, softmax


class ZeroShotVideoClassifier(MediaTask):
    unit = "videos"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        from tokenizers import Tokenizer

        from gpux.preprocess.image_processor import ImageProcessor

        self.processor = ImageProcessor.from_config(self.processor_config)
        self.frames = int(self.config["num_frames"])
        self.tokenizer = Tokenizer.from_file(str(model.bundle.root / model.bundle.manifest.assets["tokenizer"]))
        self.tokenizer.enable_truncation(int(self.config.get("max_length") or 77))
        pad = self.tokenizer.padding
        self.tokenizer.enable_padding(pad_id=pad["pad_id"] if pad else 0, pad_token=pad["pad_token"] if pad else "")

    def sources(self, payload: dict[str, Any]) -> list[Any]:
        inputs = payload.get("inputs")
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], list) and not _is_video(inputs[0]):
            return [inputs]  # one video given as its frames
        return super().sources(payload)

    def items(self, payload: dict[str, Any]) -> list[Any]:
        params = parameters(payload)
        labels = params.get("candidate_labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise UsageError('zero-shot video classification needs "parameters": {"candidate_labels": [...]}',
                             hint='e.g. {"inputs": "clip.mp4", "parameters": {"candidate_labels": ["cooking", "running"]}}')
        template = params.get("hypothesis_template", "{}")
        if not isinstance(template, str) or "{}" not in template:
            raise UsageError(f'"hypothesis_template" must be a string with {{}}, not {template!r}', hint='e.g. "{}"')
        return [(self.prepare(s, i), tuple(labels), template) for i, s in enumerate(self.sources(payload))]

    def prepare(self, source: Any, index: int) -> np.ndarray:
        from gpux.preprocess.video import decode_frames, sample

        frames = source if isinstance(source, list) else decode_frames(source, allow_paths=self.allow_paths)
        if not frames:
            raise UsageError(f"video {index} has no frames", hint="send a video file or a list of frame images")
        chosen = sample(frames, self.frames)
        return np.stack([self.processor.process_one(f, allow_paths=self.allow_paths) for f in chosen])

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        answers = []
        for pixels, labels, template in items:
            enc = self.tokenizer.encode_batch([template.format(x) for x in labels])
            feed = {"input_ids": np.asarray([e.ids for e in enc], np.int64),
                    "attention_mask": np.asarray([e.attention_mask for e in enc], np.int64),
                    "pixel_values": pixels[None].astype(np.float32, copy=False)}
            probs = softmax(np.asarray(self.model.run(feed)[self.config["output"]], np.float64))[0]
            answers.append([{"label": labels[i], "score": float(probs[i])} for i in np.argsort(-probs, kind="stable")])
        return answers, [1] * len(items)


def _is_video(x: Any) -> bool:
    """A video file (bytes or a video data URL, or a path with a video suffix) rather than a frame image."""
    if isinstance(x, (bytes, bytearray)):
        return not (bytes(x[:8]).startswith(b"\x89PNG") or bytes(x[:3]) == b"\xff\xd8\xff")
    return isinstance(x, str) and (x.startswith("data:video/") or x.lower().endswith(
        (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")))
