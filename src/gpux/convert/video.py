"""Video–text models (X-CLIP) -> one ONNX graph: frames and label texts in, ``logits_per_video`` out.

Unlike CLIP's towers, X-CLIP's text side is conditioned on the video (its prompt generator attends to the
frames' features), so the two cannot run apart: the whole ``forward`` is exported, with the text batch, the
text length and the video batch dynamic. The frame count and size are the model's (``num_frames``,
``image_size`` of its vision config, and what its image processor crops to). Parity: PyTorch against
onnxruntime on two random (video, texts) batches, cosine ≥ 0.999 per video row.
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


def export_video(folder: Path, work: Path, processor: dict[str, Any], *, allow_pickle: bool = False) -> dict[str, Any]:
    import torch
    import transformers

    from gpux.convert.export import OPSET
    from gpux.convert.media import image_size, load_for_export

    start = time.perf_counter()
    model, _ = load_for_export(folder, "AutoModel", allow_pickle)
    vision = model.config.vision_config
    frames, channels = int(vision.num_frames), int(getattr(vision, "num_channels", 3) or 3)
    h, w = image_size(processor, model.config)
    vocab = int(model.config.text_config.vocab_size)

    class Whole(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, pixel_values: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              pixel_values=pixel_values).logits_per_video

    def example(videos: int, texts: int, seq: int, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        mask = torch.ones(texts, seq, dtype=torch.long)
        for row in range(1, texts):
            mask[row, max(2, seq - row * seq // (texts + 1)):] = 0
        return {"input_ids": torch.randint(1, vocab, (texts, seq), generator=g), "attention_mask": mask,
                "pixel_values": torch.randn(videos, frames, channels, h, w, generator=g)}

    path = work / "model.onnx"
    whole = Whole().eval()
    feed = example(2, 3, 10, 0)
    axes = {"input_ids": {0: "texts", 1: "sequence"}, "attention_mask": {0: "texts", 1: "sequence"},
            "pixel_values": {0: "videos"}, "logits_per_video": {0: "videos", 1: "texts"}}
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(whole, tuple(feed.values()), str(path), input_names=list(feed),
                          output_names=["logits_per_video"], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    parity = _parity(whole, example, path)
    return {"exporter": "torchscript", "opset": OPSET, "seconds": round(time.perf_counter() - start, 3),
            "parity": parity, "num_frames": frames, "image_size": [h, w], "model_type": model.config.model_type,
            "text_max_length": int(getattr(model.config.text_config, "max_position_embeddings", 77) or 77),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def _parity(whole: Any, example: Any, path: Path) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = []
    for i, (videos, texts, seq) in enumerate(((1, 2, 7), (2, 4, 12))):
        feed = example(videos, texts, seq, 100 + i)
        with torch.no_grad():
            ref = whole(**feed).float().numpy()
        got = sess.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        cos = np.sum(ref * got, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)
        cases.append({"videos": videos, "texts": texts, "cosine_min": float(cos.min()),
                      "max_abs": float(np.abs(ref - got).max())})
    cos_min = min(float(c["cosine_min"]) for c in cases)
    if cos_min < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX video model does not match PyTorch: cosine {cos_min:.6f}", hint="report this model")
    return {"cases": cases, "cosine_min": cos_min, "threshold_cosine": PARITY_MIN_COSINE}
