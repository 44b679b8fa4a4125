"""Any encoder family transformers loads converts with no code for it: inputs, position offset and optimiser
type are derived from the model; the tasks come from its metadata; what cannot work is a clear ConvertError.

FAMILIES is data: a family of hf_models.FAMILIES (config class and tiny sizes) and the task whose head its
random weights are saved with. No gpux code names any of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import hf_models
import numpy as np
import pytest

from gpux.convert.architectures import OVERRIDES
from gpux.convert.export import TASK_HEADS
from gpux.convert.pipeline import MEDIA_TASKS, SUPPORTED_TASKS, convert
from gpux.errors import ConvertError
from gpux.store.bundle import Bundle
from gpux.store.local import Store

T = hf_models.TINY
#: (family of hf_models.FAMILIES, the task whose head its random weights are saved with): every task twice or more.
FAMILIES: list[tuple[str, str]] = [
    ("bert", "question-answering"), ("distilbert", "fill-mask"), ("roberta", "text-ranking"),
    ("xlm-roberta", "token-classification"), ("camembert", "fill-mask"), ("electra", "token-classification"),
    ("albert", "text-classification"), ("mpnet", "text-ranking"), ("deberta", "question-answering"),
    ("deberta-v2", "text-classification"), ("ernie", "token-classification"), ("mobilebert", "question-answering"),
    ("squeezebert", "fill-mask"), ("convbert", "text-classification"),
    ("nystromformer", "token-classification"),  # positions from 2, a buffer
    ("mra", "text-classification"),  # a tracer drops its unread attention_mask; gpux puts it back
]
IDS = [f[0] for f in FAMILIES]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("generic-home"))


class Converted:
    """Each family converted once, on first use, and shared by every assertion on it."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root, self.store = root, store
        self.done: dict[str, tuple[Path, Bundle]] = {}

    def __call__(self, family: str) -> tuple[Path, Bundle]:
        if family not in self.done:
            folder = hf_models.build_family(self.root / family, family, dict(FAMILIES)[family])
            # task=None: detected from the saved config.architectures
            self.done[family] = folder, convert(folder, name=family, source={"kind": "path", "path": str(folder)},
                                                store=self.store)
        return self.done[family]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, store: Store) -> Converted:
    return Converted(tmp_path_factory.mktemp("families"), store)


def _torch_outputs(folder: Path, task: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch
    import transformers

    model = getattr(transformers, TASK_HEADS[task].auto).from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return [getattr(out, name).numpy() for name in TASK_HEADS[task].outputs]


@pytest.mark.parametrize("family", IDS)
def test_family_converts_with_no_code_for_it(converted: Converted, family: str) -> None:
    import onnxruntime as ort

    folder, bundle = converted(family)
    task, tok_inputs = dict(FAMILIES)[family], hf_models.FAMILIES[family][2]
    cfg = json.loads((bundle.root / "task.json").read_text())
    manifest = bundle.manifest
    assert manifest.task == cfg["task"] == task  # detected from the saved architecture
    assert {"model.onnx", "tokenizer.json", "task.json"} <= {p.name for p in bundle.root.iterdir()}
    parity = manifest.conversion["parity"]
    assert parity["cosine_min"] >= 0.999 and len(parity["cases"]) == 3, parity
    assert parity["outputs"] == list(TASK_HEADS[task].outputs)
    assert cfg["model_type"] not in OVERRIDES  # no row anywhere names this family

    # Inputs: what the tokenizer emits and the model's forward takes; never a one-row token type table.
    sess = ort.InferenceSession(str(bundle.root / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == cfg["inputs"] and cfg["inputs"][:2] == ["input_ids", "attention_mask"]
    assert set(cfg["inputs"]) <= set(tok_inputs or ["input_ids", "attention_mask", "token_type_ids"])
    saved = json.loads((folder / "config.json").read_text())
    if int(saved.get("type_vocab_size") or 0) <= 1:
        assert "token_type_ids" not in cfg["inputs"]
    assert [o.name for o in sess.get_outputs()] == cfg.get("outputs", [cfg["output"]])
    assert cfg["ort_model_type_source"] in ("model_type", "fallback") and cfg["ort_model_type"]

    # The task's contract fields.
    if task in ("text-classification", "token-classification"):
        assert cfg["labels"] == [hf_models.LABELS[i] for i in range(3)]
    if task == "text-ranking":
        assert cfg["labels"] == ["LABEL_0"] and cfg["activation"] == "sigmoid"
    if task == "fill-mask":
        assert (cfg["mask_token"], cfg["mask_id"]) == ("[MASK]", 103)
    if task == "question-answering":
        assert cfg["output"] == "start_logits" and cfg["outputs"] == ["start_logits", "end_logits"]

    # The position offset is right: a text of max_length tokens runs, and matches PyTorch, at the last position.
    assert cfg["max_length"] == min(512, 128 - cfg["position_offset"])
    n = cfg["max_length"]
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 30000, (1, n)), "attention_mask": np.ones((1, n), np.int64),
            "token_type_ids": np.zeros((1, n), np.int64)}
    feed = {k: feed[k].astype(np.int64) for k in cfg["inputs"]}
    got = sess.run(None, feed)
    for ref, out in zip(_torch_outputs(folder, task, feed), got):
        assert ref.shape == out.shape
        ref, out = ref.reshape(-1), out.reshape(-1)
        assert float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out))) >= 0.999


