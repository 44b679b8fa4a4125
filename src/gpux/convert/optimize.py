"""Optimisation and precision variants of a converted model, each parity-checked against its fp32 graph.

A variant is its own store entry, tagged after its base: ``feature-extraction-o2-fp16``. Steps, in order, each
optional: ``--optimize O1`` (onnxruntime's basic graph optimisations, saved), ``O2`` (plus onnxruntime.transformers
fusions: Attention, SkipLayerNorm, BiasGelu...), ``O3`` (O2 with GELU approximated, extended optimisations);
``--dtype fp16`` (weights and compute in float16, inputs/outputs kept); ``--quantize int8`` (dynamic: int8
weights, activations quantised at run time), ``int8-static`` (QDQ, activation ranges fixed beforehand by running
the fp32 graph on CALIBRATION, sentences held apart from the parity ones), ``int8-mixed`` (dynamic, the few nodes
this CPU's int8 kernels hurt most kept fp32: gpux.convert.mixed).

Parity: the base fp32 graph and the variant run the same real sentences (the model's own tokenizer, batches of 1,
8 and 15); minimum cosine, max-abs and, for classifiers, argmax agreement are stored in the manifest. Image, audio
and two-tower models are judged on synthetic inputs instead (gpux.convert.media_variants). A variant under its
tolerance is refused with the numbers and nothing is stored.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpux.errors import ConvertError, GpuxError, UsageError
from gpux.store.bundle import Bundle
from gpux.store.local import Store

LEVELS = ("O1", "O2", "O3")
#: Smallest cosine (and, for classifiers, argmax agreement) a variant may keep, by what it changes.
TOLERANCE = {"fp32": (0.9999, 1.0), "fp16": (0.999, 0.99), "int8": (0.98, 0.95), "int8-static": (0.98, 0.95),
             "int8-mixed": (0.99, 0.95)}
QUANTIZE = ("int8", "int8-static", "int8-mixed", "int4")  # int4: text-generation (gpux.convert.lm_variants)

SENTENCES = (
    "The film was a quiet triumph of patience and craft.", "I would not recommend this hotel to anyone.",
    "Markets rallied after the central bank held rates steady.", "The recipe needs two cups of flour.",
    "She scored twice in the final ten minutes.", "Battery life is disappointing on the new model.",
    "A gentle rain fell over the harbour at dawn.", "Customer support answered within minutes, great!",
    "The update broke my login and nobody replied.", "Photosynthesis turns light into chemical energy.",
    "What time does the museum open on Sundays?", "This is, without doubt, the worst sequel ever made.",
    "The committee postponed the vote until next spring.", "Fresh bread and strong coffee: a perfect morning.",
    "Latency dropped by half after the cache was added.", "He forgot the keys again, of course.",
    "The orchestra played Brahms with warmth and precision.", "Shipping took three weeks and the box was crushed.",
    "Quantum computers exploit superposition and entanglement.", "Our team shipped the feature a day early.",
    "The path winds through pine forest to a cold lake.", "Refund denied. Terrible experience overall.",
    "Students debated the ethics of automation.", "It works.",
)
BATCHES = ((0, 1), (1, 9), (9, 24))
#: Static int8's activation ranges come from these; parity is measured on SENTENCES, text they never saw.
CALIBRATION = (
    "The train to Edinburgh was delayed by forty minutes because of a signal fault.",
    "Honestly, the best pizza I've had in years.", "Please restart the router and try again.",
    "The novel follows three generations of a fishing family on the Norwegian coast.",
    "Why does the sky look red at sunset?", "Absolutely awful service; the waiter ignored us for an hour.",
    "Inflation eased to 2.4 percent in March, the lowest reading since 2021.",
    "The kids built a snowman taller than their father.", "Add salt, stir gently, and simmer for twenty minutes.",
    "Our quarterly revenue grew 12% while operating costs stayed flat.", "Hello!",
    "The surgeon explained the risks of the procedure in plain language.",
    "I can't believe they cancelled the show after one season.", "Water boils at 100 degrees Celsius at sea level.",
    "The new phone feels cheap and the camera is mediocre at best.", "Thanks so much, this made my day.",
    "Volcanic ash grounded flights across northern Europe for a week.",
    "A binary search halves the interval at every step.", "The garden smells of lavender after the rain.",
    "Can you send me the invoice by Friday?", "The defence held firm and the match ended goalless.",
    "This vacuum cleaner is loud, heavy, and barely picks up dust.",
    "Researchers sequenced the genome of an ancient wheat variety.", "We missed the last bus and walked home.",
    "The museum's new wing houses modern sculpture and photography.", "Nope.",
    "Her lecture on medieval trade routes was surprisingly gripping.", "The app crashes every time I open settings.",
    "Mount Everest is 8,849 metres tall.", "I loved every minute of the concert; the encore was magical.",
    "The city council approved a new cycle lane along the river.", "Don't forget to water the tomatoes.",
    "The contract may be terminated by either party with thirty days' notice.",
    "Our flight was smooth, the crew friendly, and we landed early.", "The printer is out of toner again.",
    "Neural networks learn representations from large amounts of data.", "Who wrote the opening chapter?",
    "Prices at the farmers' market have doubled since last summer.", "It was fine, nothing special.",
    "The old lighthouse keeper kept a diary of every storm for forty years.",
    "Sleep deprivation impairs memory and concentration.", "My order arrived broken and the seller won't respond.",
    "The violinist tuned her instrument while the audience settled.", "Turn left at the second roundabout.",
    "Scientists warn that coral reefs are bleaching faster than expected.", "Best purchase I've made all year!",
    "The database migration finished without errors overnight.", "He apologised, but the damage was done.",
    "Autumn leaves drifted across the empty playground.", "Is there a vegetarian option on the menu?",
    "The documentary was slow, preachy and far too long.", "The startup raised fifty million dollars in funding.",
    "Wash your hands before handling food.", "The bridge was closed for repairs until further notice.",
    "What a wonderful, warm and funny film.", "Electric cars now make up a third of new sales in the country.",
    "I waited on hold for two hours and then the call dropped.", "The cat slept in a patch of sunlight all afternoon.",
    "Compile the project with optimisations enabled before profiling.", "The treaty was signed in 1648.",
    "Our neighbours threw a loud party until three in the morning.", "Fantastic value for money.",
    "The hikers reached the summit just before the fog rolled in.",
    "Terms and conditions apply; see website for details.",
)


@dataclass(frozen=True)
class Variant:
    optimize: str | None = None
    dtype: str = "fp32"
    quantize: str | None = None

    def __post_init__(self) -> None:
        if self.optimize is not None and self.optimize.upper() not in LEVELS:
            raise UsageError(f"--optimize {self.optimize!r} is not a level", hint="use O1, O2 or O3")
        if self.dtype not in ("fp32", "fp16"):
            raise UsageError(f"--dtype {self.dtype!r} is not supported", hint="use fp32 or fp16")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise UsageError(f"--quantize {self.quantize!r} is not supported",
                             hint="use int8 (dynamic), int8-static (calibrated), int8-mixed "
                                  "(dynamic, the most sensitive nodes kept fp32) or int4 (text-generation)")
        if self.dtype == "fp16" and self.quantize:
            raise UsageError(f"--dtype fp16 and --quantize {self.quantize} do not combine", hint="pick one")

    @property
    def empty(self) -> bool:
        return self.optimize is None and self.dtype == "fp32" and self.quantize is None

    def suffix(self) -> str:
        parts = [self.optimize.lower()] if self.optimize else []
        return "-".join(parts + ([self.dtype] if self.dtype != "fp32" else []) + ([self.quantize] if self.quantize else []))

    @property
    def precision(self) -> str:
        return self.quantize or self.dtype


def _optimize(src: Path, dst: Path, level: str, task_cfg: dict[str, Any]) -> None:
    import logging

    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model_type = task_cfg.get("ort_model_type", "bert")
    opts = FusionOptions(model_type)
    opts.enable_gelu_approximation = level == "O3"
    model = optimizer.optimize_model(str(src), model_type=model_type, optimization_options=opts,
                                     num_heads=int(task_cfg.get("num_heads", 0)),
                                     hidden_size=int(task_cfg.get("hidden_size", 0)),
                                     opt_level={"O1": 1, "O2": 1, "O3": 2}[level], only_onnxruntime=level == "O1")
    model.save_model_to_file(str(dst))


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)  # Softmax/LayerNorm inputs stay numerically safe
    model.save_model_to_file(str(dst))


def int8_dynamic(src: Path, dst: Path, exclude: tuple[str, ...] = (), op_types: list[str] | None = None) -> None:
    """Dynamic int8, per-channel weights: of the eight weight-type x per-channel x reduce-range settings
    tried on all-MiniLM-L6-v2 here, this kept the most accuracy (docs/optimize.md). ``exclude``: node
    names left in fp32 (int8-mixed); ``op_types``: the op types quantised (default: every one onnxruntime
    can; image and audio graphs leave Conv out, gpux.convert.media_variants says why)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it logs "consider pre-processing" to the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=list(exclude), op_types_to_quantize=op_types,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops lack inferred types
    finally:
        logging.disable(logging.NOTSET)


