"""int8 and optimisation variants of image, audio and two-tower models (gpux.convert.media_variants), and the
two-tower models' lazily created tower sessions: real onnxruntime sessions on tiny random-weight models.

Floors: int8 numerics differ by CPU (AVX2 vs AVX-512 VNNI), so no test asserts one machine's margin. A pull at
the default floor is either stored over it or refused with nothing stored; the refusal itself is forced with a
floor set just above what this machine measured for the same variant (deterministic on one machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpux
from conftest import gpux as cli
from gpux.convert.optimize import TOLERANCE, Variant, make_variant
from gpux.errors import ConvertError, UsageError
from gpux.store.local import Store

LABELS = {i: f"class_{i}" for i in range(5)}


def _lively(model: Any, std: float) -> Any:
    import torch

    torch.manual_seed(0)
    with torch.no_grad():  # livelier than some inits, so labels and frames are not ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, std)
    return model.eval()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny ViT, ResNet, wav2vec2 CTC and CLIP, converted into one store: name -> (folder, ref)."""
    import transformers as tf

    from gpux.convert.pipeline import convert
    from lm_models import tokenizer

    root, src = tmp_path_factory.mktemp("mv-home"), tmp_path_factory.mktemp("mv-src")
    labelled = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    out: dict[str, Any] = {"root": root}
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate("ETAONIHSR")}}
    tok = tokenizer()
    builds = {
        "vit": lambda f: (_lively(tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, **labelled)), 0.2), tf.ViTImageProcessor(size={"height": 32, "width": 32})),
        "resnet": lambda f: (_lively(tf.ResNetForImageClassification(tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **labelled)), 0.2),
            tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)),
        "ctc": lambda f: (_lively(tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            vocab_size=len(vocab))), 0.3), tf.Wav2Vec2FeatureExtractor(return_attention_mask=False)),
        "clip": lambda f: (tf.CLIPModel(tf.CLIPConfig(
            text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 2},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8}, projection_dim=16)).eval(),
            tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
    }
    for name, build in builds.items():
        folder = src / name
        folder.mkdir()
        model, processor = build(folder)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if name == "ctc":
            (folder / "vocab.json").write_text(json.dumps(vocab))
            tf.Wav2Vec2CTCTokenizer(str(folder / "vocab.json")).save_pretrained(folder)
        if name == "clip":
            tok.save_pretrained(folder)
        if name == "vit":  # pulled as a user would, so the CLI's variant pull finds it stored
            done = cli("pull", str(folder), env={"GPUX_HOME": str(root)})
            assert done.returncode == 0, done.stderr
            out[name] = (folder, done.stdout.strip())
            continue
        bundle = convert(folder, name=f"mv-{name}", source={"kind": "local", "path": str(folder)}, store=Store(root))
        out[name] = (folder, f"mv-{name}:{bundle.manifest.tag}")
    return out


def _image(seed: int) -> np.ndarray:
    from gpux.convert.media_variants import synthetic_image

    return synthetic_image(seed)


