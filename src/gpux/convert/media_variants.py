"""Optimisation and precision variants of image and audio models, judged on synthetic inputs.

Text variants are judged on sentences (gpux.convert.optimize.parity); an image or audio model cannot read
them. Here the base fp32 graph and the variant run the same seeded synthetic inputs, prepared by the
model's own task (its :mod:`gpux.preprocess` processor, its feed), and are compared on what the task
answers:

- image-classification, audio-classification: the logits; top-1 agreement (``argmax_agreement``) and cosine;
- automatic-speech-recognition (CTC): per-frame argmax agreement and each frame's logits cosine (what greedy
  CTC decoding reads), plus the share of identical transcriptions, for information;
- image-/audio-feature-extraction: the embedding's cosine;
- two-tower zero-shot models (CLIP, SigLIP, CLAP): every tower graph gets the variant, each judged by the
  cosine of its embeddings (the text tower on optimize.SENTENCES, the other on images or clips); the
  zero-shot top-1 agreement over eight label prompts is recorded beside them, for information.

Inputs: 24 images (odd sizes; gradients, shapes and noise drawn with Pillow from a seed) or 12 clips (tones,
chirps, noise; 1 to 2 s) in batches; static int8 calibrates on other seeds, never on the parity inputs.

Why Conv stays fp32 in int8 (measured 2026-12-02 on this 2-core AVX-512 VNNI EPYC, onnxruntime 1.32, random
weights, batch 1, 2 threads): ResNet-50 fp32 21.6-24.3 ms; dynamic int8 with its convolutions
(ConvInteger) 132.6 ms (5-6x slower); static QDQ convolutions (fused to QLinearConv) 33.4-41.3 ms, also
with Relu/Add/pooling quantised 42.8 ms, int8 activations 47.3 ms: every int8 convolution was slower than
fp32. ViT-B/16 (one Conv, the patch embedding): fp32 97.2 ms; MatMuls int8, Conv fp32 34.4 ms (top-1
agreement on 32 noise images 93.8%); with ConvInteger 37.0 ms (87.5%); static QDQ 43.8 ms (96.9%). So
dynamic int8 here quantises what onnxruntime can but Conv (MatMuls, embedding Gathers), and int8-static
keeps the text recipe (weight MatMul/Gemm only). A graph where that leaves nothing int8 (a ConvNet whose
classifier is a Gemm, as ResNet-50's) is refused with the reason rather than stored as an fp32 copy
named int8.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpux.convert.optimize import SENTENCES, Variant, apply_steps, cosines, int8_dynamic
from gpux.errors import UsageError
from gpux.store.bundle import Bundle
from gpux.store.local import Store

#: How each task's variant is judged: "top1" (logits), "frames" (CTC logits per frame), "embedding", "towers".
JUDGED = {"image-classification": "top1", "audio-classification": "top1", "automatic-speech-recognition": "frames",
          "image-feature-extraction": "embedding", "audio-feature-extraction": "embedding",
          "zero-shot-image-classification": "towers", "zero-shot-audio-classification": "towers"}
IMAGE_BATCHES = ((0, 1), (1, 9), (9, 24))  #: 24 parity images, as the text parity's 24 sentences
CLIP_SECONDS = (1.0, 1.5, 2.0)  #: 12 parity clips: 4 of each length, batched by length (no padding)
PROMPTS = ("a photo of a cat", "a photo of a dog", "a red car", "a city street at night", "a bowl of fruit",
           "a mountain lake", "a sound of rain", "a person speaking")
CALIBRATION_SEED = 1000  #: static int8's inputs: other seeds than the parity ones (0..)


def synthetic_image(seed: int) -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 image of an odd size: a colour gradient, random shapes, noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(96, 400)), int(rng.integers(96, 400))
    y, x = np.mgrid[0:h, 0:w]
    f = rng.uniform(1, 12, 3)
    base = np.stack([128 + 100 * np.sin(x / w * f[0] + f[2]), 128 + 100 * np.cos(y / h * f[1]),
                     rng.uniform(0, 255) + 0 * x], axis=-1)
    im = Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 12))):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        box = (x0, y0, x0 + int(rng.integers(8, w)), y0 + int(rng.integers(8, h)))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return np.asarray(im)


def synthetic_clip(seed: int, seconds: float, rate: int) -> np.ndarray:
    """A mono float32 waveform: two amplitude-modulated tones, a chirp and noise, at ``rate``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0, f1, fm = rng.uniform(100, 900), rng.uniform(200, 3000), rng.uniform(1, 8)
    wave = (0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * fm * t))
            + 0.15 * np.sin(2 * np.pi * (f1 + rng.uniform(50, 800) * t) * t)
            + rng.uniform(0.01, 0.08) * rng.standard_normal(len(t)))
    return wave.astype(np.float32)


