"""Pre-processing a 640x480 JPEG for ViT (224x224): gpux.preprocess.image vs transformers' PIL image processor.

Both sides start from the same JPEG bytes (drawn with Pillow) and end with float32 pixel_values (1, 3, 224, 224):
transformers as its image-classification pipeline does it (``load_image`` on the decoded bytes, then
``ViTImageProcessorPil``), gpux with ``ImageProcessor.from_config`` on the same saved config. Rounds alternate
between the runners so drift on a shared machine hits both; each round times ``--batch`` calls.

    python benchmarks/preprocess_image.py [--rounds 30] [--batch 20] [--size 640x480] [--draft 1]

Prints a table (median and spread per call, ratio); writes nothing. ``run()`` returns the same numbers as a dict
for a bigger benchmark to wire in.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise and a few shapes."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 90 * np.sin(x / width * 7), 128 + 90 * np.cos(y / height * 5),
                     (x + y) * 255.0 / (width + height)], axis=-1)
    im = Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for i in range(12):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        draw.ellipse((x0, y0, x0 + 30 + 5 * i, y0 + 20 + 3 * i), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _runners(data: bytes, draft: float | None) -> tuple[Callable[[], Any], Callable[[], Any], float]:
    from transformers.image_utils import load_image as tf_load_image
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from gpux.preprocess.image_processor import ImageProcessor

    hf = ViTImageProcessorPil()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        cfg = json.loads((Path(d) / "preprocessor_config.json").read_text())
    ours = ImageProcessor.from_config(cfg, draft=draft)

    def run_hf() -> Any:
        image = tf_load_image(Image.open(io.BytesIO(data)))
        return hf(image, return_tensors="np")["pixel_values"]

    def run_gpux() -> Any:
        return ours([data])

    a, b = np.asarray(run_hf()), run_gpux()
    assert a.shape == b.shape == (1, 3, 224, 224), (a.shape, b.shape)
    return run_gpux, run_hf, float(np.abs(a - b).max())


def _time(fn: Callable[[], Any], batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batch):
        fn()
    return (time.perf_counter() - t0) / batch


def run(rounds: int = 30, batch: int = 20, size: tuple[int, int] = (640, 480), draft: float | None = None,
        warmup: int = 5) -> dict[str, Any]:
    data = _jpeg(*size)
    run_gpux, run_hf, max_abs = _runners(data, draft)
    for _ in range(warmup):
        run_gpux()
        run_hf()
    times: dict[str, list[float]] = {"gpux": [], "transformers": []}
    for r in range(rounds):
        order = (("gpux", run_gpux), ("transformers", run_hf))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            times[name].append(_time(fn, batch))
    out: dict[str, Any] = {"image": f"{size[0]}x{size[1]} JPEG, {len(data)} bytes", "target": "ViT 224x224",
                           "rounds": rounds, "calls_per_round": batch, "draft": draft,
                           "max_abs_diff": max_abs}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=20)
        out[name] = {"median_ms": statistics.median(ts) * 1e3, "p5_ms": q[0] * 1e3, "p95_ms": q[-1] * 1e3}
    out["speedup"] = out["transformers"]["median_ms"] / out["gpux"]["median_ms"]
    # per-round ratios: the spread of the speedup itself
    ratios = [h / g for g, h in zip(times["gpux"], times["transformers"])]
    out["speedup_p5_p95"] = (statistics.quantiles(ratios, n=20)[0], statistics.quantiles(ratios, n=20)[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=20, help="calls timed together in one round")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--draft", type=float, default=None,
                    help="gpux: decode JPEGs at reduced scale keeping DRAFT x the resize target (not bit-exact)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    r = run(args.rounds, args.batch, (w, h), args.draft)
    print(f"{r['image']} -> {r['target']}, {r['rounds']} alternating rounds x {r['calls_per_round']} calls,"
          f" gpux draft={r['draft']}")
    print(f"{'runner':<14}{'median ms':>11}{'p5 ms':>9}{'p95 ms':>9}")
    for name in ("gpux", "transformers"):
        s = r[name]
        print(f"{name:<14}{s['median_ms']:>11.3f}{s['p5_ms']:>9.3f}{s['p95_ms']:>9.3f}")
    lo, hi = r["speedup_p5_p95"]
    print(f"speedup (transformers / gpux): {r['speedup']:.2f}x  (per-round p5-p95 {lo:.2f}-{hi:.2f}x)")
    print(f"max |gpux - transformers| on pixel_values: {r['max_abs_diff']:.3g}")


if __name__ == "__main__":
    main()