def test_families_cover_every_task_and_ten_families() -> None:
    assert len({f for f, _ in FAMILIES}) >= 10 and {f for f, _ in FAMILIES} == set(hf_models.FAMILIES)
    # Decoders (text-generation) have their own families: tests/lm_models.py, tests/test_generate.py;
    # image and audio models theirs: tests/test_media.py; encoder–decoders theirs: tests/test_seq2seq.py.
    assert {t for _, t in FAMILIES} | {"feature-extraction", "text-generation", "text2text-generation", "image-to-text",
                                       *MEDIA_TASKS} == set(SUPPORTED_TASKS)


def test_position_offset_is_derived_where_positions_skip_padding(converted: Converted, store: Store) -> None:
    """RoBERTa numbers positions from padding_idx + 1 (pad 1 -> 2); BERT from 0."""
    cfg = {f: json.loads((converted(f)[1].root / "task.json").read_text()) for f in ("roberta", "bert")}
    assert cfg["roberta"]["position_offset"] == 2 and cfg["roberta"]["max_length"] == 126
    assert cfg["bert"]["position_offset"] == 0 and cfg["bert"]["max_length"] == 128
    # The optimiser type: bert is one onnxruntime knows; roberta takes the generic encoder patterns, recorded so.
    assert (cfg["bert"]["ort_model_type"], cfg["bert"]["ort_model_type_source"]) == ("bert", "model_type")
    assert (cfg["roberta"]["ort_model_type"], cfg["roberta"]["ort_model_type_source"]) == ("bert", "fallback")


def test_optimised_variant_of_a_fallback_family_keeps_parity(converted: Converted, store: Store) -> None:
    """--optimize O2 reads ort_model_type; a family onnxruntime has no type for still optimises and agrees."""
    from gpux.convert.optimize import Variant, make_variant

    converted("deberta-v2")
    made = make_variant("deberta-v2:text-classification", Variant(optimize="O2"), store=store)
    result = made.manifest.conversion["parity_vs_fp32"]
    assert result["cosine_min"] >= result["threshold_cosine"] and result["argmax_agreement"] == 1.0


@pytest.mark.parametrize("task", [t for t in SUPPORTED_TASKS if t not in ("feature-extraction", "text-generation",
                                                                          "text2text-generation", "image-to-text")
                                  and t not in MEDIA_TASKS])  # image and audio heads: tests/test_media.py;
# encoder–decoders: tests/test_seq2seq.py
def test_task_is_detected_from_the_saved_head(tmp_path: Path, task: str) -> None:
    from gpux.convert.detect import detect_task

    folder = hf_models.build(tmp_path / "m", "BertConfig", task, **T)
    assert detect_task(folder, SUPPORTED_TASKS) == task
    # A config that names no architecture: the model card's pipeline_tag decides.
    hf_models.set_architectures(folder, [])
    hf_models.model_card(folder, task)
    assert detect_task(folder, SUPPORTED_TASKS) == task


def test_cross_encoder_config_makes_a_classifier_a_ranker(tmp_path: Path, store: Store) -> None:
    """A CrossEncoder with three logits is a ranker (identity activation from its config), not a classifier."""
    folder = hf_models.build(tmp_path / "ce", "ElectraConfig", "text-classification", **{**T, "embedding_size": 16},
                             config_json={"sentence_transformers": {
                                 "activation_fn": "torch.nn.modules.linear.Identity", "version": "5.0.0"}})
    bundle = convert(folder, name="ce", source={"kind": "path", "path": str(folder)}, store=store)
    cfg = json.loads((bundle.root / "task.json").read_text())
    assert (cfg["task"], cfg["activation"], len(cfg["labels"])) == ("text-ranking", "identity", 3)
    # The older key names its activation the same way.
    legacy = hf_models.build(tmp_path / "ce2", "BertConfig", "text-ranking", **T,
                             config_json={"sbert_ce_default_activation_function": "torch.nn.modules.activation.Softmax"})
    cfg = json.loads((convert(legacy, name="ce2", source={"kind": "path", "path": str(legacy)}, store=store)
                      .root / "task.json").read_text())
    assert (cfg["task"], cfg["activation"]) == ("text-ranking", "softmax")