class _Calibration:
    """CALIBRATION one sentence per batch: no padding tokens widen the ranges (and ORT's histogram
    calibrators cannot merge batches of different shapes)."""

    def __init__(self, base: Bundle) -> None:
        from gpux.tasks.text import TextEncoder

        encode = TextEncoder(base)
        self._feeds = iter([encode([text]) for text in CALIBRATION])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _weights_only(model: Any) -> list[str]:
    """Make the graph quantisable the way measured best; returns the nodes quantize_static must skip.

    Skipped: MatMuls of two activations (attention's scores) and Gathers of activations (a classifier's
    first-token pick, which also breaks bias quantisation after O2). And a weight MatMul/Gemm whose input
    other nodes read too gets its own Identity copy of it: quantize_static puts the QDQ pair on the tensor
    itself, so the residual Add beside it would read int8-rounded values (MiniLM cosine 0.973 -> 0.982).
    """
    from collections import Counter

    import onnx

    graph = model.graph
    for i, n in enumerate(graph.node):
        n.name = n.name or f"{n.op_type}_{i}"  # quantize_static selects nodes by name
    weights = {t.name for t in graph.initializer}
    weight_at = {"MatMul": 1, "Gemm": 1, "Gather": 0}
    skip = [n.name for n in graph.node if n.op_type in weight_at and n.input[weight_at[n.op_type]] not in weights]
    quantised = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in skip]
    readers = Counter([name for n in graph.node for name in n.input] + [o.name for o in graph.output])
    by_quantised = Counter(n.input[0] for n in quantised)
    shared = {name for name, k in by_quantised.items() if readers[name] > k}
    copy_for = {n.name for n in quantised if n.input[0] in shared}
    nodes: list[Any] = []
    for n in graph.node:
        if n.name in copy_for:
            source, n.input[0] = n.input[0], f"{n.input[0]}/q"
            if source in shared:  # first reader: the copy goes right before it
                nodes.append(onnx.helper.make_node("Identity", [source], [f"{source}/q"], name=f"{source}/q"))
                shared.discard(source)
        nodes.append(onnx.NodeProto.FromString(n.SerializeToString()))
    del graph.node[:]
    graph.node.extend(nodes)
    return skip


