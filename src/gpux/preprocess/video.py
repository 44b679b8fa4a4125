"""Video in: a list of frame images, or a video file decoded with PyAV, sampled to the model's frame count.

Frames are chosen evenly over the clip (``numpy.linspace`` over the decoded frames, as the X-CLIP model
card samples them); each then goes through the model's image processor like any image. A file arrives as
bytes or a ``data:video/...;base64,`` URL (a path only where the caller allows it, as for images).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from gpux.errors import InputError

#: Frames decoded at most from one file before sampling (a long clip is sampled from its first ones).
MAX_DECODED_FRAMES = 3000


class VideoDecodeError(InputError):
    """The bytes are not a video PyAV can decode."""


def _bytes(source: Any, allow_paths: bool) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, str) and source.startswith("data:"):
        head, _, body = source.partition(",")
        if ";base64" not in head:
            raise VideoDecodeError("a video data URL must be base64", hint="data:video/mp4;base64,...")
        try:
            return base64.b64decode(body, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise VideoDecodeError(f"the video data URL is not valid base64: {exc}", hint="re-encode it") from exc
    if isinstance(source, str) and allow_paths:
        with open(source, "rb") as fh:
            return fh.read()
    raise VideoDecodeError("file paths are not accepted here" if isinstance(source, str) else
                           f"a video must be bytes or a data URL, not {type(source).__name__}",
                           hint="send the file's bytes or a data:video/...;base64 URL")


def decode_frames(source: Any, *, allow_paths: bool = False) -> list[Any]:
    """Every frame of a video file as an RGB PIL image (up to :data:`MAX_DECODED_FRAMES`)."""
    try:
        import av
    except ImportError as exc:
        raise VideoDecodeError("decoding video files needs PyAV", hint="pip install 'gpux[media]', or send frames") from exc
    data = _bytes(source, allow_paths)
    frames: list[Any] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_image().convert("RGB"))
                if len(frames) >= MAX_DECODED_FRAMES:
                    break
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as exc:
        raise VideoDecodeError(f"not a video PyAV can decode: {exc}", hint="send an MP4/WebM/AVI file or frames") from exc
    if not frames:
        raise VideoDecodeError("the video has no frames", hint="send a file with at least one frame")
    return frames


def sample(frames: list[Any], count: int) -> list[Any]:
    """``count`` frames spread evenly over ``frames`` (repeating frames of a clip shorter than ``count``)."""
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in idx]
