"""gpux.preprocess.image: decoding, errors, and pixel_values against transformers' PIL image processors."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpux.errors import InputError, ModelError
from gpux.preprocess.image import (
    ImageDecodeError,
    ImageProcessor,
    ImageTooLargeError,
    PreprocessorConfigError,
    load_image,
)

# transformers applies the same uint8 → float32 steps; with the same Pillow resize the results are identical.
# The bound leaves room for float summation order only.
BOUND = 1e-5
# draft (JPEG decoding at reduced scale) is not bit-identical. Measured on these noisy synthetic JPEGs
# (normalised units): draft=1 max-abs about 0.2, mean-abs up to 0.025 (CLIP); draft=2 max-abs about 0.05.
DRAFT_BOUND = {1.0: 0.5, 2.0: 0.1}
DRAFT_MEAN_BOUND = {1.0: 0.05, 2.0: 0.01}


# ---------------------------------------------------------------------------------------------------------
# images


def _pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth image with some noise: resize filters see real structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([
        127 + 100 * np.sin(x / max(w, 1) * 6.0 + seed),
        127 + 100 * np.cos(y / max(h, 1) * 5.0),
        (x + y) * 255.0 / max(w + h, 1),
    ], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgba(w: int = 97, h: int = 61) -> Image.Image:
    rgb = _pattern(w, h, 1)
    alpha = np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _exif_jpeg(w: int = 160, h: int = 90) -> bytes:
    im = Image.fromarray(_pattern(w, h, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    return _encode(im, "JPEG", quality=92, exif=exif.tobytes())


def _images() -> dict[str, bytes]:
    p = Image.fromarray(_pattern(83, 71, 2)).quantize(64)
    p_transparent = p.copy()
    p_transparent.info["transparency"] = 5
    la = Image.fromarray(_pattern(50, 40, 4)[..., 0]).convert("LA")
    return {
        "rgb-jpeg-640x480": _encode(Image.fromarray(_pattern(640, 480)), "JPEG", quality=90),
        "rgba-png": _encode(_rgba(), "PNG"),
        "p-png": _encode(p, "PNG"),
        "p-transparent-png": _encode(p_transparent, "PNG"),
        "l-png": _encode(Image.fromarray(_pattern(75, 121, 5)[..., 1]), "PNG"),
        "la-png": _encode(la, "PNG"),
        "exif6-jpeg": _exif_jpeg(),
        "tiny-3x5-png": _encode(Image.fromarray(_pattern(3, 5, 6)), "PNG"),
        "wide-1000x200-png": _encode(Image.fromarray(_pattern(1000, 200, 7)), "PNG"),
        "webp": _encode(Image.fromarray(_pattern(64, 48, 8)), "WEBP", lossless=True),
        "gif": _encode(Image.fromarray(_pattern(64, 48, 9)).quantize(32), "GIF"),
        "bmp": _encode(Image.fromarray(_pattern(33, 17, 10)), "BMP"),
    }


IMAGES = _images()


# ---------------------------------------------------------------------------------------------------------
# load_image


def test_load_image_sources_agree() -> None:
    data = IMAGES["rgb-jpeg-640x480"]
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    a = load_image(data)
    assert a.mode == "RGB" and a.size == (640, 480)
    for other in (load_image(url), load_image(bytearray(data)), load_image(memoryview(data)),
                  load_image(Image.open(io.BytesIO(data))), load_image(np.asarray(a))):
        assert other.mode == "RGB"
        assert np.array_equal(np.asarray(other), np.asarray(a))


def test_load_image_matches_transformers_load_image(tmp_path: Path) -> None:
    tf_image_utils = pytest.importorskip("transformers.image_utils")
    for name, data in IMAGES.items():
        path = tmp_path / name
        path.write_bytes(data)
        ours = load_image(data)
        ref = tf_image_utils.load_image(str(path))
        assert ours.size == ref.size, name
        assert np.array_equal(np.asarray(ours), np.asarray(ref)), name
        assert np.array_equal(np.asarray(load_image(str(path), allow_paths=True)), np.asarray(ref)), name


def test_exif_orientation_applied() -> None:
    im = load_image(IMAGES["exif6-jpeg"])
    assert im.size == (90, 160)  # stored 160x90, orientation 6 → upright is portrait


def test_modes_convert_to_rgb() -> None:
    for mode in ("I;16", "CMYK", "1", "I", "F"):
        src = Image.fromarray(_pattern(20, 10)).convert("L").convert(mode) if mode != "CMYK" else \
            Image.fromarray(_pattern(20, 10)).convert("CMYK")
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (20, 10)
        assert np.array_equal(np.asarray(out), np.asarray(src.convert("RGB")))


def test_composite_alpha_matches_transformers_convert_to_rgb() -> None:
    tf = pytest.importorskip("transformers.image_transforms")
    for name in ("rgba-png", "p-transparent-png", "la-png", "l-png"):
        im = Image.open(io.BytesIO(IMAGES[name]))
        ours = np.asarray(load_image(IMAGES[name], composite_alpha=True))
        ref = tf.convert_to_rgb(im, return_numpy=True)
        assert np.array_equal(ours, ref), name


def test_arrays() -> None:
    rgb = _pattern(30, 20)
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    assert np.array_equal(np.asarray(load_image(rgb.transpose(2, 0, 1))), rgb)  # CHW
    gray = rgb[..., 0]
    assert np.array_equal(np.asarray(load_image(gray)), np.repeat(gray[..., None], 3, -1))
    f = rgb.astype(np.float32) / 255
    assert np.abs(np.asarray(load_image(f)).astype(int) - rgb).max() <= 1
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(np.asarray(load_image(rgba)), rgb)
    with pytest.raises(ImageDecodeError, match=r"\[0, 1\]"):
        load_image(f * 3)
    with pytest.raises(ImageDecodeError, match="shape"):
        load_image(np.zeros((4, 5, 6, 7), np.uint8))


# ---------------------------------------------------------------------------------------------------------
# errors


def test_not_an_image() -> None:
    with pytest.raises(ImageDecodeError, match="not an image") as e:
        load_image(b"hello, this is text and not a picture")
    assert isinstance(e.value, InputError) and e.value.hint
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(12345)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image("data:image/png;base64," + base64.b64encode(b"plain text").decode())


@pytest.mark.parametrize("name", ["rgb-jpeg-640x480", "rgba-png"])
def test_truncated(name: str) -> None:
    data = IMAGES[name]
    with pytest.raises(ImageDecodeError, match="truncated|corrupt|cannot be read") as e:
        load_image(data[: len(data) // 2])
    assert isinstance(e.value, InputError)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_huge_header_refused_before_decoding() -> None:
    # 10 gigapixels claimed in ~70 bytes: Pillow's own decompression-bomb guard fires in Image.open; mapped
    data = _png_header(100_000, 100_000)
    for limit in (None, 10**12):
        with pytest.raises(ImageTooLargeError, match="pixels") as e:
            load_image(data, max_pixels=limit)
        assert isinstance(e.value, InputError)
    # 81 megapixels: under Pillow's guard, over ours; refused from the header (a decode would take 243 MB)
    with pytest.raises(ImageTooLargeError, match="81,000,000 pixels, more than the 50,000,000 allowed") as e:
        load_image(_png_header(9000, 9000))
    assert e.value.hint
    with pytest.raises(ImageTooLargeError):
        load_image(IMAGES["rgb-jpeg-640x480"], max_pixels=640 * 480 - 1)
    load_image(IMAGES["rgb-jpeg-640x480"], max_pixels=640 * 480)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=9_999)
    with pytest.raises(ImageTooLargeError):
        ImageProcessor.from_config({}, max_pixels=1000)([IMAGES["rgb-jpeg-640x480"]])
    with pytest.raises(ImageTooLargeError):
        ImageProcessor.from_config({}, max_pixels=1000)([Image.new("RGB", (100, 100))])


def test_paths_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(IMAGES["rgba-png"])
    for src in (str(path), path):
        with pytest.raises(ImageDecodeError, match="paths are not accepted") as e:
            load_image(src)
        assert "data:image" in (e.value.hint or "")
    assert load_image(path, allow_paths=True).size == (97, 61)
    with pytest.raises(ImageDecodeError, match="no such image file"):
        load_image(tmp_path / "missing.png", allow_paths=True)
    with pytest.raises(ImageDecodeError, match="paths are not accepted"):
        ImageProcessor.from_config({})([str(path)])


def test_data_urls() -> None:
    data = IMAGES["rgba-png"]
    b64 = base64.b64encode(data).decode()
    ref = np.asarray(load_image(data))
    for url in (f"data:image/png;base64,{b64}", f"  DATA:image/png;BASE64,{b64}\n",
                "data:image/png;base64," + "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)),
                f"data:image/png;base64,{b64.rstrip('=')}"):
        assert np.array_equal(np.asarray(load_image(url)), ref)
    with pytest.raises(ImageDecodeError, match="not valid base64"):
        load_image("data:image/png;base64,@@@not*base64!!")
    with pytest.raises(ImageDecodeError, match="no ','"):
        load_image("data:image/png;base64")
    with pytest.raises(ImageDecodeError, match="not base64-encoded"):
        load_image("data:image/png," + b64)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image("data:text/plain;base64," + b64)
    with pytest.raises(ImageDecodeError, match="not an image|truncated|corrupt"):
        load_image("data:image/png;base64," + b64[:40])


# ---------------------------------------------------------------------------------------------------------
# ImageProcessor against transformers


def _families() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        from transformers.models.bit.image_processing_pil_bit import (
            BitImageProcessorPil,
        )
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil,
        )
        from transformers.models.convnext.image_processing_pil_convnext import (
            ConvNextImageProcessorPil,
        )
        from transformers.models.efficientnet.image_processing_pil_efficientnet import (
            EfficientNetImageProcessorPil,
        )
        from transformers.models.mobilenet_v2.image_processing_pil_mobilenet_v2 import (
            MobileNetV2ImageProcessorPil,
        )
        from transformers.models.vit.image_processing_pil_vit import (
            ViTImageProcessorPil,
        )
    except ImportError:
        return out
    out["vit"] = lambda: ViTImageProcessorPil()
    out["convnext-384"] = lambda: ConvNextImageProcessorPil()
    out["convnext-224-resnet50"] = lambda: ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875)
    out["efficientnet"] = lambda: EfficientNetImageProcessorPil()
    out["efficientnet-offset-crop"] = lambda: EfficientNetImageProcessorPil(
        rescale_offset=True, do_center_crop=True, include_top=False)
    out["mobilenetv2"] = lambda: MobileNetV2ImageProcessorPil()
    out["clip"] = lambda: CLIPImageProcessorPil()
    out["bit"] = lambda: BitImageProcessorPil()
    out["clip-shortest-longest"] = lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 200, "longest_edge": 260}, do_center_crop=False)
    out["vit-no-rescale-lanczos"] = lambda: ViTImageProcessorPil(do_rescale=False, resample=1,
                                                                 size={"height": 100, "width": 150})
    return out


FAMILIES = _families()
MAX_DIFF: dict[str, float] = {}


def _saved(tmp_path: Path, processor: Any) -> dict[str, Any]:
    processor.save_pretrained(tmp_path)
    return json.loads((tmp_path / "preprocessor_config.json").read_text())


def _reference(processor: Any, data: bytes) -> np.ndarray:
    """What transformers gives: its pipelines' load_image, or, when the processor converts to RGB itself
    (do_convert_rgb: transparency onto white), the EXIF-rotated decoded image."""
    from PIL import ImageOps
    from transformers.image_utils import load_image as tf_load_image

    if processor.do_convert_rgb:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    else:
        image = tf_load_image(Image.open(io.BytesIO(data)))
    return np.asarray(processor(image, return_tensors="np")["pixel_values"])


@pytest.mark.skipif(not FAMILIES, reason="transformers' PIL image processors are not installed")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pixel_values_match_transformers(family: str, tmp_path: Path) -> None:
    hf = FAMILIES[family]()
    cfg = _saved(tmp_path, hf)
    ours = ImageProcessor.from_config(cfg)
    worst = 0.0
    for name, data in IMAGES.items():
        ref = _reference(hf, data)
        got = ours([data])
        assert got.dtype == np.float32 and got.ndim == 4 and got.shape[1] == 3
        assert got.shape == ref.shape, (family, name, got.shape, ref.shape)
        diff = float(np.abs(got - ref.astype(np.float32)).max())
        worst = max(worst, diff)
        assert diff <= BOUND, (family, name, diff)
    MAX_DIFF[family] = worst
    print(f"\n{family}: max-abs {worst:.3g}")


@pytest.mark.skipif("vit" not in FAMILIES, reason="transformers' PIL image processors are not installed")
def test_batch_and_sources(tmp_path: Path) -> None:
    ours = ImageProcessor.from_config(_saved(tmp_path, FAMILIES["vit"]()))
    names = ["rgba-png", "exif6-jpeg", "tiny-3x5-png"]
    batch = ours([IMAGES[n] for n in names])
    assert batch.shape == (3, 3, 224, 224) and batch.flags.c_contiguous
    for i, n in enumerate(names):
        assert np.array_equal(batch[i], ours.process_one(IMAGES[n]))
    url = "data:image/png;base64," + base64.b64encode(IMAGES["rgba-png"]).decode()
    assert np.array_equal(ours(url)[0], batch[0])
    with pytest.raises(InputError, match="no images"):
        ours([])


def test_variable_sizes_refused_in_one_batch() -> None:
    ours = ImageProcessor.from_config({"image_processor_type": "CLIPImageProcessor", "size": 64,
                                       "do_center_crop": False})
    assert ours.process_one(IMAGES["tiny-3x5-png"]).shape == (3, 106, 64)
    with pytest.raises(InputError, match="different sizes"):
        ours([IMAGES["tiny-3x5-png"], IMAGES["wide-1000x200-png"]])


def test_old_style_configs() -> None:
    # microsoft/resnet-50: int size, no rescale keys, ConvNext rule
    resnet = ImageProcessor.from_config({
        "crop_pct": 0.875, "do_normalize": True, "do_resize": True, "feature_extractor_type": "ConvNextFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224})
    assert resnet.size == {"shortest_edge": 224} and resnet.do_rescale
    assert resnet([IMAGES["wide-1000x200-png"]]).shape == (1, 3, 224, 224)
    # ViT-style int size means a square
    vit = ImageProcessor.from_config({"image_processor_type": "ViTImageProcessor", "size": 96})
    assert vit.size == {"height": 96, "width": 96}
    clip = ImageProcessor.from_config({"image_processor_type": "CLIPImageProcessor", "size": 224,
                                       "crop_size": 224, "do_center_crop": True})
    assert clip.size == {"shortest_edge": 224} and clip.crop_size == {"height": 224, "width": 224}
    kosmos = ImageProcessor.from_config({"image_processor_type": "CLIPImageProcessor",
                                         "size": {"shortest_edge": 64}, "use_square_size": True})
    assert kosmos.size == {"height": 64, "width": 64}
    longest = ImageProcessor.from_config({"size": {"longest_edge": 100}, "do_center_crop": False})
    assert longest.process_one(IMAGES["wide-1000x200-png"]).shape == (3, 20, 100)


def test_unsupported_keys_named() -> None:
    with pytest.raises(PreprocessorConfigError, match="do_pad") as e:
        ImageProcessor.from_config({"do_pad": True})
    assert isinstance(e.value, ModelError)
    ImageProcessor.from_config({"do_pad": False, "do_reduce_labels": True, "processor_class": "X"})
    with pytest.raises(PreprocessorConfigError, match="do_flip_channel_order"):
        ImageProcessor.from_config({"do_flip_channel_order": True})
    with pytest.raises(PreprocessorConfigError, match="crop_pct"):
        ImageProcessor.from_config({"image_processor_type": "PoolFormerImageProcessor", "crop_pct": 0.9,
                                    "size": {"shortest_edge": 224}})
    with pytest.raises(PreprocessorConfigError, match="size"):
        ImageProcessor.from_config({"size": {"max_height": 10, "max_width": 10}})
    with pytest.raises(PreprocessorConfigError, match="resample"):
        ImageProcessor.from_config({"resample": 17})
    with pytest.raises(PreprocessorConfigError, match="image_mean"):
        ImageProcessor.from_config({"image_mean": [0.1, 0.2]})


@pytest.mark.skipif("vit" not in FAMILIES, reason="transformers' PIL image processors are not installed")
@pytest.mark.parametrize("family", ["vit", "clip", "convnext-224-resnet50"])
@pytest.mark.parametrize("draft", [1.0, 2.0])
def test_draft_decoding_close(family: str, draft: float, tmp_path: Path) -> None:
    hf = FAMILIES[family]()
    cfg = _saved(tmp_path, hf)
    fast = ImageProcessor.from_config(cfg, draft=draft)
    big = _encode(Image.fromarray(_pattern(1280, 960, 11)), "JPEG", quality=90)
    worst = 0.0
    for data in (IMAGES["rgb-jpeg-640x480"], big, _exif_jpeg(1200, 700)):
        ref = _reference(hf, data)
        got = fast([data])
        assert got.shape == ref.shape
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        assert diff.max() <= DRAFT_BOUND[draft] and diff.mean() <= DRAFT_MEAN_BOUND[draft]
    print(f"\n{family} draft={draft}: max-abs {worst:.3g}")
    # PNGs and PIL images are never drafted
    assert np.array_equal(fast([IMAGES["wide-1000x200-png"]]), _reference(hf, IMAGES["wide-1000x200-png"]))


def test_module_imports_no_torch_or_transformers() -> None:
    code = ("import sys, gpux.preprocess.image; "
            "bad = [m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