def _int8_static(src: Path, dst: Path, calibration: Any) -> None:
    """Static int8, QDQ. Chosen by measuring on all-MiniLM-L6-v2 (docs/optimize.md): uint8 activations,
    per-channel int8 weights, MinMax ranges (Percentile's clipping lost accuracy; Entropy equals MinMax
    through quantize_static). Weight MatMuls/Gemm and embedding Gathers only, their outputs left float:
    quantising MatMul outputs cost the most accuracy and was slower too. ``calibration``: a reader of feeds
    (``get_next``), text's :class:`_Calibration` or the synthetic images/audio of media_variants."""
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    if any(n.domain == "com.microsoft" for n in model.graph.node):
        # After O2/O3 fusions plain ONNX shape inference leaves activations untyped, and untyped ones are
        # silently left in float (or fail on biases); symbolic inference types them. On the plain graph it
        # changed nothing but time, so it runs only here.
        typed = dst.with_name(f"{dst.stem}-typed.onnx")
        quant_pre_process(str(src), str(typed), skip_optimization=True, auto_merge=True)
        model = onnx.load(str(typed))
    skip = _weights_only(model)
    prepared = dst.with_name(f"{dst.stem}-prepared.onnx")
    onnx.save(model, str(prepared))
    logging.disable(logging.WARNING)  # it logs "consider pre-processing" to the root logger
    try:
        quantize_static(str(prepared), str(dst), calibration, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm", "Gather"], nodes_to_exclude=skip,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                       "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})
    finally:
        logging.disable(logging.NOTSET)


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # int8-mixed's spliced graphs drop unused fp32 weights, a warning each
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0].astype(np.float32) for f in feeds]


