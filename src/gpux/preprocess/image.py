"""Images in, ``pixel_values`` out: decoding (:func:`load_image`) and the model's processor (:class:`ImageProcessor`).

Numpy and Pillow only. The numerics follow transformers' PIL ("slow") image processors step for step:

1. the image is decoded, EXIF-rotated and converted to RGB as ``transformers.image_utils.load_image`` does
   (what its pipelines do with a file or a data URL);
2. resized with Pillow on the uint8 image (same target size arithmetic, same filter);
3. center-cropped on uint8 (zero padding when the image is smaller than the crop, as transformers pads);
4. rescaled in float64 and cast to float32, then normalised in float32 (``(x - mean) / std``), EfficientNet's
   ``rescale_offset`` / ``include_top`` included.

Steps 4 are elementwise functions of one uint8 value per channel, so they are computed once per processor as
a (3, 256) float32 table with exactly transformers' operations and dtypes; applying it is a lookup. The output
is bit-identical to transformers' for the same uint8 resized image.

Inputs are never read from the server's disk: a filesystem path is accepted only with ``allow_paths=True``.
Every failure is a :class:`gpux.errors.InputError` (bad image: the server's 400) or its subclass
:class:`ImageTooLargeError` (the server's 413); an unusable ``preprocessor_config.json`` is a
:class:`PreprocessorConfigError` (a :class:`gpux.errors.ModelError`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from gpux.errors import InputError, ModelError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "ImageTooLargeError",
    "PreprocessorConfigError",
    "load_image",
]

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image (width × height, from the file's header) decoded by default: 50 megapixels."""

_EXIF_ORIENTATION = 0x0112
# what a damaged EXIF block makes Pillow raise
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, struct.error)
_IMAGE_SOURCES = "raw image bytes, a data:image/...;base64 URL, a numpy array or a PIL image"


class ImageDecodeError(InputError):
    """The input is not an image gpux can decode: unknown format, truncated or corrupt file, bad data URL."""


class ImageTooLargeError(InputError):
    """The image has more pixels than allowed (checked from the header, before decoding)."""


class PreprocessorConfigError(ModelError):
    """A model's ``preprocessor_config.json`` asks for something this module does not reproduce."""


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed",
        hint="downscale the image before sending it",
    )


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise _too_large(width, height, max_pixels)


def _decode_data_url(text: str) -> bytes:
    head, sep, payload = text.partition(",")
    if not sep:
        raise ImageDecodeError("data URL has no ',' before its payload",
                               hint="send data:image/<type>;base64,<base64 bytes>")
    media = head[len("data:"):]
    params = [p.strip().lower() for p in media.split(";")]
    if params[0] and not params[0].startswith("image/"):
        raise ImageDecodeError(f"data URL media type is {params[0]!r}, not an image",
                               hint="send data:image/<type>;base64,<base64 bytes>")
    if "base64" not in params[1:]:
        raise ImageDecodeError("data URL is not base64-encoded",
                               hint="send data:image/<type>;base64,<base64 bytes>")
    return _b64decode(payload, what="data URL payload")


def _b64decode(payload: str, *, what: str) -> bytes:
    compact = "".join(payload.split())  # line breaks and spaces are common in pasted base64
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        try:  # URL-safe alphabet (-, _) is also seen in the wild
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        except (binascii.Error, ValueError):
            pass
        raise ImageDecodeError(f"{what} is not valid base64: {exc}",
                               hint="encode the file's bytes with standard base64") from exc


def _open_bytes(data: bytes, *, what: str, max_pixels: int | None) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{what} is empty", hint=f"send {_IMAGE_SOURCES}")
    return _open(io.BytesIO(data), what=what, max_pixels=max_pixels)


