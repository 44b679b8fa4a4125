"""gpux.preprocess.audio: decoding, mono mixdown, resampling, and the feature extractors vs transformers' own.

Audio is generated here (sine sweeps + noise) and written with soundfile (WAV, FLAC, OGG) and PyAV (MP3, M4A).
Each feature extractor is compared with transformers' built with defaults, saved with ``save_pretrained`` and
read back as JSON the way gpux reads a model's ``preprocessor_config.json``; both are fed the SAME waveform, so
the comparison isolates the feature math. Bounds (max abs difference):

* Wav2Vec2 ``input_values``: 1e-6 (same float32 operations; measured 0)
* Whisper log-mel vs transformers' numpy path: 1e-5 (measured ~1.2e-7); vs its torch path: 1e-4 (~1e-5)
* CLAP dB log-mel: 1e-4 dB on values up to ~100 dB (float32 output; measured <= 4e-5), fusion crops the same
* loading lossless files vs ``transformers.audio_utils.load_audio(backend="soundfile")``: 0 (same steps)
* soxr HQ vs the pipelines' torchaudio sinc resampler: 3e-3 on tones up to half the Nyquist frequency
  (measured ~1e-3); above it torchaudio's filter droops, so broadband signals differ by ~1e-2 rms
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from gpux.errors import InputError
from gpux.preprocess import audio as A
from gpux.preprocess import mel


def signal(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A log sine sweep 100 Hz -> 0.4*rate plus noise, (T,) or (T, C) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0, f1 = 100.0, 0.4 * rate
    k = math.log(f1 / f0) / seconds
    sweep = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    chans = [0.5 * sweep + 0.05 * rng.standard_normal(n)]
    for c in range(1, channels):
        chans.append(0.3 * np.sin(2 * np.pi * (220.0 * (c + 1)) * t) + 0.05 * rng.standard_normal(n))
    out = np.stack(chans, axis=1).astype(np.float32)
    return out[:, 0] if channels == 1 else out


def encode(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_pyav(x: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    av = pytest.importorskip("av", reason="PyAV is not installed: the MP3/M4A encoder comes from it")
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    planar = np.ascontiguousarray(np.atleast_2d(x.T if x.ndim == 2 else x), dtype=np.float32)
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1) if x.ndim == 2 else x


def data_url(data: bytes, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


CLIPS = {"8k-mono": (8000, 1), "44k-stereo": (44100, 2)}


@pytest.fixture(scope="module", params=sorted(CLIPS))
def clip(request: pytest.FixtureRequest) -> tuple[str, int, np.ndarray]:
    rate, channels = CLIPS[request.param]
    return request.param, rate, signal(rate, 2.5, channels)


def saved_config(fe: Any, tmp_path: Path) -> dict[str, Any]:
    """What gpux reads: the preprocessor_config.json transformers writes."""
    fe.save_pretrained(tmp_path)
    return json.loads((tmp_path / "preprocessor_config.json").read_text())  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16")])
def test_lossless_matches_transformers_load_audio(clip: tuple[str, int, np.ndarray], fmt: str,
                                                  subtype: str) -> None:
    from transformers.audio_utils import load_audio as hf_load_audio

    _, rate, x = clip
    data = encode(x, rate, fmt, subtype)
    for target in (16000, 48000):
        got = A.load_audio(data, target)
        assert got.dtype == np.float32 and got.ndim == 1
        assert got.shape[0] == math.ceil(len(x) * target / rate)
        ref = hf_load_audio(base64.b64encode(data).decode(), target, backend="soundfile")
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(A.load_audio(data_url(data, f"audio/{fmt.lower()}"), target), got)


def test_lossy_formats_decode(clip: tuple[str, int, np.ndarray]) -> None:
    _, rate, x = clip
    ref = A.resample(mono(x), rate, 16000)
    files = {"ogg": encode(x, rate, "OGG", "VORBIS"), "mp3": encode_pyav(x, rate, "mp3", "libmp3lame")}
    for name, data in files.items():
        got = A.load_audio(data, 16000)
        assert abs(len(got) - len(ref)) <= 0.01 * len(ref), name
        n = min(len(got), len(ref))
        corr = np.corrcoef(got[:n], ref[:n])[0, 1]
        assert corr > 0.9, (name, corr)


def test_mp3_through_pyav_when_soundfile_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    x = signal(44100, 1.0, 2)
    data = encode_pyav(x, 44100, "mp3", "libmp3lame")
    via_sf = A.load_audio(data, 16000)
    monkeypatch.setattr(A, "_soundfile_mp3", lambda: False)
    via_av = A.load_audio(data, 16000)
    n = min(len(via_sf), len(via_av))
    assert abs(len(via_sf) - len(via_av)) < 0.01 * len(via_sf)
    assert np.corrcoef(via_sf[:n], via_av[:n])[0, 1] > 0.99


def test_m4a_decodes_with_pyav() -> None:
    x = signal(44100, 1.0, 2)
    data = encode_pyav(x, 44100, "ipod", "aac")
    assert A.sniff_audio_format(data[:64]) == "mp4"
    got = A.load_audio(data, 16000)
    ref = A.resample(mono(x), 44100, 16000)
    assert abs(len(got) - len(ref)) < 0.1 * len(ref)  # AAC adds priming samples


def test_arrays_and_channel_layouts() -> None:
    x = signal(44100, 1.0, 2)
    expect = A.resample(x.mean(axis=1), 44100, 16000)
    np.testing.assert_array_equal(A.load_audio(x, 16000, source_rate=44100), expect)
    np.testing.assert_array_equal(A.load_audio(x.T.copy(), 16000, source_rate=44100), expect)
    np.testing.assert_array_equal(A.load_audio({"array": x, "sampling_rate": 44100}, 16000), expect)
    pcm = (x * 32767).astype(np.int16)
    np.testing.assert_allclose(A.load_audio(pcm, 16000, source_rate=44100), expect, atol=2e-4)
    already = A.load_audio(x[:, 0].tolist(), 44100)  # a list at the target rate: unchanged
    np.testing.assert_array_equal(already, x[:, 0])


def test_stereo_mixdown_is_channel_mean(tmp_path: Path) -> None:
    x = signal(16000, 1.0, 2)
    got = A.load_audio(encode(x, 16000, "WAV", "FLOAT"), 16000)
    np.testing.assert_array_equal(got, x.mean(axis=1))


def _torchaudio_resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """torchaudio.functional.resample (sinc_interp_hann, width 6, rolloff 0.99), which transformers' pipelines
    call on arrays, ported line by line in torch (torchaudio is not installed here)."""
    torch = pytest.importorskip("torch")
    w = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    gcd = math.gcd(orig, new)
    o, n = orig // gcd, new // gcd
    width_zc, rolloff = 6, 0.99
    base = min(o, n) * rolloff
    width = math.ceil(width_zc * o / base)
    idx = torch.arange(-width, width + o, dtype=w.dtype)[None, None] / o
    t = torch.arange(0, -n, -1, dtype=w.dtype)[:, None, None] / n + idx
    t *= base
    t = t.clamp_(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base / o)
    padded = torch.nn.functional.pad(w[None], (width, width + o))
    out = torch.nn.functional.conv1d(padded[:, None], kernels, stride=o).transpose(1, 2).reshape(1, -1)
    target = math.ceil(n * w.shape[-1] / o)
    return out[0, :target].numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("orig,new", [(8000, 16000), (44100, 16000), (44100, 48000)])
def test_resampling_vs_pipeline_resampler(orig: int, new: int, capsys: pytest.CaptureFixture[str]) -> None:
    """soxr HQ (gpux, transformers' load_audio, librosa) vs torchaudio's sinc (transformers' pipelines, arrays).

    They agree to ~1e-3 up to half the lower Nyquist frequency; above it torchaudio's short Hann-sinc droops
    (gain ~0.94 at 0.8 Nyquist, ~0.77 at 0.9) where soxr HQ stays flat to ~0.91, so broadband signals differ
    by a few 1e-2 there.
    """
    t = np.arange(2 * orig) / orig
    nyquist = min(orig, new) / 2
    edge = new // 20  # both filters see zeros past the ends: compare away from the first/last 50 ms
    gains, worst = [], 0.0
    for frac in (0.05, 0.25, 0.5, 0.8, 0.9):
        x = (0.5 * np.sin(2 * np.pi * frac * nyquist * t)).astype(np.float32)
        ours, theirs = A.resample(x, orig, new), _torchaudio_resample(x, orig, new)
        assert ours.shape == theirs.shape
        diff = np.abs(ours - theirs)[edge:-edge].max()
        if frac <= 0.5:
            worst = max(worst, diff)
        gain = [float(np.sqrt(2 * (y[edge:-edge] ** 2).mean()) / 0.5) for y in (ours, theirs)]
        gains.append(f"{frac:.2f}Ny soxr {gain[0]:.3f} torchaudio {gain[1]:.3f}")
    x = mono(signal(orig, 2.0, 1 if orig == 8000 else 2))
    broad = np.abs(A.resample(x, orig, new) - _torchaudio_resample(x, orig, new))[edge:-edge]
    with capsys.disabled():
        print(f"\nresample {orig}->{new}: tones <= 0.5 Nyquist max|diff| {worst:.1e}; sweep+noise max|diff| "
              f"{broad.max():.1e} rms {np.sqrt((broad ** 2).mean()):.1e}; gains: " + ", ".join(gains))
    assert worst < 3e-3


# ------------------------------------------------------------------------------------------------ errors


def test_not_audio() -> None:
    with pytest.raises(A.AudioDecodeError, match="not audio"):
        A.load_audio(b"hello, this is plainly text and not a sound file" * 4, 16000)
    with pytest.raises(A.AudioDecodeError, match="PNG image"):
        A.load_audio(b"\x89PNG\r\n\x1a\n" + b"\0" * 200, 16000)
    with pytest.raises(A.AudioDecodeError, match="not audio"):
        A.load_audio(data_url(b"\x00\x01\x02\x03" * 50, "application/octet-stream"), 16000)
    with pytest.raises(A.AudioDecodeError, match="base64"):
        A.load_audio("data:audio/wav;base64,@@not base64@@", 16000)
    with pytest.raises(A.AudioDecodeError, match="not base64-encoded"):
        A.load_audio("data:audio/wav,RIFF", 16000)


def test_truncated_files() -> None:
    x = signal(16000, 2.0)
    wav = encode(x, 16000, "WAV", "PCM_16")
    with pytest.raises(A.AudioDecodeError, match="truncated WAV"):
        A.load_audio(wav[: len(wav) // 2], 16000)
    flac = encode(x, 16000, "FLAC", "PCM_16")
    with pytest.raises(A.AudioDecodeError, match="truncated or corrupt FLAC"):
        A.load_audio(flac[: len(flac) // 2], 16000)
    ogg = encode(x, 16000, "OGG", "VORBIS")
    for cut in (len(ogg) // 4, len(ogg) // 2, len(ogg) - 100):
        with pytest.raises(A.AudioDecodeError, match="truncated"):
            A.load_audio(ogg[:cut], 16000)
    with pytest.raises(A.AudioDecodeError, match="truncated WAV"):
        A.load_audio(wav[:40], 16000)  # the header alone


@pytest.mark.parametrize("soundfile_mp3", [True, False])
def test_truncated_compressed_files(soundfile_mp3: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    x = signal(44100, 3.0, 2)
    mp3 = encode_pyav(x, 44100, "mp3", "libmp3lame")
    m4a = encode_pyav(x, 44100, "ipod", "aac")
    monkeypatch.setattr(A, "_soundfile_mp3", lambda: soundfile_mp3)  # False: MP3 decoded by PyAV
    for data in (mp3, m4a):
        for frac in (0.3, 0.9):
            with pytest.raises(A.AudioDecodeError, match="truncated"):
                A.load_audio(data[: int(len(data) * frac)], 16000)
            with pytest.raises(A.AudioDecodeError, match="truncated"):
                A.load_audio(data[: int(len(data) * frac)], 16000, max_seconds=60)
        assert len(A.load_audio(data, 16000)) >= 3 * 16000


def test_unsupported_format_without_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode_pyav(signal(16000, 0.5), 16000, "ipod", "aac")
    monkeypatch.setattr(A, "_have_pyav", lambda: False)
    with pytest.raises(A.AudioFormatError, match="needs PyAV"):
        A.load_audio(data, 16000)


def test_too_long() -> None:
    wav = encode(signal(8000, 5.0), 8000, "WAV", "PCM_16")
    with pytest.raises(A.AudioTooLongError, match="5.0 s, over the limit of 2 s") as info:
        A.load_audio(wav, 16000, max_seconds=2)
    assert isinstance(info.value, InputError) and info.value.http_status == 413
    assert A.load_audio(wav, 16000, max_seconds=5).shape == (80000,)
    flac = encode(signal(8000, 5.0), 8000, "FLAC", "PCM_16")
    with pytest.raises(A.AudioTooLongError):
        A.load_audio(flac, 16000, max_seconds=1.5)
    with pytest.raises(A.AudioTooLongError):
        A.load_audio(signal(8000, 5.0), 16000, source_rate=8000, max_seconds=2)
    mp3 = encode_pyav(signal(8000, 5.0), 8000, "mp3", "libmp3lame")
    with pytest.raises(A.AudioTooLongError):
        A.load_audio(mp3, 16000, max_seconds=2)


def test_streamed_file_without_length() -> None:
    x = signal(8000, 5.0)
    flac = bytearray(encode(x, 8000, "FLAC", "PCM_16"))
    flac[21] &= 0xF0  # STREAMINFO total samples (36 bits) = 0: "unknown", as streaming encoders write
    flac[22:26] = b"\0\0\0\0"
    pytest.importorskip("av", reason="PyAV decodes files without a length")
    np.testing.assert_allclose(A.load_audio(bytes(flac), 8000), x, atol=1e-4)
    with pytest.raises(A.AudioTooLongError, match="more than 2 s"):  # caught while decoding
        A.load_audio(bytes(flac), 16000, max_seconds=2)


def test_empty() -> None:
    with pytest.raises(A.EmptyAudioError, match="empty"):
        A.load_audio(b"", 16000)
    with pytest.raises(A.EmptyAudioError):
        A.load_audio(encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"), 16000)
    with pytest.raises(A.EmptyAudioError):
        A.load_audio(np.zeros(0, np.float32), 16000)
    with pytest.raises(A.EmptyAudioError):
        A.load_audio([], 16000)
    with pytest.raises(A.EmptyAudioError):
        A.WhisperFeatureExtractor({})([np.zeros(0, np.float32)])


def test_paths_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    x = signal(16000, 0.5)
    path.write_bytes(encode(x, 16000, "WAV", "FLOAT"))
    for source in (str(path), path):
        with pytest.raises(A.AudioPathError, match="bytes or a base64 data URL") as info:
            A.load_audio(source, 16000)
        assert isinstance(info.value, InputError)
        np.testing.assert_array_equal(A.load_audio(source, 16000, allow_paths=True), x)
    with pytest.raises(A.AudioDecodeError, match="cannot read"):
        A.load_audio(str(tmp_path / "missing.wav"), 16000, allow_paths=True)


def test_errors_are_input_errors() -> None:
    for cls in (A.AudioDecodeError, A.AudioFormatError, A.EmptyAudioError, A.AudioPathError, A.AudioTooLongError):
        assert issubclass(cls, InputError)


# ------------------------------------------------------------------------------------------------ mel math


def test_mel_filters_and_window_match_transformers() -> None:
    from transformers import audio_utils as au

    for scale in ("htk", "slaney", "kaldi"):
        for norm in (None, "slaney"):
            ref = au.mel_filter_bank(513, 64, 50.0, 14000.0, 48000, norm=norm, mel_scale=scale)
            np.testing.assert_allclose(mel.mel_filter_bank(513, 64, 50.0, 14000.0, 48000, norm, scale), ref,
                                       rtol=1e-12, atol=1e-15)
    for name in ("hann", "hamming", "povey", "boxcar"):
        np.testing.assert_array_equal(mel.window_function(400, name), au.window_function(400, name))


@pytest.mark.parametrize("log_mel,power", [("log10", 2.0), ("dB", 2.0), ("dB", 1.0), ("log", 2.0)])
def test_spectrogram_matches_transformers(log_mel: str, power: float) -> None:
    from transformers import audio_utils as au

    x = mono(signal(16000, 1.3))
    filters = au.mel_filter_bank(257, 40, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    window = au.window_function(400, "hann", frame_length=512)
    ref = au.spectrogram(x, window, frame_length=512, hop_length=128, fft_length=512, power=power,
                         mel_filters=filters, log_mel=log_mel, db_range=60.0 if log_mel == "dB" else None)
    got = mel.log_mel_spectrogram(x, window, 128, filters, fft_length=512, power=power, log_mel=log_mel,
                                  db_range=60.0 if log_mel == "dB" else None)
    assert got.shape == ref.T.shape
    np.testing.assert_allclose(got, ref.T, atol=1e-4 if log_mel == "dB" else 1e-5)


# ------------------------------------------------------------------------------------------------ extractors


def test_from_config_dispatch(tmp_path: Path) -> None:
    from transformers import (
        ClapFeatureExtractor,
        Wav2Vec2FeatureExtractor,
        WhisperFeatureExtractor,
    )

    for hf, ours in ((Wav2Vec2FeatureExtractor, A.Wav2Vec2FeatureExtractor),
                     (ClapFeatureExtractor, A.ClapFeatureExtractor),
                     (WhisperFeatureExtractor, A.WhisperFeatureExtractor)):
        d = tmp_path / hf.__name__
        cfg = saved_config(hf(), d)
        assert type(A.AudioProcessor.from_config(cfg)) is ours
        assert type(A.AudioProcessor.from_config(d)) is ours
        assert type(A.AudioProcessor.from_config(d / "preprocessor_config.json")) is ours
    with pytest.raises(A.UnsupportedAudioProcessorError, match="SeamlessM4TFeatureExtractor"):
        A.AudioProcessor.from_config({"feature_extractor_type": "SeamlessM4TFeatureExtractor", "feature_size": 80})


@pytest.mark.parametrize("mask", [False, True])
def test_wav2vec2_matches_transformers(clip: tuple[str, int, np.ndarray], mask: bool, tmp_path: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    _, rate, x = clip
    hf = Wav2Vec2FeatureExtractor(return_attention_mask=mask)
    proc = A.AudioProcessor.from_config(saved_config(hf, tmp_path))
    a = A.load_audio(encode(x, rate, "FLAC", "PCM_16"), proc.sampling_rate)
    b = a[: len(a) // 3] * 3.0
    out = proc([a, b])
    assert out["input_values"].dtype == np.float32 and out["input_values"].shape == (2, len(a))
    assert ("attention_mask" in out) == mask
    for i, w in enumerate((a, b)):  # each clip alone, as transformers' pipelines call it
        ref = hf(w, sampling_rate=16000, return_tensors="np")["input_values"][0]
        assert np.abs(out["input_values"][i, : len(w)] - ref).max() <= 1e-6
        assert (out["input_values"][i, len(w):] == 0).all()
    if mask:
        ref = hf([a, b], sampling_rate=16000, padding=True, return_tensors="np")
        assert np.abs(out["input_values"] - ref["input_values"]).max() <= 1e-6
        np.testing.assert_array_equal(out["attention_mask"], ref["attention_mask"])
        assert out["attention_mask"].dtype == np.int64


def test_wav2vec2_without_normalisation() -> None:
    proc = A.AudioProcessor.from_config({"feature_extractor_type": "Wav2Vec2FeatureExtractor",
                                         "do_normalize": False, "padding_value": 0.5, "padding_side": "left"})
    out = proc([np.ones(3, np.float32), np.ones(5, np.float32)])
    np.testing.assert_array_equal(out["input_values"][0], [0.5, 0.5, 1, 1, 1])


def _hf_whisper_numpy(hf: Any, waves: list[np.ndarray], monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Any:
    import transformers.models.whisper.feature_extraction_whisper as fw

    with monkeypatch.context() as m:
        m.setattr(fw, "is_torch_available", lambda: False)
        return hf(waves, sampling_rate=16000, return_tensors="np", **kw)


def test_whisper_matches_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import WhisperFeatureExtractor

    hf = WhisperFeatureExtractor()
    proc = A.AudioProcessor.from_config(saved_config(hf, tmp_path))
    short = A.load_audio(encode(signal(44100, 3.0, 2), 44100, "WAV", "PCM_16"), 16000)
    long = A.load_audio(encode(signal(8000, 31.0), 8000, "FLAC", "PCM_16"), 16000)  # cut to 30 s
    out = proc([short, long])
    feats = out["input_features"]
    assert feats.shape == (2, 80, 3000) and feats.dtype == np.float32 and list(out) == ["input_features"]
    ref_np = _hf_whisper_numpy(hf, [short, long], monkeypatch)["input_features"]
    ref_torch = hf([short, long], sampling_rate=16000, return_tensors="np")["input_features"]
    d_np, d_torch = np.abs(feats - ref_np).max(), np.abs(feats - ref_torch).max()
    with capsys.disabled():
        print(f"\nwhisper log-mel max|diff|: vs transformers numpy {d_np:.2e}, vs its torch path {d_torch:.2e}")
    assert d_np <= 1e-5
    assert d_torch <= 1e-4


def test_whisper_attention_mask_and_long_form(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import WhisperFeatureExtractor

    hf = WhisperFeatureExtractor(return_attention_mask=True)
    proc = A.WhisperFeatureExtractor(hf.to_dict())
    a, b = mono(signal(16000, 2.03)), mono(signal(16000, 33.0, seed=1))
    out = proc([a, b])
    # transformers rescales the mask to frames only when asked at call time (else it returns the samples' mask)
    ref = _hf_whisper_numpy(hf, [a, b], monkeypatch, return_attention_mask=True)
    np.testing.assert_array_equal(out["attention_mask"], ref["attention_mask"])
    assert np.abs(out["input_features"] - ref["input_features"]).max() <= 1e-5
    long = proc([a, b], truncation=False, padding="longest")
    ref = _hf_whisper_numpy(hf, [a, b], monkeypatch, truncation=False, padding="longest",
                            return_attention_mask=True)
    assert long["input_features"].shape == ref["input_features"].shape == (2, 80, 3300)
    np.testing.assert_array_equal(long["attention_mask"], ref["attention_mask"])
    assert np.abs(long["input_features"] - ref["input_features"]).max() <= 1e-5


def test_whisper_speed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import WhisperFeatureExtractor

    proc = A.WhisperFeatureExtractor({})
    x = mono(signal(16000, 30.0))
    proc([x])
    ours = min(_timed(lambda: proc([x])) for _ in range(3))
    hf = WhisperFeatureExtractor()
    theirs = min(_timed(lambda: _hf_whisper_numpy(hf, [x], monkeypatch)) for _ in range(2))
    with capsys.disabled():
        print(f"\nwhisper features, 30 s: gpux {ours * 1e3:.1f} ms, transformers numpy {theirs * 1e3:.1f} ms")
    assert ours < 0.25  # ~15 ms unloaded on 2 cores; generous for a shared machine


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_clap_short_clips_match_transformers(clip: tuple[str, int, np.ndarray], tmp_path: Path) -> None:
    from transformers import ClapFeatureExtractor

    _, rate, x = clip
    for truncation in ("fusion", "rand_trunc"):
        hf = ClapFeatureExtractor(truncation=truncation)
        proc = A.AudioProcessor.from_config(saved_config(hf, tmp_path / truncation))
        w = A.load_audio(encode(x, rate, "WAV", "FLOAT"), proc.sampling_rate)
        out = proc([w])
        ref = hf(w, sampling_rate=48000, return_tensors="np")
        channels = 4 if truncation == "fusion" else 1
        assert out["input_features"].shape == (1, channels, 1001, 64) == ref["input_features"].shape
        assert out["input_features"].dtype == np.float32 and out["is_longer"].dtype == np.bool_
        assert np.abs(out["input_features"] - ref["input_features"]).max() <= 1e-4
        np.testing.assert_array_equal(out["is_longer"], ref["is_longer"])


@pytest.mark.parametrize("truncation", ["fusion", "rand_trunc"])
def test_clap_long_clip_matches_transformers_seeded(truncation: str) -> None:
    from transformers import ClapFeatureExtractor

    hf = ClapFeatureExtractor(truncation=truncation)
    proc = A.AudioProcessor.from_config(hf.to_dict())
    w = mono(signal(48000, 13.0, 2))
    out = proc([w])
    np.random.seed(0)
    ref = hf(w, sampling_rate=48000, return_tensors="np")
    assert out["input_features"].shape == ref["input_features"].shape
    assert np.abs(out["input_features"] - ref["input_features"]).max() <= 1e-4
    assert out["is_longer"].tolist() == [[True]] == ref["is_longer"].tolist()
    np.testing.assert_array_equal(proc([w])["input_features"], out["input_features"])  # deterministic


def test_clap_batch_rules() -> None:
    from transformers import ClapFeatureExtractor

    hf = ClapFeatureExtractor()
    a, b = mono(signal(48000, 1.0)), mono(signal(48000, 2.0, seed=3))
    assert A.AudioProcessor.from_config(hf.to_dict())([a, b])["is_longer"].tolist() == [[True], [True]]
    proc = A.ClapFeatureExtractor(hf.to_dict(), batch_independent=False)
    out = proc([a, b])
    assert out["is_longer"].tolist() == [[True], [False]]
    np.random.seed(0)  # transformers picks np.random.randint(0, 2) -> 0 with this seed
    ref = hf([a, b], sampling_rate=48000, return_tensors="np")
    np.testing.assert_array_equal(out["is_longer"], ref["is_longer"])
    assert np.abs(out["input_features"] - ref["input_features"]).max() <= 1e-4
