"""Which task a Hugging Face model folder is for, and which tasks it can do, from its own metadata — never its name.

Evidence, strongest first: sentence-transformers' ``modules.json`` (embeddings),
the config's ``architectures`` (the head class the weights were saved from),
the model card's ``pipeline_tag``. What a folder *can* do follows from its head:
the task of the head, plus embeddings (every head checkpoint holds the encoder
weights). Another head would start from random weights, so it is never offered.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpux.errors import ConvertError
from gpux.jsonout import read_object

#: Head class suffix -> task (transformers names heads ``<Family>For<Head>``).
ARCH_SUFFIXES: dict[str, str] = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
    "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation",  # GPT2LMHeadModel, OpenAIGPTLMHeadModel: checked before the bare "Model" rule
    "ForImageClassification": "image-classification",
    "ForImageClassificationWithTeacher": "image-classification",  # DeiT's distilled head
    "ForAudioClassification": "audio-classification",
    "ForCTC": "automatic-speech-recognition",
}
PIPELINE_TAGS: dict[str, str] = {
    "text-classification": "text-classification",
    "sentiment-analysis": "text-classification",
    "feature-extraction": "feature-extraction",
    "sentence-similarity": "feature-extraction",
    "fill-mask": "fill-mask",
    "token-classification": "token-classification",
    "ner": "token-classification",
    "question-answering": "question-answering",
    "text-ranking": "text-ranking",
    "text-generation": "text-generation",
    "text2text-generation": "text2text-generation",
    "image-to-text": "image-to-text",
    "translation": "text2text-generation",
    "summarization": "text2text-generation",
    "image-classification": "image-classification",
    "audio-classification": "audio-classification",
    "automatic-speech-recognition": "automatic-speech-recognition",
    "image-feature-extraction": "image-feature-extraction",
    "zero-shot-image-classification": "zero-shot-image-classification",
    "zero-shot-audio-classification": "zero-shot-audio-classification",
    "zero-shot-video-classification": "zero-shot-video-classification",
}
#: config.json keys that sentence-transformers' CrossEncoder writes (v4+, and older versions).
CROSS_ENCODER_KEYS = ("sentence_transformers", "sbert_ce_default_activation_function")


def read_json(path: Path) -> dict[str, Any]:
    return read_object(path, ConvertError, "the model folder looks incomplete; pull it again")


def folder_config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "config.json") if (folder / "config.json").is_file() else {}


def pipeline_tag(folder: Path) -> str | None:
    """``pipeline_tag`` from the model card's YAML front matter, if any."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    m = re.match(r"^---\s*\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    if not m:
        return None
    tag = re.search(r"^pipeline_tag:\s*([\w-]+)\s*$", m.group(1), re.MULTILINE)
    return tag.group(1) if tag else None


def num_labels(config: dict[str, Any]) -> int:
    id2label = config.get("id2label") or {}
    return len(id2label) or int(config.get("num_labels") or 2)


def is_cross_encoder(config: dict[str, Any]) -> bool:
    """A sentence-transformers CrossEncoder config, or a one-logit sequence classifier (a relevance score)."""
    return any(k in config for k in CROSS_ENCODER_KEYS) or num_labels(config) == 1


def is_base_model(arch: str) -> bool:
    """``BertModel``-style classes (no head); ``BertLMHeadModel`` and ``GPT2DoubleHeadsModel`` have one."""
    return arch.endswith("Model") and "Head" not in arch and "For" not in arch


def known_head(arch: str) -> bool:
    """Whether ``arch`` is a base model or a head gpux runs (its first task is then the head's own)."""
    return is_base_model(arch) or any(arch.endswith(s) for s in ARCH_SUFFIXES)


def describe(arch: str) -> str:
    """``BertForMultipleChoice is a multiple-choice model``; ``BertModel is an encoder without a task head``."""
    return f"{arch} is an encoder without a task head" if is_base_model(arch) else f"{arch} is a {head_of(arch)} model"


def head_of(arch: str) -> str:
    """The head an architecture class carries, in task-style words: BertForMultipleChoice -> multiple-choice."""
    head = arch.split("For", 1)[1] if "For" in arch else arch
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", head).lower()


