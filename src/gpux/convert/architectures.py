"""The export facts of a model, derived from the loaded model itself; a table holds only genuine overrides.

Why derived: a family table meant every new encoder was a code change, and a
wrong row (MPNet's position offset was 0 in it; the model reserves 2) went
unnoticed. Each fact comes from where the model itself keeps it:

- graph inputs: the model's ``forward`` parameters that the tokenizer emits
  (``model_input_names``), in ``forward`` order. ``token_type_ids`` is left out
  when the model's type table has one row (``type_vocab_size`` 1, RoBERTa): the
  ids carry nothing, and a pair's ids of 1 would index past the table;
- position offset: the position id the model itself gives a text's first
  token, observed on its position table during one four-token forward pass.
  fairseq's scheme (RoBERTa, XLM-R, MPNet, I-BERT, ...) starts at
  ``padding_idx + 1``, so that many rows are never available to text;
- optimiser model type: ``config.model_type`` when onnxruntime's transformer
  optimiser has fusions for it (``optimizer.MODEL_TYPES``), else ``"bert"``,
  whose patterns are the generic encoder ones (attention, layer norm, GELU);
  a graph they do not match keeps onnxruntime's generic graph optimisations.
  Which of the two happened is recorded (``ort_model_type_source``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from gpux.errors import ConvertError

#: The text tensors gpux's tokenizer path can feed (tasks/text.py); other forward inputs are left at defaults.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Module names of absolute position tables (transformers' two spellings).
POSITION_TABLES = ("position_embeddings", "embed_positions")
#: The optimiser type for model types onnxruntime has no fusions of its own for.
FALLBACK_ORT_MODEL_TYPE = "bert"


@dataclass(frozen=True)
class Architecture:
    model_type: str
    inputs: tuple[str, ...]
    #: Position ids reserved before the first token (padding_idx + 1 where positions skip padding).
    position_offset: int = 0
    #: onnxruntime.transformers optimizer model type (its fusion patterns) for --optimize O2/O3.
    ort_model_type: str = FALLBACK_ORT_MODEL_TYPE
    #: "model_type" (onnxruntime knows the family), "fallback" (generic encoder patterns) or "override".
    ort_model_type_source: str = "fallback"
    #: The loaded class, e.g. "BertForMaskedLM", for messages.
    class_name: str = ""


@dataclass(frozen=True)
class Override:
    """A fact the derivation gets wrong for one model type, with why."""

    why: str
    inputs: tuple[str, ...] | None = None
    position_offset: int | None = None
    ort_model_type: str | None = None


#: model_type -> override. Empty: every family measured (benchmarks/results/families.md) derives correctly.
OVERRIDES: dict[str, Override] = {}


def graph_inputs(model: Any, tokenizer_inputs: list[str]) -> tuple[str, ...]:
    """The model's forward parameters the tokenizer emits, in forward order (see the module docstring)."""
    params = list(inspect.signature(model.forward).parameters)
    inputs = [n for n in params if n in TEXT_INPUTS and n in tokenizer_inputs]
    if int(getattr(model.config, "type_vocab_size", 2) or 0) <= 1 and "token_type_ids" in inputs:
        inputs.remove("token_type_ids")
    if "input_ids" not in inputs:
        raise ConvertError(f"{type(model).__name__} takes no input_ids from its tokenizer "
                           f"(forward: {', '.join(params[:6])}; tokenizer: {', '.join(tokenizer_inputs)})",
                           hint="gpux converts text models whose tokenizer feeds input_ids")
    return tuple(inputs)


def position_offset(model: Any) -> int:
    """The first position row a text's first token reads (``padding_idx + 1`` where positions skip padding).

    Observed, not looked up: a forward hook on the position embedding records the position ids the model
    itself computes for a four-token text. Families without a position table (relative or rotary positions
    computed elsewhere) read 0.
    """
    import torch

    seen: list[Any] = []

    def record(_module: Any, args: tuple[Any, ...], _out: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
            seen.append(args[0])

    hooks = [m.register_forward_hook(record) for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in POSITION_TABLES]
    if not hooks:
        return 0
    pad = getattr(model.config, "pad_token_id", None)
    ids = torch.full((1, 4), 6 if pad == 5 else 5, dtype=torch.long)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception:  # a model this call cannot drive fails its export too, with the exporter's message
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    return int(min(int(t.min()) for t in seen)) if seen else 0


def ort_model_type(model_type: str) -> tuple[str, str]:
    """(optimiser model type, where it came from) for ``model_type``."""
    try:
        from onnxruntime.transformers.optimizer import MODEL_TYPES
    except ImportError:  # an onnxruntime build without the transformers tools: recorded, used by nothing
        return FALLBACK_ORT_MODEL_TYPE, "fallback"
    if model_type in MODEL_TYPES:
        return model_type, "model_type"
    return FALLBACK_ORT_MODEL_TYPE, "fallback"


def derive(model: Any, tokenizer_inputs: list[str]) -> Architecture:
    """The export facts of the loaded ``model`` (see the module docstring), overrides applied last."""
    model_type = str(model.config.model_type)
    ort_type, source = ort_model_type(model_type)
    arch = Architecture(model_type, graph_inputs(model, tokenizer_inputs), position_offset(model), ort_type, source,
                        type(model).__name__)
    override = OVERRIDES.get(model_type)
    if override is None:
        return arch
    return Architecture(model_type, override.inputs or arch.inputs,
                        arch.position_offset if override.position_offset is None else override.position_offset,
                        override.ort_model_type or arch.ort_model_type,
                        "override" if override.ort_model_type else arch.ort_model_type_source, arch.class_name)
