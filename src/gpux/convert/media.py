"""Hugging Face vision and audio models -> ONNX: images, waveforms, features in; the task's head out.

The text exporter (export.py) feeds token ids; these models take ``pixel_values`` (N, C, H, W),
``input_values`` (N, samples) or ``input_features`` (N, ..., frames). Which one, and its shape, come from
the model and its processor, never from a family table:

- the graph input is the first ``forward`` parameter that is one of :data:`MEDIA_INPUTS` (plus
  ``attention_mask`` for waveforms when the feature extractor returns one and ``forward`` takes it);
- an image's channels come from ``config.num_channels``, its height and width from what the processor
  produces (``crop_size`` when it crops, else ``size``), else ``config.image_size``; images have a dynamic
  batch axis, waveforms a dynamic batch and time axis;
- the exported outputs are the head's (:data:`MEDIA_HEADS`); a backbone without a head exports its pooled
  output (``pooler_output``, else the mean of ``last_hidden_state`` over its positions) as an embedding.

Exporters are tried in export.py's order (TorchScript, then dynamo) and kept only when onnxruntime matches
PyTorch on two random batches (cosine ≥ 0.999 per row; per frame for CTC).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gpux.errors import ConvertError

MEDIA_INPUTS = ("pixel_values", "input_values", "input_features")
PARITY_MIN_COSINE = 0.999


class MediaHead(NamedTuple):
    auto: str
    #: The model output exported ("embedding": the pooled backbone output).
    output: str
    #: Whether the output has a frame axis (CTC logits): compared per frame.
    per_frame: bool


MEDIA_HEADS: dict[str, MediaHead] = {
    "image-classification": MediaHead("AutoModelForImageClassification", "logits", False),
    "audio-classification": MediaHead("AutoModelForAudioClassification", "logits", False),
    "automatic-speech-recognition": MediaHead("AutoModelForCTC", "logits", True),
    "feature-extraction": MediaHead("AutoModel", "embedding", False),
}


def media_input(folder: Path) -> str | None:
    """The media input the model in ``folder`` takes (``pixel_values``...), or None for a text model.

    Read from the class transformers would load for the folder's saved architecture, without loading weights.
    """
    import transformers

    from gpux.convert.detect import folder_config

    archs = folder_config(folder).get("architectures") or []
    cls = getattr(transformers, str(archs[0]), None) if archs else None
    if cls is None:
        return None
    params = list(inspect.signature(cls.forward).parameters)
    return next((p for p in params if p in MEDIA_INPUTS), None)


def load_for_export(folder: Path, auto: str, allow_pickle: bool) -> tuple[Any, dict[str, Any]]:
    """``transformers.<auto>.from_pretrained(folder)`` in eval mode, quietly, with its loading info.

    Pickle-only weights are refused unless ``allow_pickle``: unpickling can run code.
    """
    import transformers

    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise ConvertError("the model has no .safetensors weights, only pickle files",
                           hint="pickle can run code when loaded; pass --allow-pickle if you trust the source")
    model, info = getattr(transformers, auto).from_pretrained(folder, use_safetensors=has_safetensors,
                                                               output_loading_info=True)
    return model.eval(), info


def _processor(folder: Path) -> dict[str, Any]:
    from gpux.convert.detect import read_json

    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ConvertError("the model folder has no preprocessor_config.json (how its images or audio are prepared)",
                           hint="pull a checkpoint saved with its processor (processor.save_pretrained)")
    return read_json(path)


def image_size(processor: dict[str, Any], config: Any) -> tuple[int, int]:
    """(height, width) of the model's input images: what the processor produces, else the config's image_size."""
    for key in ("crop_size", "size") if processor.get("do_center_crop", "crop_size" in processor) else ("size",):
        size = processor.get(key)
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size and key == "crop_size":
                return int(size["shortest_edge"]), int(size["shortest_edge"])
    got = getattr(config, "image_size", None) or getattr(getattr(config, "vision_config", None), "image_size", None)
    if isinstance(got, (list, tuple)):
        return int(got[0]), int(got[1])
    if got:
        return int(got), int(got)
    crop = processor.get("size", {})
    edge = crop.get("shortest_edge") if isinstance(crop, dict) else None
    if edge:
        return int(edge), int(edge)
    raise ConvertError("cannot tell the model's image size (no crop_size/size in its processor, no image_size)",
                       hint="pull a checkpoint saved with its image processor")


class _Spec(NamedTuple):
    names: tuple[str, ...]
    example: Any  # callable (batch, length, seed) -> dict of torch tensors
    axes: dict[str, dict[int, str]]


def _spec(model: Any, main: str, processor: dict[str, Any]) -> _Spec:
    import torch

    params = list(inspect.signature(model.forward).parameters)
    if main == "pixel_values":
        h, w = image_size(processor, model.config)
        channels = int(getattr(model.config, "num_channels", 3) or 3)

        def images(batch: int, _length: int, seed: int) -> dict[str, Any]:
            g = torch.Generator().manual_seed(seed)
            return {"pixel_values": torch.randn(batch, channels, h, w, generator=g)}
        return _Spec(("pixel_values",), images, {"pixel_values": {0: "batch"}})
    if main == "input_values":
        masked = bool(processor.get("return_attention_mask")) and "attention_mask" in params
        names = ("input_values", "attention_mask") if masked else ("input_values",)

        def waves(batch: int, length: int, seed: int) -> dict[str, Any]:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(batch, length, generator=g)
            out = {"input_values": x}
            if masked:
                mask = torch.ones(batch, length, dtype=torch.long)
                for row in range(1, batch):
                    mask[row, length - row * length // (batch + 2):] = 0
                out = {"input_values": x * mask, "attention_mask": mask}
            return out
        return _Spec(names, waves, {n: {0: "batch", 1: "samples"} for n in names})
    raise ConvertError(f"{type(model).__name__} takes {main}, which gpux cannot prepare yet",
                       hint="image (pixel_values) and waveform (input_values) models convert today")


def _wrapper(model: Any, names: tuple[str, ...], output: str) -> Any:
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            out = self.model(**dict(zip(names, tensors)))
            if output != "embedding":
                return getattr(out, output)
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                return pooled.flatten(1)
            hidden = out.last_hidden_state
            return hidden.mean(dim=tuple(range(1, hidden.dim() - 1))) if hidden.dim() > 2 else hidden
    return Wrapper().eval()


def export_media(folder: Path, task: str, out: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Export the vision/audio model in ``folder`` for ``task``; returns the facts task.json and the manifest need."""
    import torch
    import transformers

    from gpux.convert.export import EXPORTERS, OPSET, _reason

    start = time.perf_counter()
    head = MEDIA_HEADS[task]
    processor = _processor(folder)
    model, info = load_for_export(folder, head.auto, allow_pickle)
    missing = sorted(info.get("missing_keys") or [])
    if missing and task != "feature-extraction":
        raise ConvertError(f"{type(model).__name__} has no weights for the {task} head ({len(missing)} missing, "
                           f"e.g. {missing[0]})", hint="pull a checkpoint trained for this task")
    main = next((p for p in inspect.signature(model.forward).parameters if p in MEDIA_INPUTS), None)
    if main is None:
        raise ConvertError(f"{type(model).__name__} takes no image or audio input", hint="it is a text model")
    spec = _spec(model, main, processor)
    length = int(processor.get("sampling_rate") or 16000)  # one second of audio for the trace
    example = spec.example(2, length, 0)
    rejected: dict[str, str] = {}
    for kind in EXPORTERS:
        try:
            _run(kind, _wrapper(model, spec.names, head.output), example, out, spec)
            parity = _parity(model, spec, head, out, length)
        except ConvertError as exc:
            rejected[kind] = exc.message
            continue
        except Exception as exc:  # exporters raise many unrelated types
            rejected[kind] = _reason(exc)
            continue
        return {"exporter": kind, "rejected_exporters": rejected, "opset": OPSET, "parity": parity,
                "seconds": round(time.perf_counter() - start, 3), "inputs": list(spec.names), "input": main,
                "processor": processor, "model": model,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    detail = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    raise ConvertError(f"{type(model).__name__} for {task}: no exporter produced a matching ONNX model ({detail})",
                       hint="run with -v for details; try another revision")


def _run(kind: str, wrapper: Any, example: dict[str, Any], out: Path, spec: _Spec) -> None:
    import torch

    from gpux.convert.export import OPSET

    names = list(spec.names)
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            axes: dict[str, dict[int, str]] = {**spec.axes, "output": {0: "batch"}}
            torch.onnx.export(wrapper, tuple(example.values()), str(out), input_names=names, output_names=["output"],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        else:
            dims = {"batch": torch.export.Dim("batch", min=1, max=4096),
                    "samples": torch.export.Dim("samples", min=400, max=16000 * 600)}
            shapes = tuple({i: dims[a] for i, a in spec.axes[n].items()} for n in names)
            torch.onnx.export(wrapper, tuple(example.values()), str(out), input_names=names, output_names=["output"],
                              dynamic_shapes=(shapes,), opset_version=OPSET, dynamo=True, external_data=False)
    wrapper.eval()


def _parity(model: Any, spec: _Spec, head: MediaHead, path: Path, length: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = _wrapper(model, spec.names, head.output)
    cases: list[dict[str, Any]] = []
    for i, (batch, n) in enumerate(((1, length), (3, int(length * 1.7)))):
        feed = spec.example(batch, n, 100 + i)
        with torch.no_grad():
            ref = wrapper(*feed.values()).float().numpy()
        got = sess.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        if ref.shape != got.shape:
            raise ConvertError(f"the ONNX model's output has shape {got.shape}, PyTorch's {ref.shape}",
                               hint="report this model")
        rows = ref.reshape(-1, ref.shape[-1]) if head.per_frame else ref.reshape(ref.shape[0], -1)
        grows = got.reshape(rows.shape)
        norms = np.linalg.norm(rows, axis=-1) * np.linalg.norm(grows, axis=-1)
        cos = np.where(norms > 1e-12, np.sum(rows * grows, -1) / np.maximum(norms, 1e-12),
                       np.where(np.abs(rows - grows).max(-1) <= 1e-6, 1.0, 0.0))  # both zero rows agree
        cases.append({"batch": batch, "length": n if "input_values" in spec.names else None,
                      "cosine_min": float(cos.min()), "max_abs": float(np.abs(ref - got).max())})
    cos_min = min(float(c["cosine_min"]) for c in cases)
    if cos_min < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX model does not match PyTorch: cosine {cos_min:.6f} < {PARITY_MIN_COSINE}",
                           hint="report this model; try another revision")
    return {"cases": cases, "cosine_min": cos_min, "max_abs": max(float(c["max_abs"]) for c in cases),
            "threshold_cosine": PARITY_MIN_COSINE, "inputs": list(spec.names), "outputs": ["output"]}
