"""Per-architecture export facts, as a table: a new encoder family is one row, not a branch.

``inputs`` are the tensors the exported graph takes, in order; they are what the
family's tokenizer produces (RoBERTa-style tokenizers emit no token_type_ids).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    model_type: str
    inputs: tuple[str, ...]
    #: Position ids reserved before the first token (RoBERTa family: padding_idx + 1).
    position_offset: int = 0
    #: onnxruntime.transformers optimizer model type (its fusion patterns) for --optimize O2/O3.
    ort_model_type: str = "bert"


_TEXT3 = ("input_ids", "attention_mask", "token_type_ids")
_TEXT2 = ("input_ids", "attention_mask")

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("bert", _TEXT3),
    Architecture("distilbert", _TEXT2),
    Architecture("roberta", _TEXT2, position_offset=2),
    Architecture("xlm-roberta", _TEXT2, position_offset=2),
    Architecture("camembert", _TEXT2, position_offset=2),
    Architecture("mpnet", _TEXT2),
    Architecture("electra", _TEXT3),
    Architecture("albert", _TEXT3),
)}
