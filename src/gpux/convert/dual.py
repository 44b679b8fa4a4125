"""Contrastive two-tower models (CLIP, SigLIP, ...) -> two ONNX graphs: text, and images.

Each tower is its own graph (``text.onnx``: ``input_ids``, ``attention_mask`` -> ``text_embeds``;
``vision.onnx``: ``pixel_values`` -> ``image_embeds``) so either side runs alone: embedding a million
images never runs the text tower, and zero-shot labels are embedded once. The towers are the model's own
``get_text_features`` / ``get_image_features`` (projection included; transformers 5 returns them as
``pooler_output``). The similarity head is two numbers, kept in task.json: the learned ``logit_scale``
(exponentiated, as the model multiplies by it) and, for sigmoid-trained models (SigLIP), ``logit_bias``.

Which models: any whose config has a ``text_config`` and a ``vision_config`` and whose class has both
feature methods — detected from the model, not a family list. Parity: each graph against PyTorch on
random inputs (cosine ≥ 0.999 per row), recorded per graph.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gpux.errors import ConvertError

PARITY_MIN_COSINE = 0.999


def second_tower(config: dict[str, Any]) -> str | None:
    """"vision" or "audio" for a two-tower config (a text tower beside it), else None."""
    if not isinstance(config.get("text_config"), dict):
        return None
    return next((k for k in ("vision", "audio") if isinstance(config.get(f"{k}_config"), dict)), None)


def _features(out: Any) -> Any:
    return out.pooler_output if hasattr(out, "pooler_output") else out


def export_dual(folder: Path, work: Path, processor: dict[str, Any], *, allow_pickle: bool = False) -> dict[str, Any]:
    """Export both towers into ``work`` (text.onnx, vision.onnx); returns the facts task.json needs."""
    import torch
    import transformers

    from gpux.convert.export import OPSET
    from gpux.convert.media import image_size, load_for_export

    start = time.perf_counter()
    model, _ = load_for_export(folder, "AutoModel", allow_pickle)
    audio = hasattr(model, "get_audio_features")
    if not (hasattr(model, "get_text_features") and (audio or hasattr(model, "get_image_features"))):
        raise ConvertError(f"{type(model).__name__} has no text and image (or audio) feature methods",
                           hint="zero-shot classification needs a CLIP- or CLAP-style two-tower model")
    h, w = image_size(processor, model.config) if not audio else (0, 0)
    channels = int(getattr(getattr(model.config, "vision_config", None), "num_channels", 3) or 3)
    vocab = int(model.config.text_config.vocab_size)
    if audio:  # the feature shape the model's own extractor makes, from one second of silence
        from gpux.preprocess.audio_features import AudioProcessor

        made = AudioProcessor.from_config(processor)([np.zeros(int(processor.get("sampling_rate") or 48000),
                                                               np.float32)])
        feature_shape = tuple(np.asarray(made["input_features"]).shape[1:])

    class Tower(torch.nn.Module):  # the model as a submodule: its weights are the graph's, not traced constants
        def __init__(self) -> None:
            super().__init__()
            self.model = model

    class Text(Tower):
        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    class Vision(Tower):
        def forward(self, pixel_values: Any) -> Any:
            return _features(self.model.get_image_features(pixel_values=pixel_values))

    class Audio(Tower):
        def forward(self, input_features: Any, is_longer: Any) -> Any:
            return _features(self.model.get_audio_features(input_features=input_features, is_longer=is_longer))

    def text_example(batch: int, seq: int, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, vocab, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        for row in range(1, batch):
            mask[row, max(2, seq - row * seq // (batch + 1)):] = 0
        return {"input_ids": ids, "attention_mask": mask}

    def image_example(batch: int, _seq: int, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        return {"pixel_values": torch.randn(batch, channels, h, w, generator=g)}

    def audio_example(batch: int, _seq: int, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        longer = torch.zeros(batch, 1, dtype=torch.bool)
        longer[0, 0] = True
        return {"input_features": torch.randn(batch, *feature_shape, generator=g), "is_longer": longer}

    second = ("audio", Audio(), audio_example, {"input_features": {0: "batch"}, "is_longer": {0: "batch"}},
              "audio_embeds") if audio else \
        ("vision", Vision(), image_example, {"pixel_values": {0: "batch"}}, "image_embeds")
    parity = {}
    for name, tower, example, axes, output in (
            ("text", Text(), text_example, {"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"}}, "text_embeds"),
            second):
        path = work / f"{name}.onnx"
        feed = example(2, 12, 0)
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(tower.eval(), tuple(feed.values()), str(path), input_names=list(feed),
                              output_names=[output], dynamic_axes={**axes, output: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        parity[name] = _parity(tower, example, path)
    # CLIP and SigLIP learn one scale; CLAP one per direction (the audio side's ranks labels for a clip).
    learned = getattr(model, "logit_scale_a" if audio else "logit_scale", None)
    scale = float(learned.exp().item()) if learned is not None else 1.0
    bias = float(model.logit_bias.item()) if getattr(model, "logit_bias", None) is not None else None
    return {"exporter": "torchscript", "opset": OPSET, "second": second[0], "second_output": second[4], "seconds": round(time.perf_counter() - start, 3),
            "parity": parity, "logit_scale": scale, "logit_bias": bias, "image_size": [h, w],
            "model_type": model.config.model_type, "text_max_length": int(
                getattr(model.config.text_config, "max_position_embeddings", 77) or 77),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def _parity(tower: Any, example: Any, path: Path) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = []
    for i, (batch, seq) in enumerate(((1, 7), (3, 16))):
        feed = example(batch, seq, 100 + i)
        with torch.no_grad():
            ref = tower(**feed).float().numpy()
        got = sess.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        cos = np.sum(ref * got, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)
        cases.append({"batch": batch, "cosine_min": float(cos.min()), "max_abs": float(np.abs(ref - got).max())})
    cos_min = min(float(c["cosine_min"]) for c in cases)
    if cos_min < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX {path.stem} tower does not match PyTorch: cosine {cos_min:.6f}",
                           hint="report this model")
    return {"cases": cases, "cosine_min": cos_min, "threshold_cosine": PARITY_MIN_COSINE}
