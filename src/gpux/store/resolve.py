"""A user's MODEL argument -> a bundle: a file, a folder, or a stored name.

Separate from :mod:`gpux.store.local` (the store folder itself) because most of what it tells apart is not
in the store: an ``.onnx`` path, a bundle folder, a folder with a gpux.yml.
"""

from __future__ import annotations

from pathlib import Path

from gpux.errors import ModelNotFoundError, UsageError
from gpux.store.bundle import MANIFEST, Bundle
from gpux.store.local import Store


def resolve(ref: str, store: Store | None = None) -> Bundle:
    """Turn a user's MODEL argument into a bundle.

    In order: an existing ``.onnx`` file; a folder with a manifest; a folder
    with a ``gpux.yml`` (used as-is, without building); a stored model
    ``name[:tag]``.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise UsageError(f"{path} is not an .onnx file",
                             hint="give an .onnx file, a bundle folder or a built model name")
        return Bundle.from_onnx(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return Bundle.from_dir(path)
        from gpux.config import find_config, load_config, manifest_from_config

        cfg_path = find_config(path)
        if cfg_path is not None:
            cfg = load_config(cfg_path)
            manifest, files = manifest_from_config(cfg, cfg_path.parent)
            return Bundle(files[manifest.graphs[manifest.default_graph]].parent, manifest)
        raise ModelNotFoundError(f"{path} has neither {MANIFEST} nor gpux.yml",
                                 hint="point at an .onnx file inside it, or add a gpux.yml")
    looks_like_path = ref.startswith((".", "/", "~")) or ref.endswith(".onnx") or ref.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(f"no such file or folder: {ref}", hint="check the path")
    store = store or Store()
    if "@" in ref:
        return store.get(store.find_revision(*ref.split("@", 1)))
    return store.get(ref)