class _Runner:
    """What a task needs of gpux.Model (``bundle``, ``run``), over chosen graph files: the base's or a variant's."""

    def __init__(self, bundle: Bundle, paths: dict[str, Path]) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._sessions = {role: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                          for role, p in paths.items()}

    def run(self, feed: dict[str, Any], graph: str | None = None) -> dict[str, np.ndarray]:
        sess = self._sessions[graph or self.bundle.manifest.default_graph]
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        return dict(zip(names, sess.run(None, {k: v for k, v in feed.items() if k in wanted})))


def _task(runner: _Runner) -> Any:
    from gpux.tasks import task_class

    cls = task_class(runner.bundle.manifest.task)
    assert cls is not None
    return cls(runner)


def _batches(task: Any, seed: int) -> list[list[Any]]:
    """The prepared parity (or, from CALIBRATION_SEED, calibration) inputs, in batches."""
    if hasattr(task, "rate"):  # audio: equal lengths per batch, so no padding enters any answer
        clips = [[task.prepare(synthetic_clip(seed + 4 * i + j, s, task.rate), j) for j in range(4)]
                 for i, s in enumerate(CLIP_SECONDS)]
        # CLAP's audio graph (fusion) runs one clip per call: its export fixed the batch of a Reshape.
        return [[c] for batch in clips for c in batch] if hasattr(task, "tokenizer") else clips
    return [[task.prepare(synthetic_image(seed + k), k) for k in range(a, b)] for a, b in IMAGE_BATCHES]


def _outputs(task: Any, batches: list[list[Any]], kind: str) -> list[np.ndarray]:
    if kind == "towers":
        return [task.embed_media(b) for b in batches]
    return [np.asarray(task.model.run(task.feed(b))[task.config["output"]], np.float32) for b in batches]


def _compare(ref: list[np.ndarray], got: list[np.ndarray], kind: str) -> dict[str, Any]:
    cos_min, max_abs, agree, total = 1.0, 0.0, 0, 0
    for r, g in zip(ref, got):
        if kind == "frames":  # CTC: every frame's scores, as greedy decoding reads them
            r, g = r.reshape(-1, r.shape[-1]), g.reshape(-1, g.shape[-1])
        if kind in ("top1", "frames"):
            agree += int((r.argmax(-1) == g.argmax(-1)).sum())
            total += r.shape[0]
        cos_min = min(cos_min, float(cosines(r, g).min()))
        max_abs = max(max_abs, float(np.abs(r - g).max()))
    out: dict[str, Any] = {"cosine_min": cos_min, "max_abs": max_abs}
    if total:
        out["argmax_agreement"] = agree / total
    return out


def parity(base: Bundle, candidate: dict[str, Path]) -> dict[str, Any]:
    """The base fp32 graphs vs ``candidate`` (graph role -> file) on the synthetic inputs, by the task's measure."""
    kind = JUDGED[str(base.manifest.task)]
    ref_task = _task(_Runner(base, {role: base.graph_path(role) for role in candidate}))
    new_task = _task(_Runner(base, candidate))
    batches = _batches(ref_task, 0)
    ref, got = _outputs(ref_task, batches, kind), _outputs(new_task, batches, kind)
    n = sum(len(b) for b in batches)
    what = "clips" if hasattr(ref_task, "rate") else "images"
    result = {**_compare(ref, got, kind), "inputs": n,
              "judged_on": {"top1": f"top-1 label of {n} synthetic {what}",
                            "frames": f"per-frame argmax of {n} synthetic clips (CTC)",
                            "embedding": f"embedding cosine of {n} synthetic {what}",
                            "towers": f"each tower's embedding cosine ({n} synthetic {what}; "
                                      f"{len(SENTENCES)} sentences)"}[kind]}
    if kind == "frames":
        from gpux.tasks.speech_recognition import ctc_text

        vocab = ref_task.config["ctc"]
        same = [ctc_text(a.argmax(-1), vocab) == ctc_text(b.argmax(-1), vocab)
                for r, g in zip(ref, got) for a, b in zip(r, g)]
        result["transcriptions_identical"] = sum(same) / len(same)
    if kind == "towers":
        towers = {role: _compare(ref, got, kind) for role in candidate if role != "text"}
        media_ref, media_got = np.concatenate(ref), np.concatenate(got)
        text_ref, text_got = ref_task.embed_texts(list(SENTENCES)), new_task.embed_texts(list(SENTENCES))
        towers["text"] = _compare([text_ref], [text_got], kind)
        labels = (ref_task.embed_texts(list(PROMPTS)), new_task.embed_texts(list(PROMPTS)))
        top = [(_unit(m) @ _unit(t).T).argmax(-1) for m, t in zip((media_ref, media_got), labels)]
        result.update(cosine_min=min(t["cosine_min"] for t in towers.values()),
                      max_abs=max(t["max_abs"] for t in towers.values()), graphs=towers,
                      zero_shot_top1_agreement=float((top[0] == top[1]).mean()))
    return result


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # type: ignore[no-any-return]


