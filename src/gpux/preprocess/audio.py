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
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from gpux.errors import InputError, ModelError
from gpux.preprocess import mel

__all__ = [
    "AudioDecodeError", "AudioError", "AudioFormatError", "AudioPathError", "AudioProcessor", "AudioTooLongError",
    "ClapFeatureExtractor", "EmptyAudioError", "UnsupportedAudioProcessorError", "Wav2Vec2FeatureExtractor",
    "WhisperFeatureExtractor", "load_audio", "resample", "sniff_audio_format", "to_mono",
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


# ---------------------------------------------------------------------------------------------------- features


def _waveforms(audios: Any) -> list[np.ndarray]:
    if isinstance(audios, np.ndarray) and audios.ndim == 1:
        audios = [audios]
    elif isinstance(audios, np.ndarray) and audios.ndim == 2:
        audios = list(audios)
    out = []
    for a in audios:
        w = np.asarray(a, dtype=np.float32)
        if w.ndim != 1:
            raise AudioDecodeError(f"a feature extractor takes mono waveforms, got shape {w.shape}",
                                   hint="load the audio with load_audio first")
        if w.shape[0] == 0:
            raise EmptyAudioError("the audio holds no samples", hint="send at least a fraction of a second of sound")
        out.append(w)
    if not out:
        raise EmptyAudioError("no audio was given")
    return out


def _read_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / "preprocessor_config.json"
    with open(path, encoding="utf-8") as f:
        loaded = json.load(f)
    if not isinstance(loaded, dict):
        raise UnsupportedAudioProcessorError(f"{path} does not hold a JSON object")
    return loaded


class AudioProcessor:
    """Waveforms at the model's rate -> the arrays its graph takes, as its transformers feature extractor makes.

    Build one with :meth:`from_config` from ``preprocessor_config.json`` (a dict, the file, or its folder); call
    it on a list of mono float32 waveforms (``load_audio(source, processor.sampling_rate)``) to get a dict of
    numpy arrays named as the model's inputs.
    """

    #: ``feature_extractor_type`` values this class implements.
    types: ClassVar[tuple[str, ...]] = ()
    model_input_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.sampling_rate = int(self.config.get("sampling_rate", 16000))
        self.feature_size = int(self.config.get("feature_size", 1))
        self.padding_value = float(self.config.get("padding_value", 0.0))
        self.padding_side = str(self.config.get("padding_side", "right"))
        self.return_attention_mask = bool(self.config.get("return_attention_mask", False))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str], **options: Any) -> AudioProcessor:
        """The processor for ``feature_extractor_type`` (``Wav2Vec2FeatureExtractor``, ``ClapFeatureExtractor``,
        ``WhisperFeatureExtractor``; an untyped config with ``feature_size == 1`` is a raw-waveform one)."""
        cfg = _read_config(config)
        kind = str(cfg.get("feature_extractor_type") or "")
        for sub in (Wav2Vec2FeatureExtractor, ClapFeatureExtractor, WhisperFeatureExtractor):
            if kind in sub.types:
                return sub(cfg, **options)
        if not kind and int(cfg.get("feature_size", 1)) == 1:
            return Wav2Vec2FeatureExtractor(cfg, **options)
        raise UnsupportedAudioProcessorError(
            f"the model's audio feature extractor {kind or '(unnamed)'!r} is not one gpux implements",
            hint="supported: " + ", ".join(t for s in (Wav2Vec2FeatureExtractor, ClapFeatureExtractor,
                                                        WhisperFeatureExtractor) for t in s.types))

    def load(self, source: Any, **kwargs: Any) -> np.ndarray:
        """:func:`load_audio` at this model's rate."""
        return load_audio(source, self.sampling_rate, **kwargs)

    def __call__(self, audios: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _pad(self, waves: list[np.ndarray], length: int) -> np.ndarray:
        """``(N, length)`` float32, each clip padded with ``padding_value`` on ``padding_side`` (or cut)."""
        left = self.padding_side == "left"
        out = np.empty((len(waves), length), dtype=np.float32)
        for i, w in enumerate(waves):
            n = min(len(w), length)
            real, pad = (slice(length - n, length), slice(0, length - n)) if left else (slice(0, n), slice(n, length))
            out[i, real] = w[:n]
            out[i, pad] = self.padding_value
        return out

    def _mask(self, waves: list[np.ndarray], length: int) -> np.ndarray:
        """The int64 ``(N, length)`` attention mask of :meth:`_pad`: 1 on real samples."""
        pos = np.arange(length)
        n = np.minimum([len(w) for w in waves], length)[:, None]
        real = pos >= length - n if self.padding_side == "left" else pos < n
        return real.astype(np.int64)


def _normalize(w: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole clip, epsilon 1e-7 in the variance (transformers' numerics)."""
    w = np.asarray(w, dtype=np.float32)
    return np.asarray((w - w.mean()) / np.sqrt(w.var() + 1e-7), dtype=np.float32)


class Wav2Vec2FeatureExtractor(AudioProcessor):
    """Raw waveforms (wav2vec2, HuBERT, WavLM, data2vec-audio, ...): ``input_values`` ``(N, T)`` float32.

    ``do_normalize``: each clip zero-mean unit-variance over its own samples (variance + 1e-7), then the batch is
    padded to the longest clip with ``padding_value`` on ``padding_side``; ``attention_mask`` ``(N, T)`` int64 is
    returned when ``return_attention_mask`` (or ``attention_mask=True`` here). A clip's values never depend on
    the rest of the batch: that is transformers' result for one clip, and for a batch whenever it returns an
    attention mask (without one, transformers normalises a padded batch over the padding too).
    """

    types = ("Wav2Vec2FeatureExtractor",)
    model_input_names = ("input_values", "attention_mask")

    def __init__(self, config: Mapping[str, Any], *, attention_mask: bool | None = None) -> None:
        super().__init__(config)
        self.do_normalize = bool(self.config.get("do_normalize", True))
        if attention_mask is not None:
            self.return_attention_mask = attention_mask

    def __call__(self, audios: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        waves = _waveforms(audios)
        if self.do_normalize:
            waves = [_normalize(w) for w in waves]
        length = max(len(w) for w in waves)
        out = {"input_values": self._pad(waves, length)}
        if self.return_attention_mask:
            out["attention_mask"] = self._mask(waves, length)
        return out


class WhisperFeatureExtractor(AudioProcessor):
    """Whisper's log-mel: ``input_features`` ``(N, feature_size, frames)`` float32 (``frames`` = 3000 for 30 s).

    Each clip is cut or zero-padded (``padding_value``) to ``chunk_length`` seconds (``n_samples``); Hann window
    of ``n_fft``, hop ``hop_length``, centred reflect-padded frames, power spectrum, slaney mel filters 0-8 kHz,
    ``log10(max(mel, 1e-10))``, clamped to the clip's max - 8, ``(x + 4) / 4``; the last frame is dropped. The
    numpy path of transformers' ``WhisperFeatureExtractor`` to ~1e-7 (its torch path to ~1e-5).

    ``truncation=False`` keeps audio past ``n_samples`` (long-form): the batch is padded to the longest clip,
    at least ``n_samples`` with ``padding="max_length"``, or exactly the longest with ``padding="longest"``.
    ``attention_mask`` ``(N, frames)`` int64 (a frame is real where its first sample is) when the config's
    ``return_attention_mask`` or ``attention_mask=True``. ``dither`` (config) adds Gaussian noise from a
    generator seeded with ``seed``, so it is reproducible (transformers draws from numpy's global state).
    """

    types = ("WhisperFeatureExtractor",)
    model_input_names = ("input_features",)

    def __init__(self, config: Mapping[str, Any], *, attention_mask: bool | None = None, seed: int = 0) -> None:
        super().__init__(config)
        self.feature_size = int(self.config.get("feature_size", 80))
        self.n_fft = int(self.config.get("n_fft", 400))
        self.hop_length = int(self.config.get("hop_length", 160))
        self.chunk_length = int(self.config.get("chunk_length", 30))
        self.n_samples = self.chunk_length * self.sampling_rate
        self.nb_max_frames = self.n_samples // self.hop_length
        self.dither = float(self.config.get("dither", 0.0) or 0.0)
        self.seed = seed
        if attention_mask is not None:
            self.return_attention_mask = attention_mask
        self.window = mel.window_function(self.n_fft, "hann")
        self.mel_filters = mel.mel_filter_bank(1 + self.n_fft // 2, self.feature_size, 0.0, 8000.0,
                                               self.sampling_rate, norm="slaney", mel_scale="slaney")

    def log_mel(self, padded: np.ndarray) -> np.ndarray:
        """Log-mel ``(N, n_mels, frames)`` of a ``(N, T)`` batch already cut/padded to its final length."""
        x = np.asarray(padded)
        if self.dither:
            rng = np.random.default_rng(self.seed)
            x = x + self.dither * rng.standard_normal(x.shape)
        spec = mel.log_mel_spectrogram(x, self.window, self.hop_length, self.mel_filters, log_mel="log10")
        spec = spec[:, :-1, :]
        peak = spec.reshape(spec.shape[0], -1).max(axis=1)[:, None, None]
        spec = np.maximum(spec, peak - np.float32(8.0))
        spec = (spec + np.float32(4.0)) / np.float32(4.0)
        return np.ascontiguousarray(spec.transpose(0, 2, 1), dtype=np.float32)

    def __call__(self, audios: Sequence[np.ndarray] | np.ndarray, *, truncation: bool = True,
                 padding: str = "max_length") -> dict[str, np.ndarray]:
        waves = _waveforms(audios)
        if truncation:
            waves = [w[:self.n_samples] for w in waves]
        longest = max(len(w) for w in waves)
        if padding == "max_length":
            length = max(self.n_samples, longest)
        elif padding == "longest":
            length = longest
        else:
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        out = {"input_features": self.log_mel(self._pad(waves, length))}
        if self.return_attention_mask:
            out["attention_mask"] = self._mask(waves, length)[:, ::self.hop_length][:, :length // self.hop_length]
        return out


def _bilinear_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Resize ``(H, W)`` to ``(rows, W)`` as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` does (the width is unchanged, so only rows interpolate), in float32."""
    height = x.shape[0]
    scale = np.float32(height / rows)
    src = (np.arange(rows, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, height - 1)
    w1 = (src - i0.astype(np.float32))[:, None]
    w0 = np.float32(1.0) - w1
    x = np.asarray(x, dtype=np.float32)
    return np.asarray(w0 * x[i0] + w1 * x[i1], dtype=np.float32)


class ClapFeatureExtractor(AudioProcessor):
    """CLAP's log-mel (dB): ``input_features`` ``(N, C, frames, feature_size)`` float32, ``is_longer`` ``(N, 1)``
    bool; ``C`` is 4 with ``truncation="fusion"``, else 1; ``frames`` = ``max_length_s * rate // hop + 1``.

    Clips up to ``max_length_s`` are padded (``padding``: ``"repeatpad"`` repeats the clip whole times then pads
    with zeros, ``"repeat"`` repeats and cuts, ``"pad"`` zero-pads) and their mel (htk filters without norm for
    fusion; slaney filters with slaney norm for ``rand_trunc``) is repeated 4 times for fusion. Longer clips:
    ``rand_trunc`` takes a random crop of the waveform; ``fusion`` stacks the whole mel shrunk to the chunk
    length (bilinear, as ``torch.nn.functional.interpolate``) and 3 random crops of it from the front, middle
    and back thirds. Those random choices come from ``numpy.random.RandomState(seed)`` made afresh for each
    clip (default seed 0), so a clip's features never depend on the batch or the call: they equal
    transformers' after ``numpy.random.seed(seed)`` for that clip processed alone.

    ``is_longer``: True for clips longer than ``max_length_s``. With fusion, transformers also marks one clip
    True when none of a batch is longer — for one clip (as its pipelines call it) that clip. Here, by default
    (``batch_independent=True``), every clip gets what it would alone, so every short clip is True under fusion;
    ``batch_independent=False`` marks only the first clip of an all-short batch (transformers' rule with its
    random pick fixed to index 0).
    """

    types = ("ClapFeatureExtractor",)
    model_input_names = ("input_features", "is_longer")

    def __init__(self, config: Mapping[str, Any], *, seed: int = 0, batch_independent: bool = True) -> None:
        super().__init__(config)
        self.feature_size = int(self.config.get("feature_size", 64))
        self.sampling_rate = int(self.config.get("sampling_rate", 48000))
        self.hop_length = int(self.config.get("hop_length", 480))
        self.max_length_s = float(self.config.get("max_length_s", 10))
        self.nb_max_samples = int(self.max_length_s * self.sampling_rate)
        self.fft_window_size = int(self.config.get("fft_window_size", 1024))
        self.frequency_min = float(self.config.get("frequency_min", 0))
        self.frequency_max = float(self.config.get("frequency_max", 14000))
        top_db = self.config.get("top_db")
        self.top_db = None if top_db is None else float(top_db)
        self.truncation = str(self.config.get("truncation", "fusion"))
        self.padding = str(self.config.get("padding", "repeatpad"))
        if self.truncation not in ("fusion", "rand_trunc"):
            raise UnsupportedAudioProcessorError(f"CLAP truncation {self.truncation!r} is not implemented",
                                                 hint="fusion or rand_trunc")
        self.seed = seed
        self.batch_independent = batch_independent
        bins = (self.fft_window_size >> 1) + 1
        self.window = mel.window_function(self.fft_window_size, "hann")
        self.mel_filters = mel.mel_filter_bank(bins, self.feature_size, self.frequency_min, self.frequency_max,
                                               self.sampling_rate, norm=None, mel_scale="htk")
        self.mel_filters_slaney = mel.mel_filter_bank(bins, self.feature_size, self.frequency_min,
                                                      self.frequency_max, self.sampling_rate, norm="slaney",
                                                      mel_scale="slaney")

    def log_mel(self, wave: np.ndarray, filters: np.ndarray) -> np.ndarray:
        """dB mel ``(frames, n_mels)`` float32 of one waveform."""
        return mel.log_mel_spectrogram(wave, self.window, self.hop_length, filters, log_mel="dB",
                                       db_range=self.top_db)

    def _pad_short(self, w: np.ndarray, max_length: int) -> np.ndarray:
        if len(w) < max_length:
            if self.padding == "repeat":
                w = np.tile(w, int(max_length / len(w)) + 1)[:max_length]
            elif self.padding == "repeatpad":
                w = np.tile(w, int(max_length / len(w)))
            w = np.pad(w, (0, max_length - w.shape[0]), mode="constant", constant_values=0)
        return w

    def features(self, wave: np.ndarray) -> tuple[np.ndarray, bool]:
        """``(C, frames, n_mels)`` and whether the clip is longer than ``max_length_s``."""
        max_length = self.nb_max_samples
        w = np.asarray(wave, dtype=np.float32)
        if w.shape[0] > max_length:
            rng = np.random.RandomState(self.seed)
            if self.truncation == "rand_trunc":
                idx = rng.randint(0, len(w) - max_length + 1)
                return self.log_mel(w[idx:idx + max_length], self.mel_filters_slaney)[None], True
            full = self.log_mel(w, self.mel_filters)
            chunk = max_length // self.hop_length + 1
            total = full.shape[0]
            if chunk == total:
                return np.stack([full] * 4), False
            ranges = np.array_split(np.arange(0, total - chunk + 1), 3)
            picks = [int(rng.choice(r if len(r) else np.array([0]))) for r in ranges]
            crops = [full[i:i + chunk] for i in picks]
            return np.stack([_bilinear_rows(full, chunk), *crops]), True
        w = self._pad_short(w, max_length)
        if self.truncation == "fusion":
            m = self.log_mel(w, self.mel_filters)
            return np.stack([m] * 4), False
        return self.log_mel(w, self.mel_filters_slaney)[None], False

    def __call__(self, audios: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        feats, longer = zip(*(self.features(w) for w in _waveforms(audios)))
        is_longer = np.array(longer, dtype=bool)
        if self.truncation == "fusion":
            if self.batch_independent:
                is_longer[:] = True  # a short clip alone is marked True by transformers; a long one is True anyway
            elif not is_longer.any():
                is_longer[0] = True
        return {"input_features": np.ascontiguousarray(np.stack(feats), dtype=np.float32),
                "is_longer": is_longer[:, None]}
