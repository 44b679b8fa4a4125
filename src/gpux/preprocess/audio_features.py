"""Feature extractors: mono waveforms at the model's rate -> the arrays its graph takes (wav2vec2, Whisper, CLAP).

Chosen by ``feature_extractor_type`` where the math differs, reproducing transformers' numerics in numpy
(the spectrogram math is in :mod:`gpux.preprocess.mel`); decoding and resampling are in
:mod:`gpux.preprocess.audio`, which re-exports these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gpux.preprocess import mel
from gpux.preprocess.audio import AudioDecodeError, EmptyAudioError, UnsupportedAudioProcessorError, load_audio



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