class _Calibration:
    """Static int8's activation ranges from synthetic inputs of other seeds than parity's, one per batch."""

    def __init__(self, base: Bundle, role: str) -> None:
        task = _task(_Runner(base, {}))
        if role == "text":
            enc = [task.tokenizer.encode(s) for s in SENTENCES[:16]]
            feeds = [{"input_ids": np.asarray([e.ids], np.int64), "attention_mask": np.asarray([e.attention_mask],
                                                                                               np.int64)} for e in enc]
        else:
            feeds = [task.feed([item]) for batch in _batches(task, CALIBRATION_SEED) for item in batch][:16]
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _int8_nodes(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(n.op_type in ("DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul",
                             "MatMulIntegerToFloat", "QAttention", "QGemm") for n in model.graph.node)


def make_variant(store: Store, base: Bundle, variant: Variant, cos_floor: float, agree_floor: float) -> Bundle:
    """Derive ``variant`` of the stored image/audio model ``base`` (every graph of a two-tower one), judge it
    against fp32 on synthetic inputs, and store it beside the base; refused with the numbers under a floor."""
    import json

    m = base.manifest
    kind = JUDGED.get(str(m.task))
    if kind is None:
        raise UsageError(f"variants of {m.task} models are not made: their parity check has no inputs for it",
                         hint="run the fp32 model; image, audio and two-tower (CLIP, CLAP) models take variants")
    if variant.quantize == "int8-mixed":
        raise UsageError("--quantize int8-mixed searches on text and is not made for image or audio models",
                         hint="use --quantize int8 (or int8-static) and --min-agreement/--min-cosine")
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    task_cfg = json.loads((base.root / m.assets["task_config"]).read_text(encoding="utf-8"))
    op_types = sorted(t for t in IntegerOpsRegistry if t not in ("Conv", "ConvTranspose"))
    work = store.scratch("variant-")
    try:
        start = time.perf_counter()
        made: dict[str, Path] = {}
        for role in m.graphs:
            def quantise(src: Path, dst: Path, role: str = role) -> None:
                if variant.quantize == "int8-static":
                    from gpux.convert.optimize import _int8_static

                    _int8_static(src, dst, _Calibration(base, role))
                else:
                    int8_dynamic(src, dst, op_types=op_types)

            made[role] = apply_steps(base.graph_path(role), work, variant, task_cfg, quantise, prefix=f"{role}-")
            if variant.quantize and _int8_nodes(made[role]) == 0 and (role != "text" or len(m.graphs) == 1):
                raise UsageError(
                    f"--quantize {variant.quantize} would leave {m.graphs[role]} all fp32: int8 here quantises "
                    "MatMul/Gemm (and embeddings), never Conv, which ran slower in int8 than in fp32 on this CPU",
                    hint="run the fp32 model; nothing was stored (see gpux.convert.media_variants for the timings)")
        result = parity(base, made)
        result.update(threshold_cosine=cos_floor,
                      threshold_argmax_agreement=agree_floor if "argmax_agreement" in result else None)
        from gpux.convert.variants import publish_variant, refuse_below

        refuse_below(result, variant.suffix(), cos_floor, agree_floor)

        return publish_variant(store, m, variant.suffix(), made, {
            "dtype": variant.precision, "optimize": variant.optimize, "quantize": variant.quantize,
            "int8_kept_fp32": ["Conv", "ConvTranspose"] if variant.quantize == "int8" else None,
            "variant_seconds": round(time.perf_counter() - start, 3), "parity_vs_fp32": result})
    finally:
        shutil.rmtree(work, ignore_errors=True)