def tasks_of(arch: str, config: dict[str, Any]) -> tuple[str, ...]:
    """The tasks a checkpoint saved from ``arch`` can do (its head's, then embeddings); () if none."""
    if config.get("is_encoder_decoder") and ("ForConditionalGeneration" in arch or arch.endswith("MTModel")
                                             or arch == "VisionEncoderDecoderModel"):
        # An encoder–decoder generates: text from text (T5, BART, Marian), from speech (Whisper), from images.
        if config.get("num_mel_bins"):
            return ("automatic-speech-recognition",)
        encoder = config.get("encoder")
        return ("image-to-text",) if isinstance(encoder, dict) and encoder.get("image_size") else ("text2text-generation",)
    text = config.get("text_config")
    if "ForConditionalGeneration" in arch and isinstance(config.get("vision_config"), dict) and isinstance(text, dict) \
            and text.get("is_decoder"):
        return ("image-to-text",)  # a vision model and a text decoder with cross-attention (BLIP)
    if is_base_model(arch) and isinstance(config.get("text_config"), dict):  # two towers: CLIP, SigLIP, CLAP
        if isinstance(config.get("vision_config"), dict):
            video = "num_frames" in config["vision_config"] or "mit_hidden_size" in config  # X-CLIP
            return ("zero-shot-video-classification",) if video else ("zero-shot-image-classification",)
        if isinstance(config.get("audio_config"), dict):
            return ("zero-shot-audio-classification",)
    if is_base_model(arch):
        return ("feature-extraction",)
    for suffix, task in ARCH_SUFFIXES.items():
        if arch.endswith(suffix):
            if task != "text-classification":
                return (task, "feature-extraction")
            if not is_cross_encoder(config):
                return ("text-classification", "feature-extraction")
            several = ("text-classification",) if num_labels(config) > 1 else ()
            return ("text-ranking", *several, "feature-extraction")
    return ("feature-extraction",) if "For" in arch or "Head" in arch else ()


def capabilities(folder: Path) -> tuple[str, tuple[str, ...]] | None:
    """(architecture, tasks it can do, best first), or None when the config names no architecture."""
    config = folder_config(folder)
    archs = [str(a) for a in config.get("architectures") or []]
    if not archs:
        return None
    tasks = tasks_of(archs[0], config)
    if (folder / "modules.json").is_file() and "feature-extraction" in tasks:  # sentence-transformers: embeddings
        tasks = ("feature-extraction", *(t for t in tasks if t != "feature-extraction"))
    return archs[0], tasks


def check_task(folder: Path, task: str) -> None:
    """:class:`ConvertError` when the model's head cannot do ``task`` (a ``--task`` the weights lack a head for)."""
    able = capabilities(folder)
    wanted = "feature-extraction" if task.endswith("feature-extraction") else task  # image-/audio- embeddings
    if wanted in ("audio-classification", "image-classification") and "text-classification" in (able[1] if able else ()):
        return  # an audio model's …ForSequenceClassification head
    if able is None or wanted in able[1]:
        return
    arch, tasks = able
    raise ConvertError(f"{describe(arch)}: it has no {task} head",
                       hint=f"it converts for: {', '.join(tasks)}" if tasks else
                       "gpux cannot convert this architecture for any task")


def detect_task(folder: Path, supported: tuple[str, ...]) -> str:
    """The task of the model in ``folder``; :class:`ConvertError` naming its architecture if unsupported."""
    if (folder / "modules.json").is_file():
        return "feature-extraction"
    able = capabilities(folder)
    generates = bool(able and able[1] and able[1][0] in ("text2text-generation", "automatic-speech-recognition", "image-to-text"))
    if able is not None and (known_head(able[0]) or generates) and able[1][0] in supported:
        return able[1][0]  # an unknown head's tasks hold only the encoder: suggested, never picked silently
    tag = pipeline_tag(folder)
    if able is None and tag in PIPELINE_TAGS and PIPELINE_TAGS[tag] in supported:
        return PIPELINE_TAGS[tag]
    if able is not None:
        arch, tasks = able
        usable = [t for t in tasks if t in supported]
        raise ConvertError(f"{describe(arch)}, a task gpux does not support "
                           f"(pipeline_tag: {tag or 'none'})",
                           hint=(f"it converts for: {', '.join(usable)} (pass --task)" if usable else
                                 f"gpux supports: {', '.join(supported)}"))
    raise ConvertError(f"cannot tell a supported task for this model (architectures: none; "
                       f"pipeline_tag: {tag or 'none'})", hint=f"pass --task with one of: {', '.join(supported)}")


def refuse_remote_code(folder: Path) -> None:
    """Refuse a model that ships its own Python classes (``auto_map``): gpux never runs a model's code.

    Checked before the tokenizer or config is loaded, because transformers would
    otherwise stop with a ValueError about ``trust_remote_code`` (exit 1). A
    config with ``auto_map`` but a ``model_type`` transformers knows loads without the code.
    """
    config = folder_config(folder)
    auto_map = config.get("auto_map")
    if auto_map and not known_model_type(config.get("model_type")):
        classes = ", ".join(sorted(str(v) for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map])))
        raise ConvertError(f"the model needs its own Python code to load (auto_map: {classes[:200]}); gpux does not "
                           "run a model's code (trust_remote_code)",
                           hint="use a model whose model_type transformers has built in")


def known_model_type(model_type: Any) -> bool:
    """Whether the installed transformers has ``model_type`` built in."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES
