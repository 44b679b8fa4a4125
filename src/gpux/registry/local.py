"""Local Hugging Face folders as model sources: their store name, their content, and refs that are not models.

A folder is keyed by its resolved path *and* its content: the source record
carries a cheap ``fingerprint`` (relative path, size and mtime of every file
conversion reads) and a ``digest`` (sha256 over those files' bytes). A pull
whose fingerprint matches the stored one is up to date without reading a
byte; one whose fingerprint moved is hashed, and converts again only if the
digest moved too (so ``touch`` costs a hash, new weights cost a conversion).

Store names come from the folder's basename, sanitised to what the store
accepts (``My Model!`` -> ``my-model``). When another folder already owns that
name, the new one is stored as ``<name>-<8 hex of its path>`` and the pull says
so: two folders never replace each other's conversions.
"""

from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from gpux.errors import ModelNotFoundError, UsageError

#: What conversion reads from a folder (the Hub download list, pickle included: --allow-pickle reads it).
PATTERNS = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
            "vocab.json", "merges.txt", "modules.json", "sentence_bert_config.json",
            "config_sentence_transformers.json", "*/config.json", "README.md", "*.safetensors",
            "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "pytorch_model-*.bin")
#: File suffixes people hand to `gpux pull` that are not Hugging Face folders: what they are, what takes them.
FILE_KINDS: dict[str, tuple[str, str]] = {
    ".onnx": ("an ONNX model, already converted", "run it with gpux run FILE, or store it with gpux build DIR "
              "(a folder with a gpux.yml naming it)"),
    ".safetensors": ("a weights file without its config", "pull the folder that holds it with config.json "
                     "and tokenizer.json"),
    ".bin": ("a weights file without its config", "pull the folder that holds it with config.json"),
    ".json": ("a JSON file", "pull the folder that holds it"),
}


def files(folder: Path) -> list[Path]:
    """The files of ``folder`` conversion reads, sorted (so fingerprint and digest are stable)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.startswith(".") and any(fnmatch(rel, pat) for pat in PATTERNS):
            out.append(p)
    return out


def fingerprint(folder: Path) -> str:
    """sha256 of (path, size, mtime) of every file conversion reads: one ``stat`` each, no content read."""
    h = hashlib.sha256()
    for p in files(folder):
        st = p.stat()
        h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def digest(folder: Path) -> str:
    """sha256 over (path, content sha256) of every file conversion reads."""
    h = hashlib.sha256()
    for p in files(folder):
        f = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                f.update(chunk)
        h.update(f"{p.relative_to(folder).as_posix()}\0{f.hexdigest()}\n".encode())
    return h.hexdigest()


def sanitize(basename: str) -> str:
    """A store name from a folder's basename: lower case, runs of other characters become one ``-``."""
    name = re.sub(r"[^a-z0-9._-]+", "-", basename.lower())
    name = re.sub(r"^[^a-z0-9]+", "", name).rstrip("-.")[:96]
    return name or "model"


def source(folder: Path) -> dict[str, Any]:
    """The source record of a local folder, without its digest (see :func:`with_digest`)."""
    return {"kind": "local", "path": str(folder), "fingerprint": fingerprint(folder)}


def with_digest(record: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``record`` plus the folder's content digest: what a conversion stores."""
    return {**record, "digest": digest(folder)} if record.get("kind") == "local" else record


def same_content(stored: dict[str, Any], record: dict[str, Any], folder: Path) -> bool:
    """Whether a stored local source is this folder with the same content (hashing only if the stats moved)."""
    if stored.get("kind") != "local" or stored.get("path") != record.get("path") or "digest" not in stored:
        return False
    if stored.get("fingerprint") == record.get("fingerprint"):
        return True
    return bool(stored["digest"] == digest(folder))


def store_name(folder: Path, owners: dict[str, set[str]]) -> str:
    """The store name for ``folder``: its sanitised basename, unless another folder owns that name.

    ``owners`` maps each stored name to the local paths its manifests came from
    (non-local sources count as a foreign owner, ``""``).
    """
    base = sanitize(folder.name)
    for name, paths in owners.items():  # this folder is stored already: keep its name
        if str(folder) in paths and (name == base or name.startswith(base + "-")):
            return name
    if not owners.get(base, set()) - {str(folder)}:
        return base
    return f"{base[:87]}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def not_a_model(ref: str) -> None:
    """Refuse, before any network or conversion, a ``gpux pull`` argument that is a file or a missing path.

    Raises :class:`UsageError` for an existing file (saying what it is and which
    command takes it) and :class:`ModelNotFoundError` for a path that does not exist.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        what, hint = FILE_KINDS.get(path.suffix.lower(), ("a file, not a model folder",
                                                          "give a Hugging Face id (org/name) or a folder "
                                                          "with config.json"))
        raise UsageError(f"{ref} is {what}; gpux pull takes a Hugging Face id or model folder", hint=hint)
    if path.exists():
        return
    suffix = Path(ref).suffix.lower()
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref or suffix in FILE_KINDS:
        raise ModelNotFoundError(f"no such file or folder: {ref}",
                                 hint="check the path; a Hub id looks like org/name")


def owners(store: Any) -> dict[str, set[str]]:
    """Stored name -> the local folders its manifests were converted from (``""`` for any other source)."""
    from gpux.errors import GpuxError

    out: dict[str, set[str]] = {}
    for name, tag in store.names():
        try:
            src = store.manifest(f"{name}:{tag}").source
        except GpuxError:
            continue
        out.setdefault(name, set()).add(str(src.get("path", "")) if src.get("kind") == "local" else "")
    return out


def find_stored(store: Any, folder: Path, record: dict[str, Any], task: str | None = None) -> str | None:
    """``name:tag`` of a stored conversion of ``folder`` with its current content (and ``task``), if any."""
    from gpux.errors import GpuxError

    for name, tag in store.names():
        if task is not None and tag != task:
            continue
        try:
            if same_content(store.manifest(f"{name}:{tag}").source, record, folder):
                return f"{name}:{tag}"
        except GpuxError:
            continue
    return None
