"""State and helpers shared by the commands (kept import-light)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpux.store.bundle import Bundle

#: Set by the root callback: -v shows tracebacks and onnxruntime's warnings.
state: dict[str, Any] = {"verbose": False}


def ort_log_level() -> int:
    """onnxruntime log level: warnings (2) with -v, errors only (3) otherwise."""
    return 2 if state["verbose"] else 3


def err_console() -> Any:
    """A Rich console on stderr: tables and progress never mix into JSON on stdout."""
    from rich.console import Console

    return Console(stderr=True)


def bundle_or_pull(ref: str) -> Bundle:
    """The bundle of ``ref``; a Hub id or Hugging Face folder not converted yet is pulled first, in a child process.

    The child keeps torch and transformers out of this process: `gpux run` never
    imports them. A stored model read here counts as a cache hit in ``gpux ls --stats``.
    """
    import subprocess
    import sys

    from gpux.errors import ModelNotFoundError
    from gpux.store import stats
    from gpux.store.blobs import CorruptBlobError
    from gpux.store.local import home, looks_like_hub_id, resolve

    try:
        bundle = resolve(_stored_folder(ref) or ref)
    except (ModelNotFoundError, CorruptBlobError) as exc:
        folder = Path(ref).expanduser()
        if not (looks_like_hub_id(ref) or (folder / "config.json").is_file()):
            raise
        why = "a stored file was corrupt (deleted)" if isinstance(exc, CorruptBlobError) else "not converted yet"
        err_console().print(f"{ref}: {why}; pulling it", markup=False, highlight=False)
        child = subprocess.run([sys.executable, "-m", "gpux", "pull", ref], stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:
            raise SystemExit(child.returncode) from None
        return resolve(child.stdout.strip().splitlines()[-1])  # pull prints the stored name:tag last
    if bundle.manifest.files:  # a stored model, not a bare file: count the cache hit
        stats.record(home(), f"{bundle.name}:{bundle.manifest.tag}", hit=True)
    return bundle


def _stored_folder(ref: str) -> str | None:
    """``name:tag`` of the stored conversion of a local Hugging Face folder ``ref``, if there is one."""
    from gpux.errors import GpuxError
    from gpux.store.local import Store

    folder = Path(ref).expanduser()
    if not (folder / "config.json").is_file():
        return None
    store, name = Store(), folder.resolve().name.lower()
    for tag in store.tags(name):
        try:
            if store.manifest(f"{name}:{tag}").source == {"kind": "local", "path": str(folder.resolve())}:
                return f"{name}:{tag}"
        except GpuxError:
            continue
    return None
