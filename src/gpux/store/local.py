"""Built models under ``$GPUX_HOME`` (default ``~/.gpux``), and turning a user's MODEL into a bundle.

Layout::

    $GPUX_HOME/
      models/<name>/<tag>/     one bundle folder per built model (see gpux.store.bundle)
      tmp/                     staging; a bundle is assembled here, then renamed into place

Contract: :meth:`Store.publish` is atomic. A reader sees the old bundle or the
new one, never a half-copied folder; a failure mid-copy leaves only a staging
folder in ``tmp/`` that the next publish removes. Files are hashed (sha256)
while they are copied and the digests land in the manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from gpux._version import __version__
from gpux.errors import ModelNotFoundError, StoreError, UsageError
from gpux.store.bundle import MANIFEST, Bundle, Manifest

# A local name, or a Hugging Face id "org/name"; no segment may start with "." (no "..").
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20

#: Test hook: called with the staging folder just before it is renamed into place.
before_publish: Callable[[Path], None] | None = None


def home() -> Path:
    """The store root: ``$GPUX_HOME`` or ``~/.gpux``."""
    env = os.environ.get("GPUX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".gpux"


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``name[:tag]`` and validate both; raises :class:`UsageError` naming the rule.

    The tag is "" when none was given: :meth:`Store.get` then picks ``latest``
    or the only tag there is.
    """
    name, colon, tag = ref.partition(":")
    if not _NAME.match(name):
        raise UsageError(f"invalid model name {name!r}",
                         hint="use letters, digits, '.', '_' and '-' (and one '/' as in org/name)")
    if colon and not _TAG.match(tag):
        raise UsageError(f"invalid tag {tag!r}", hint="use letters, digits, '.', '_' and '-'")
    return name, tag


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """The folder of built models. Safe to share between processes for reading."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else home()

    def path(self, name: str, tag: str = "latest") -> Path:
        return self.root / "models" / name / tag

    def get(self, ref: str) -> Bundle:
        """The bundle built as ``name[:tag]``; :class:`ModelNotFoundError` if there is none."""
        name, tag = parse_ref(ref)
        tag = tag or self._default_tag(name)
        folder = self.path(name, tag)
        if not (folder / MANIFEST).is_file():
            raise ModelNotFoundError(
                f"no model {ref!r}: not a file or folder, and not in the store {self.root}",
                hint="pull it with gpux pull ORG/NAME, build it with gpux build DIR, or give an .onnx path")
        return Bundle.from_dir(folder)

    def tags(self, name: str) -> list[str]:
        folder = self.root / "models" / name
        return sorted(p.name for p in folder.iterdir() if (p / MANIFEST).is_file()) if folder.is_dir() else []

    def _default_tag(self, name: str) -> str:
        tags = self.tags(name)
        if "latest" in tags or not tags:
            return "latest"
        if len(tags) == 1:
            return tags[0]
        raise UsageError(f"model {name!r} has several tags: {', '.join(tags)}", hint=f"say which: {name}:{tags[0]}")

    def publish(self, manifest: Manifest, files: Mapping[str, Path]) -> Bundle:
        """Copy ``files`` (name in bundle -> source path) and ``manifest`` in as one bundle.

        Replaces an existing bundle of the same name and tag atomically.
        Raises :class:`StoreError` if the store cannot be written.
        """
        final = self.path(manifest.name, manifest.tag)
        tmp_root = self.root / "tmp"
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=manifest.name.replace("/", "--") + "-", dir=tmp_root))
        except OSError as exc:
            raise StoreError(f"cannot write to the model store {self.root}: {exc.strerror}",
                             hint="set GPUX_HOME to a writable folder") from exc
        try:
            for rel, src in files.items():
                manifest.files[rel] = _copy_hashed(src, staging / rel)
            manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            manifest.gpux_version = __version__
            _write_synced(staging / MANIFEST, manifest.to_json().encode())
            staging.chmod(0o755)  # mkdtemp makes 0700; a bundle is readable like any file
            if before_publish is not None:
                before_publish(staging)
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix="old-", dir=tmp_root))
                os.replace(final, old / "b")
            os.replace(staging, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"could not store model {manifest.name!r}: {exc}",
                             hint="check free disk space and permissions of GPUX_HOME") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Bundle.from_dir(final)


def _copy_hashed(src: Path, dst: Path) -> dict[str, object]:
    """Copy while hashing, fsync, and return the file's digest and size."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return {"sha256": h.hexdigest(), "size": size}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def looks_like_hub_id(ref: str) -> bool:
    """``org/name`` (optionally ``@revision``) that is not a path on disk."""
    repo = ref.partition("@")[0]
    return repo.count("/") == 1 and bool(_NAME.match(repo)) and not Path(repo).exists()


def resolve(ref: str, store: Store | None = None) -> Bundle:
    """Turn a user's MODEL argument into a bundle.

    In order: an existing ``.onnx`` file; a folder with a manifest; a folder
    with a ``gpux.yml`` (used as-is, without building); a built model
    ``name[:tag]`` in the store.
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
    return (store or Store()).get(ref)
