"""Decoder-only language model -> one ONNX graph with a key/value cache, checked against PyTorch.

The graph (one for prefill and decode: an empty past is valid, so the first step needs no second graph)::

    inputs   input_ids                 [batch, sequence]                  int64
             attention_mask            [batch, past + sequence]           int64  (1 = real token, 0 = padding)
             position_ids              [batch, sequence]                  int64  (where forward takes them)
             past_key_values.{i}.key   [batch, kv_heads_i, past, head_dim_i]  float32, one per layer i,
             past_key_values.{i}.value [batch, kv_heads_i, past, head_dim_i]  and the same for values
    outputs  logits                    [batch, sequence, vocab]
             present.{i}.key / .value  [batch, kv_heads_i, past + sequence, head_dim_i]

Nothing names a family: the layers' cache geometry is read from one forward pass of the loaded model
(:func:`cache_geometry`), position ids are fed where ``forward`` takes them, and the cache object the
model's forward expects is transformers' own ``DynamicCache`` built from the flat past tensors inside
the traced wrapper. Position ids follow transformers' ``generate``: the running count of real tokens
minus one (padding on the left of a row does not move its positions).

Parity (stored in the manifest): prefill logits and 8 teacher-forced decode steps vs PyTorch on a
left-padded batch of prompts of different lengths (cosine per real position, max-abs), and greedy token
agreement over 32 new tokens against transformers' ``generate`` on the same batch.
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
from gpux.generate.loop import positions

#: (prompt lengths of one left-padded batch) the parity check runs; the rows differ so padding is exercised.
PARITY_PROMPTS = (5, 11, 23)
PARITY_DECODE_STEPS = 8
PARITY_NEW_TOKENS = 32
PARITY_MIN_COSINE = 0.999


@dataclass(frozen=True)
class CacheGeometry:
    """What the graph's cache tensors look like, read from the model (never from a family table)."""

    #: (kv_heads, head_dim) per layer, in layer order.
    layers: tuple[tuple[int, int], ...]
    #: Whether the model's forward takes position_ids (fed by the loop; computed inside otherwise).
    position_ids: bool

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(len(self.layers)) for kv in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(len(self.layers)) for kv in ("key", "value")]

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *(["position_ids"] if self.position_ids else []), *self.past_names]

    def as_json(self) -> dict[str, Any]:
        return {"layers": [list(x) for x in self.layers], "position_ids": self.position_ids}


