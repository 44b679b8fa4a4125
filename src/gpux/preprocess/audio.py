"""Audio in: decode what a client sends, mix it to mono, resample it, and compute the model's input features.

:func:`load_audio` turns bytes (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ... through soundfile; MP4/M4A, WebM,
AAC, AMR, and MP3 where libsndfile lacks it, through PyAV), a base64 ``data:audio/...;base64,...`` URL, a numpy
array (or a ``{"array", "sampling_rate"}`` dict as ``datasets`` gives) or, only with ``allow_paths=True``, a
file path, into a float32 mono waveform at the model's rate:

* mono: the mean of the channels (what ffmpeg's ``-ac 1`` under transformers' pipelines, transformers'
  ``load_audio`` and ``librosa.load`` do);
* resampling: soxr ``HQ`` plus transformers' length rule (``ceil(n * new / old)`` samples), i.e. exactly
  ``transformers.audio_utils.load_audio(..., backend="soundfile")`` and ``librosa.load``. (transformers'
  pipelines resample arrays with ``torchaudio.functional.resample``, a Hann-windowed sinc of 6 zero crossings and
  rolloff 0.99; the two agree to ~1e-3 on band-limited signals, see the tests.)

Every refusal is an :class:`~gpux.errors.InputError` (HTTP 400) with a sentence saying what is wrong:
:class:`AudioDecodeError` (not audio, truncated or corrupt), :class:`AudioFormatError` (a format gpux
recognises but cannot decode here), :class:`EmptyAudioError`, :class:`AudioPathError` (a path where only
bytes or data URLs are taken), and :class:`AudioTooLongError` (over ``max_seconds``; the server answers 413 for
it). The duration is checked from the header before decoding where the format says it, and again while
decoding, so an oversize upload is never fully decoded.

:class:`AudioProcessor` ``.from_config(preprocessor_config)`` computes a batch's features as the model's
transformers feature extractor does, in numpy (``mel.py``): raw normalised waveforms (``Wav2Vec2``, HuBERT,
WavLM, ...), CLAP's log-mel with repeat-padding or fusion, Whisper's log-mel.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from gpux.errors import InputError, ModelError

__all__ = [
    "AudioDecodeError", "AudioError", "AudioFormatError", "AudioPathError", "AudioTooLongError",
    "EmptyAudioError", "UnsupportedAudioProcessorError", "load_audio", "resample", "sniff_audio_format", "to_mono",
]


# ---------------------------------------------------------------------------------------------------- errors


class AudioError(InputError):
    """Audio a client sent cannot be used (HTTP 400)."""


class AudioDecodeError(AudioError):
    """The data is not audio, or is a truncated or corrupt audio file."""


class AudioFormatError(AudioError):
    """The data is in an audio format gpux recognises but cannot decode on this installation."""


class EmptyAudioError(AudioError):
    """The audio holds no samples."""


class AudioPathError(AudioError):
    """A file path was given where only bytes or data URLs are accepted (the server never reads its own disk)."""


class AudioTooLongError(AudioError):
    """The audio is longer than the limit (the server answers HTTP 413)."""

    http_status = 413


class UnsupportedAudioProcessorError(ModelError):
    """The model's ``preprocessor_config.json`` names a feature extractor gpux does not implement."""


# ---------------------------------------------------------------------------------------------------- sniffing

#: Formats libsndfile decodes (MP3 only from libsndfile 1.1 on: checked at run time).
_SOUNDFILE_KINDS = {"wav", "rf64", "w64", "flac", "ogg", "aiff", "au", "caf", "mp3"}
#: Formats only PyAV (ffmpeg) decodes.
_PYAV_KINDS = {"mp4", "webm", "aac", "amr", "wma", "mp3", "wav", "ogg", "flac", "aiff", "caf"}


