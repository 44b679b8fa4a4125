"""Quantised variants of a text-generation model, judged as generation quality is: against fp32 on a fixed
text, by teacher-forced top-1 agreement (does the variant predict the token fp32 predicts, at every position
of the text) and by perplexity (how surprised each is by the text itself).

Cosine of logits (what encoder variants are held to) says little here: a 0.99 cosine can still flip the
top token where two are close, and a flipped token changes everything generated after it.

Both are onnxruntime's ``MatMulNBits``: symmetric blocks of 32 weights along the input dimension, each
with its own scale (llama.cpp's Q8_0 / Q4_0 layout), and int8 activations quantised per block
(``accuracy_level`` 4) where the CPU has VNNI, fp32 ones elsewhere.

- ``int8``: 8-bit blocks. Dynamic per-channel int8 (what encoder variants use: one scale per weight row,
  one per activation tensor) measured 58.6% agreement and +31.5% perplexity on SmolLM2-135M, blockwise
  8-bit 94-97% and +0.1%: a decoder's activations have outlier channels one scale per tensor cannot hold;
- ``int4``: 4-bit blocks; the output projection (the MatMul whose output is ``logits``) stays 8-bit: a
  4-bit head changes which token wins most often, for the least speed.

A variant under either floor (``--min-agreement``, ``--max-ppl-increase``) is refused with its numbers and
nothing is stored. Defaults come from what SmolLM2-135M measured (docs/generate.md).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpux.errors import ConvertError, UsageError
from gpux.store.bundle import Bundle
from gpux.store.local import Store

#: precision -> (min teacher-forced top-1 agreement, max relative perplexity increase).
FLOORS: dict[str, tuple[float, float]] = {"int8": (0.90, 0.05), "int4": (0.60, 0.35)}
QUANTIZE = tuple(FLOORS)
BLOCK = 32
#: The fixed text: plain English prose of several registers (~150 tokens in common vocabularies).
QUALITY_TEXT = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt and wind. "
    "Every evening the keeper climbed the spiral stairs, trimmed the wick and watched the beam sweep across the "
    "water. Ships that passed in the night never saw him, but they trusted the light. When the government "
    "replaced the lamp with an automatic one, the keeper moved to a small house in the village, where he "
    "repaired clocks and told stories to anyone who would listen. In 1998 the lighthouse became a museum; "
    "visitors now pay four euros to climb the same stairs and read about the storms of 1953."
)


def floors(precision: str, min_agreement: float | None, max_ppl_increase: float | None) -> tuple[float, float]:
    agree, ppl = FLOORS[precision]
    return (agree if min_agreement is None else min_agreement, ppl if max_ppl_increase is None else max_ppl_increase)


def meets(result: dict[str, Any], min_agreement: float, max_ppl_increase: float) -> bool:
    return bool(result["agreement"] >= min_agreement and result["ppl_increase"] <= max_ppl_increase)


def has_vnni() -> bool:
    """Whether this CPU has int8 dot products (AVX-VNNI or AVX-512 VNNI), where int8 activations pay."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "asimddp" in flags


def lm_head(model: Any) -> str | None:
    """The name of the MatMul (or Gemm) node whose output becomes ``logits``."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type not in ("MatMul", "Gemm"):
        node = producers.get(node.input[0]) if node.input else None
    return node.name if node is not None else None


def blockwise(src: Path, dst: Path, bits: int) -> dict[str, Any]:
    """``bits``-bit symmetric blocks of 32 (MatMulNBits) for every MatMul; the head (the MatMul making
    ``logits``) 8-bit whatever ``bits`` is (see the module docstring)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    level = 4 if has_vnni() else None
    logging.disable(logging.WARNING)
    try:
        from gpux.convert.weights import load, untie_head

        model = load(src)
        untie_head(model)  # the head is quantised as a MatMul of its own (a copy, 8-bit)
        head = lm_head(model)
        passes = [(bits, {"nodes_to_exclude": [head]} if head and bits != 8 else {})]
        if head and bits != 8:
            passes.append((8, {"nodes_to_include": [head]}))
        for n, which in passes:
            config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=level, bits=n)
            quant = MatMulNBitsQuantizer(model, bits=n, block_size=BLOCK, is_symmetric=True, accuracy_level=level,
                                         algo_config=config, **which)
            quant.process()
            model = quant.model.model
        from gpux.convert.weights import save

        save(model, dst)
    finally:
        logging.disable(logging.NOTSET)
    return {"weights": f"int{bits} symmetric blocks of {BLOCK} (MatMulNBits)", "head": head,
            "head_precision": "int8", "activations": "int8 per block (accuracy_level 4)" if level else "fp32"}


