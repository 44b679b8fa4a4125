"""Images and audio end to end: random-weight ViT, ResNet, EfficientNet, MobileNetV2, CLIP and wav2vec2 with
their own processors saved with defaults, converted by gpux, run on odd inputs, compared with PyTorch fed by
transformers' own processors; bad inputs refused with clear errors, over HTTP too."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpux
from gpux.store.local import Store

LABELS = {i: f"class_{i}" for i in range(5)}


def _images() -> dict[str, bytes]:
    """Odd sizes and modes: RGBA, grayscale, palette, and a JPEG whose EXIF says "rotate 90°"."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, mode, size in (("rgba.png", "RGBA", (50, 37)), ("gray.png", "L", (40, 90)), ("pal.png", "P", (33, 33))):
        arr = rng.integers(0, 255, (size[1], size[0], 4 if mode == "RGBA" else 1), dtype=np.uint8)
        img = Image.fromarray(arr.squeeze(-1) if mode != "RGBA" else arr, "RGBA" if mode == "RGBA" else "L")
        buf = io.BytesIO()
        (img.convert("P") if mode == "P" else img).save(buf, "PNG")
        out[name] = buf.getvalue()
    photo = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    buf = io.BytesIO()
    photo.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out["rotated.jpg"] = buf.getvalue()
    return out


