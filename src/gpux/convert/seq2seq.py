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

Why the encoder graph ends in the cross-attention keys and values rather than its hidden states: they are
computed once per input and every decoder step reads them, so the decoder never re-projects the encoder
output (the work Optimum's "decoder without past" graph repeats). Nothing names a family: the encoder wrapper
runs the model's own decoder for one token with an empty ``EncoderDecoderCache`` and returns the cross
cache transformers fills (the tracer keeps only what those outputs need); the decoder wrapper hands the
model an ``EncoderDecoderCache`` whose cross half is full, so transformers skips the projection, and a
zero stand-in for the encoder output of the right shape (read by nothing but shape logic, pruned).

Parity (stored in the manifest): cross keys/values, first-step logits and 8 teacher-forced steps (cosine per
row), and greedy tokens over 24 steps vs a PyTorch greedy loop on the same batch.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpux.errors import ConvertError

PARITY_DECODE_STEPS = 8
PARITY_NEW_TOKENS = 24
PARITY_MIN_COSINE = 0.999
#: Encoder inputs gpux prepares, in the order a model's encoder is searched for them.
ENCODER_INPUTS = ("input_ids", "input_features")


@dataclass(frozen=True)
class Seq2SeqGeometry:
    """What the two graphs look like, read from the loaded model (never from a family table)."""

    #: The encoder's main input: ``input_ids`` (text) or ``input_features`` (log-mel speech).
    main: str
    #: (mel bins, frames) for speech models: the fixed window the encoder takes.
    features: tuple[int, int] | None
    #: (heads, head_dim) per decoder layer, self-attention cache.
    self_layers: tuple[tuple[int, int], ...]
    #: (heads, head_dim) per decoder layer, cross-attention cache.
    cross_layers: tuple[tuple[int, int], ...]
    decoder_start: int

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
        return {"main": self.main, "features": list(self.features) if self.features else None,
                "self_layers": [list(x) for x in self.self_layers],
                "cross_layers": [list(x) for x in self.cross_layers], "decoder_start": self.decoder_start}


def is_seq2seq(model_config: Any) -> bool:
    """Whether transformers builds an encoder–decoder for this config (``is_encoder_decoder``)."""
    return bool(getattr(model_config, "is_encoder_decoder", False))


def _main_input(model: Any) -> str:
    params = inspect.signature(model.get_encoder().forward).parameters
    found = next((p for p in ENCODER_INPUTS if p in params), None)
    if found is None:
        raise ConvertError(f"{type(model).__name__}'s encoder takes {', '.join(list(params)[:4])}, which gpux "
                           "cannot prepare", hint="text (input_ids) and log-mel speech (input_features) "
                                                  "encoder–decoders convert today")
    return found


def _features(model: Any) -> tuple[int, int] | None:
    cfg = model.config
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


def _start(model: Any) -> int:
    for holder in (getattr(model, "generation_config", None), model.config):
        value = getattr(holder, "decoder_start_token_id", None)
        if isinstance(value, int):
            return value
    raise ConvertError(f"{type(model).__name__} names no decoder_start_token_id",
                       hint="set decoder_start_token_id in the model's config.json or generation_config.json")


def geometry_of(model: Any) -> Seq2SeqGeometry:
    """One forward pass with ``use_cache=True``: the returned caches say each layer's shapes."""
    import torch

    main = _main_input(model)
    features = _features(model) if main == "input_features" else None
    start = _start(model)
    feed = encoder_example(model, main, features, batch=1)
    with torch.no_grad():
        out = model(**feed, decoder_input_ids=torch.tensor([[start]]), use_cache=True)
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

    return Seq2SeqGeometry(main, features, shapes(halves[0]), shapes(halves[1]), start)


def _cache(pairs: list[tuple[Any, Any]], config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(pairs, config=config) if pairs else DynamicCache(config=config)


def encoder_wrapper(model: Any, geometry: Seq2SeqGeometry) -> Any:
    """Encoder inputs in, the decoder's cross-attention keys and values out (see the module docstring)."""
    import torch
    from transformers import EncoderDecoderCache

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
            out = self.model(**feed, decoder_input_ids=start, past_key_values=cache, use_cache=True)
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
    width = int(getattr(model.config, "d_model", 0) or getattr(model.config, "hidden_size", 0))

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
            kwargs: dict[str, Any] = {"attention_mask": mask} if mask is not None else {}
            out = self.model(encoder_outputs=(hidden,), decoder_input_ids=ids, past_key_values=cache,
                             use_cache=True, **kwargs)
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
        assert geometry.features is not None
        source = geometry.features[1] // 2
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
    with torch.no_grad():
        encoded = model.get_encoder()(**feed)
        kwargs = {"attention_mask": mask} if mask is not None else {}
        out = model(encoder_outputs=encoded, decoder_input_ids=torch.from_numpy(ids), use_cache=True, **kwargs)
        for layer, (k, v) in zip(out.past_key_values.cross_attention_cache.layers, zip(got_cross[::2], got_cross[1::2])):
            cos["cross"] += [float(_cosines(layer.keys.numpy(), k).min()), float(_cosines(layer.values.numpy(), v).min())]
        for step in range(PARITY_DECODE_STEPS + 1):
            ref, got = out.logits[:, -1].float().numpy(), pair.step(ids)[:, -1]
            cos["decode"].append(float(_cosines(ref, got).min()))
            max_abs = max(max_abs, float(np.abs(ref - got).max()))
            if step == PARITY_DECODE_STEPS:
                break
            ids = ref.argmax(-1)[:, None].astype(np.int64)  # PyTorch's choice drives both (teacher forcing)
            out = model(encoder_outputs=encoded, decoder_input_ids=torch.from_numpy(ids),
                        past_key_values=out.past_key_values, use_cache=True, **kwargs)
        agreement = _greedy_agreement(model, encoded, kwargs, pair, np_feed, geometry)
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


def _greedy_agreement(model: Any, encoded: Any, kwargs: dict[str, Any], pair: _OrtPair,
                      feed: dict[str, np.ndarray], geometry: Seq2SeqGeometry) -> float:
    """Share of new tokens, position by position, where the ONNX greedy loop picks what a PyTorch greedy
    loop over the same model picks (raw argmax: no logits processors on either side)."""
    import torch

    batch = next(iter(feed.values())).shape[0]
    ref = np.full((batch, 1), geometry.decoder_start, np.int64)
    out = None
    for _ in range(PARITY_NEW_TOKENS):
        out = model(encoder_outputs=encoded, decoder_input_ids=torch.from_numpy(ref[:, -1:]), use_cache=True,
                    past_key_values=None if out is None else out.past_key_values, **kwargs)
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
    from gpux.convert.export import _reason
    from gpux.convert.media import load_for_export
    from gpux.convert.prune import fold_file
    from gpux.store.blobs import disk_full, no_space

    model, _ = load_for_export(folder, "AutoModelForSeq2SeqLM" if _main_of_folder(folder) == "input_ids"
                               else "AutoModelForSpeechSeq2Seq", allow_pickle)
    geometry = geometry_of(model)
    rejected: dict[str, str] = {}
    for kind in exporters:
        try:
            run_exporter(kind, model, geometry, out, opset)
            fold_file(out / "encoder.onnx")
            _share_tied_head(out / "decoder.onnx")
            parity = check_parity(model, geometry, out)
        except ConvertError as exc:
            rejected[kind] = exc.message
            continue
        except Exception as exc:  # exporters raise many unrelated types
            full = no_space(exc)
            if full is not None:
                from gpux.store.local import home

                raise disk_full(home(), full, "the exported model") from exc
            rejected[kind] = _reason(exc)
            continue
        return model, geometry, kind, parity, rejected
    detail = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    raise ConvertError(f"{type(model).__name__}: no exporter produced matching ONNX encoder and decoder graphs "
                       f"({detail})", hint="run with -v for details; try another revision")


def _main_of_folder(folder: Path) -> str:
    """``input_features`` for a speech encoder–decoder (its config names mel bins), else ``input_ids``."""
    from gpux.convert.detect import folder_config

    return "input_features" if folder_config(folder).get("num_mel_bins") else "input_ids"
