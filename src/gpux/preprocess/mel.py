"""Short-time Fourier transform and mel filter banks in numpy, with transformers' ``audio_utils`` numerics.

The functions reproduce ``transformers.audio_utils`` (``hertz_to_mel``, ``mel_to_hertz``, ``mel_filter_bank``,
``window_function``, ``spectrogram``, ``power_to_db``) for the argument combinations the feature extractors use:
periodic windows, centred frames with reflect (or other ``np.pad``) padding, one-sided FFT, power spectra,
mel projection with a floor, and ``log``/``log10``/``dB`` compression. The spectrogram is vectorised: every frame
is a row of a strided view of the padded waveform, and one ``np.fft.rfft`` call transforms them all (a batch of
equal-length waveforms in one call too), where transformers loops over frames in Python; with mel filters the
frames are transformed and projected 256 at a time so they stay in cache (Whisper's 30 s: ~6 ms on one core).

Numerics: the FFT runs in float64 like transformers'; transformers rounds each spectrum to complex64 before the
magnitude, this module keeps float64, so powers differ by ~1e-7 relative (far below the float32 output's ulp).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

MelScale = Literal["htk", "slaney", "kaldi"]
LogMode = Literal["log", "log10", "dB"]


def hertz_to_mel(freq: float | np.ndarray, mel_scale: str = "htk") -> np.ndarray:
    """Hertz to mels on the ``"htk"``, ``"kaldi"`` or ``"slaney"`` scale (``transformers.audio_utils.hertz_to_mel``)."""
    f = np.asarray(freq, dtype=np.float64)
    if mel_scale == "htk":
        return np.asarray(2595.0 * np.log10(1.0 + f / 700.0))
    if mel_scale == "kaldi":
        return np.asarray(1127.0 * np.log(1.0 + f / 700.0))
    if mel_scale != "slaney":
        raise ValueError('mel_scale should be one of "htk", "slaney" or "kaldi"')
    min_log_hertz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    mels = 3.0 * f / 200.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_part = min_log_mel + np.log(f / min_log_hertz) * logstep
    return np.asarray(np.where(f >= min_log_hertz, log_part, mels))


def mel_to_hertz(mels: float | np.ndarray, mel_scale: str = "htk") -> np.ndarray:
    """Mels to hertz, the inverse of :func:`hertz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    if mel_scale == "htk":
        return np.asarray(700.0 * (np.power(10, m / 2595.0) - 1.0))
    if mel_scale == "kaldi":
        return np.asarray(700.0 * (np.exp(m / 1127.0) - 1.0))
    if mel_scale != "slaney":
        raise ValueError('mel_scale should be one of "htk", "slaney" or "kaldi"')
    min_log_hertz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    freq = 200.0 * m / 3.0
    return np.asarray(np.where(m >= min_log_mel, min_log_hertz * np.exp(logstep * (m - min_log_mel)), freq))


def mel_filter_bank(num_frequency_bins: int, num_mel_filters: int, min_frequency: float, max_frequency: float,
                    sampling_rate: int, norm: str | None = None, mel_scale: str = "htk",
                    triangularize_in_mel_space: bool = False) -> np.ndarray:
    """Triangular mel filters, shape ``(num_frequency_bins, num_mel_filters)``, float64.

    The same matrix as ``transformers.audio_utils.mel_filter_bank`` (torchaudio's ``melscale_fbanks`` for
    ``mel_scale="htk", norm=None``; librosa's ``filters.mel`` for ``"slaney"``/``"slaney"``).
    """
    if norm is not None and norm != "slaney":
        raise ValueError('norm must be None or "slaney"')
    if num_frequency_bins < 2:
        raise ValueError(f"num_frequency_bins must be >= 2, got {num_frequency_bins}")
    if min_frequency > max_frequency:
        raise ValueError(f"min_frequency {min_frequency} > max_frequency {max_frequency}")
    mel_min = hertz_to_mel(min_frequency, mel_scale)
    mel_max = hertz_to_mel(max_frequency, mel_scale)
    mel_freqs = np.linspace(mel_min, mel_max, num_mel_filters + 2)
    filter_freqs = mel_to_hertz(mel_freqs, mel_scale)
    if triangularize_in_mel_space:
        bin_width = sampling_rate / ((num_frequency_bins - 1) * 2)
        fft_freqs = hertz_to_mel(bin_width * np.arange(num_frequency_bins), mel_scale)
        filter_freqs = mel_freqs
    else:
        fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    if norm == "slaney":
        filters *= (2.0 / (filter_freqs[2:num_mel_filters + 2] - filter_freqs[:num_mel_filters]))[None, :]
    return np.asarray(filters, dtype=np.float64)


def window_function(window_length: int, name: str = "hann", periodic: bool = True,
                    frame_length: int | None = None, center: bool = True) -> np.ndarray:
    """``"hann"``, ``"hamming"``, ``"boxcar"`` or ``"povey"`` window, periodic by default (as ``torch.hann_window``)."""
    length = window_length + 1 if periodic else window_length
    if name == "boxcar":
        window = np.ones(length)
    elif name in ("hamming", "hamming_window"):
        window = np.hamming(length)
    elif name in ("hann", "hann_window"):
        window = np.hanning(length)
    elif name == "povey":
        window = np.power(np.hanning(length), 0.85)
    else:
        raise ValueError(f"unknown window function {name!r}")
    if periodic:
        window = window[:-1]
    if frame_length is None:
        return window
    if window_length > frame_length:
        raise ValueError(f"window length {window_length} is larger than frame_length {frame_length}")
    padded = np.zeros(frame_length)
    offset = (frame_length - window_length) // 2 if center else 0
    padded[offset:offset + window_length] = window
    return padded


def num_frames(num_samples: int, frame_length: int, hop_length: int, center: bool = True) -> int:
    """How many STFT frames :func:`power_spectrogram` makes from ``num_samples`` samples."""
    padded = num_samples + (2 * (frame_length // 2) if center else 0)
    return 1 + (padded - frame_length) // hop_length


def power_spectrogram(waveforms: np.ndarray, window: np.ndarray, hop_length: int, fft_length: int | None = None,
                      power: float = 2.0, center: bool = True, pad_mode: str = "reflect") -> np.ndarray:
    """``|STFT|**power`` of one waveform ``(T,)`` or a batch ``(B, T)``: shape ``(..., frames, fft_length//2 + 1)``.

    Frame ``t`` is centred on sample ``t * hop_length`` when ``center`` (the waveform is padded by
    ``frame_length // 2`` each side with ``pad_mode``), as ``transformers.audio_utils.spectrogram`` and
    ``torch.stft(center=True)`` do. ``window`` has the frame length; ``fft_length`` (default: the frame length)
    zero-pads each frame. Computed in float64.
    """
    x = np.asarray(waveforms)
    frame_length = len(window)
    fft_length = frame_length if fft_length is None else fft_length
    if frame_length > fft_length:
        raise ValueError(f"frame_length {frame_length} is larger than fft_length {fft_length}")
    if hop_length <= 0:
        raise ValueError("hop_length must be greater than zero")
    if center:
        x = _center_pad(x, frame_length // 2, pad_mode)
    else:
        x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < frame_length:
        raise ValueError(f"{x.shape[-1]} samples are fewer than one frame of {frame_length}")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame_length, axis=-1)[..., ::hop_length, :]
    spec = np.fft.rfft(frames * np.asarray(window, dtype=np.float64), n=fft_length, axis=-1)
    if power == 2.0:
        out = np.square(spec.real)
        out += np.square(spec.imag)
        return out
    return np.asarray(np.abs(spec) ** power)


def mel_power(waveforms: np.ndarray, window: np.ndarray, hop_length: int, mel_filters: np.ndarray,
              fft_length: int | None = None, power: float = 2.0, center: bool = True, pad_mode: str = "reflect",
              block: int = 256) -> np.ndarray:
    """``power_spectrogram(...) @ mel_filters``, shape ``(..., frames, n_mels)`` float64, computed ``block`` frames
    at a time so each block's frames, spectrum and power stay in cache (about twice as fast for 30 s)."""
    x = np.asarray(waveforms)
    frame_length = len(window)
    fft_length = frame_length if fft_length is None else fft_length
    if frame_length > fft_length:
        raise ValueError(f"frame_length {frame_length} is larger than fft_length {fft_length}")
    if hop_length <= 0:
        raise ValueError("hop_length must be greater than zero")
    x = _center_pad(x, frame_length // 2, pad_mode) if center else np.asarray(x, dtype=np.float64)
    if x.shape[-1] < frame_length:
        raise ValueError(f"{x.shape[-1]} samples are fewer than one frame of {frame_length}")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame_length, axis=-1)[..., ::hop_length, :]
    filters = np.asarray(mel_filters, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    batch_shape, count = frames.shape[:-2], frames.shape[-2]
    frames2 = frames.reshape((-1,) + frames.shape[-2:])  # a view: the leading axes are plain strides
    out = np.empty((frames2.shape[0], count, filters.shape[1]), dtype=np.float64)
    for b in range(frames2.shape[0]):
        for start in range(0, count, block):
            spec = np.fft.rfft(frames2[b, start:start + block] * win, n=fft_length, axis=-1)
            if power == 2.0:
                pw = np.square(spec.real)
                pw += np.square(spec.imag)
            else:
                pw = np.abs(spec) ** power
            np.matmul(pw, filters, out=out[b, start:start + block])
    return out.reshape(batch_shape + (count, filters.shape[1]))


def _center_pad(x: np.ndarray, half: int, pad_mode: str) -> np.ndarray:
    """``np.pad(x, half, mode=pad_mode)`` on the last axis as float64, in one copy for the usual reflect case."""
    n = x.shape[-1]
    if pad_mode != "reflect" or n <= half:
        pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
        return np.pad(np.asarray(x, dtype=np.float64), pad, mode=pad_mode)  # type: ignore[call-overload]
    out = np.empty(x.shape[:-1] + (n + 2 * half,), dtype=np.float64)
    out[..., half:half + n] = x
    if half:
        out[..., :half] = x[..., half:0:-1]
        out[..., half + n:] = x[..., n - 2:n - 2 - half:-1] if n - 2 - half >= 0 else x[..., n - 2::-1][..., :half]
    return out


def _clip_db_range(db: np.ndarray, db_range: float | None, batched: bool) -> np.ndarray:
    if db_range is None:
        return db
    if db_range <= 0.0:
        raise ValueError("db_range must be greater than zero")
    if batched:
        peak = db.reshape(db.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (db.ndim - 1))
        return np.maximum(db, peak - db_range)
    return np.maximum(db, db.max() - db_range)


def power_to_db(spec: np.ndarray, reference: float = 1.0, min_value: float = 1e-10,
                db_range: float | None = None, batched: bool = False) -> np.ndarray:
    """``10 * log10(max(spec, min_value) / reference)``, clipped to ``db_range`` below the peak (librosa's rule).

    ``batched``: axis 0 is a batch, and the peak is taken per item.
    """
    if reference <= 0.0 or min_value <= 0.0:
        raise ValueError("reference and min_value must be greater than zero")
    reference = max(min_value, reference)
    db = 10.0 * (np.log10(np.maximum(spec, min_value)) - np.log10(reference))
    return _clip_db_range(db, db_range, batched)


def amplitude_to_db(spec: np.ndarray, reference: float = 1.0, min_value: float = 1e-5,
                    db_range: float | None = None, batched: bool = False) -> np.ndarray:
    """``20 * log10(max(spec, min_value) / reference)``, clipped like :func:`power_to_db`."""
    if reference <= 0.0 or min_value <= 0.0:
        raise ValueError("reference and min_value must be greater than zero")
    reference = max(min_value, reference)
    db = 20.0 * (np.log10(np.maximum(spec, min_value)) - np.log10(reference))
    return _clip_db_range(db, db_range, batched)


def log_mel_spectrogram(waveforms: np.ndarray, window: np.ndarray, hop_length: int, mel_filters: np.ndarray,
                        fft_length: int | None = None, power: float = 2.0, center: bool = True,
                        pad_mode: str = "reflect", mel_floor: float = 1e-10, log_mel: str | None = "log10",
                        reference: float = 1.0, min_value: float = 1e-10, db_range: float | None = None,
                        dtype: type = np.float32) -> np.ndarray:
    """Mel spectrogram ``(..., frames, n_mels)`` of one waveform or a batch, optionally log-compressed.

    ``max(mel_floor, power_spec @ mel_filters)`` then ``log``, ``log10`` or ``dB`` (:func:`power_to_db` with
    ``reference``, ``min_value``, ``db_range``; amplitude dB when ``power == 1``), cast to ``dtype``: the steps of
    ``transformers.audio_utils.spectrogram`` with ``mel_filters`` and ``log_mel``. Note the axis order: frames
    first (transformers returns ``(n_mels, frames)`` for one waveform).
    """
    mel = mel_power(waveforms, window, hop_length, mel_filters, fft_length, power, center, pad_mode)
    np.maximum(mel, mel_floor, out=mel)
    if log_mel is None:
        return mel.astype(dtype, copy=False)
    if log_mel == "log":
        out = np.log(mel)
    elif log_mel == "log10":
        out = np.log10(mel)
    elif log_mel == "dB":
        batched = np.ndim(waveforms) > 1
        if power == 2.0:
            out = power_to_db(mel, reference, min_value, db_range, batched)
        elif power == 1.0:
            out = amplitude_to_db(mel, reference, min_value, db_range, batched)
        else:
            raise ValueError(f"log_mel 'dB' needs power 1 or 2, got {power}")
    else:
        raise ValueError(f"unknown log_mel {log_mel!r}")
    return np.asarray(out, dtype=dtype)
