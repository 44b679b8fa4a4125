"""State and helpers shared by the commands (kept import-light)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpux.store.bundle import Bundle

#: Set by the root callback: -v shows tracebacks and onnxruntime's warnings.
state: dict[str, Any] = {"verbose": False}


def ort_log_level() -> int:
    """onnxruntime's log level for commands: warnings (2) with -v, otherwise nothing below fatal (4).

    gpux turns every onnxruntime failure into its own one-line error, so onnxruntime's
    coloured error lines (a failed load's "could not write a profile") only repeat it.
    """
    return 2 if state["verbose"] else 4


def err_console() -> Any:
    """A Rich console on stderr: tables and progress never mix into JSON on stdout."""
    from rich.console import Console

    return Console(stderr=True)


def bundle_or_pull(ref: str) -> Bundle:
    """The bundle of ``ref``; a Hub id or Hugging Face folder not converted yet is pulled first, in a child process.

    A stored model with a corrupt or missing blob is repaired from its source
    the same way (gpux.store.repair). The child keeps torch and transformers out
    of this process: `gpux run` never imports them. A stored model read here
    counts as a cache hit in ``gpux ls --stats``.
    """
    import subprocess
    import sys

    from gpux.errors import ModelNotFoundError
    from gpux.store import stats
    from gpux.store.local import Store, home, looks_like_hub_id
    from gpux.store.resolve import resolve
    from gpux.store.repair import MissingBlobError, get_or_repair

    def say(what: str, exc: Exception) -> None:
        missing = isinstance(exc, MissingBlobError)
        why = "a stored file was missing" if missing else "a stored file was corrupt (deleted)"
        err_console().print(f"{what}: {why}; pulling it again", markup=False, highlight=False)

    from gpux.registry.gguf import is_gguf

    folder = Path(ref).expanduser()
    hf_folder = (folder / "config.json").is_file() or (folder.is_file() and is_gguf(folder))
    try:
        if hf_folder:  # a Hugging Face folder or GGUF file: its stored conversion, if the content still matches
            stored = _stored_folder(ref)
            if stored is None:
                raise ModelNotFoundError(f"{ref} is not converted yet")
            bundle = get_or_repair(stored, Store(), on_repair=say)
        elif folder.exists() or ref.startswith((".", "/", "~")) or ref.endswith(".onnx") or ref.count("/") > 1:
            bundle = resolve(ref)  # a file, a bundle or gpux.yml folder, or a path that is not there
        else:
            store = Store()
            name = store.find_revision(*ref.split("@", 1)) if "@" in ref else ref
            bundle = get_or_repair(name, store, on_repair=say)
    except ModelNotFoundError:
        if not (looks_like_hub_id(ref) or hf_folder):
            raise
        err_console().print(f"{ref}: not converted yet; pulling it", markup=False, highlight=False)
        child = subprocess.run([sys.executable, "-m", "gpux", "pull", ref], stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:
            raise SystemExit(child.returncode) from None
        return resolve(child.stdout.strip().splitlines()[-1])  # pull prints the stored name:tag last
    if bundle.manifest.files:  # a stored model, not a bare file: count the cache hit
        stats.record(home(), f"{bundle.name}:{bundle.manifest.tag}", hit=True)
    return bundle


def _stored_folder(ref: str) -> str | None:
    """``name:tag`` of the stored conversion of a local Hugging Face folder (or GGUF file) ``ref`` with its
    current content."""
    import contextlib

    from gpux.errors import GpuxError
    from gpux.registry import gguf, local
    from gpux.store.local import Store, sha256_file

    folder = Path(ref).expanduser()
    if folder.is_file():  # a GGUF file: the conversion of the same bytes, wherever the file now lives
        record = {"kind": "gguf", "sha256": sha256_file(folder)}
        store = Store()
        for name, tag in store.names():
            with contextlib.suppress(GpuxError):
                if gguf.same_source(store.manifest(f"{name}:{tag}").source, record) and tag == "text-generation":
                    return f"{name}:{tag}"
        return None
    if not (folder / "config.json").is_file():
        return None
    folder = folder.resolve()
    return local.find_stored(Store(), folder, local.source(folder))
