"""Encoder–decoder models (T5, BART, Whisper, Marian, Pegasus...) -> an encoder graph and a decoder graph.

The two graphs::

    encoder.onnx
      inputs   input_ids [batch, source] int64 + attention_mask [batch, source] int64   (text models)
               | input_features [batch, mel_bins, frames] float32                      (speech models)
      outputs  cross.{i}.key / cross.{i}.value   [batch, heads_i, source', head_dim_i]  one pair per decoder layer

    decoder.onnx
      inputs   decoder_input_ids          [batch, sequence]             int64
               encoder_attention_mask     [batch, source]               int64  (text models only)
               past.{i}.key / .value      [batch, heads_i, past, head_dim_i]     self-attention cache
               cross.{i}.key / .value     [batch, heads_i, source', head_dim_i]  from the encoder, never grown
      outputs  logits                     [batch, sequence, vocab]
               present.{i}.key / .value   [batch, heads_i, past + sequence, head_dim_i]

``input_ids`` may also be ``pixel_values`` [batch, channels, height, width] (image captioners: BLIP, and
``VisionEncoderDecoderModel`` checkpoints). Why the encoder graph ends in the cross-attention keys and values rather than its hidden states: they are
computed once per input and every decoder step reads them, so the decoder never re-projects the encoder
output (the work Optimum's "decoder without past" graph repeats). Nothing names a family: the encoder wrapper
runs the model's own decoder for one token with an empty ``EncoderDecoderCache`` and returns the cross
cache transformers fills (the tracer keeps only what those outputs need); the decoder wrapper hands the
model an ``EncoderDecoderCache`` whose cross half is full, so transformers skips the projection, and a
zero stand-in for the encoder output of the right shape (read by nothing but shape logic, pruned).

Two ways of calling the halves (:class:`Parts`): an encoder–decoder (``is_encoder_decoder``: the model's
``get_encoder()``, then its forward with ``encoder_outputs``), or a captioner made of a vision model and a
text decoder with cross-attention (BLIP: ``vision_model`` then ``text_decoder``), told apart by what the
loaded model has, not by its family's name. Parity is in gpux.convert.seq2seq_parity.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpux.errors import ConvertError

PARITY_DECODE_STEPS = 8
PARITY_NEW_TOKENS = 24
PARITY_MIN_COSINE = 0.999
#: Encoder inputs gpux prepares, in the order a model's encoder is searched for them.
ENCODER_INPUTS = ("input_ids", "input_features", "pixel_values")


class Parts:
    """How to run the two halves of ``model`` (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.captioner = not getattr(model.config, "is_encoder_decoder", False) and all(
            hasattr(model, a) for a in ("vision_model", "text_decoder"))

    @property
    def encoder(self) -> Any:
        return self.model.vision_model if self.captioner else self.model.get_encoder()

    def encode(self, feed: dict[str, Any]) -> Any:
        """The encoder's last hidden states."""
        return self.encoder(**feed)[0]

    def decode(self, ids: Any, hidden: Any, mask: Any, cache: Any) -> Any:
        """One decoder call (``.logits``, ``.past_key_values``) over ``cache``."""
        if self.captioner:
            return self.model.text_decoder(input_ids=ids, encoder_hidden_states=hidden, past_key_values=cache,
                                           use_cache=True, return_dict=True)
        kwargs = {"attention_mask": mask} if mask is not None else {}
        return self.model(encoder_outputs=(hidden,), decoder_input_ids=ids, past_key_values=cache, use_cache=True,
                          **kwargs)

    def start(self) -> int:
        """The decoder's first token: ``decoder_start_token_id``, or a captioner's text ``bos_token_id``."""
        cfg = self.model.config
        holders = [getattr(self.model, "generation_config", None), cfg, getattr(cfg, "decoder", None)]
        key = "bos_token_id" if self.captioner else "decoder_start_token_id"
        if self.captioner:
            holders = [getattr(cfg, "text_config", None)]
        for holder in holders:
            value = getattr(holder, key, None)
            if isinstance(value, int):
                return value
        raise ConvertError(f"{type(self.model).__name__} names no {key}",
                           hint=f"set {key} in the model's config.json or generation_config.json")

    def eos(self) -> list[int]:
        """End-of-text ids the decoder emits (a captioner's text ``sep_token_id``); [] to read generation_config."""
        sep = getattr(getattr(self.model.config, "text_config", None), "sep_token_id", None) if self.captioner else None
        return [sep] if isinstance(sep, int) else []


@dataclass(frozen=True)
class Seq2SeqGeometry:
    """What the two graphs look like, read from the loaded model (never from a family table)."""

    #: The encoder's main input: ``input_ids`` (text), ``input_features`` (log-mel speech), ``pixel_values``.
    main: str
    #: (mel bins, frames) for speech models, (height, width) for images: the fixed input the encoder takes.
    features: tuple[int, int] | None
    #: (heads, head_dim) per decoder layer, self-attention cache.
    self_layers: tuple[tuple[int, int], ...]
    #: (heads, head_dim) per decoder layer, cross-attention cache.
    cross_layers: tuple[tuple[int, int], ...]
    decoder_start: int
    #: Width of the encoder's hidden states (the decoder wrapper's stand-in for them has this shape).
    width: int = 0
    #: Source positions of a fixed-size input (frames after the convolutions, image patches); 0 for text.
    source: int = 0

    @property
    def masked(self) -> bool:
        """Text encoders take (and the decoder honours) an attention mask over the source; speech ones a fixed window."""
        return self.main == "input_ids"

    @property
    def encoder_inputs(self) -> list[str]:
        return [self.main, *(["attention_mask"] if self.masked else [])]

    @property
    def cross_names(self) -> list[str]:
        return [f"cross.{i}.{kv}" for i in range(len(self.cross_layers)) for kv in ("key", "value")]

    @property
    def past_names(self) -> list[str]:
        return [f"past.{i}.{kv}" for i in range(len(self.self_layers)) for kv in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(len(self.self_layers)) for kv in ("key", "value")]

    @property
    def decoder_inputs(self) -> list[str]:
        return ["decoder_input_ids", *(["encoder_attention_mask"] if self.masked else []), *self.past_names,
                *self.cross_names]

    def as_json(self) -> dict[str, Any]:
        return {"main": self.main, "features": list(self.features) if self.features else None, "source": self.source,
                "self_layers": [list(x) for x in self.self_layers],
                "cross_layers": [list(x) for x in self.cross_layers], "decoder_start": self.decoder_start}


def is_seq2seq(model_config: Any) -> bool:
    """Whether transformers builds an encoder–decoder for this config (``is_encoder_decoder``)."""
    return bool(getattr(model_config, "is_encoder_decoder", False))


def _main_input(parts: Parts) -> str:
    model = parts.model
    params = inspect.signature(parts.encoder.forward).parameters
    found = next((p for p in ENCODER_INPUTS if p in params), None)
    if found is None:
        raise ConvertError(f"{type(model).__name__}'s encoder takes {', '.join(list(params)[:4])}, which gpux "
                           "cannot prepare", hint="text (input_ids), log-mel speech (input_features) and image "
                                                  "(pixel_values) encoder–decoders convert today")
    return found


def _features(model: Any, main: str, folder: Path | None) -> tuple[int, int] | None:
    if main == "input_ids":
        return None
    cfg = model.config
    if main == "pixel_values":
        from gpux.convert.media import _processor, image_size

        return image_size(_processor(folder) if folder is not None else {}, getattr(cfg, "encoder", None) or cfg)
    bins = getattr(cfg, "num_mel_bins", None)
    positions = getattr(cfg, "max_source_positions", None)
    if not bins or not positions:
        raise ConvertError(f"{type(model).__name__} takes input_features but its config says no num_mel_bins / "
                           "max_source_positions", hint="use a Whisper-style speech checkpoint")
    # Whisper's two strided convolutions halve the frames: the encoder's window is 2 x its positions.
    return int(bins), 2 * int(positions)


def encoder_example(model: Any, geometry_main: str, features: tuple[int, int] | None, batch: int = 2,
                    source: int = 11, seed: int = 0) -> dict[str, Any]:
    """Traced encoder inputs: random ids with right padding on later rows (so the mask is not folded away),
    or random log-mel features of the encoder's window."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if geometry_main == "pixel_values":
        assert features is not None
        return {"pixel_values": torch.randn(batch, 3, features[0], features[1], generator=g)}
    if geometry_main == "input_features":
        assert features is not None
        return {"input_features": torch.randn(batch, features[0], features[1], generator=g)}
    vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
    pad = int(getattr(model.config, "pad_token_id", 0) or 0)
    ids = torch.randint(3, max(4, vocab), (batch, source), generator=g)
    mask = torch.ones(batch, source, dtype=torch.long)
    for row in range(1, batch):
        mask[row, source - 3 * row:] = 0
    return {"input_ids": ids * mask + pad * (1 - mask), "attention_mask": mask}


def geometry_of(model: Any, folder: Path | None = None) -> Seq2SeqGeometry:
    """One encoder pass and one decoder step with ``use_cache=True``: the returned caches say each layer's shapes."""
    import torch
    from transformers import EncoderDecoderCache

    parts = Parts(model)
    main = _main_input(parts)
    features = _features(model, main, folder)
    start = parts.start()
    feed = encoder_example(model, main, features, batch=1)
    with torch.no_grad():
        hidden = parts.encode(feed)
        cfg = model.config
        out = parts.decode(torch.tensor([[start]]), hidden, feed.get("attention_mask"),
                           EncoderDecoderCache(_cache([], cfg), _cache([], cfg)))
    cache = getattr(out, "past_key_values", None)
    halves = (getattr(cache, "self_attention_cache", None), getattr(cache, "cross_attention_cache", None))
    if any(h is None or not getattr(h, "layers", None) for h in halves):
        raise ConvertError(f"{type(model).__name__} returns no encoder–decoder cache gpux can export "
                           f"({type(cache).__name__})", hint="gpux exports caches shaped [batch, heads, tokens, dim]")

    def shapes(half: Any) -> tuple[tuple[int, int], ...]:
        got = []
        for layer in half.layers:
            k, v = layer.keys, layer.values
            if k is None or k.dim() != 4 or tuple(k.shape) != tuple(v.shape):
                raise ConvertError(f"{type(model).__name__} keeps its cache in an unexpected shape",
                                   hint="gpux exports caches shaped [batch, heads, tokens, head_dim]")
            got.append((int(k.shape[1]), int(k.shape[3])))
        return tuple(got)

    fixed = 0 if main == "input_ids" else int(hidden.shape[1])
    return Seq2SeqGeometry(main, features, shapes(halves[0]), shapes(halves[1]), start, int(hidden.shape[-1]), fixed)


def _cache(pairs: list[tuple[Any, Any]], config: Any) -> Any:
    from transformers import DynamicCache

    config = getattr(config, "text_config", None) or getattr(config, "decoder", None) or config
    return DynamicCache(pairs, config=config) if pairs else DynamicCache(config=config)


def encoder_wrapper(model: Any, geometry: Seq2SeqGeometry) -> Any:
    """Encoder inputs in, the decoder's cross-attention keys and values out (see the module docstring)."""
    import torch
    from transformers import EncoderDecoderCache

    parts = Parts(model)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            feed = dict(zip(geometry.encoder_inputs, tensors))
            first = tensors[0]
            start = torch.zeros((first.shape[0], 1), dtype=torch.long) + geometry.decoder_start
            cfg = self.model.config
            cache = EncoderDecoderCache(_cache([], cfg), _cache([], cfg))
            out = parts.decode(start, parts.encode(feed), feed.get("attention_mask"), cache)
            flat = []
            for layer in out.past_key_values.cross_attention_cache.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    return Encoder().eval()


def decoder_wrapper(model: Any, geometry: Seq2SeqGeometry) -> Any:
    """Decoder tokens, source mask and both caches in; logits and the grown self-attention cache out."""
    import torch
    from transformers import EncoderDecoderCache

    n_self, n_cross = len(geometry.self_layers), len(geometry.cross_layers)
    width = geometry.width
    parts = Parts(model)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            ids, *rest = tensors
            mask = None
            if geometry.masked:
                mask, rest = rest[0], rest[1:]
            past = [(rest[2 * i], rest[2 * i + 1]) for i in range(n_self)]
            cross = [(rest[2 * n_self + 2 * i], rest[2 * n_self + 2 * i + 1]) for i in range(n_cross)]
            cfg = self.model.config
            cache = EncoderDecoderCache(_cache(past, cfg), _cache(cross, cfg))
            source = cross[0][0]
            hidden = torch.zeros((source.shape[0], source.shape[2], width), dtype=source.dtype)
            out = parts.decode(ids, hidden, mask, cache)
            flat = [out.logits]
            for layer in out.past_key_values.self_attention_cache.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    return Decoder().eval()


def decoder_example(model: Any, geometry: Seq2SeqGeometry, batch: int = 2, past: int = 3, seq: int = 2,
                    source: int = 11) -> tuple[Any, ...]:
    """Traced decoder inputs: a non-empty past and a padded source row, so no shape or mask shortcut is baked in."""
    import torch

    g = torch.Generator().manual_seed(1)
    vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
    tensors: list[Any] = [torch.randint(3, max(4, vocab), (batch, seq), generator=g)]
    if geometry.masked:
        mask = torch.ones(batch, source, dtype=torch.long)
        mask[1:, -3:] = 0
        tensors.append(mask)
    else:
        source = geometry.source
    for heads, dim in geometry.self_layers:
        tensors += [torch.randn(batch, heads, past, dim, generator=g) for _ in "kv"]
    for heads, dim in geometry.cross_layers:
        tensors += [torch.randn(batch, heads, source, dim, generator=g) for _ in "kv"]
    return tuple(tensors)


def run_exporter(kind: str, model: Any, geometry: Seq2SeqGeometry, folder: Path, opset: int) -> None:
    """Write ``encoder.onnx`` and ``decoder.onnx`` into ``folder`` with ``kind`` ("torchscript" or "dynamo")."""
    import torch

    enc_names, dec_names = geometry.encoder_inputs, geometry.decoder_inputs
    dec_outs = ["logits", *geometry.present_names]
    enc_args = tuple(encoder_example(model, geometry.main, geometry.features).values())
    dec_args = decoder_example(model, geometry)
    source_axis = "source" if geometry.masked else "frames"
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            enc_axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "source"} for n in enc_names}
            if not geometry.masked:
                enc_axes = {geometry.main: {0: "batch"}}
            enc_axes.update({n: {0: "batch", 2: source_axis} for n in geometry.cross_names})
            torch.onnx.export(encoder_wrapper(model, geometry), enc_args, str(folder / "encoder.onnx"),
                              input_names=enc_names, output_names=geometry.cross_names, dynamic_axes=enc_axes,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
            dec_axes: dict[str, dict[int, str]] = {"decoder_input_ids": {0: "batch", 1: "sequence"},
                                                   "encoder_attention_mask": {0: "batch", 1: "source"},
                                                   "logits": {0: "batch", 1: "sequence"}}
            dec_axes.update({n: {0: "batch", 2: "past"} for n in geometry.past_names})
            dec_axes.update({n: {0: "batch", 2: source_axis} for n in geometry.cross_names})
            dec_axes.update({n: {0: "batch", 2: "total"} for n in geometry.present_names})
            torch.onnx.export(decoder_wrapper(model, geometry), dec_args, str(folder / "decoder.onnx"),
                              input_names=dec_names, output_names=dec_outs,
                              dynamic_axes={k: v for k, v in dec_axes.items() if k in dec_names or k in dec_outs},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        else:
            dim = torch.export.Dim
            batch, source = dim("batch", min=1, max=1024), dim("source", min=1, max=1 << 16)
            seq, past = dim("sequence", min=1, max=1 << 16), dim("past", min=0, max=1 << 16)
            enc_shapes = [{0: batch, 1: source}, {0: batch, 1: source}] if geometry.masked else [{0: batch}]
            torch.onnx.export(encoder_wrapper(model, geometry), enc_args, str(folder / "encoder.onnx"),
                              input_names=enc_names, output_names=geometry.cross_names,
                              dynamic_shapes=(tuple(enc_shapes),), opset_version=opset, dynamo=True,
                              external_data=False, verbose=False)
            cross_source = source if geometry.masked else None
            dec_shapes = [{0: batch, 1: seq}, *([{0: batch, 1: source}] if geometry.masked else []),
                          *({0: batch, 2: past} for _ in geometry.past_names),
                          *({0: batch, 2: cross_source} if cross_source is not None else {0: batch}
                            for _ in geometry.cross_names)]
            torch.onnx.export(decoder_wrapper(model, geometry), dec_args, str(folder / "decoder.onnx"),
                              input_names=dec_names, output_names=dec_outs, dynamic_shapes=(tuple(dec_shapes),),
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
    model.eval()