def test_image_classifier_int8_floor_decides_then_stored_with_top1_agreement_and_runs(home: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    root, (folder, ref) = home["root"], home["vit"]
    env = {"GPUX_HOME": str(root)}
    store = Store(root)
    variant_ref = f"{ref}-int8"
    res = cli("pull", str(folder), "--quantize", "int8", env=env)  # default floors: the CPU's numerics decide
    if res.returncode == 0:
        assert res.stdout.strip() == variant_ref, (res.stdout, res.stderr)
        par = store.manifest(variant_ref).conversion["parity_vs_fp32"]
        assert par["argmax_agreement"] >= TOLERANCE["int8"][1] and par["cosine_min"] >= TOLERANCE["int8"][0]
    else:
        assert res.returncode == 7 and "loses too much" in res.stderr and "nothing was stored" in res.stderr, res.stderr
        assert "image-classification-int8" not in store.tags(ref.split(":")[0])
        made = make_variant(ref, Variant(quantize="int8"), store=store, min_cosine=0.0, min_agreement=0.0)
        assert f"{made.manifest.name}:{made.manifest.tag}" == variant_ref
    m = store.manifest(variant_ref)
    par = m.conversion["parity_vs_fp32"]
    assert 0.0 <= par["argmax_agreement"] <= 1.0 and par["inputs"] == 24 and "top-1" in par["judged_on"]
    assert m.conversion["quantize"] == "int8" and m.conversion["int8_kept_fp32"] == ["Conv", "ConvTranspose"]
    assert m.files["model.onnx"]["sha256"] != store.manifest(ref).files["model.onnx"]["sha256"]
    # The variant answers through the task, from the CLI and from Python.
    from PIL import Image

    Image.fromarray(_image(5)).save(tmp_path / "five.png")
    done = cli("run", variant_ref, "--input", json.dumps({"inputs": [str(tmp_path / "five.png")]}), env=env)
    assert done.returncode == 0, done.stderr
    preds = json.loads(done.stdout)["predictions"][0]
    assert len(preds) == 5 and {p["label"] for p in preds} == set(LABELS.values())
    py = gpux.load(variant_ref, store=store).predict({"inputs": [_image(5)]})["predictions"][0]
    assert [p["label"] for p in py] == [p["label"] for p in preds]


def test_a_variant_under_its_floor_is_refused_with_the_numbers_and_nothing_stored(home: dict[str, Any]) -> None:
    """The floor set just above what this machine measured for the very same variant: refused, deterministically."""
    store = Store(home["root"])
    ref = home["vit"][1]
    variant_ref = f"{ref}-int8"
    try:
        before = store.manifest(variant_ref)
    except Exception:  # noqa: BLE001 - the previous test may have been deselected
        make_variant(ref, Variant(quantize="int8"), store=store, min_cosine=0.0, min_agreement=0.0)
        before = store.manifest(variant_ref)
    par = before.conversion["parity_vs_fp32"]
    if par["argmax_agreement"] < 1.0:
        floors = {"min_cosine": 0.0, "min_agreement": (par["argmax_agreement"] + 1.0) / 2}
        words = "argmax agreement"
    else:  # every label agreed on this CPU: the cosine is what falls short
        floors, words = {"min_cosine": (par["cosine_min"] + 1.0) / 2, "min_agreement": 0.0}, "cosine"
    with pytest.raises(ConvertError, match="loses too much") as err:
        make_variant(ref, Variant(quantize="int8"), store=store, **floors)
    assert words in str(err.value) and "nothing was stored" in (err.value.hint or "")
    assert store.manifest(variant_ref) == before  # the stored variant untouched, nothing new written
    with pytest.raises(UsageError, match="int8-mixed searches on text"):  # its search feeds sentences
        make_variant(ref, Variant(quantize="int8-mixed"), store=store)



def test_int8_keeps_convolutions_fp32(home: dict[str, Any]) -> None:
    """int8 convolutions ran slower than fp32 here (media_variants' docstring): a ConvNet's int8 variant quantises
    its classifier's MatMul and leaves every Conv as it was."""
    from gpux.engine import onnxproto

    store = Store(home["root"])
    made = make_variant(home["resnet"][1], Variant(quantize="int8"), store=store, min_cosine=0.0, min_agreement=0.0)
    base_ops = dict(onnxproto.read(store.get(home["resnet"][1]).graph_path()).graph.op_types)
    ops = dict(onnxproto.read(made.graph_path()).graph.op_types)
    assert ops["Conv"] == base_ops["Conv"] > 0 and "ConvInteger" not in ops and "MatMulInteger" in ops, ops


def test_ctc_int8_is_judged_per_frame_and_transcribes(home: dict[str, Any]) -> None:
    from gpux.convert.media_variants import synthetic_clip

    store = Store(home["root"])
    ref = home["ctc"][1]
    made = make_variant(ref, Variant(quantize="int8"), store=store, min_cosine=0.0, min_agreement=0.0)
    par = made.manifest.conversion["parity_vs_fp32"]
    assert "per-frame" in par["judged_on"] and par["inputs"] == 12
    assert 0.0 <= par["argmax_agreement"] <= 1.0 and 0.0 <= par["transcriptions_identical"] <= 1.0
    clip = synthetic_clip(7, 1.3, 16000)
    got = gpux.load(f"{made.manifest.name}:{made.manifest.tag}", store=store).predict({"inputs": [clip]})
    assert isinstance(got["transcriptions"][0]["text"], str)


def test_clip_variant_quantises_both_towers_and_answers_zero_shot(home: dict[str, Any]) -> None:
    store = Store(home["root"])
    ref = home["clip"][1]
    made = make_variant(ref, Variant(quantize="int8"), store=store, min_cosine=0.0, min_agreement=0.0)
    m, base = made.manifest, store.manifest(ref)
    assert set(m.graphs) == {"text", "vision"} and m.default_graph == base.default_graph
    for name in m.graphs.values():  # each tower graph is its own int8 graph
        assert m.files[name]["sha256"] != base.files[name]["sha256"]
    par = m.conversion["parity_vs_fp32"]
    assert set(par["graphs"]) == {"text", "vision"} and "argmax_agreement" not in par
    assert par["cosine_min"] == min(g["cosine_min"] for g in par["graphs"].values())
    assert 0.0 <= par["zero_shot_top1_agreement"] <= 1.0 and set(m.conversion["base_digests"]) == {"text", "vision"}
    labels = ["cat", "dog", "car"]
    got = gpux.load(f"{m.name}:{m.tag}", store=store).predict(
        {"inputs": _image(3), "parameters": {"candidate_labels": labels}})["predictions"][0]
    assert sorted(p["label"] for p in got) == sorted(labels) and abs(sum(p["score"] for p in got) - 1) < 1e-5


def test_clip_creates_only_the_tower_a_request_needs(home: dict[str, Any]) -> None:
    store = Store(home["root"])
    model = gpux.load(home["clip"][1], store=store)
    assert model.graphs.built == {} and model.providers == ["cpu"]  # loading made no session; asking made none
    task = model.task
    vec = task.embed_texts(["a photo of a cat"])
    assert vec.shape == (1, 16) and set(model.graphs.built) == {"text"}  # a text-only request: no vision session
    text_session = model.graphs.built["text"].session
    model.predict({"inputs": _image(1), "parameters": {"candidate_labels": ["cat", "dog"]}})
    assert set(model.graphs.built) == {"text", "vision"} and model.graphs.built["text"].session is text_session
    images_only = gpux.load(home["clip"][1], store=store)
    images_only.task.embed_media([images_only.task.prepare(_image(2), 0)])
    assert set(images_only.graphs.built) == {"vision"}
    single = gpux.load(home["vit"][1], store=store)  # one graph: made at load, as before
    assert set(single.graphs.built) == {"model"}


@pytest.mark.parametrize("name,variant", [("vit", Variant(optimize="O2")), ("vit", Variant(quantize="int8-static")),
                                          ("ctc", Variant(dtype="fp16")), ("clip", Variant(optimize="O1"))])
def test_optimize_levels_fp16_and_static_int8_are_judged_and_run(home: dict[str, Any], name: str,
                                                                 variant: Variant) -> None:
    store = Store(home["root"])
    exact = variant.optimize == "O1"  # basic graph rewrites only: held to the exact floors
    made = make_variant(home[name][1], variant, store=store, **({} if exact else {"min_cosine": 0.0,
                                                                                  "min_agreement": 0.0}))
    par = made.manifest.conversion["parity_vs_fp32"]
    assert par["cosine_min"] >= (TOLERANCE["fp32"][0] if exact else 0.0) and par["inputs"] in (12, 24)
    model = gpux.load(f"{made.manifest.name}:{made.manifest.tag}", store=store)
    if name == "ctc":
        from gpux.convert.media_variants import synthetic_clip

        assert isinstance(model.predict({"inputs": [synthetic_clip(1, 1.0, 16000)]})["transcriptions"][0]["text"], str)
    else:
        payload: dict[str, Any] = {"inputs": [_image(9)]}
        if name == "clip":
            payload["parameters"] = {"candidate_labels": ["a", "b"]}
        assert len(model.predict(payload)["predictions"][0]) == (2 if name == "clip" else 5)
