"""What a text-generation bundle carries besides its graph: generation defaults, special tokens, chat template.

All of it is read from the model folder as transformers reads it (``generation_config.json``, then
``config.json``; ``tokenizer_config.json`` or ``chat_template.jinja`` for the template), so the run path
(which has no transformers) answers as ``model.generate`` and ``apply_chat_template`` would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpux.convert.detect import read_json
from gpux.generate.chat import find_template

#: generation_config.json sampling defaults gpux applies (the rest of that file is not used at run time).
SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/pad/unk token strings, as templates see them (``bos_token``, ``eos_token``...)."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = read_json(path).get(key)
            if isinstance(value, dict):  # an AddedToken written out
                value = value.get("content")
            if isinstance(value, str) and key not in found:
                found[key] = value
    return found


def facts(folder: Path, config: dict[str, Any], max_length: int) -> dict[str, Any]:
    """The ``generation`` section of task.json."""
    gen = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    eos = _ids(gen.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    bos = _ids(gen.get("bos_token_id")) or _ids(config.get("bos_token_id"))
    defaults = {k: gen[k] for k in SAMPLING_KEYS if k in gen and gen[k] is not None}
    return {
        "eos_token_ids": eos,
        "bos_token_id": bos[0] if bos else None,
        "context_length": max_length,
        "defaults": defaults,
        "special_tokens": special_tokens(folder),
        "chat_template": find_template(folder),
    }
