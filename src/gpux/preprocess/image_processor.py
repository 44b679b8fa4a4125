"""The image processor: a model's ``preprocessor_config.json`` -> resize, crop, rescale, normalise, as transformers does.

One class for every processor family (the fields, not the class name, decide), reproducing transformers' PIL
path bit for bit; a key it does not reproduce is refused by name. Decoding and orientation are in
:mod:`gpux.preprocess.image`, which also makes these names importable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gpux.errors import InputError
from gpux.preprocess.image import (DEFAULT_MAX_PIXELS, PreprocessorConfigError, _EXIF_ERRORS, _EXIF_ORIENTATION, _finish, _open_source)


# Keys that never change pixel_values for images (metadata, or options of other inputs).
_IGNORED_KEYS = frozenset({
    "image_processor_type", "feature_extractor_type", "processor_class", "auto_map", "model_input_names",
    "_processor_class", "transformers_version", "do_reduce_labels", "reduce_labels", "return_tensors",
    "data_format", "input_data_format", "device", "disable_grouping", "image_seq_length", "backend",
    "default_to_square", "pad_size", "image_like_kwargs", "use_fast",
})
_SUPPORTED_KEYS = frozenset({
    "do_resize", "size", "resample", "crop_pct", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "rescale_offset", "do_normalize", "image_mean", "image_std", "include_top", "do_convert_rgb", "use_square_size",
})
# Types whose int ``size`` means the shortest edge (transformers classes with ``default_to_square = False``).
_SHORTEST_EDGE_TYPES = frozenset({
    "Bit", "BridgeTower", "Chameleon", "ChineseCLIP", "CLIP", "ConditionalDetr", "ConvNext", "DeformableDetr",
    "Detr", "GroundingDino", "Idefics2", "Levit", "Llava", "LlavaNext", "LlavaOnevision", "Mask2Former",
    "MaskFormer", "MobileNetV1", "MobileNetV2", "MobileViT", "OneFormer", "PoolFormer", "Qwen2VL", "RTDetr",
    "Siglip", "TextNet", "Tvp", "VideoMAE", "Vilt", "Yolos",
})
_CROP_PCT_TYPES = frozenset({"ConvNext", "ConvNextV2"})
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_RESAMPLE_BY_NAME = {v: k for k, v in _RESAMPLE_NAMES.items()} | {"antialias": 1}


def _family(cfg: Mapping[str, Any]) -> str:
    name = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
    for suffix in ("ImageProcessorFast", "ImageProcessorPil", "ImageProcessor", "FeatureExtractor"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _config_error(key: str, value: Any, why: str) -> PreprocessorConfigError:
    return PreprocessorConfigError(
        f"preprocessor_config.json: {key}={value!r} {why}",
        hint="gpux reproduces resize, center crop, rescale and normalise; this model needs its own processor",
    )


def _pos_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise _config_error(key, value, "is not a positive integer")
    return int(value)


def _size_dict(key: str, value: Any, *, default_to_square: bool) -> dict[str, int]:
    """transformers' ``get_size_dict``: ints and (h, w) pairs become dicts; dicts are checked."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = _pos_int(key, value)
        return {"height": n, "width": n} if default_to_square else {"shortest_edge": n}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": _pos_int(key, value[0]), "width": _pos_int(key, value[1])}
    if isinstance(value, Mapping):
        d = {k: v for k, v in value.items() if v is not None}
        keys = set(d)
        if keys in ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"longest_edge"}):
            return {k: _pos_int(f"{key}.{k}", v) for k, v in d.items()}
        raise _config_error(key, dict(value), "uses size keys gpux does not reproduce "
                            "(supported: height+width, shortest_edge, shortest_edge+longest_edge, longest_edge)")
    raise _config_error(key, value, "is not a size (an int, [height, width] or a size dict)")