def test_a_task_the_head_cannot_do_is_refused_and_the_hint_works(tmp_path: Path, store: Store) -> None:
    """--task question-answering on a sequence classifier: refused, naming it; every task hinted converts."""
    folder = hf_models.build(tmp_path / "cls", "BertConfig", "text-classification", **T)
    with pytest.raises(ConvertError) as err:
        convert(folder, name="cls", source={"kind": "path", "path": str(folder)}, task="question-answering",
                store=store)
    assert err.value.message == ("BertForSequenceClassification is a sequence-classification model: "
                                 "it has no question-answering head")
    assert err.value.hint == "it converts for: text-classification, feature-extraction"
    assert store.tags("cls") == []
    for task in ("text-classification", "feature-extraction"):
        done = convert(folder, name="cls", source={"kind": "path", "path": str(folder)}, task=task, store=store)
        assert done.manifest.conversion["parity"]["cosine_min"] >= 0.999
    base = hf_models.build(tmp_path / "base", "BertConfig", "feature-extraction", **T)
    with pytest.raises(ConvertError) as err:
        convert(base, name="base", source={"kind": "path", "path": str(base)}, task="fill-mask", store=store)
    assert err.value.message == "BertModel is an encoder without a task head: it has no fill-mask head"
    assert err.value.hint == "it converts for: feature-extraction"


def test_an_unsupported_head_names_architecture_and_task(tmp_path: Path, store: Store) -> None:
    from gpux.convert.detect import detect_task

    folder = hf_models.build(tmp_path / "mc", "BertConfig", "feature-extraction", **T)
    hf_models.set_architectures(folder, ["BertForMultipleChoice"])
    with pytest.raises(ConvertError) as err:
        detect_task(folder, SUPPORTED_TASKS)
    assert err.value.message.startswith("BertForMultipleChoice is a multiple-choice model, a task gpux does not")
    assert err.value.hint == "it converts for: feature-extraction (pass --task)"
    done = convert(folder, name="mc", source={"kind": "path", "path": str(folder)}, task="feature-extraction",
                   store=store)
    assert done.manifest.conversion["parity"]["cosine_min"] >= 0.999


def test_missing_head_weights_are_refused_not_randomly_filled(tmp_path: Path, store: Store) -> None:
    """A config that names no architecture, asked for a head its weights lack: refused at load."""
    folder = hf_models.build(tmp_path / "base", "BertConfig", "feature-extraction", **T)
    hf_models.set_architectures(folder, [])
    with pytest.raises(ConvertError) as err:
        convert(folder, name="base", source={"kind": "path", "path": str(folder)}, task="token-classification",
                store=store)
    assert "has no weights for the token-classification head" in err.value.message
    assert "classifier" in err.value.message and store.tags("base") == []


def test_a_family_without_the_head_in_transformers_is_a_clear_error(tmp_path: Path, store: Store) -> None:
    """ESM has no question-answering head in transformers: the error names it, never an internal error."""
    folder = hf_models.build(tmp_path / "esm", "EsmConfig", "feature-extraction", **T)
    hf_models.set_architectures(folder, [])
    with pytest.raises(ConvertError) as err:
        convert(folder, name="esm", source={"kind": "path", "path": str(folder)}, task="question-answering",
                store=store)
    assert err.value.message.startswith("'esm' has no question-answering head in transformers")


def test_a_family_torch_cannot_export_is_a_clear_error(tmp_path: Path) -> None:
    """X-MOD needs a language id no tokenizer gives: every exporter fails, and the error says for what."""
    from gpux.convert.export import export

    folder = hf_models.build_family(tmp_path / "xmod", "xmod", "text-classification")
    with pytest.raises(ConvertError) as err:
        export(folder, "text-classification", tmp_path / "model.onnx")
    msg = err.value.message
    assert msg.startswith("XmodForSequenceClassification (xmod) for text-classification: no exporter produced")
    assert "torchscript: ValueError: Input language unknown" in msg and "dynamo: " in msg