def _open(fp: Any, *, what: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` (lazy: reads the header only) with errors mapped and the pixel count checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what}: {exc}", hint="downscale the image before sending it") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{what} is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)",
                               hint=f"send {_IMAGE_SOURCES}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{what} cannot be read as an image: {exc}",
                               hint="check that the file is complete and not corrupt") from exc
    _check_pixels(im.width, im.height, max_pixels)
    return im


def _load_pixels(im: Image.Image, *, what: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what}: {exc}", hint="downscale the image before sending it") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise ImageDecodeError(f"{what} is truncated or corrupt: {exc}",
                               hint="send the complete file; check the upload was not cut short") from exc


def _array_to_image(arr: np.ndarray, *, max_pixels: int | None) -> Image.Image:
    """HWC (C in 1, 3, 4), CHW (when unambiguous) or HW arrays; uint8, integers in 0..255, or floats in [0, 1]."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise ImageDecodeError(f"array of shape {tuple(arr.shape)} is not an image",
                               hint="send (height, width, 3|4) or (height, width) arrays")
    _check_pixels(a.shape[1], a.shape[0], max_pixels)
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ImageDecodeError(f"integer image values span [{a.min()}, {a.max()}], outside 0..255",
                                   hint="send uint8 values, or floats in [0, 1]")
        a = a.astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise ImageDecodeError("float image values must be finite and within [0, 1]",
                                   hint="send uint8 values, or floats in [0, 1]")
        # transformers' to_pil_image: float64 * 255, then truncation to uint8
        a = (a.astype(np.float64) * 255).astype(np.uint8)
    else:
        raise ImageDecodeError(f"array dtype {a.dtype} is not an image dtype",
                               hint="send uint8 values, or floats in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(a))


def _to_rgb(im: Image.Image, *, composite_alpha: bool) -> Image.Image:
    if composite_alpha and ("A" in im.getbands() or im.info.get("transparency") is not None):
        # transformers.image_transforms.convert_to_rgb: transparency composited onto white
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode == "RGB":
        return im  # convert("RGB") would only copy
    return im.convert("RGB")  # transformers.image_utils.load_image: alpha dropped, palette expanded


def _exif_transpose(im: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``, skipped (no copy) when the image has no orientation to apply."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _EXIF_ERRORS:  # a damaged EXIF block: the image is used as stored
        return im
    if orientation in (None, 1):
        return im
    try:
        out = ImageOps.exif_transpose(im)
    except _EXIF_ERRORS:
        return im
    return out if out is not None else im


def _open_source(source: Any, *, allow_paths: bool, max_pixels: int | None) -> tuple[Image.Image, str]:
    """The source as a (possibly still lazy) PIL image, and words naming it for messages."""
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, max_pixels)
        return source, "image"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(source), what="image bytes", max_pixels=max_pixels), "image bytes"
    if isinstance(source, np.ndarray):
        return _array_to_image(source, max_pixels=max_pixels), "array"
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        text = source.strip()
        if text[:5].lower() == "data:":
            return _open_bytes(_decode_data_url(text), what="data URL image", max_pixels=max_pixels), "data URL"
        if allow_paths:
            if not os.path.isfile(text):
                raise ImageDecodeError(f"no such image file: {text}", hint="check the path")
            return _open(text, what=f"file {text}", max_pixels=max_pixels), f"file {text}"
        raise ImageDecodeError(
            f"file paths are not accepted here (got {_short(text)!r})",
            hint="send the image's bytes or a data:image/...;base64 URL instead",
        )
    raise ImageDecodeError(f"{type(source).__name__} is not an image", hint=f"send {_IMAGE_SOURCES}")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def load_image(
    source: Any,
    *,
    allow_paths: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    composite_alpha: bool = False,
) -> Image.Image:
    """Decode ``source`` into an upright RGB ``PIL.Image.Image``.

    ``source``: raw file bytes (any format Pillow reads: PNG, JPEG, WebP, GIF (first frame), BMP, TIFF...),
    a ``data:image/...;base64,...`` URL, a numpy array (``(H, W, 3|4)`` or ``(H, W)``; uint8, or floats in
    [0, 1]), a PIL image, or, only with ``allow_paths=True``, a filesystem path.

    As ``transformers.image_utils.load_image``: EXIF orientation applied, then ``convert("RGB")`` (alpha
    dropped, palettes expanded, L/LA/I;16/CMYK converted by Pillow). ``composite_alpha=True`` instead
    composites transparency onto white, as transformers' ``convert_to_rgb`` (``do_convert_rgb``) does.

    ``max_pixels`` (``None``: no limit beyond Pillow's own decompression-bomb guard) is checked from the
    header before any pixel is decoded: :class:`ImageTooLargeError`. Anything else that is not a decodable
    image: :class:`ImageDecodeError` (an :class:`gpux.errors.InputError`).

    A PIL image that is already upright RGB is returned as is (not copied). Bare base64 strings (without the
    ``data:`` prefix) are not accepted: a string is a data URL or, with ``allow_paths``, a path.
    """
    im, what = _open_source(source, allow_paths=allow_paths, max_pixels=max_pixels)
    return _finish(im, what=what, composite_alpha=composite_alpha)


def _finish(im: Image.Image, *, what: str, composite_alpha: bool) -> Image.Image:
    _load_pixels(im, what=what)
    try:
        im = _exif_transpose(im)
        return _to_rgb(im, composite_alpha=composite_alpha)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{what} cannot be converted to RGB (mode {im.mode}): {exc}",
                               hint=f"send {_IMAGE_SOURCES}") from exc


def __getattr__(name: str) -> Any:
    """The processor lives in image_processor.py (which imports this module); importable from here as before."""
    if name == "ImageProcessor":
        from gpux.preprocess.image_processor import ImageProcessor

        return ImageProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