def cache_geometry(model: Any) -> CacheGeometry:
    """One two-token forward pass with ``use_cache=True``; the returned cache says each layer's shape."""
    import torch

    ids = torch.tensor([[5, 6]], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache = getattr(out, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        raise ConvertError(f"{type(model).__name__} returns no key/value cache gpux can export "
                           f"({type(cache).__name__})", hint="gpux exports decoders with a per-layer key/value cache")
    geometry = []
    for layer in layers:
        k, v = layer.keys, layer.values
        if k.dim() != 4 or v.dim() != 4 or k.shape[1] != v.shape[1]:
            raise ConvertError(f"{type(model).__name__} keeps its cache in an unexpected shape "
                               f"(keys {tuple(k.shape)}, values {tuple(v.shape)})",
                               hint="gpux exports caches shaped [batch, heads, tokens, head_dim]")
        if k.shape[3] != v.shape[3]:
            raise ConvertError(f"{type(model).__name__} has keys and values of different widths",
                               hint="such caches are not supported yet")
        geometry.append((int(k.shape[1]), int(k.shape[3])))
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    return CacheGeometry(tuple(geometry), takes_positions)


def wrapper(model: Any, geometry: CacheGeometry) -> Any:
    """Flat tensors in (the graph's inputs, in order), logits and the flat present cache out."""
    import torch
    from transformers import DynamicCache

    n_layers = len(geometry.layers)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            ids, mask, *rest = tensors
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
            if geometry.position_ids:
                kwargs["position_ids"], rest = rest[0], rest[1:]
            pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(n_layers)]
            kwargs["past_key_values"] = DynamicCache(pairs, config=self.model.config)
            out = self.model(**kwargs)
            flat = [out.logits]
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    return Decoder().eval()


def example(model: Any, geometry: CacheGeometry, batch: int = 2, past: int = 3, seq: int = 5) -> tuple[Any, ...]:
    """Traced inputs: a non-empty past and a left-padded row, so no shape or mask shortcut is baked in."""
    import torch

    g = torch.Generator().manual_seed(0)
    vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
    ids = torch.randint(3, max(4, vocab), (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[1:, :2] = 0
    tensors: list[Any] = [ids, mask]
    if geometry.position_ids:
        tensors.append(torch.from_numpy(positions(mask.numpy(), seq)))
    for heads, dim in geometry.layers:
        tensors += [torch.randn(batch, heads, past, dim, generator=g), torch.randn(batch, heads, past, dim, generator=g)]
    return tuple(tensors)


def run_exporter(kind: str, model: Any, geometry: CacheGeometry, out: Path, opset: int) -> None:
    """Export with ``kind`` ("torchscript" or "dynamo") to ``out``."""
    import torch

    names, outs = geometry.input_names, ["logits", *geometry.present_names]
    args = example(model, geometry)
    module = wrapper(model, geometry)
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                               "attention_mask": {0: "batch", 1: "total"},
                                               "position_ids": {0: "batch", 1: "sequence"},
                                               "logits": {0: "batch", 1: "sequence"}}
            axes.update({n: {0: "batch", 2: "past"} for n in geometry.past_names})
            axes.update({n: {0: "batch", 2: "total"} for n in geometry.present_names})
            torch.onnx.export(module, args, str(out), input_names=names, output_names=outs,
                              dynamic_axes={k: v for k, v in axes.items() if k in names or k in outs},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        else:
            dim = torch.export.Dim
            batch, seq = dim("batch", min=1, max=1024), dim("sequence", min=1, max=1 << 16)
            total, past = dim("total", min=1, max=1 << 17), dim("past", min=0, max=1 << 16)
            shapes = [{0: batch, 1: seq}, {0: batch, 1: total}, *([{0: batch, 1: seq}] if geometry.position_ids else []),
                      *({0: batch, 2: past} for _ in geometry.past_names)]
            torch.onnx.export(module, args, str(out), input_names=names, output_names=outs,
                              dynamic_shapes=(tuple(shapes),), opset_version=opset, dynamo=True,
                              external_data=False, verbose=False)
    module.eval()  # the TorchScript exporter leaves the module in training mode
    model.eval()


def _batch(prompts: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and mask for ``prompts`` (decoders continue from the right end)."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    return ids, mask


def _cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    ref, got = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    return np.sum(ref * got, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)


class _OrtStepper:
    """The minimal cache loop the parity check needs (the engine's own loop lives in gpux.generate)."""

    def __init__(self, path: Path, geometry: CacheGeometry) -> None:
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.geometry = geometry

    def start(self, batch: int) -> None:
        self.past = {n: np.zeros((batch, h, 0, d), np.float32)
                     for n, (h, d) in zip(self.geometry.past_names, [x for x in self.geometry.layers for _ in "kv"])}

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, **self.past}
        if self.geometry.position_ids:
            feed["position_ids"] = positions(mask, ids.shape[1])
        logits, *present = self.sess.run(None, feed)
        self.past = dict(zip(self.geometry.past_names, present))
        return np.asarray(logits)


def check_parity(model: Any, geometry: CacheGeometry, path: Path, pad: int) -> dict[str, Any]:
    """Prefill + teacher-forced decode logits and greedy agreement vs PyTorch; :class:`ConvertError` below
    the cosine floor (see the module docstring)."""
    import torch

    vocab = int(model.config.vocab_size)
    g = np.random.default_rng(7)
    prompts = [[int(t) for t in g.integers(3, vocab, n)] for n in PARITY_PROMPTS]
    ids, mask = _batch(prompts, pad)
    stepper = _OrtStepper(path, geometry)
    stepper.start(len(prompts))
    keep = mask.astype(bool)
    cos: list[float] = []
    max_abs = 0.0
    with torch.no_grad():
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        kwargs: dict[str, Any] = {"position_ids": torch.from_numpy(positions(mask, ids.shape[1]))} \
            if geometry.position_ids else {}
        out = model(input_ids=t_ids, attention_mask=t_mask, use_cache=True, **kwargs)
        ref, got = out.logits.float().numpy(), stepper.step(ids, mask)
        cos.append(float(_cosines(ref[keep], got[keep]).min()))
        max_abs = float(np.abs(ref[keep] - got[keep]).max())
        cache = out.past_key_values
        for _ in range(PARITY_DECODE_STEPS):
            nxt = ref[:, -1].argmax(-1)[:, None].astype(np.int64)  # PyTorch's choice drives both (teacher forcing)
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            kwargs = {"position_ids": torch.from_numpy(positions(mask, 1))} if geometry.position_ids else {}
            out = model(input_ids=torch.from_numpy(nxt), attention_mask=torch.from_numpy(mask),
                        past_key_values=cache, use_cache=True, **kwargs)
            cache = out.past_key_values
            ref, got = out.logits.float().numpy(), stepper.step(nxt, mask)
            cos.append(float(_cosines(ref, got).min()))
            max_abs = max(max_abs, float(np.abs(ref - got).max()))
    agreement = greedy_agreement(model, stepper, prompts, pad)
    result: dict[str, Any] = {"prompt_lengths": list(PARITY_PROMPTS), "decode_steps": PARITY_DECODE_STEPS,
              "cosine_prefill": cos[0], "cosine_decode_min": min(cos[1:]), "cosine_min": min(cos),
              "max_abs": max_abs, "threshold_cosine": PARITY_MIN_COSINE,
              "greedy_new_tokens": PARITY_NEW_TOKENS, "greedy_agreement": agreement,
              "inputs": geometry.input_names, "outputs": ["logits", *geometry.present_names]}
    if result["cosine_min"] < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX decoder does not match PyTorch: cosine {result['cosine_min']:.6f} < "
                           f"{PARITY_MIN_COSINE} (prefill {cos[0]:.6f}), max-abs {max_abs:.3g}",
                           hint="report this model; try another revision")
    return result


def greedy_agreement(model: Any, stepper: _OrtStepper, prompts: list[list[int]], pad: int) -> float:
    """Share of the new tokens, position by position, where the ONNX greedy loop picks what
    transformers' ``generate`` picks for the same left-padded batch."""
    import torch

    ids, mask = _batch(prompts, pad)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             max_new_tokens=PARITY_NEW_TOKENS, min_new_tokens=PARITY_NEW_TOKENS, do_sample=False,
                             pad_token_id=pad, eos_token_id=None)[:, ids.shape[1]:].numpy()
    stepper.start(len(prompts))
    got = np.zeros_like(ref)
    cur = ids
    for t in range(ref.shape[1]):
        logits = stepper.step(cur, mask)
        got[:, t] = logits[:, -1].argmax(-1)
        cur = got[:, t:t + 1]
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
    return float((got == ref).mean())


def _share_tied_head(path: Path) -> None:
    """One copy of a tied embedding for the lookup and the head (gpux.convert.weights)."""
    import onnx

    from gpux.convert.weights import share_tied_head

    model = onnx.load(str(path))
    if share_tied_head(model):
        onnx.save(model, str(path))


def fused_or_plain(model: Any, geometry: CacheGeometry, path: Path, pad: int, fusions: bool = True) -> dict[str, Any]:
    """Parity of the fused graph (gpux.convert.decoder_fuse) when the pattern matches and it passes, which
    then replaces ``path``; else of the plain export. Why the fast path was not taken is recorded."""
    from gpux.convert.decoder_fuse import NoMatch, fuse

    if not fusions:
        return {**check_parity(model, geometry, path, pad), "fusion": {"applied": False, "why": "turned off"}}
    cfg = model.config
    heads = {h for h, _ in geometry.layers}
    dims = {d for _, d in geometry.layers}
    fused = path.with_name("fused.onnx")
    try:
        if len(heads) != 1 or len(dims) != 1:
            raise NoMatch("layers differ in cache shape")
        context = int(getattr(cfg, "max_position_embeddings", 0) or 8192)
        report = fuse(str(path), str(fused), int(cfg.num_attention_heads), heads.pop(), dims.pop(),
                      int(cfg.hidden_size), max_positions=context)
        parity = check_parity(model, geometry, fused, pad)
    except NoMatch as exc:
        why = f"not the pattern: {exc}"
    except ConvertError as exc:
        why = f"rewritten graph missed parity: {exc.message}"
    except Exception as exc:  # the rewrite or onnxruntime's optimizer failed: the plain graph still works
        why = f"rewrite failed: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        fused.replace(path)
        return {**parity, "fusion": {"applied": True, **{k: v for k, v in report.items() if k != "ops"}}}
    finally:
        fused.unlink(missing_ok=True)
    return {**check_parity(model, geometry, path, pad), "fusion": {"applied": False, "why": why}}


def export(folder: Path, out: Path, *, allow_pickle: bool = False, opset: int = 18, fusions: bool = True,
           exporters: tuple[str, ...] = ("torchscript", "dynamo")) -> tuple[Any, CacheGeometry, str, dict[str, Any],
                                                                            dict[str, str], Any]:
    """Export the causal LM in ``folder`` to ``out``: (architecture, geometry, exporter, parity, rejected, config).

    Exporters are tried in order as for encoders (gpux.convert.export); one whose graph misses parity is
    passed over with the reason recorded.
    """
    from gpux.convert.export import _load, first_exporter

    model, arch = _load(folder, "text-generation", allow_pickle)
    geometry = cache_geometry(model)
    pad = model.config.pad_token_id if isinstance(model.config.pad_token_id, int) else 0

    def attempt(kind: str) -> dict[str, Any]:
        run_exporter(kind, model, geometry, out, opset)
        _share_tied_head(out)
        return fused_or_plain(model, geometry, out, pad, fusions)

    kind, parity, rejected = first_exporter(exporters, attempt, lambda detail: ConvertError(
        f"{arch.class_name} ({arch.model_type}) for text-generation: no exporter produced a matching ONNX decoder "
        f"({detail})", hint="run with -v for details; try another revision"))
    return arch, geometry, kind, parity, rejected, model.config