def cosines(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    out: np.ndarray = (r * g).sum(-1) / np.maximum(np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1), 1e-12)
    return out


#: Tasks whose graph answers per token (logits [batch, seq, n]): parity compares each real token's scores.
PER_TOKEN_TASKS = ("token-classification", "fill-mask")


def judged_by_argmax(task_cfg: dict[str, Any]) -> bool:
    """Every task but embeddings answers with an argmax (a label, a token, a span start): its variants are also
    held to argmax agreement."""
    return task_cfg.get("task", "text-classification") != "feature-extraction"


def parity(base: Bundle, candidate: Path, is_classifier: bool) -> dict[str, Any]:
    """Base fp32 graph vs ``candidate`` on real sentences, compared on what users get.

    Embedding models: the pooled sentence embeddings (cosine, max-abs), plus the
    worst single token state's cosine for information. Classifiers: logits
    (cosine, max-abs) and argmax agreement.
    """
    from gpux.tasks.embeddings import pool
    from gpux.tasks.text import TextEncoder

    encode = TextEncoder(base)
    mode = encode.config.get("pooling", "mean")
    per_token = encode.config.get("task") in PER_TOKEN_TASKS
    feeds = [encode(list(SENTENCES[a:b])) for a, b in BATCHES]
    ref, got = _outputs(base.graph_path(), feeds), _outputs(candidate, feeds)
    cos_min, max_abs, token_cos, agree, total = 1.0, 0.0, 1.0, 0, 0
    for f, r, g in zip(feeds, ref, got):
        if r.ndim == 3 and per_token:  # a label (or vocabulary) score vector per real token: compared per token
            keep = f["attention_mask"].astype(bool)
            r, g = r[keep], g[keep]
        if r.ndim == 3:  # token states -> sentence embeddings, as the task computes them
            keep = f["attention_mask"].astype(bool)
            token_cos = min(token_cos, float(cosines(r[keep], g[keep]).min()))
            r, g = pool(r, f["attention_mask"], mode), pool(g, f["attention_mask"], mode)
        else:
            agree += int((r.argmax(-1) == g.argmax(-1)).sum())
            total += r.shape[0]
        cos_min = min(cos_min, float(cosines(r, g).min()))
        max_abs = max(max_abs, float(np.abs(r - g).max()))
    out: dict[str, Any] = {"cosine_min": cos_min, "max_abs": max_abs, "sentences": len(SENTENCES)}
    if is_classifier:
        out["argmax_agreement"] = agree / max(total, 1)
    else:
        out["token_cosine_min"] = token_cos
    return out


def floors(variant: Variant, min_cosine: float | None = None, min_agreement: float | None = None
           ) -> tuple[float, float]:
    """The (cosine, argmax agreement) floors a variant is held to: the flags, else its precision's defaults."""
    # O3 approximates GELU: hold it to the fp16 tolerance rather than the exact-fp32 one.
    key = "fp16" if variant.precision == "fp32" and variant.optimize == "O3" else variant.precision
    cos_floor, agree_floor = TOLERANCE[key]
    return (min_cosine if min_cosine is not None else cos_floor,
            min_agreement if min_agreement is not None else agree_floor)