def sniff_audio_format(head: bytes) -> str | None:
    """The audio container named by the first bytes (``"wav"``, ``"flac"``, ``"mp3"``, ...), a description of a
    known non-audio file (``"a PNG image"``), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:4] in (b"RF64", b"BW64"):
        return "rf64"
    if head[:4] == b"riff":
        return "w64"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b".snd":
        return "au"
    if head[:4] == b"caff":
        return "caf"
    if head[:3] == b"ID3":
        return "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "webm"
    if head[:5] == b"#!AMR":
        return "amr"
    if head[:16] == bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"):
        return "wma"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
            return "mp3"
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "gzip data"),
                        (b"BM", "a BMP image")):
        if head.startswith(magic):
            return what
    text = head.lstrip()[:1]
    if text in (b"{", b"[", b"<"):
        return "text (JSON, HTML or XML)"
    return None


def _soundfile_mp3() -> bool:
    import soundfile as sf

    return "MP3" in sf.available_formats()


# ---------------------------------------------------------------------------------------------------- sources

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_UNKNOWN_FRAMES = 2 ** 62


def _decode_data_url(url: str) -> tuple[bytes, str]:
    m = _DATA_URL.match(url[:512])
    if not m:
        raise AudioDecodeError("the string is not a valid data URL",
                               hint="send data:audio/wav;base64,<base64 of the file>")
    mime = m.group("mime").lower() or "application/octet-stream"
    if ";base64" not in m.group("params").lower():
        raise AudioDecodeError(f"the {mime} data URL is not base64-encoded",
                               hint="send data:audio/wav;base64,<base64 of the file>")
    payload = re.sub(r"\s+", "", url[m.end():])
    try:
        if "-" in payload or "_" in payload:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), altchars=b"-_", validate=True)
        else:
            data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioDecodeError(f"the {mime} data URL does not hold valid base64: {exc}",
                               hint="encode the whole file with standard base64") from exc
    return data, mime


def _refuse_path(what: str) -> AudioPathError:
    return AudioPathError(f"audio must be sent as bytes or a base64 data URL, not as a file path ({what})",
                          hint="upload the file's bytes, or send data:audio/wav;base64,<base64 of the file>; "
                               "paths are read only by the CLI and the Python API")


def load_audio(source: Any, sampling_rate: int, *, source_rate: int | None = None, allow_paths: bool = False,
               max_seconds: float | None = None) -> np.ndarray:
    """Decode ``source`` to a float32 mono waveform at ``sampling_rate``.

    ``source``: bytes (bytearray, memoryview) of an audio file; a ``data:<mime>;base64,...`` URL; a numpy array
    or list of samples at ``source_rate`` (default: already at ``sampling_rate``), shaped ``(T,)``,
    ``(T, C)`` or ``(C, T)`` (the short axis, at most 8 long, is the channels; integer PCM is scaled to
    [-1, 1]); a ``{"array"|"raw": ..., "sampling_rate": ...}`` dict; a path (str or ``os.PathLike``) or binary
    file object only when ``allow_paths``. ``max_seconds``: refuse longer audio with :class:`AudioTooLongError`.
    """
    if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    sampling_rate = int(sampling_rate)
    if isinstance(source, Mapping):
        array = source.get("array", source.get("raw"))
        if array is None or "sampling_rate" not in source:
            raise AudioDecodeError("an audio dict needs 'array' (or 'raw') and 'sampling_rate'",
                                   hint='{"array": [...], "sampling_rate": 16000}')
        return load_audio(np.asarray(array), sampling_rate, source_rate=int(source["sampling_rate"]),
                          max_seconds=max_seconds)
    if isinstance(source, np.ndarray) or (isinstance(source, (list, tuple))
                                          and not (source and isinstance(source[0], (str, bytes)))):
        rate = sampling_rate if source_rate is None else int(source_rate)
        if rate <= 0:
            raise ValueError(f"source_rate must be a positive integer, got {source_rate!r}")
        wave = to_mono(_as_samples(source))
        _check_length(wave.shape[0], rate, max_seconds)
        return resample(wave, rate, sampling_rate)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _load_bytes(io.BytesIO(data), sampling_rate, max_seconds, "the audio data")
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            data, mime = _decode_data_url(source)
            return _load_bytes(io.BytesIO(data), sampling_rate, max_seconds, f"the {mime} data URL")
        if not allow_paths:
            raise _refuse_path(repr(source[:80]))
        return _load_path(Path(source), sampling_rate, max_seconds)
    if isinstance(source, os.PathLike):
        if not allow_paths:
            raise _refuse_path(repr(os.fspath(source)))
        return _load_path(Path(os.fspath(source)), sampling_rate, max_seconds)
    if hasattr(source, "read"):
        if not allow_paths:
            raise _refuse_path("an open file")
        return _load_bytes(io.BytesIO(source.read()), sampling_rate, max_seconds, "the audio file")
    raise AudioDecodeError(f"cannot read audio from a {type(source).__name__}",
                           hint="send file bytes, a data URL, or an array of samples")


def _load_path(path: Path, sampling_rate: int, max_seconds: float | None) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            return _load_bytes(f, sampling_rate, max_seconds, f"file {str(path)!r}")
    except OSError as exc:
        raise AudioDecodeError(f"cannot read audio file {str(path)!r}: {exc.strerror or exc}",
                               hint="check the path") from exc


#: Integer PCM arrays and their full scale: int16/int32 signed, uint8 offset by 128 (as WAV stores 8-bit).
_PCM = {np.dtype(np.int8): 2.0 ** 7, np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31,
        np.dtype(np.uint8): 2.0 ** 7}


def _as_samples(source: Any) -> np.ndarray:
    """Float32 samples: float arrays and lists as they are (in [-1, 1]); int8/16/32 and uint8 arrays as PCM."""
    try:
        a = np.asarray(source, dtype=np.float32 if isinstance(source, (list, tuple)) else None)
    except (ValueError, TypeError) as exc:
        raise AudioDecodeError(f"the samples are not a rectangular array of numbers: {exc}") from exc
    if a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    elif a.dtype in _PCM:
        offset = 128.0 if a.dtype == np.uint8 else 0.0
        a = ((a - offset) / _PCM[a.dtype]).astype(np.float32)
    else:
        raise AudioDecodeError(f"audio samples must be floats in [-1, 1] or int16/int32/uint8 PCM, got dtype "
                               f"{a.dtype}", hint="convert the array with .astype(np.float32) / full scale")
    if a.size and not np.isfinite(a).all():
        raise AudioDecodeError("the samples hold NaN or infinite values")
    return a


def to_mono(samples: np.ndarray) -> np.ndarray:
    """A float32 ``(T,)`` waveform from ``(T,)``, ``(T, C)`` or ``(C, T)`` samples: the mean of the channels.

    The channel axis is the shorter one when it has at most 8 entries; other 2-D shapes are refused.
    """
    a = np.asarray(samples, dtype=np.float32)
    if a.ndim == 1:
        wave = a
    elif a.ndim == 2:
        rows, cols = a.shape
        if cols <= 8 and cols < rows:
            wave = a.mean(axis=1) if cols > 1 else a[:, 0]
        elif rows <= 8 and rows < cols:
            wave = a.mean(axis=0) if rows > 1 else a[0]
        elif a.size == 1:
            wave = a.reshape(1)
        else:
            raise AudioDecodeError(f"cannot tell the channel axis of samples shaped {a.shape}",
                                   hint="send (samples,) mono, or (samples, channels) with up to 8 channels")
    else:
        raise AudioDecodeError(f"audio samples must be 1-D or 2-D, got shape {a.shape}")
    if wave.shape[0] == 0:
        raise EmptyAudioError("the audio holds no samples", hint="send at least a fraction of a second of sound")
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono float32 waveform with soxr ``HQ``, to ``ceil(len * new / orig)`` samples.

    The same as ``transformers.audio_utils.load_audio(backend="soundfile")`` and ``librosa.load(sr=new)``.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if orig_rate == new_rate:
        return np.ascontiguousarray(wave)
    import soxr

    target = math.ceil(wave.shape[-1] * new_rate / orig_rate)
    out = soxr.resample(wave, orig_rate, new_rate, quality="soxr_hq")
    out = np.pad(out, (0, max(0, target - len(out))))[:target]
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_length(frames: int, rate: int, max_seconds: float | None, *, at_least: bool = False) -> None:
    """Refuse ``frames`` samples at ``rate`` past ``max_seconds`` (``at_least``: decoding stopped there)."""
    if max_seconds is not None and frames > max_seconds * rate:
        lasts = f"more than {max_seconds:g} s" if at_least else f"{frames / rate:.1f} s"
        raise AudioTooLongError(f"the audio lasts {lasts}, over the limit of {max_seconds:g} s",
                                hint="send a shorter clip, or split it")


def _load_bytes(f: IO[bytes], sampling_rate: int, max_seconds: float | None, what: str) -> np.ndarray:
    head = f.read(64)
    f.seek(0)
    if not head:
        raise EmptyAudioError(f"{what} is empty (0 bytes)", hint="send the whole audio file")
    kind = sniff_audio_format(head)
    if kind is not None and " " in kind:
        raise AudioDecodeError(f"{what} is not audio: it looks like {kind}",
                               hint="send a WAV, FLAC, OGG or MP3 file")
    use_soundfile = kind is None or (kind in _SOUNDFILE_KINDS and (kind != "mp3" or _soundfile_mp3()))
    if use_soundfile:
        samples, rate = _decode_soundfile(f, kind, max_seconds, what)
    else:
        samples, rate = _decode_pyav(f, kind, max_seconds, what)
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"{what} holds no samples", hint="send at least a fraction of a second of sound")
    wave = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return resample(wave, rate, sampling_rate)


def _wav_truncation(f: IO[bytes]) -> str | None:
    """Why a RIFF/WAVE file is cut short (its ``data`` chunk missing or shorter than declared), or None."""
    f.seek(0, io.SEEK_END)
    size = f.tell()
    pos = 12
    try:
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                present = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and length > present:
                    return f"its header declares {length} bytes of samples, it holds {present}"
                return None
            pos += 8 + length + (length & 1)
        return "it ends before its 'data' chunk"
    finally:
        f.seek(0)


def _ogg_truncation(f: IO[bytes]) -> str | None:
    """Why an Ogg stream is cut short (a page incomplete, or no end-of-stream page), or None.

    libsndfile reads a cut Ogg file as a shorter whole one, so the pages are walked here: 27-byte headers, a
    segment table, bodies; the last page of a complete stream carries the end-of-stream flag (0x04).
    """
    data = f.read()
    f.seek(0)
    pos, eos = 0, False
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            return None if eos else "its Ogg pages are broken"  # trailing bytes after a whole stream: fine
        if pos + 27 > len(data):
            return "it ends inside an Ogg page"
        flags, segments = data[pos + 5], data[pos + 26]
        table_end = pos + 27 + segments
        if table_end > len(data):
            return "it ends inside an Ogg page"
        end = table_end + sum(data[pos + 27:table_end])
        if end > len(data):
            return "it ends inside an Ogg page"
        eos = bool(flags & 0x04)
        pos = end
    return None if eos else "its last Ogg page does not end the stream"


def _decode_soundfile(f: IO[bytes], kind: str | None, max_seconds: float | None,
                      what: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if kind == "wav":
        why = _wav_truncation(f)
        if why is not None:
            raise AudioDecodeError(f"{what} is a truncated WAV file: {why}", hint="send the complete file")
    if kind == "ogg":
        why = _ogg_truncation(f)
        if why is not None:
            raise AudioDecodeError(f"{what} is a truncated OGG file: {why}", hint="send the complete file")
    try:
        with sf.SoundFile(f) as snd:
            rate, declared = int(snd.samplerate), int(snd.frames)
            unknown = declared >= _UNKNOWN_FRAMES  # a streamed file (FLAC with 0 total samples): no length
            known = 0 < declared < _UNKNOWN_FRAMES
            if known:
                _check_length(declared, rate, max_seconds)
            limit = -1 if max_seconds is None else int(max_seconds * rate) + 1
            if not unknown:
                samples = snd.read(frames=limit, dtype="float32", always_2d=True)
        if unknown:  # libsndfile cannot read these to the end: ffmpeg can
            if _have_pyav() and kind in _PYAV_KINDS:
                return _decode_pyav(f, kind, max_seconds, what)
            raise AudioFormatError(f"{what} does not state its length, which needs PyAV to decode",
                                   hint="pip install av, or send a file with a complete header")
    except sf.LibsndfileError as exc:
        detail = str(exc).split(": ", 1)[-1].strip() if ": " in str(exc) else str(exc)
        if kind is None:
            raise AudioDecodeError(f"{what} is not audio in a format gpux reads ({detail})",
                                   hint="send a WAV, FLAC, OGG or MP3 file") from exc
        if "unimplemented" in detail.lower() or "not recognised" in detail.lower():
            if _have_pyav() and kind in _PYAV_KINDS:
                return _decode_pyav(f, kind, max_seconds, what)
            raise AudioFormatError(f"{what} is {kind.upper()} data in a variant gpux cannot decode here ({detail})",
                                   hint="convert it to WAV or FLAC (16-bit PCM)") from exc
        raise AudioDecodeError(f"{what} is a truncated or corrupt {kind.upper()} file ({detail})",
                               hint="send the complete file") from exc
    except (RuntimeError, ValueError, TypeError) as exc:  # soundfile raises these for odd headers
        raise AudioDecodeError(f"{what} could not be decoded as audio: {exc}",
                               hint="send a WAV, FLAC, OGG or MP3 file") from exc
    _check_length(samples.shape[0], rate, max_seconds, at_least=True)
    if known and samples.shape[0] < declared:  # (a read cut at the limit was refused just above)
        # The header's length is exact for every format but MP3, whose length may be estimated from the size.
        slack = 0 if kind != "mp3" else max(2304, declared // 20)
        if samples.shape[0] + slack < declared:
            raise AudioDecodeError(f"{what} is a truncated {(kind or 'audio').upper()} file: its header declares "
                                   f"{declared} samples, {samples.shape[0]} could be decoded",
                                   hint="send the complete file")
    return samples, rate


def _have_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _decode_pyav(f: IO[bytes], kind: str | None, max_seconds: float | None, what: str) -> tuple[np.ndarray, int]:
    name = (kind or "audio").upper()
    if not _have_pyav():
        raise AudioFormatError(f"{what} is {name} data, which needs PyAV to decode",
                               hint="pip install av, or send WAV, FLAC or OGG")
    import av

    f.seek(0)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(f, mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{what} holds no audio stream", hint="send an audio file")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            if rate <= 0:
                raise AudioDecodeError(f"{what} has no sampling rate in its header")
            declared = container.duration / 1_000_000 if container.duration else None  # may be estimated
            if declared and max_seconds is not None:
                _check_length(int(declared * rate), rate, max_seconds)
            resampler = av.AudioResampler(format="fltp")
            limit = None if max_seconds is None else int(max_seconds * rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()
                    chunks.append(arr)
                    total += arr.shape[1]
                if limit is not None and total > limit:
                    _check_length(total, rate, max_seconds, at_least=True)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise AudioDecodeError(f"{what} is not a readable {name} file: truncated or corrupt ({exc})",
                               hint="send the complete file, or a WAV, FLAC or OGG file") from exc
    if not chunks:
        raise EmptyAudioError(f"{what} holds no samples", hint="send at least a fraction of a second of sound")
    samples = np.concatenate(chunks, axis=1).T
    _check_length(samples.shape[0], rate, max_seconds)
    seconds = samples.shape[0] / rate
    if declared and seconds < 0.95 * declared - 0.1:
        raise AudioDecodeError(f"{what} is a truncated {name} file: its header says {declared:.2f} s, "
                               f"{seconds:.2f} s could be decoded", hint="send the complete file")
    return np.ascontiguousarray(samples, dtype=np.float32), rate


#: The feature extractors live in audio_features.py (which imports this module); importable from here as before.
_FEATURES = ("AudioProcessor", "ClapFeatureExtractor", "Wav2Vec2FeatureExtractor", "WhisperFeatureExtractor")


def __getattr__(name: str) -> Any:
    if name in _FEATURES:
        from gpux.preprocess import audio_features

        return getattr(audio_features, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