def _families() -> dict[str, tuple[Any, Any]]:
    import transformers as tf

    labelled = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    return {
        "vit": (tf.ViTForImageClassification(tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                           intermediate_size=64, image_size=64, patch_size=16,
                                                           **labelled)),
                tf.ViTImageProcessor(size={"height": 64, "width": 64})),
        "resnet": (tf.ResNetForImageClassification(tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32],
                                                                   depths=[1, 1], **labelled)),
                   tf.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875)),
        "efficientnet": (tf.EfficientNetForImageClassification(tf.EfficientNetConfig(
            image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, **labelled)),
            tf.EfficientNetImageProcessor(size={"height": 64, "width": 64})),
        "mobilenet_v2": (tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(image_size=64, depth_multiplier=0.35,
                                                                                   **labelled)),
                         tf.MobileNetV2ImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})),
    }


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every family converted once into one store: name -> (folder, model ref); plus the store root."""
    import torch

    from gpux.convert.pipeline import convert

    root = tmp_path_factory.mktemp("media-home")
    src = tmp_path_factory.mktemp("media-src")
    out: dict[str, Any] = {"root": root}
    torch.manual_seed(0)
    for name, (model, processor) in _families().items():
        folder = src / name
        with torch.no_grad():  # livelier weights than some families' init (EfficientNet's head starts at zero)
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.2)
        model.eval().save_pretrained(folder)
        processor.save_pretrained(folder)
        bundle = convert(folder, name=f"tiny-{name}", source={"kind": "local", "path": str(folder)}, store=Store(root))
        assert bundle.manifest.task == "image-classification"
        out[name] = (folder, f"tiny-{name}:image-classification")
    return out


@pytest.mark.parametrize("family", ["vit", "resnet", "efficientnet", "mobilenet_v2"])
def test_image_classifiers_match_pytorch_fed_by_transformers(media: dict[str, Any], family: str) -> None:
    import torch
    import transformers as tf
    from PIL import Image
    from transformers.image_utils import load_image

    folder, ref = media[family]
    model = gpux.load(ref, store=Store(media["root"]))
    images = _images()
    got = model.predict({"inputs": list(images.values())})["predictions"]
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    torch_model = tf.AutoModelForImageClassification.from_pretrained(folder).eval()
    for answer, data in zip(got, images.values()):
        pixels = processor(images=load_image(Image.open(io.BytesIO(data))), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logp = torch.log_softmax(torch_model(pixel_values=pixels).logits[0], -1).numpy()
        ours = {p["label"]: np.log(p["score"]) for p in answer}
        assert len(answer) == 5 and [p["score"] for p in answer] == sorted((p["score"] for p in answer), reverse=True)
        for i, label in LABELS.items():
            assert abs(ours[label] - logp[i]) <= 0.05, (family, label, ours[label], logp[i])


def test_image_classification_from_the_cli_and_paths(media: dict[str, Any], tmp_path: Path) -> None:
    from conftest import gpux as cli

    path = tmp_path / "cat.png"
    path.write_bytes(_images()["rgba.png"])
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    done = cli("run", media["vit"][1], "--input", json.dumps({"inputs": [str(path), url]}),
               env={"GPUX_HOME": str(media["root"])})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["task"] == "image-classification" and out["predictions"][0] == out["predictions"][1]


@pytest.mark.parametrize("payload,words", [
    ({"inputs": ["data:image/png;base64,bm90IGFuIGltYWdl"]}, "not an image"),
    ({"inputs": ["data:image/png;base64,%%%"]}, "base64"),
])
def test_bad_images_are_exit_2_naming_the_problem(media: dict[str, Any], payload: dict[str, Any], words: str) -> None:
    from conftest import gpux as cli

    done = cli("run", media["vit"][1], "--input", json.dumps(payload), env={"GPUX_HOME": str(media["root"])})
    assert done.returncode == 2 and words in done.stderr.lower(), done.stderr


def test_images_over_http_bytes_only(media: dict[str, Any], tmp_path: Path) -> None:
    """/predict takes data URLs; a path is refused (the server never reads its own disk); a truncated file and
    a huge image are clear 400/413 errors and the server stays up."""
    import httpx
    from PIL import Image

    from gpux.serve.app import create_app
    from gpux.serve.manager import ModelManager
    from serve_helpers import LiveServer

    png = _images()["gray.png"]
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png)
    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, "PNG")
    big_url = "data:image/png;base64," + base64.b64encode(big.getvalue()).decode()
    with LiveServer(create_app(ModelManager(store=Store(media["root"])))) as server:
        ok = httpx.post(f"{server.url}/predict/{media['vit'][1]}", json={"inputs": [url, url]}, timeout=60)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
        path = httpx.post(f"{server.url}/predict/{media['vit'][1]}", json={"inputs": [str(secret)]}, timeout=60)
        assert path.status_code == 400 and "path" in path.json()["error"]
        cut = "data:image/png;base64," + base64.b64encode(png[: len(png) // 2]).decode()
        truncated = httpx.post(f"{server.url}/predict/{media['vit'][1]}", json={"inputs": [cut]}, timeout=60)
        assert truncated.status_code == 400, truncated.text
        huge = httpx.post(f"{server.url}/predict/{media['vit'][1]}", json={"inputs": [big_url]}, timeout=60)
        assert huge.status_code == 413 and "pixels" in huge.text, huge.text
        assert httpx.get(f"{server.url}/health").status_code == 200


# -- CLIP: two towers, zero-shot, image embeddings over OpenAI's route -----------------------------------

@pytest.fixture(scope="module")
def clip(media: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import torch
    import transformers as tf

    from gpux.convert.pipeline import convert
    from lm_models import tokenizer

    folder = tmp_path_factory.mktemp("clip-src") / "tiny-clip"
    tok = tokenizer()
    cfg = tf.CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                                     "eos_token_id": 2},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    torch.manual_seed(0)
    tf.CLIPModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    bundle = convert(folder, name="tiny-clip", source={"kind": "local", "path": str(folder)}, store=Store(media["root"]))
    assert bundle.manifest.task == "zero-shot-image-classification"
    assert set(bundle.manifest.graphs) == {"text", "vision"}
    return folder, "tiny-clip:zero-shot-image-classification"


def test_clip_zero_shot_ranking_matches_pytorch(media: dict[str, Any], clip: tuple[Path, str]) -> None:
    import torch
    import transformers as tf
    from PIL import Image
    from transformers.image_utils import load_image

    folder, ref = clip
    labels = ["cat", "dog", "car", "tree"]
    data = _images()["rotated.jpg"]
    got = gpux.load(ref, store=Store(media["root"])).predict(
        {"inputs": data, "parameters": {"candidate_labels": labels, "hypothesis_template": "a photo of {}"}})
    ranking = got["predictions"][0]
    model = tf.CLIPModel.from_pretrained(folder).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    pixels = tf.CLIPImageProcessor.from_pretrained(folder)(images=load_image(Image.open(io.BytesIO(data))),
                                                           return_tensors="pt")["pixel_values"]
    texts = tok([f"a photo of {x}" for x in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(pixel_values=pixels, **texts).logits_per_image.softmax(-1)[0].numpy()
    assert [p["label"] for p in ranking] == [labels[i] for i in np.argsort(-probs, kind="stable")]
    for p in ranking:
        assert abs(p["score"] - probs[labels.index(p["label"])]) < 1e-4


def test_openai_embeddings_take_image_data_urls_for_clip(media: dict[str, Any], clip: tuple[Path, str]) -> None:
    import openai

    from gpux.serve.app import create_app
    from gpux.serve.manager import ModelManager
    from serve_helpers import LiveServer

    url = "data:image/png;base64," + base64.b64encode(_images()["pal.png"]).decode()
    task = gpux.load(clip[1], store=Store(media["root"])).task
    with LiveServer(create_app(ModelManager(store=Store(media["root"])))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        out = client.embeddings.create(model=clip[1], input=["a photo of a cat", url])
    text_vec, image_vec = (np.asarray(d.embedding) for d in out.data)
    assert np.allclose(text_vec, task.embed_texts(["a photo of a cat"])[0], atol=1e-5)
    assert np.allclose(image_vec, task.embed_media([task.prepare(url, 0)])[0], atol=1e-5)


# -- audio: wav2vec2 CTC and audio classification -------------------------------------------------------

def _speech(rate: int, channels: int, seconds: float = 1.2) -> bytes:
    """A WAV of tones and noise at ``rate`` with ``channels`` channels (bytes, as an upload would be)."""
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(1)
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(len(t))
    data = np.stack([wave, 0.5 * wave[::-1]], -1)[:, :channels]
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech(media: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    import torch
    import transformers as tf

    from gpux.convert.pipeline import convert

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate("ETAONIHSRDLUMWCFGYPBVKJXQZ'")}}
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 8), "num_conv_pos_embeddings": 16,
             "num_conv_pos_embedding_groups": 2, "vocab_size": len(vocab)}
    out = {}
    for task, model in (("automatic-speech-recognition", tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(**small))),
                        ("audio-classification", tf.Wav2Vec2ForSequenceClassification(tf.Wav2Vec2Config(
                            **small, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})))):
        folder = tmp_path_factory.mktemp("w2v") / task
        folder.mkdir()
        (folder / "vocab.json").write_text(json.dumps(vocab))
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.3)
        model.eval().save_pretrained(folder)
        tf.Wav2Vec2CTCTokenizer(str(folder / "vocab.json")).save_pretrained(folder)
        tf.Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
        bundle = convert(folder, name=f"tiny-w2v-{task[:5]}", source={"kind": "local", "path": str(folder)},
                         store=Store(media["root"]))
        assert bundle.manifest.task == task
        out[task] = (folder, f"{bundle.manifest.name}:{task}")
    return out


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2)])
def test_ctc_transcription_equals_transformers(media: dict[str, Any], speech: dict[str, tuple[Path, str]],
                                               rate: int, channels: int) -> None:
    import torch
    import transformers as tf

    from gpux.preprocess.audio import load_audio

    folder, ref = speech["automatic-speech-recognition"]
    data = _speech(rate, channels)
    got = gpux.load(ref, store=Store(media["root"])).predict({"inputs": [data]})["transcriptions"][0]["text"]
    wave = load_audio(data, 16000)  # the same waveform for both: the comparison is features + model + decoding
    processor = tf.Wav2Vec2Processor.from_pretrained(folder)
    model = tf.Wav2Vec2ForCTC.from_pretrained(folder).eval()
    with torch.no_grad():
        ids = model(**processor(wave, sampling_rate=16000, return_tensors="pt")).logits.argmax(-1)
    want = processor.batch_decode(ids)[0]
    assert got == want and want  # random weights still say something


def test_audio_classification_matches_pytorch(media: dict[str, Any], speech: dict[str, tuple[Path, str]]) -> None:
    import torch
    import transformers as tf

    from gpux.preprocess.audio import load_audio

    folder, ref = speech["audio-classification"]
    clips = [_speech(8000, 1), _speech(44100, 2, seconds=0.7)]
    got = gpux.load(ref, store=Store(media["root"])).predict({"inputs": clips})["predictions"]
    fe = tf.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    model = tf.Wav2Vec2ForSequenceClassification.from_pretrained(folder).eval()
    for answer, data in zip(got, clips):
        with torch.no_grad():
            logp = torch.log_softmax(model(**fe(load_audio(data, 16000), sampling_rate=16000,
                                                return_tensors="pt")).logits[0], -1).numpy()
        for p in answer:
            assert abs(np.log(p["score"]) - logp[next(i for i, v in LABELS.items() if v == p["label"])]) <= 0.05


def test_openai_transcriptions_and_bad_audio(media: dict[str, Any], speech: dict[str, tuple[Path, str]]) -> None:
    import httpx
    import openai

    from gpux.serve.app import create_app
    from gpux.serve.manager import ModelManager
    from serve_helpers import LiveServer

    ref = speech["automatic-speech-recognition"][1]
    data = _speech(44100, 2)
    want = gpux.load(ref, store=Store(media["root"])).predict({"inputs": [data]})["transcriptions"][0]["text"]
    with LiveServer(create_app(ModelManager(store=Store(media["root"])))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        got = client.audio.transcriptions.create(model=ref, file=("speech.wav", data, "audio/wav"))
        assert got.text == want
        text = client.audio.transcriptions.create(model=ref, file=("speech.wav", data), response_format="text")
        assert str(text).strip() == want
        bad = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("x.wav", b"RIFF1234WAVEjunk")},
                         data={"model": ref}, timeout=60)
        assert bad.status_code == 400 and "audio" in bad.json()["error"]["message"].lower()
        srt = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("s.wav", data)},
                         data={"model": ref, "response_format": "srt"}, timeout=60)
        assert srt.status_code == 400 and "timestamps" in srt.json()["error"]["message"]
        path = httpx.post(f"{server.url}/predict/{ref}", json={"inputs": ["/etc/hostname"]}, timeout=60)
        assert path.status_code == 400
        assert httpx.get(server.url + "/health").status_code == 200


def test_kserve_v2_infer_takes_images_as_bytes_rows(media: dict[str, Any]) -> None:
    import httpx

    from gpux.serve.app import create_app
    from gpux.serve.manager import ModelManager
    from serve_helpers import LiveServer

    ref = media["vit"][1]
    urls = ["data:image/png;base64," + base64.b64encode(b).decode() for b in list(_images().values())[:2]]
    want = gpux.load(ref, store=Store(media["root"])).predict({"inputs": urls})["predictions"]
    with LiveServer(create_app(ModelManager(store=Store(media["root"])))) as server:
        r = httpx.post(f"{server.url}/v2/models/{ref}/infer", timeout=60,
                       json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": urls}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "predictions" and [json.loads(x) for x in out["data"]] == want


def test_clap_zero_shot_audio_matches_pytorch(media: dict[str, Any], tmp_path: Path) -> None:
    """CLAP: text and audio towers as two graphs; the zero-shot ranking of a clip equals PyTorch's."""
    import torch
    import transformers as tf

    from gpux.convert.pipeline import convert
    from gpux.preprocess.audio import load_audio
    from lm_models import tokenizer

    folder = tmp_path / "tiny-clap"
    tok = tokenizer()
    cfg = tf.ClapConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 80},
                        audio_config={"hidden_size": 32, "depths": [1, 1], "num_attention_heads": [2, 2],
                                      "patch_embeds_hidden_size": 16, "window_size": 4, "projection_dim": 16,
                                      "enable_fusion": True},
                        projection_dim=16)
    torch.manual_seed(0)
    tf.ClapModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    tf.ClapFeatureExtractor().save_pretrained(folder)
    bundle = convert(folder, name="tiny-clap", source={"kind": "local", "path": str(folder)}, store=Store(media["root"]))
    assert bundle.manifest.task == "zero-shot-audio-classification" and set(bundle.manifest.graphs) == {"text", "audio"}
    labels = ["dog barking", "rain", "piano"]
    clip = _speech(48000, 1, seconds=2.0)
    got = gpux.load(f"tiny-clap:{bundle.manifest.tag}", store=Store(media["root"])).predict(
        {"inputs": [clip, clip], "parameters": {"candidate_labels": labels, "hypothesis_template": "a sound of {}"}})
    ranking = got["predictions"][0]
    assert got["predictions"][1] == ranking  # two clips in one request (the audio tower runs one per call)
    model = tf.ClapModel.from_pretrained(folder).eval()
    hf_tok = tf.AutoTokenizer.from_pretrained(folder)
    fe = tf.ClapFeatureExtractor.from_pretrained(folder)
    audio = fe(load_audio(clip, 48000), sampling_rate=48000, return_tensors="pt")
    texts = hf_tok([f"a sound of {x}" for x in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**texts, input_features=audio["input_features"],
                      is_longer=audio["is_longer"]).logits_per_audio.softmax(-1)[0].numpy()
    assert [p["label"] for p in ranking] == [labels[i] for i in np.argsort(-probs, kind="stable")]
    for p in ranking:
        assert abs(p["score"] - probs[labels.index(p["label"])]) < 1e-3


def test_images_from_concurrent_requests_are_batched(media: dict[str, Any]) -> None:
    import concurrent.futures

    import httpx

    from gpux.serve.app import create_app
    from gpux.serve.batcher import BatchConfig
    from gpux.serve.manager import ModelManager
    from serve_helpers import LiveServer

    ref = media["resnet"][1]
    urls = ["data:image/png;base64," + base64.b64encode(b).decode() for b in _images().values()]
    want = gpux.load(ref, store=Store(media["root"])).predict({"inputs": urls})["predictions"]
    manager = ModelManager(store=Store(media["root"]), batch=BatchConfig(max_batch=16, max_delay_ms=50))
    with LiveServer(create_app(manager)) as server, concurrent.futures.ThreadPoolExecutor(8) as pool:
        httpx.post(f"{server.url}/models/load", json={"model": ref}, timeout=60).raise_for_status()
        answers = list(pool.map(lambda i: httpx.post(f"{server.url}/predict/{ref}", timeout=60,
                                                     json={"inputs": [urls[i % len(urls)]]}).json(), range(16)))
        histogram = httpx.get(f"{server.url}/stats").json()["models"][ref]["batch_size_histogram"]
    for i, answer in enumerate(answers):  # each request gets its own image's answer, batched or not
        assert answer["predictions"][0][0]["label"] == want[i % len(urls)][0]["label"]
        assert abs(answer["predictions"][0][0]["score"] - want[i % len(urls)][0]["score"]) < 1e-4
    assert max(int(k) for k in histogram) > 1, histogram


def _video(frames: list[Any]) -> bytes:
    """An MPEG-4 file of ``frames`` (PIL images), encoded with PyAV."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_xclip_zero_shot_video_matches_pytorch(media: dict[str, Any], tmp_path: Path) -> None:
    """X-CLIP: a clip as frames and as an MP4 file; the ranking equals PyTorch's logits_per_video softmax."""
    import torch
    import transformers as tf
    from PIL import Image

    from gpux.convert.pipeline import convert
    from gpux.preprocess.video import decode_frames, sample
    from lm_models import tokenizer

    folder = tmp_path / "tiny-xclip"
    tok = tokenizer()
    cfg = tf.XCLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77},
                         vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                        "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "num_frames": 4,
                                        "mit_hidden_size": 32, "mit_intermediate_size": 64, "mit_num_hidden_layers": 1,
                                        "mit_num_attention_heads": 2},
                         projection_dim=32, prompt_num_attention_heads=2, prompt_layers=1)
    torch.manual_seed(0)
    tf.XCLIPModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    tf.VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    bundle = convert(folder, name="tiny-xclip", source={"kind": "local", "path": str(folder)}, store=Store(media["root"]))
    assert bundle.manifest.task == "zero-shot-video-classification"
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(9)]
    labels = ["cooking", "running", "dancing"]
    model = gpux.load(f"tiny-xclip:{bundle.manifest.tag}", store=Store(media["root"]))
    clip = _video(frames)
    got = model.predict({"inputs": [clip, "data:video/mp4;base64," + base64.b64encode(clip).decode()],
                         "parameters": {"candidate_labels": labels}})["predictions"]
    assert got[0] == got[1]
    decoded = sample(decode_frames(clip), 4)  # what the file holds after lossy encoding, sampled as gpux does
    hf = tf.XCLIPModel.from_pretrained(folder).eval()
    pixels = tf.VideoMAEImageProcessor.from_pretrained(folder)(decoded, return_tensors="pt")["pixel_values"]
    texts = tf.AutoTokenizer.from_pretrained(folder)(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = hf(**texts, pixel_values=pixels).logits_per_video.softmax(-1)[0].numpy()
    assert [p["label"] for p in got[0]] == [labels[i] for i in np.argsort(-probs, kind="stable")]
    for p in got[0]:
        assert abs(p["score"] - probs[labels.index(p["label"])]) < 1e-3
    bad = model.task
    with pytest.raises(Exception, match="video"):
        bad.items({"inputs": ["data:video/mp4;base64," + base64.b64encode(b"not a video at all").decode()],
                   "parameters": {"candidate_labels": labels}})


def test_gpux_bench_on_an_image_model_counts_images(media: dict[str, Any], tmp_path: Path) -> None:
    from conftest import gpux as cli

    done = cli("bench", media["vit"][1], "--batch-sizes", "1,4", "--runs", "5", "--warmup", "1", "--out",
               str(tmp_path / "b"), env={"GPUX_HOME": str(media["root"])}, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "b" / "results.json").read_text())["models"][media["vit"][1]]
    assert result["unit"] == "images" and "benchmarks/vision_audio.py" in result["pytorch"]["skipped"]
    points = result["precisions"]["fp32"]["gpux"]
    assert points and "images/s" in (tmp_path / "b" / "report.md").read_text()


def test_the_image_and_audio_run_path_imports_neither_torch_nor_transformers(
        media: dict[str, Any], speech: dict[str, tuple[Path, str]]) -> None:
    import subprocess
    import sys

    code = ("import sys, json, gpux; from gpux.store.local import Store; from pathlib import Path\n"
            f"root = Path({str(media['root'])!r}); image = {_images()['gray.png']!r}; wav = {_speech(8000, 1)!r}\n"
            f"gpux.load({media['vit'][1]!r}, store=Store(root)).predict({{'inputs': [image]}})\n"
            f"gpux.load({speech['automatic-speech-recognition'][1]!r}, store=Store(root)).predict({{'inputs': [wav]}})\n"
            "import gpux.serve.app\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