def _floats(key: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return (float(value[0]),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return (float(value[0]), float(value[1]), float(value[2]))
    raise _config_error(key, value, "is not one number or three (one per RGB channel)")


def _resample(value: Any) -> int:
    if isinstance(value, str) and value.lower() in _RESAMPLE_BY_NAME:
        return _RESAMPLE_BY_NAME[value.lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) in _RESAMPLE_NAMES:
        return int(value)
    raise _config_error("resample", value, "is not a Pillow resampling filter (0..5)")


def _resize_shortest_edge(height: int, width: int, size: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(default_to_square=False)``: (height, width)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _size_with_aspect_ratio(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """transformers' ``get_size_with_aspect_ratio`` (shortest_edge + longest_edge)."""
    raw_size = None
    if max_size is not None:
        min_original, max_original = float(min(height, width)), float(max(height, width))
        if max_original / min_original * size > max_size:
            raw_size = max_size * min_original / max_original
            size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        ow = size
        oh = int(raw_size * height / width) if raw_size is not None else int(size * height / width)
    else:
        oh = size
        ow = int(raw_size * width / height) if raw_size is not None else int(size * width / height)
    return oh, ow


def _center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """transformers' ``center_crop`` on an (H, W, C) array, zero padding included."""
    h, w = arr.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    bottom, right = top + crop_h, left + crop_w
    if top >= 0 and bottom <= h and left >= 0 and right <= w:
        return arr[top:bottom, left:right]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
    top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    padded[top_pad:top_pad + h, left_pad:left_pad + w] = arr
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[max(0, top):min(new_h, bottom), max(0, left):min(new_w, right)]


@dataclass(frozen=True)
class ImageProcessor:
    """A model's image processor, read from its ``preprocessor_config.json`` (:meth:`from_config`).

    ``processor(images)`` returns ``pixel_values``: float32 ``(N, 3, H, W)``, bit-identical to transformers'
    PIL processor fed the same decoded image (``draft=None``, the default).

    ``draft`` (a float ≥ 1) lets libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale (Pillow's ``Image.draft``)
    whenever the reduced image still has at least ``draft`` times the resize target in both dimensions; the
    resize target is computed from the full size, so output shapes never change. Measured against the full
    decode on real photos (pixel_values units): ``draft=2.0`` max-abs ≤ 0.06, mean-abs ≤ 0.003, about 2-4x
    faster on 1-12 megapixel photos, nothing drafted for a 640x480 JPEG at 224; ``draft=1.0`` max-abs up to
    0.7 (CLIP) and mean-abs up to 0.045, about 1.7x faster on a 640x480 JPEG. Not bit-identical either way.
    """

    do_resize: bool = True
    size: Mapping[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    resample: int = 2
    crop_pct: float | None = None
    do_center_crop: bool = False
    crop_size: Mapping[str, int] | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    rescale_offset: bool = False
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    include_top: bool = False
    do_convert_rgb: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    draft: float | None = None
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lut", self._build_lut())

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], *, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: float | None = None,
    ) -> ImageProcessor:
        """Build from the dict of a ``preprocessor_config.json``.

        Missing keys take transformers' usual class defaults (resize, rescale by 1/255 and normalise on;
        center crop on only when ``crop_size`` is given). A key that would change the output in a way this
        module does not reproduce (``do_pad: true``, an unknown ``do_*`` flag set, a size dict with other
        keys) raises :class:`PreprocessorConfigError` naming it.
        """
        if not isinstance(cfg, Mapping):
            raise PreprocessorConfigError("preprocessor_config.json is not a JSON object",
                                          hint="check the model's preprocessor_config.json")
        family = _family(cfg)
        for key, value in cfg.items():
            if key in _SUPPORTED_KEYS or key in _IGNORED_KEYS:
                continue
            if key.startswith("do_") and value:
                raise _config_error(key, value, "asks for a step gpux does not reproduce")
        square = bool(cfg.get("default_to_square", family not in _SHORTEST_EDGE_TYPES))

        def flag(key: str, default: bool) -> bool:
            value = cfg.get(key)
            return default if value is None else bool(value)

        do_resize = flag("do_resize", True)
        size_value = cfg.get("size")
        size: Mapping[str, int] = (_size_dict("size", size_value, default_to_square=square)
                                   if size_value is not None else {"height": 224, "width": 224})
        if cfg.get("use_square_size") and "shortest_edge" in size:  # CLIP's Kosmos-2 compatibility switch
            size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
        crop_pct = cfg.get("crop_pct")
        if crop_pct is not None:
            if family not in _CROP_PCT_TYPES:
                if do_resize:
                    raise _config_error("crop_pct", crop_pct,
                                        f"is only reproduced with ConvNext's rule, not {family or 'this'}'s")
                crop_pct = None
            elif not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
                raise _config_error("crop_pct", crop_pct, "is not a fraction in (0, 1]")
            elif "shortest_edge" not in size or "longest_edge" in size:
                raise _config_error("size", dict(size), "must be {'shortest_edge': N} with crop_pct (ConvNext)")
            else:
                crop_pct = float(crop_pct)
        crop_value = cfg.get("crop_size")
        do_center_crop = flag("do_center_crop", crop_value is not None)
        crop_size = _size_dict("crop_size", crop_value, default_to_square=True) if crop_value is not None else None
        if do_center_crop and (crop_size is None or set(crop_size) != {"height", "width"}):
            raise _config_error("crop_size", crop_value, "must give height and width when do_center_crop is set")
        factor = cfg.get("rescale_factor")
        factor = 1 / 255 if factor is None else factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise _config_error("rescale_factor", factor, "is not a number")
        mean = cfg.get("image_mean")
        std = cfg.get("image_std")
        image_std = _floats("image_std", std) if std is not None else (0.5, 0.5, 0.5)
        if any(s == 0 for s in image_std):
            raise _config_error("image_std", std, "contains a zero")
        return cls(
            do_resize=do_resize,
            size=size,
            resample=_resample(cfg["resample"]) if cfg.get("resample") is not None else 2,
            crop_pct=crop_pct,
            do_center_crop=do_center_crop,
            crop_size=crop_size,
            do_rescale=flag("do_rescale", True),
            rescale_factor=float(factor),
            rescale_offset=flag("rescale_offset", False),
            do_normalize=flag("do_normalize", True),
            image_mean=_floats("image_mean", mean) if mean is not None else (0.5, 0.5, 0.5),
            image_std=image_std,
            include_top=flag("include_top", False),
            do_convert_rgb=flag("do_convert_rgb", False),
            max_pixels=max_pixels,
            draft=draft,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> ImageProcessor:
        """Read ``preprocessor_config.json`` (or a folder holding it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "preprocessor_config.json"
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PreprocessorConfigError(f"cannot read {p}: {exc}",
                                          hint="check the model's preprocessor_config.json") from exc
        return cls.from_config(cfg, **kwargs)

    # -- numerics ------------------------------------------------------------------------------------------

    def _build_lut(self) -> np.ndarray:
        """rescale/normalise as transformers does them, evaluated on every uint8 value: (3, 256) float32."""
        x: np.ndarray = np.tile(np.arange(256, dtype=np.uint8), (3, 1)).T  # (256, 3): channels last
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.rescale_offset:
                x -= 1
        if self.do_normalize:
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            x = (x - np.array(self.image_mean, dtype=x.dtype)) / np.array(self.image_std, dtype=x.dtype)
        if self.include_top:
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            x = (x - np.zeros(3, dtype=x.dtype)) / np.array(self.image_std, dtype=x.dtype)
        lut = np.ascontiguousarray(x.astype(np.float32).T)
        lut.setflags(write=False)
        return lut

    def resize_target(self, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) the image is resized to, before any crop; ``None`` when it is not resized."""
        if not self.do_resize:
            return None
        size = self.size
        if self.crop_pct is not None:
            edge = size["shortest_edge"]
            if edge < 384:
                return _resize_shortest_edge(height, width, int(edge / self.crop_pct))
            return edge, edge
        if "height" in size:
            return size["height"], size["width"]
        if "shortest_edge" in size:
            if "longest_edge" in size:
                return _size_with_aspect_ratio(height, width, size["shortest_edge"], size["longest_edge"])
            return _resize_shortest_edge(height, width, size["shortest_edge"])
        longest = size["longest_edge"]  # alone: the longest edge scaled to N, aspect kept
        if height >= width:
            return longest, max(1, int(longest * width / height))
        return max(1, int(longest * height / width)), longest

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the pixel_values of an image of this size."""
        target = self.resize_target(height, width)
        h, w = target if target is not None else (height, width)
        if self.crop_pct is not None and self.do_resize and self.size["shortest_edge"] < 384:
            h = w = self.size["shortest_edge"]
        if self.do_center_crop and self.crop_size is not None:
            h, w = self.crop_size["height"], self.crop_size["width"]
        return h, w

    # -- running -------------------------------------------------------------------------------------------

    def load(self, source: Any, *, allow_paths: bool = False) -> Image.Image:
        """Decode one image as :func:`load_image` does (alpha composited onto white when ``do_convert_rgb``)."""
        return self._decode(source, allow_paths=allow_paths)[0]

    def _decode(self, source: Any, *, allow_paths: bool) -> tuple[Image.Image, tuple[int, int]]:
        """The RGB image and the (height, width) the full decode has after EXIF rotation."""
        im, what = _open_source(source, allow_paths=allow_paths, max_pixels=self.max_pixels)
        full = None
        if self.draft is not None and im.format == "JPEG" and not isinstance(source, Image.Image):
            full = self._draft(im)
        im = _finish(im, what=what, composite_alpha=self.do_convert_rgb)
        return im, full if full is not None else (im.height, im.width)

    def _draft(self, im: Image.Image) -> tuple[int, int] | None:
        """Let libjpeg decode at 1/2, 1/4 or 1/8 scale, still ≥ ``draft`` x the resize target in both dimensions.

        Returns the upright (height, width) of the full decode, which the resize target is computed from, so
        output shapes never change.
        """
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except _EXIF_ERRORS:
            orientation = 1
        rotated = orientation in (5, 6, 7, 8)
        h, w = (im.width, im.height) if rotated else (im.height, im.width)
        target = self.resize_target(h, w)
        if target is None:
            return None
        th, tw = (target[1], target[0]) if rotated else target
        margin = max(1.0, float(self.draft or 1.0))
        im.draft("RGB", (math.ceil(tw * margin), math.ceil(th * margin)))
        return h, w

    def process_one(self, image: Any, *, allow_paths: bool = False) -> np.ndarray:
        """One image → float32 ``(3, H, W)``."""
        return self._process(image, allow_paths=allow_paths, out=None)

    def _process(self, image: Any, *, allow_paths: bool, out: np.ndarray | None) -> np.ndarray:
        im, (orig_h, orig_w) = self._decode(image, allow_paths=allow_paths)
        target = self.resize_target(orig_h, orig_w)
        if target is not None:
            th, tw = target
            if (tw, th) != im.size:
                im = im.resize((tw, th), resample=self.resample)
        arr = np.asarray(im)
        if self.crop_pct is not None and self.do_resize and self.size["shortest_edge"] < 384:
            edge = self.size["shortest_edge"]
            arr = _center_crop(arr, edge, edge)
        if self.do_center_crop and self.crop_size is not None:
            arr = _center_crop(arr, self.crop_size["height"], self.crop_size["width"])
        h, w = arr.shape[:2]
        if out is None:
            out = np.empty((3, h, w), dtype=np.float32)
        elif out.shape != (3, h, w):
            raise InputError(
                f"images give pixel_values of different sizes ({h}x{w} vs {out.shape[1]}x{out.shape[2]})",
                hint="this processor keeps aspect ratios without cropping: send one image per request",
            )
        lut = self._lut
        for c in range(3):
            np.take(lut[c], arr[:, :, c], out=out[c])
        return out

    def __call__(self, images: Any, *, allow_paths: bool = False) -> np.ndarray:
        """Images (a list, or one) → ``pixel_values``, float32 ``(N, 3, H, W)``."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise InputError("no images given", hint="send at least one image")
        first = self._process(images[0], allow_paths=allow_paths, out=None)
        batch = np.empty((len(images),) + first.shape, dtype=np.float32)
        batch[0] = first
        for i, image in enumerate(images[1:], start=1):
            self._process(image, allow_paths=allow_paths, out=batch[i])
        return batch
