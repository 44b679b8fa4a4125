"""int8 variants of encoder–decoder models (T5, Whisper, BLIP), judged as generation is judged.

Both graphs get onnxruntime's dynamic int8 (per-channel weights, activations quantised per tensor at run
time) on MatMul and Gemm only: a Whisper encoder's two convolutions stay fp32 (``ConvInteger`` measured 5x
slower than fp32 convolution on this CPU, gpux.convert.media_variants), and the token embedding table stays
fp32 (a gather, not a product). This is the precision class of faster-whisper's ``compute_type="int8"``.

Judged against fp32 by teacher-forced top-1 agreement: fp32 decodes greedily (end-of-text masked, so every
input yields the same number of positions) from fixed inputs — three sources of text, three synthetic
clips (noise, a chirp, a chord) or three synthetic images — and the variant is fed the same tokens; at
each position, does it pick fp32's token? Below the floor (``--min-agreement``, default 0.90) the variant
is refused with its numbers and nothing is stored. The cosine of the logits is recorded beside it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpux.errors import ConvertError, UsageError
from gpux.store.bundle import Bundle
from gpux.store.local import Store

QUANTIZE = ("int8",)
MIN_AGREEMENT = 0.90
POSITIONS = 48
SOURCES = ("The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt and wind.",
           "translate English to German: Every evening the keeper climbed the spiral stairs and trimmed the wick.",
           "summarize: When the government replaced the lamp with an automatic one, the keeper moved to the village.")


def _inputs(bundle: Bundle, config: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """Three encoder feeds of the bundle's kind (one row each)."""
    main = config["seq2seq"]["main"]
    rng = np.random.default_rng(0)
    if main == "input_ids":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(bundle.root / bundle.manifest.assets["tokenizer"]))
        feeds = []
        for text in SOURCES:
            ids = tok.encode(text).ids[:int(config["max_length"])]
            feeds.append({"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)})
        return feeds
    if main == "pixel_values":
        h, w = config["image_size"]
        return [{"pixel_values": rng.standard_normal((1, 3, h, w)).astype(np.float32)} for _ in range(3)]
    from gpux.preprocess.audio_features import AudioProcessor

    proc = AudioProcessor.from_config(json.loads((bundle.root / bundle.manifest.assets["processor"]).read_text()))
    rate = int(config.get("sampling_rate") or 16000)
    t = np.arange(10 * rate) / rate
    clips = [0.1 * rng.standard_normal(len(t)), 0.3 * np.sin(2 * np.pi * (200 + 150 * t) * t),
             0.2 * np.sin(2 * np.pi * np.outer([220.0, 277.2, 329.6], t)).sum(axis=0)]
    return [{"input_features": proc([c.astype(np.float32)])["input_features"]} for c in clips]


class _Pair:
    def __init__(self, encoder: Path, decoder: Path, config: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.enc = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.dec.get_inputs()]
        self.layers = [tuple(x) for x in config["seq2seq"]["self_layers"]]

    def logits(self, feed: dict[str, np.ndarray], tokens: list[int], greedy_to: int = 0,
               banned: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
        """The logits after each token of ``tokens`` (one cached decoder call per token); with ``greedy_to``,
        ``tokens`` is extended greedily (``banned`` ids masked) until it has that many."""
        cross = dict(zip([n for n in self.names if n.startswith("cross.")], self.enc.run(None, feed)))
        past = {n: np.zeros((1, h, 0, d), np.float32)
                for n, (h, d) in zip([n for n in self.names if n.startswith("past.")],
                                     [x for x in self.layers for _ in "kv"])}
        tokens, out = list(tokens), []
        i = 0
        while i < len(tokens):
            step = {"decoder_input_ids": np.asarray([[tokens[i]]], np.int64), **past, **cross}
            if "encoder_attention_mask" in self.names:
                step["encoder_attention_mask"] = feed["attention_mask"]
            logits, *present = self.dec.run(None, step)
            past = dict(zip(past, present))
            row = np.asarray(logits)[0, -1]
            out.append(row)
            if i == len(tokens) - 1 and len(tokens) < greedy_to:
                masked = row.copy()
                masked[banned or []] = -np.inf
                tokens.append(int(masked.argmax()))
            i += 1
        return np.asarray(out), tokens


def judge(base: Bundle, encoder: Path, decoder: Path) -> dict[str, Any]:
    """Teacher-forced top-1 agreement and logits cosine of the (encoder, decoder) pair vs ``base``."""
    config = json.loads((base.root / base.manifest.assets["task_config"]).read_text())
    eos = [int(i) for i in config["generation"]["eos_token_ids"]]
    ref = _Pair(base.graph_path("encoder"), base.graph_path("decoder"), config)
    cand = _Pair(encoder, decoder, config)
    start = int(config["seq2seq"]["decoder_start"])
    agree, cosines = [], []
    for feed in _inputs(base, config):
        a, tokens = ref.logits(feed, [start], greedy_to=POSITIONS, banned=eos)  # fp32's greedy tokens, no end
        b, _ = cand.logits(feed, tokens)
        agree += list(a.argmax(-1) == b.argmax(-1))
        cosines += list(np.sum(a * b, -1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12))
    return {"argmax_agreement": float(np.mean(agree)), "positions": len(agree), "cosine_min": float(np.min(cosines)),
            "inputs": config["seq2seq"]["main"]}


def make(base_ref: str, precision: str, *, store: Store | None = None, min_agreement: float | None = None) -> Bundle:
    """Quantise both graphs of the stored encoder–decoder ``base_ref``, judge, store ``<tag>-<precision>``."""
    from gpux.convert.optimize import int8_dynamic
    from gpux.convert.variants import publish_variant

    if precision not in QUANTIZE:
        raise UsageError(f"encoder–decoder models have no {precision} variant", hint="use --quantize int8")
    store = store or Store()
    base = store.get(base_ref)
    m = base.manifest
    floor = MIN_AGREEMENT if min_agreement is None else min_agreement
    work = Path(store.scratch("variant-"))
    start = time.perf_counter()
    try:
        out: dict[str, Path] = {}
        for role in ("encoder", "decoder"):
            src = work / f"src-{role}.onnx"  # a private copy: the store's blobs are hard links onnx refuses
            shutil.copy(base.graph_path(role), src)
            data = Path(str(base.graph_path(role)) + ".data")
            if data.is_file():
                shutil.copy(data, work / f"{m.graphs[role]}.data")
                src.rename(work / m.graphs[role])
                src = work / m.graphs[role]
            out[role] = work / f"{role}-int8.onnx"
            int8_dynamic(src, out[role], op_types=["MatMul", "Gemm"])
        parity = judge(base, out["encoder"], out["decoder"])
        if parity["argmax_agreement"] < floor:
            raise ConvertError(f"the int8 variant agrees with fp32 on {parity['argmax_agreement']:.1%} of "
                               f"{parity['positions']} teacher-forced tokens, under the floor {floor:.0%}",
                               hint="keep fp32, or lower the floor with --min-agreement if that is acceptable")
        final = {}
        for role, path in out.items():
            final[role] = work / f"q-{role}" / m.graphs[role]
            final[role].parent.mkdir()
            path.rename(final[role])
        return publish_variant(store, m, precision, final,
                               {"quantize": precision, "dtype": "int8", "seconds": round(time.perf_counter() - start, 3),
                                "parity_vs_fp32": parity, "min_agreement": floor})
    finally:
        shutil.rmtree(work, ignore_errors=True)