def text_ids(base: Bundle, context: int) -> np.ndarray:
    """The fixed text's tokens, at most the model's context (a small vocabulary makes many tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base.root / base.manifest.assets["tokenizer"]))
    tok.no_truncation()
    tok.no_padding()
    return np.asarray(tok.encode(QUALITY_TEXT).ids[:context], np.int64)


def logits_on(path: Path, ids: np.ndarray, cache: dict[str, Any]) -> np.ndarray:
    """All positions' logits for ``ids`` in one prefill (empty past), float64."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed: dict[str, np.ndarray] = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64)}
    if cache["position_ids"]:
        feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    for i, (heads, dim) in enumerate(cache["layers"]):
        for kv in ("key", "value"):
            feed[f"past_key_values.{i}.{kv}"] = np.zeros((1, heads, 0, dim), np.float32)
    return np.asarray(sess.run(["logits"], feed)[0][0], np.float64)


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp(mean negative log-likelihood of each next token of the text)."""
    z = logits[:-1]
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    nll = lse - z[np.arange(len(ids) - 1), ids[1:]]
    return float(math.exp(nll.mean()))


def judge(base: Bundle, candidate: Path, cache: dict[str, Any], context: int = 1 << 30) -> dict[str, Any]:
    ids = text_ids(base, context)
    ref, got = logits_on(base.graph_path(), ids, cache), logits_on(candidate, ids, cache)
    ppl_ref, ppl_got = perplexity(ref, ids), perplexity(got, ids)
    return {"text_tokens": int(len(ids)), "agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "ppl_fp32": ppl_ref, "ppl": ppl_got, "ppl_increase": ppl_got / ppl_ref - 1.0,
            "max_abs": float(np.abs(ref - got).max())}


def make_variant(base_ref: str, variant: Any, *, store: Store, min_agreement: float | None = None,
                 max_ppl_increase: float | None = None) -> Bundle:
    """``gpux pull --quantize`` on a text-generation model: only ``int8`` / ``int4``, without --optimize/--dtype."""
    if variant.optimize or variant.dtype != "fp32" or variant.quantize not in QUANTIZE:
        raise UsageError(f"the {variant.suffix()} variant is not offered for text-generation models",
                         hint=f"use --quantize {' or --quantize '.join(QUANTIZE)}")
    return make(base_ref, str(variant.quantize), store=store, min_agreement=min_agreement,
                max_ppl_increase=max_ppl_increase)


def make(base_ref: str, precision: str, *, store: Store, min_agreement: float | None = None,
         max_ppl_increase: float | None = None) -> Bundle:
    """Derive ``precision`` (int8 or int4) from the stored fp32 text-generation model ``base_ref``."""
    if precision not in FLOORS:
        raise UsageError(f"--quantize {precision} is not offered for text-generation models",
                         hint=f"use one of: {', '.join(QUANTIZE)}")
    base = store.get(base_ref)
    m = base.manifest
    task_cfg = json.loads((base.root / m.assets["task_config"]).read_text(encoding="utf-8"))
    agree_floor, ppl_ceiling = floors(precision, min_agreement, max_ppl_increase)
    work = store.scratch("variant-")
    try:
        start = time.perf_counter()
        out = Path(work) / "model.onnx"
        try:
            details = blockwise(base.graph_path(), out, int(precision.removeprefix("int")))
        except Exception as exc:  # the quantisers raise many types
            raise ConvertError(f"making the {precision} variant failed: {type(exc).__name__}: {exc}",
                               hint="report this model") from exc
        result = judge(base, out, task_cfg["cache"], int(task_cfg["max_length"]))
        result.update(threshold_agreement=agree_floor, threshold_ppl_increase=ppl_ceiling, **details)
        if not meets(result, agree_floor, ppl_ceiling):
            raise ConvertError(
                f"the {precision} variant loses too much: top-1 agreement with fp32 {result['agreement']:.1%} "
                f"(min {agree_floor:.0%}), perplexity {result['ppl_fp32']:.3f} -> {result['ppl']:.3f} "
                f"({result['ppl_increase']:+.1%}, max {ppl_ceiling:+.0%})",
                hint="nothing was stored; loosen --min-agreement / --max-ppl-increase to accept it")
        from gpux.convert.variants import publish_variant

        return publish_variant(store, m, precision, out, {
            "dtype": precision, "optimize": None, "quantize": precision,
            "variant_seconds": round(time.perf_counter() - start, 3), "parity_vs_fp32": result})
    finally:
        shutil.rmtree(work, ignore_errors=True)
