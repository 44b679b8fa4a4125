"""Parity of an exported encoder–decoder (gpux.convert.seq2seq) against PyTorch, and the export driver.

Stored in the manifest: the cross-attention keys/values (cosine per row and layer), the first decoder step
and 8 teacher-forced steps (cosine of the last position's logits per row), and greedy tokens over 24 steps
of the ONNX pair vs a PyTorch greedy loop over the same model (raw argmax on both sides). A text batch has
rows of different lengths, so the source padding mask is exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpux.convert.seq2seq import (
    PARITY_DECODE_STEPS,
    PARITY_MIN_COSINE,
    PARITY_NEW_TOKENS,
    Parts,
    Seq2SeqGeometry,
    encoder_example,
    geometry_of,
    run_exporter,
)
from gpux.errors import ConvertError


def _cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    ref, got = ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1)
    return np.sum(ref * got, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)


class _OrtPair:
    """The minimal encoder + cached decoder loop the parity check needs (the engine's lives in gpux.generate)."""

    def __init__(self, folder: Path, geometry: Seq2SeqGeometry) -> None:
        import onnxruntime as ort

        self.enc = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
        self.g = geometry

    def start(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.cross = dict(zip(self.g.cross_names, self.enc.run(None, feed)))
        self.mask = feed.get("attention_mask")
        batch = next(iter(feed.values())).shape[0]
        self.past = {n: np.zeros((batch, h, 0, d), np.float32)
                     for n, (h, d) in zip(self.g.past_names, [x for x in self.g.self_layers for _ in "kv"])}
        return list(self.cross.values())

    def step(self, ids: np.ndarray) -> np.ndarray:
        feed = {"decoder_input_ids": ids, **self.past, **self.cross}
        if self.g.masked:
            feed["encoder_attention_mask"] = self.mask
        logits, *present = self.dec.run(None, feed)
        self.past = dict(zip(self.g.past_names, present))
        return np.asarray(logits)


def check_parity(model: Any, geometry: Seq2SeqGeometry, folder: Path) -> dict[str, Any]:
    """Cross keys/values, first step and teacher-forced decode logits, greedy agreement vs PyTorch;
    :class:`ConvertError` below the cosine floor (see the module docstring)."""
    import torch

    feed = encoder_example(model, geometry.main, geometry.features, batch=3 if geometry.masked else 2,
                           source=13, seed=7)
    np_feed = {k: v.numpy() for k, v in feed.items()}
    pair = _OrtPair(folder, geometry)
    got_cross = pair.start(np_feed)
    batch = next(iter(np_feed.values())).shape[0]
    ids = np.full((batch, 1), geometry.decoder_start, np.int64)
    cos: dict[str, list[float]] = {"cross": [], "decode": []}
    max_abs = 0.0
    mask = feed.get("attention_mask")
    parts = Parts(model)
    with torch.no_grad():
        hidden = parts.encode(feed)
        out = parts.decode(torch.from_numpy(ids), hidden, mask, None)
        for layer, (k, v) in zip(out.past_key_values.cross_attention_cache.layers, zip(got_cross[::2], got_cross[1::2])):
            cos["cross"] += [float(_cosines(layer.keys.numpy(), k).min()), float(_cosines(layer.values.numpy(), v).min())]
        for step in range(PARITY_DECODE_STEPS + 1):
            ref, got = out.logits[:, -1].float().numpy(), pair.step(ids)[:, -1]
            cos["decode"].append(float(_cosines(ref, got).min()))
            max_abs = max(max_abs, float(np.abs(ref - got).max()))
            if step == PARITY_DECODE_STEPS:
                break
            ids = ref.argmax(-1)[:, None].astype(np.int64)  # PyTorch's choice drives both (teacher forcing)
            out = parts.decode(torch.from_numpy(ids), hidden, mask, out.past_key_values)
        agreement = _greedy_agreement(parts, hidden, mask, pair, np_feed, geometry)
    low = min(min(cos["cross"]), min(cos["decode"]))
    result: dict[str, Any] = {
        "batch": batch, "decode_steps": PARITY_DECODE_STEPS, "cosine_cross_min": min(cos["cross"]),
        "cosine_first_step": cos["decode"][0], "cosine_decode_min": min(cos["decode"]), "cosine_min": low,
        "max_abs": max_abs, "threshold_cosine": PARITY_MIN_COSINE, "greedy_new_tokens": PARITY_NEW_TOKENS,
        "greedy_agreement": agreement, "encoder_inputs": geometry.encoder_inputs,
        "decoder_inputs": geometry.decoder_inputs}
    if low < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX encoder–decoder does not match PyTorch: cosine {low:.6f} < {PARITY_MIN_COSINE} "
                           f"(cross {min(cos['cross']):.6f}, decode {min(cos['decode']):.6f}), max-abs {max_abs:.3g}",
                           hint="report this model; try another revision")
    return result


def _greedy_agreement(parts: Parts, hidden: Any, mask: Any, pair: _OrtPair,
                      feed: dict[str, np.ndarray], geometry: Seq2SeqGeometry) -> float:
    """Share of new tokens, position by position, where the ONNX greedy loop picks what a PyTorch greedy
    loop over the same model picks (raw argmax: no logits processors on either side)."""
    import torch

    batch = next(iter(feed.values())).shape[0]
    ref = np.full((batch, 1), geometry.decoder_start, np.int64)
    out = None
    for _ in range(PARITY_NEW_TOKENS):
        out = parts.decode(torch.from_numpy(ref[:, -1:]), hidden, mask, None if out is None else out.past_key_values)
        ref = np.concatenate([ref, out.logits[:, -1].argmax(-1).numpy()[:, None]], axis=1)
    pair.start(feed)
    got = np.full((batch, 1), geometry.decoder_start, np.int64)
    for _ in range(PARITY_NEW_TOKENS):
        got = np.concatenate([got, pair.step(got[:, -1:])[:, -1].argmax(-1)[:, None]], axis=1)
    return float((got[:, 1:] == ref[:, 1:]).mean())


def export(folder: Path, out: Path, *, allow_pickle: bool = False, opset: int = 18,
           exporters: tuple[str, ...] = ("torchscript", "dynamo")) -> tuple[Any, Seq2SeqGeometry, str, dict[str, Any],
                                                                            dict[str, str]]:
    """Export the encoder–decoder in ``folder`` into ``out`` (encoder.onnx, decoder.onnx):
    (loaded model, geometry, exporter, parity, rejected exporters). Exporters are tried in order; one whose
    graphs miss parity is passed over with the reason recorded."""
    from gpux.convert.decoder import _share_tied_head
    from gpux.convert.export import first_exporter
    from gpux.convert.media import load_for_export
    from gpux.convert.prune import fold_file

    model, _ = load_for_export(folder, _class_of(folder), allow_pickle)
    geometry = geometry_of(model, folder)

    def attempt(kind: str) -> dict[str, Any]:
        run_exporter(kind, model, geometry, out, opset)
        fold_file(out / "encoder.onnx")
        fold_file(out / "decoder.onnx")
        _share_tied_head(out / "decoder.onnx")
        return check_parity(model, geometry, out)

    kind, parity, rejected = first_exporter(exporters, attempt, lambda detail: ConvertError(
        f"{type(model).__name__}: no exporter produced matching ONNX encoder and decoder graphs ({detail})",
        hint="run with -v for details; try another revision"))
    return model, geometry, kind, parity, rejected


def _class_of(folder: Path) -> str:
    """The transformers class to load: the saved architecture where transformers has it, else the Auto class."""
    import transformers

    from gpux.convert.detect import folder_config

    config = folder_config(folder)
    archs = [str(a) for a in config.get("architectures") or []]
    if archs and hasattr(transformers, archs[0]):
        return archs[0]
    return "AutoModelForSpeechSeq2Seq" if config.get("num_mel_bins") else "AutoModelForSeq2SeqLM"
