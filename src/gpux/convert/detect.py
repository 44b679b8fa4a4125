"""Which task a Hugging Face model folder is for, from its own metadata — never from its name.

Evidence, strongest first: sentence-transformers' ``modules.json`` (embeddings),
the config's ``architectures`` suffix, the model card's ``pipeline_tag``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpux.errors import ConvertError
from gpux.jsonout import read_object

#: Task name -> what a config's architectures may end with.
ARCH_SUFFIXES: dict[str, tuple[str, ...]] = {
    "text-classification": ("ForSequenceClassification",),
    "feature-extraction": ("Model",),
}
PIPELINE_TAGS: dict[str, str] = {
    "text-classification": "text-classification",
    "sentiment-analysis": "text-classification",
    "feature-extraction": "feature-extraction",
    "sentence-similarity": "feature-extraction",
}


def read_json(path: Path) -> dict[str, Any]:
    return read_object(path, ConvertError, "the model folder looks incomplete; pull it again")


def pipeline_tag(folder: Path) -> str | None:
    """``pipeline_tag`` from the model card's YAML front matter, if any."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    m = re.match(r"^---\s*\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    if not m:
        return None
    tag = re.search(r"^pipeline_tag:\s*([\w-]+)\s*$", m.group(1), re.M)
    return tag.group(1) if tag else None


def detect_task(folder: Path, supported: tuple[str, ...]) -> str:
    """The task of the model in ``folder``; :class:`ConvertError` listing ``supported`` if unknown."""
    if (folder / "modules.json").is_file():
        return "feature-extraction"
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    for arch in config.get("architectures") or []:
        for task, suffixes in ARCH_SUFFIXES.items():
            if any(arch.endswith(s) for s in suffixes):
                return task
    tag = pipeline_tag(folder)
    if tag in PIPELINE_TAGS:
        return PIPELINE_TAGS[tag]
    found = ", ".join(config.get("architectures") or []) or "none"
    raise ConvertError(
        f"cannot tell a supported task for this model (architectures: {found}; pipeline_tag: {tag or 'none'})",
        hint=f"pass --task with one of: {', '.join(supported)}")


def refuse_remote_code(folder: Path) -> None:
    """Refuse a model that ships its own Python classes (``auto_map``): gpux never runs a model's code.

    Checked before the tokenizer or config is loaded, because transformers would
    otherwise stop with a ValueError about ``trust_remote_code`` (exit 1). A
    config with ``auto_map`` but a built-in ``model_type`` loads without the code.
    """
    from gpux.convert.architectures import ARCHITECTURES

    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    auto_map = config.get("auto_map")
    if auto_map and config.get("model_type") not in ARCHITECTURES:
        classes = ", ".join(sorted(str(v) for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map])))
        raise ConvertError(f"the model needs its own Python code to load (auto_map: {classes[:200]}); gpux does not "
                           "run a model's code (trust_remote_code)",
                           hint=f"use a model of a supported architecture: {', '.join(sorted(ARCHITECTURES))}")