def make_variant(base_ref: str, variant: Variant, *, store: Store | None = None,
                 min_cosine: float | None = None, min_agreement: float | None = None,
                 max_ppl_increase: float | None = None) -> Bundle:
    """Derive ``variant`` from the stored fp32 model ``base_ref`` and store it next to it."""
    store = store or Store()
    base = store.get(base_ref)
    m = base.manifest
    if m.task == "text-generation":  # judged by agreement and perplexity on a text
        from gpux.convert import lm_variants

        return lm_variants.make_variant(base_ref, variant, store=store, min_agreement=min_agreement,
                                        max_ppl_increase=max_ppl_increase)
    if variant.quantize == "int4":
        raise UsageError("--quantize int4 is for text-generation models",
                         hint="use --quantize int8, int8-static or int8-mixed for this model")
    cos_floor, agree_floor = floors(variant, min_cosine, min_agreement)
    if "processor" in m.assets:  # images and audio: judged on synthetic inputs through the model's own processor
        from gpux.convert import media_variants

        return media_variants.make_variant(store, base, variant, cos_floor, agree_floor)
    task_cfg = json.loads((base.root / m.assets["task_config"]).read_text(encoding="utf-8"))
    work = store.scratch("variant-")
    try:
        start = time.perf_counter()
        mixed: dict[str, Any] = {}

        def quantise(src: Path, dst: Path) -> None:
            if variant.quantize == "int8-static":
                _int8_static(src, dst, _Calibration(base))
            elif variant.quantize == "int8-mixed":
                from gpux.convert.mixed import int8_mixed  # it builds on this module's quantiser and parity

                mixed.update(int8_mixed(src, dst, base, judged_by_argmax(task_cfg), cos_floor, agree_floor))
            else:
                int8_dynamic(src, dst)

        current = apply_steps(base.graph_path(), work, variant, task_cfg, quantise)
        result = parity(base, current, judged_by_argmax(task_cfg))
        result.update(threshold_cosine=cos_floor,
                      threshold_argmax_agreement=agree_floor if judged_by_argmax(task_cfg) else None)
        from gpux.convert.variants import publish_variant, refuse_below

        refuse_below(result, variant.suffix(), cos_floor, agree_floor)

        return publish_variant(store, m, variant.suffix(), current, {
            "dtype": variant.precision, "optimize": variant.optimize, "quantize": variant.quantize,
            "variant_seconds": round(time.perf_counter() - start, 3), "parity_vs_fp32": result,
            **({"int8_mixed": mixed} if mixed else {})})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apply_steps(current: Path, work: Path, variant: Variant, task_cfg: dict[str, Any],
                quantise: Callable[[Path, Path], None], prefix: str = "step") -> Path:
    """optimise -> fp16 -> ``quantise``, each wanted step writing a new graph under ``work``; the last one's path.
    An optimiser's or quantiser's own exception becomes a ConvertError naming the variant."""
    def optimise(src: Path, dst: Path) -> None:
        _optimize(src, dst, str(variant.optimize).upper(), task_cfg)

    steps: tuple[tuple[object, Callable[[Path, Path], None]], ...] = (
        (variant.optimize, optimise), (variant.dtype == "fp16" or None, _fp16), (variant.quantize, quantise))
    for i, (wanted, fn) in enumerate(steps):
        if wanted:
            nxt = work / f"{prefix}{i}.onnx"
            try:
                fn(current, nxt)
            except GpuxError:  # a refusal with its own numbers (int8-mixed)
                raise
            except Exception as exc:  # optimiser/quantiser raise many types
                raise ConvertError(f"making the {variant.suffix()} variant failed: {type(exc).__name__}: {exc}",
                                   hint="try another --optimize level or precision") from exc
            current = nxt
    return current

