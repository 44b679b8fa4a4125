"""The tasks box: text in -> tensors -> session -> answers out, one module per task.

A new task is a module here plus one row in :data:`TASKS`. Nothing here imports
torch or transformers: tokenization uses the ``tokenizers`` library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from gpux.errors import UsageError

if TYPE_CHECKING:
    from gpux.engine.model import Model

#: Task name -> "module:class" implementing it.
TASKS: dict[str, str] = {
    "feature-extraction": "gpux.tasks.embeddings:Embeddings",
    "text-classification": "gpux.tasks.classification:Classifier",
    "fill-mask": "gpux.tasks.fill_mask:FillMask",
    "token-classification": "gpux.tasks.token_classification:TokenClassifier",
    "question-answering": "gpux.tasks.question_answering:QuestionAnswering",
    "text-ranking": "gpux.tasks.ranking:Ranker",
    "text-generation": "gpux.tasks.generation:Generation",
    "text2text-generation": "gpux.tasks.text2text:Text2Text",
    "image-to-text": "gpux.tasks.captioning:Captioner",
    "image-classification": "gpux.tasks.image_classification:ImageClassifier",
    "audio-classification": "gpux.tasks.audio_classification:AudioClassifier",
    "automatic-speech-recognition": "gpux.tasks.speech_recognition:SpeechRecognizer",
    "image-feature-extraction": "gpux.tasks.media_embeddings:ImageEmbeddings",
    "audio-feature-extraction": "gpux.tasks.media_embeddings:AudioEmbeddings",
    "zero-shot-image-classification": "gpux.tasks.zero_shot:ZeroShotImageClassifier",
    "zero-shot-audio-classification": "gpux.tasks.zero_shot:ZeroShotAudioClassifier",
    "zero-shot-video-classification": "gpux.tasks.zero_shot_video:ZeroShotVideoClassifier",
}

#: Tasks an encoder–decoder bundle (graphs "encoder" and "decoder") runs with another class than the
#: single-graph model of the same task: Whisper-style speech recognition generates, CTC does not.
SEQ2SEQ_TASKS: dict[str, str] = {
    "automatic-speech-recognition": "gpux.tasks.whisper:SpeechToText",
}


class Task(Protocol):
    #: The key of the answer in a response ("embeddings", "predictions").
    answer_key: str
    #: What one answer is, for throughput figures ("vectors" -> vectors/s, "items" -> items/s).
    unit: str

    def items(self, payload: dict[str, Any]) -> list[Any]:
        """The payload's inputs as a list of items, checked before anything is queued: the unit the server's
        batcher merges requests into (a text; a pair; a question with its context). Per-request
        parameters (top_k, aggregation_strategy...) travel inside each item, so one batch can hold
        requests that asked for different ones."""
        ...

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The answer for a ``{"inputs": ..., "truncate": bool}`` payload; texts over the model's
        limit are cut with a :class:`~gpux.tasks.text.TruncationWarning`, or refused with ``"truncate": false``."""
        ...

    def run_batch(self, items: list[Any], truncate: bool | None = None) -> list[Any]:
        """One answer per item; what the server's dynamic batcher merges requests into."""
        ...

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        """``run_batch`` plus the tokens each item used, for usage fields."""
        ...


def for_model(model: Model) -> Task | None:
    """The task pipeline for ``model``'s manifest task, or None for a raw-tensor model."""
    m = model.bundle.manifest
    cls = task_class(m.task, seq2seq={"encoder", "decoder"} <= set(m.graphs))
    return cls(model) if cls is not None else None  # type: ignore[no-any-return]


def task_class(name: str | None, seq2seq: bool = False) -> type | None:
    """The class implementing task ``name`` (imported; ``seq2seq``: for an encoder–decoder bundle), or None
    for a raw-tensor model."""
    if name is None or name not in TASKS:
        return None
    module, _, cls = ((SEQ2SEQ_TASKS.get(name) if seq2seq else None) or TASKS[name]).partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def unit_of(name: str | None) -> str:
    """Throughput unit of task ``name``; a raw-tensor model counts rows of its batch as items."""
    cls = task_class(name)
    return str(getattr(cls, "unit", "items")) if cls is not None else "items"


def texts(payload: dict[str, Any]) -> list[str]:
    """``{"inputs": "one"}`` or ``{"inputs": ["a", "b"]}`` -> a list of strings, or :class:`UsageError`."""
    if "inputs" not in payload:
        raise UsageError('the input needs an "inputs" key', hint='give {"inputs": "text"} or {"inputs": ["a", "b"]}')
    value = payload["inputs"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise UsageError('"inputs" must be a string or a non-empty list of strings',
                         hint='give {"inputs": ["first text", "second text"]}')
    return items


def truncate_flag(payload: dict[str, Any]) -> bool:
    """The payload's ``"truncate"`` (default true: cut long texts, with a warning); false refuses them."""
    value = payload.get("truncate", True)
    if not isinstance(value, bool):
        raise UsageError(f'"truncate" must be true or false, not {value!r}',
                         hint='"truncate": false refuses texts longer than the model takes')
    return value


def text_or_pairs(payload: dict[str, Any]) -> list[str | tuple[str, str]]:
    """Texts, or sentence pairs as Hugging Face's text-classification pipeline takes them:
    ``{"inputs": {"text": "a", "text_pair": "b"}}`` or a list of such objects (NLI, cross-encoders)."""
    if "inputs" not in payload:
        raise UsageError('the input needs an "inputs" key', hint='give {"inputs": "text"} or {"inputs": ["a", "b"]}')
    value = payload["inputs"]
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list) or not items:
        raise UsageError('"inputs" must be a text, a {"text", "text_pair"} object or a non-empty list of them',
                         hint='give {"inputs": [{"text": "a premise", "text_pair": "a hypothesis"}]}')
    return [_text_or_pair(x, i) for i, x in enumerate(items)]


def _text_or_pair(x: Any, i: int) -> str | tuple[str, str]:
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and isinstance(x.get("text"), str) and set(x) <= {"text", "text_pair"}:
        pair = x.get("text_pair")
        if pair is None:
            return str(x["text"])
        if isinstance(pair, str):
            return (x["text"], pair)
    raise UsageError(f"input {i} must be a text or a {{\"text\": ..., \"text_pair\": ...}} object of strings",
                     hint='e.g. {"inputs": [{"text": "a premise", "text_pair": "a hypothesis"}]}')


def parameters(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload's ``"parameters"`` object (Hugging Face's Inference API shape), empty when absent."""
    value = payload.get("parameters", {})
    if not isinstance(value, dict):
        raise UsageError('"parameters" must be an object', hint='e.g. "parameters": {"top_k": 3}')
    return value


def int_parameter(params: dict[str, Any], name: str, default: int, low: int, high: int = 1 << 30) -> int:
    """An integer parameter in [low, high], or :class:`UsageError` naming it."""
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f'"{name}" must be an integer from {low} to {high}, not {value!r}',
                         hint=f'e.g. "parameters": {{"{name}": {default}}}')
    return value


def known_parameters(params: dict[str, Any], known: tuple[str, ...], task: str) -> None:
    """Refuse a parameter this task does not take: a typo must not be silently ignored."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise UsageError(f"{task} takes no parameter {unknown[0]!r}",
                         hint=f"its parameters: {', '.join(known) or 'none'}")
