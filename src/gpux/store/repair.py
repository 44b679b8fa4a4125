"""Repairing a stored model whose blobs are corrupt or missing, from the source it was made from.

Used by ``gpux run``, ``gpux verify`` and the server's model manager. The
repair is a ``python -m gpux pull ...`` child process: the run and serve
processes must never import torch or transformers, and a pull already knows
how to fetch, convert, verify and publish atomically. What cannot be repaired
(a built model, a variant whose base source is gone, the Hub unreachable)
is a :class:`~gpux.store.blobs.CorruptBlobError` whose message names the model
and what to do, never a filesystem path: the server sends it to clients.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

from gpux.store.blobs import CorruptBlobError, MissingBlobError

if TYPE_CHECKING:
    from gpux.store.bundle import Bundle, Manifest
    from gpux.store.local import Store


def pull_args(manifest: Manifest) -> list[str] | None:
    """Arguments of the ``gpux pull`` that makes ``manifest`` again, or None if no pull can (a built model)."""
    src: dict[str, Any] = manifest.source
    kind = src.get("kind")
    if kind in ("hf", "package"):
        args = [str(src["repo"])]
        if kind == "hf" and src.get("revision"):
            args += ["--revision", str(src["revision"])]
    elif kind in ("local", "gguf") and src.get("path"):
        args = [str(src["path"])]
    else:
        return None
    conv = manifest.conversion
    base_tag = str(conv.get("base", "")).rpartition(":")[2] or manifest.tag
    args += ["--task", base_tag]
    if conv.get("base"):  # a variant: the same steps on top of its base
        if conv.get("optimize"):
            args += ["--optimize", str(conv["optimize"])]
        if conv.get("dtype") == "fp16":
            args += ["--dtype", "fp16"]
        if conv.get("quantize"):
            args += ["--quantize", str(conv["quantize"])]
        floors = conv.get("parity_vs_fp32") or {}  # the floors it was accepted at, loosened or not
        if floors.get("threshold_cosine") is not None:
            args += ["--min-cosine", str(floors["threshold_cosine"])]
        if floors.get("threshold_argmax_agreement") is not None:
            args += ["--min-agreement", str(floors["threshold_argmax_agreement"])]
    return args


def repair(store: Store, ref: str, why: CorruptBlobError) -> str:
    """Pull ``ref`` (``name:tag``) again in a child process; returns the repaired ``name:tag``.

    Raises a :class:`CorruptBlobError` (or :class:`MissingBlobError`) that says
    why the model stays broken when no pull can make it or the pull fails.
    """
    manifest = store.manifest(ref)
    args = pull_args(manifest)
    kind = type(why) if isinstance(why, CorruptBlobError) else CorruptBlobError
    if args is None:
        raise kind(f"model {ref} is damaged ({why.message}) and was built, not pulled",
                   hint="build the model again with gpux build DIR")
    child = subprocess.run([sys.executable, "-m", "gpux", "pull", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=_child_env(store))
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
        shown = ["FOLDER" if a == manifest.source.get("path") else a for a in args]
        raise kind(f"model {ref} is damaged ({why.message}) and could not be repaired: {_no_paths(last)}",
                   hint=f"run gpux pull {' '.join(shown)} when its source is reachable"
                        + (" (FOLDER: the folder it was converted from)" if "FOLDER" in shown else ""))
    lines = child.stdout.strip().splitlines()
    return lines[-1] if lines else ref


def get_or_repair(ref: str, store: Store | None = None, on_repair: Any = None) -> Bundle:
    """The verified bundle of the stored ``ref``, repaired from its source first if a blob is bad or gone.

    ``on_repair(ref, error)`` is called before a repair starts (the CLI says
    "pulling it"). Raises what :meth:`Store.get` raises for anything else.
    """
    from gpux.store.local import Store

    store = store or Store()
    try:
        return store.get(ref)
    except CorruptBlobError as exc:  # MissingBlobError included
        manifest = store.manifest(ref)
        canonical = f"{manifest.name}:{manifest.tag}"
        if on_repair is not None:
            on_repair(canonical, exc)
        return store.get(repair(store, canonical, exc))


def _no_paths(text: str) -> str:
    """``text`` with absolute paths replaced by ``<path>``: the server sends repair errors to clients."""
    import re

    return re.sub(r"(?<![\w.-])(?:/|~/)[^\s:()'\"]+", "<path>", text)


def _child_env(store: Store) -> dict[str, str]:
    import os

    return {**os.environ, "GPUX_HOME": str(store.root)}


__all__ = ["CorruptBlobError", "MissingBlobError", "get_or_repair", "pull_args", "repair"]
