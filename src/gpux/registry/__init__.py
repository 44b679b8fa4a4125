"""The registry box: where a model's original files come from.

:func:`locate` turns a user's reference into a local folder in Hugging Face
layout plus a record of where it came from, trying in order: a local folder,
an installed model package (:mod:`gpux.registry.packages`), the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpux.errors import ModelNotFoundError, UsageError
from gpux.registry import packages


@dataclass
class Located:
    """A model folder in HF layout and the JSON record of its origin."""

    name: str
    folder: Path
    source: dict[str, Any] = field(default_factory=dict)


def split_revision(ref: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``)."""
    repo, at, rev = ref.partition("@")
    return repo, (rev or None) if at else None


def locate(ref: str, revision: str | None = None, allow_pickle: bool = False,
           tqdm_class: type | None = None) -> Located:
    """Find the files of ``ref``; raises :class:`ModelNotFoundError` naming what was tried."""
    from gpux.registry import local
    from gpux.store.local import valid_name

    repo, rev = split_revision(ref)
    revision = revision or rev
    path = Path(repo).expanduser()
    if path.is_dir():
        from gpux.registry import ct2

        if ct2.is_ct2_whisper(path):  # faster-whisper's CTranslate2 folder: rebuilt once as an HF folder
            return ct2.locate(path)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)",
                                     hint="point at a folder with config.json, tokenizer.json and weights")
        folder = path.resolve()
        # The name is provisional: the caller picks the final one against the store (local.store_name).
        return Located(local.sanitize(folder.name), folder, local.source(folder))
    from gpux.registry import gguf

    if gguf.is_gguf(path):  # llama.cpp weights: rebuilt once as an HF folder under $GPUX_HOME/sources
        return gguf.locate(path)
    local.not_a_model(ref)
    if not valid_name(repo):
        raise UsageError(f"{repo!r} is neither a folder nor a Hugging Face id",
                         hint="a Hub id looks like org/name (letters, digits, '.', '_', '-')")
    found = packages.find(repo)
    if found is not None and revision is None:
        folder, dist = found
        return Located(repo, folder, {"kind": "package", "repo": repo, "package": dist})
    from gpux.registry import hub

    return hub.fetch(repo, revision, allow_pickle, tqdm_class)


def source_folder(source: dict[str, Any]) -> Path | None:
    """The local copy of a stored model's original files, found without the network; None if it is gone.

    What PyTorch baselines load: the folder gpux converted from (a local folder,
    an installed model package, or the Hub cache snapshot at the recorded commit).
    """
    kind = source.get("kind")
    if kind == "local":  # the folder as it is now (its content may have moved on since the conversion)
        path = Path(str(source.get("path", "")))
        return path if (path / "config.json").is_file() else None
    if kind == "package":
        found = packages.find(str(source.get("repo")))
        return found[0] if found is not None else None
    if kind == "hf":
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(str(source["repo"]), revision=source.get("sha") or source.get("revision"),
                                            local_files_only=True))
        except Exception:  # not in the cache (or the cache moved): the caller says what is missing
            return None
        return folder if (folder / "config.json").is_file() else None
    if kind == "gguf":  # the folder rebuilt from the file, keyed by its sha256 (the file itself may be gone)
        from gpux.registry import gguf

        return gguf.cached_folder(str(source.get("sha256", "")))
    if kind == "ct2":  # likewise for a CTranslate2 folder
        from gpux.registry import ct2

        return ct2.cached_folder(str(source.get("sha256", "")))
    return None
