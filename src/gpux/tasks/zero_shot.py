"""Zero-shot image and audio classification with a two-tower model (CLIP, SigLIP; CLAP): inputs against label texts.

``{"inputs": "cat.png" | [...], "parameters": {"candidate_labels": ["cat", "dog"], "hypothesis_template":
"a photo of {}"}}`` -> ``{"predictions": [[{"label", "score"}, ...], ...]}`` (highest first), as Hugging
Face's zero-shot-image-classification pipeline answers. Each label is put into the template, embedded
by the text graph, the images (or clips) by the vision (or audio) graph; the scores are the softmax over labels of
``logit_scale`` × cosine (CLIP), or each label's sigmoid of ``logit_scale`` × cosine + ``logit_bias`` for
models trained with a sigmoid loss (SigLIP). The towers also give embeddings on their own
(:meth:`embed_texts`, :meth:`embed_media`: what ``/v1/embeddings`` serves for images and texts), and each
tower's session is made only when first needed (``lazy_graphs``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpux.errors import UsageError
from gpux.tasks import parameters
from gpux.tasks.media import AudioTask, ImageTask, softmax

DEFAULT_TEMPLATE = "This is a photo of {}."


class _ZeroShot:
    """The text side and the scoring, shared by the image and audio classes below (mixed in before their base)."""

    config: dict[str, Any]
    model: Any
    default_template = DEFAULT_TEMPLATE
    #: Each tower's session is made when a request first needs it (gpux.engine.model.Graphs): label prompts
    #: or text embeddings never load the vision (audio) tower, image embeddings never load the text tower.
    #: CLIP ViT-B/32 fp32: the text tower is ~140 MB of peak RSS and ~0.3 s of load (docs/media.md).
    lazy_graphs = True

    def _tokenizer(self, model: Any) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model.bundle.root / model.bundle.manifest.assets["tokenizer"]))
        self.tokenizer.enable_truncation(int(self.config.get("max_length") or 77))
        pad = self.tokenizer.padding
        self.tokenizer.enable_padding(pad_id=pad["pad_id"] if pad else 0, pad_token=pad["pad_token"] if pad else "")

    def items(self, payload: dict[str, Any]) -> list[Any]:
        params = parameters(payload)
        labels = params.get("candidate_labels")
        if isinstance(labels, str):
            labels = [x.strip() for x in labels.split(",") if x.strip()]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise UsageError('zero-shot classification needs "parameters": {"candidate_labels": [...]}',
                             hint='e.g. {"inputs": "cat.png", "parameters": {"candidate_labels": ["cat", "dog"]}}')
        template = params.get("hypothesis_template", self.default_template)
        if not isinstance(template, str) or "{}" not in template:
            raise UsageError(f'"hypothesis_template" must be a string with {{}} for the label, not {template!r}',
                             hint='e.g. "a photo of {}"')
        unknown = sorted(set(params) - {"candidate_labels", "hypothesis_template"})
        if unknown:
            raise UsageError(f'unknown parameter "{unknown[0]}"', hint="use candidate_labels, hypothesis_template")
        return [(x, tuple(labels), template) for x in super().items(payload)]  # type: ignore[misc]

    def embedding_items(self, value: Any) -> list[Any]:
        """``/v1/embeddings`` inputs: image data URLs (or bytes) embed through the vision tower, text through the
        text tower; each becomes an item :meth:`run_counted` answers with its vector."""
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, bytes)) for v in values):
            raise UsageError('"input" must be a string (text or an image data URL) or a list of them',
                             hint='e.g. "input": ["a photo of a cat", "data:image/png;base64,..."]')
        media = "data:audio/" if self.config.get("media_graph") == "audio" else "data:image/"
        return [("media", self.prepare(v, i)) if isinstance(v, bytes) or v.startswith(media)  # type: ignore[attr-defined]
                else ("text", v) for i, v in enumerate(values)]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.asarray([e.ids for e in enc], np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in enc], np.int64)}
        return np.asarray(self.model.run(feed, graph="text")[self.config["text_output"]], np.float32)

    #: Clips per audio-tower call: CLAP's fusion patch embedding exports with its batch baked into a reshape
    #: (torch traces the longer/shorter split), so batches of several clips fail; one per call is exact.
    media_batch = 0

    def embed_media(self, items: list[Any]) -> np.ndarray:
        graph = self.config.get("media_graph", "vision")  # bundles converted before audio towers: vision
        output = self.config.get("media_output") or self.config.get("image_output", "image_embeds")
        step = self.media_batch or len(items)
        parts = [np.asarray(self.model.run(self.feed(items[i:i + step]), graph=graph)[output], np.float32)  # type: ignore[attr-defined]
                 for i in range(0, len(items), step)]
        return np.concatenate(parts, axis=0)

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        embeds = [i for i, item in enumerate(items) if isinstance(item[0], str)]  # /v1/embeddings items
        if embeds:  # the batcher may merge them with zero-shot requests: each kind answered, order kept
            out: list[Any] = [None] * len(items)
            for i, vec in zip(embeds, self._embeddings([items[i] for i in embeds])):
                out[i] = vec
            rest = [i for i in range(len(items)) if i not in set(embeds)]
            if rest:
                for i, answer in zip(rest, self.run_counted([items[i] for i in rest])[0]):
                    out[i] = answer
            return out, [1] * len(items)
        images = _unit(self.embed_media([p for p, _, _ in items]))
        prompts = sorted({template.format(label) for _, labels, template in items for label in labels})
        texts = dict(zip(prompts, _unit(self.embed_texts(prompts))))
        scale, bias = float(self.config["logit_scale"]), self.config.get("logit_bias")
        answers = []
        for image, (_, labels, template) in zip(images, items):
            logits = scale * np.stack([texts[template.format(label)] for label in labels]) @ image
            scores = 1 / (1 + np.exp(-(logits + bias))) if bias is not None else softmax(logits.astype(np.float64))
            answers.append([{"label": labels[i], "score": float(scores[i])} for i in np.argsort(-scores, kind="stable")])
        return answers, [1] * len(items)


    def _embeddings(self, items: list[Any]) -> list[Any]:
        out: list[Any] = [None] * len(items)
        texts = [(i, v) for i, (kind, v) in enumerate(items) if kind == "text"]
        images = [(i, v) for i, (kind, v) in enumerate(items) if kind == "media"]
        if texts:
            for (i, _), vec in zip(texts, self.embed_texts([v for _, v in texts])):
                out[i] = vec
        if images:
            for (i, _), vec in zip(images, self.embed_media([v for _, v in images])):
                out[i] = vec
        return out


class ZeroShotImageClassifier(_ZeroShot, ImageTask):
    def __init__(self, model: Any) -> None:
        ImageTask.__init__(self, model)
        self._tokenizer(model)


class ZeroShotAudioClassifier(_ZeroShot, AudioTask):
    default_template = "This is a sound of {}."
    media_batch = 1

    def __init__(self, model: Any) -> None:
        AudioTask.__init__(self, model)
        self._tokenizer(model)

    def feed(self, items: list[Any]) -> dict[str, np.ndarray]:
        made = self.processor(items)
        return {"input_features": np.asarray(made["input_features"], np.float32),
                "is_longer": np.asarray(made["is_longer"], bool)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # type: ignore[no-any-return]
