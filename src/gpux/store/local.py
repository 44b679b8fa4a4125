"""The model store under ``$GPUX_HOME`` (default ``~/.gpux``), and turning a user's MODEL into a bundle.

Layout::

    $GPUX_HOME/
      blobs/sha256-<hex>                 every stored file once, by content (gpux.store.blobs)
      manifests/<name>/<tag>.json        what a model is: files by digest, source, key, runtime
      bundles/<id>/                      a manifest's files under their own names (hard links to
                                         the blobs, so ONNX external-data references hold) + manifest.json
      locks/<name>.lock                  serialises pulls and builds of one model across processes
      stats.json                         cache hits and misses per model (gpux.store.stats)
      tmp/                               blobs and bundles being assembled; every entry is named
                                         <kind>-<pid>-..., so prune can tell a dead writer's leftovers

Contracts: :meth:`Store.publish` makes every blob durable before the manifest
that names it is renamed into place, so a reader sees the old model or the new
one, never a mix. :meth:`Store.get` verifies every blob (see Blobs.check) and
never returns a bundle with a missing, truncated or corrupt file. Nothing is
written outside ``$GPUX_HOME`` (the Hugging Face cache is the client's own).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

from gpux._version import __version__
from gpux.errors import GpuxError, ModelNotFoundError, StoreError, UsageError
from gpux.store import scratch, stats
from gpux.store.blobs import NO_SPACE, Blobs, CorruptBlobError, disk_full, stamp
from gpux.store.bundle import MANIFEST, Bundle, Manifest
from gpux.store.lock import file_lock

#: A GGUF source folder no stored model came from is kept this long (a pull may be converting it).
SOURCE_GRACE_S = 3600

# A local name, or a Hugging Face id "org/name"; no segment may start with "." (no "..").
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


def valid_name(name: str) -> bool:
    """Whether ``name`` may be stored (see :func:`parse_ref`)."""
    return bool(_NAME.match(name))


def looks_like_hub_id(ref: str) -> bool:
    """``org/name`` (optionally ``@revision``) that is not a path on disk."""
    repo = ref.partition("@")[0]
    return repo.count("/") == 1 and bool(_NAME.match(repo)) and not Path(repo).exists()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Store:
    """The folder of stored models. Safe for concurrent readers and serialised writers."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else home()
        self.blobs = Blobs(self.root)

    # -- names -----------------------------------------------------------------------

    def manifest_path(self, name: str, tag: str) -> Path:
        return self.root / "manifests" / name / f"{tag}.json"

    def tags(self, name: str) -> list[str]:
        if not _NAME.match(name):  # never a path outside the store
            return []
        folder = self.root / "manifests" / name
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def names(self) -> list[tuple[str, str]]:
        """Every stored (name, tag)."""
        base = self.root / "manifests"
        if not base.is_dir():
            return []
        found = ((p.parent.relative_to(base).as_posix(), p.stem) for p in base.rglob("*.json"))
        # A manifest a bug or an older gpux left under an invalid name is not a model: skipping it keeps
        # ls, rm and prune working (prune still honours its blobs, see _live).
        return sorted((n, t) for n, t in found if _NAME.match(n) and _TAG.match(t))

    def find_revision(self, name: str, revision: str) -> str:
        """``name:tag`` of the stored conversion of Hub ``revision`` (a branch, tag or sha prefix)."""
        for tag in self.tags(name):
            with contextlib.suppress(GpuxError):
                source = self.manifest(f"{name}:{tag}").source
                if revision in (source.get("revision"), source.get("sha")) or (
                        len(revision) >= 7 and str(source.get("sha", "")).startswith(revision)):
                    return f"{name}:{tag}"
        raise ModelNotFoundError(f"no stored conversion of {name}@{revision}",
                                 hint=f"pull it with gpux pull {name}@{revision}")

    def _default_tag(self, name: str) -> str:
        """``latest``, else the tag every other tag extends (``feature-extraction`` beside its
        ``feature-extraction-int8`` variant), else an error listing the tags."""
        tags = self.tags(name)
        if "latest" in tags or not tags:
            return "latest"
        base = min(tags, key=len)
        if all(t == base or t.startswith(base + "-") for t in tags):
            return base
        raise UsageError(f"model {name!r} has several tags: {', '.join(tags)}", hint=f"say which: {name}:{tags[0]}")

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise pulls/builds of ``name`` across processes."""
        with file_lock(self.root / "locks" / (name.replace("/", "--") + ".lock")):
            yield

    # -- reading -----------------------------------------------------------------------

    def manifest(self, ref: str) -> Manifest:
        """The stored manifest of ``name[:tag]``, unverified; :class:`ModelNotFoundError` if none."""
        name, tag = parse_ref(ref)
        if not self.tags(name) and "/" not in name:
            name = self._short_name(name)
        tag = tag or self._default_tag(name)
        path = self.manifest_path(name, tag)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            close = self.close_names(name)
            raise ModelNotFoundError(
                f"no model {ref!r}: not a file or folder, and not in the store",
                hint=f"did you mean {' or '.join(close)}?" if close else
                "pull it with gpux pull ORG/NAME, build it with gpux build DIR, or give an .onnx path") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} cannot be read: {exc}", hint=f"gpux rm {name}:{tag}, then pull or build it") from exc
        return Manifest.from_dict(data, path)

    def _short_name(self, name: str) -> str:
        """The stored ``org/name`` a bare ``name`` stands for, when exactly one matches (case-insensitive).

        ``all-MiniLM-L6-v2`` finds ``sentence-transformers/all-MiniLM-L6-v2``; two
        orgs with that name are a :class:`UsageError` listing both. Unmatched
        names come back unchanged (the caller reports them as not found).
        """
        hits = sorted({n for n, _ in self.names() if "/" in n and n.split("/", 1)[1].lower() == name.lower()})
        if len(hits) > 1:
            raise UsageError(f"{name!r} is ambiguous: {', '.join(hits)} are stored", hint="give the full org/name")
        return hits[0] if hits else name

    def close_names(self, name: str) -> list[str]:
        """Stored names that look like ``name`` (a typo, a missing org): for "did you mean" hints."""
        names = sorted({n for n, _ in self.names()})
        lowered = {n.lower(): n for n in names} | {n.split("/", 1)[-1].lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.75)
        return list(dict.fromkeys(lowered[c] for c in close))

    def get(self, ref: str, full: bool = False) -> Bundle:
        """The verified bundle of ``name[:tag]``; ``full`` hashes every blob whatever its stamp says.

        Raises :class:`ModelNotFoundError` if nothing is stored under that
        name, and :class:`~gpux.store.blobs.CorruptBlobError` (after deleting
        the bad blob) or its subclass ``MissingBlobError`` if a file does not
        match its digest or is gone.
        """
        manifest = self.manifest(ref)
        changed = False
        for entry in manifest.files.values():
            now = self.blobs.check(entry["sha256"], entry["size"], entry.get("verified"), full=full)
            if now != entry.get("verified"):
                entry["verified"], changed = now, True
        folder, linked = self._materialize(manifest)
        if linked:  # a new hard link moves the blob's ctime: restamp what was just verified, or it is hashed again
            for entry in manifest.files.values():
                with contextlib.suppress(OSError):
                    entry["verified"] = stamp(self.blobs.path(entry["sha256"]))[:4] + entry["verified"][4:]
                    changed = True
        if changed:  # remember the verification so the next read costs one stat per file
            _write_atomic(self.manifest_path(manifest.name, manifest.tag), manifest.to_json().encode())
        return Bundle(folder, manifest)

    def _materialize(self, manifest: Manifest) -> tuple[Path, bool]:
        """The bundle folder for ``manifest`` (hard links to its blobs under their names); True if made now."""
        folder = self.root / "bundles" / self._materialize_id(manifest)
        if folder.is_dir() and all(_same_file(folder / n, self.blobs.path(e["sha256"]))
                                   for n, e in manifest.files.items()):
            return folder, False
        staging = self.scratch("bundle")
        try:
            for name, entry in manifest.files.items():
                dst = staging / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.blobs.path(entry["sha256"]), dst)
                except OSError:  # no hard links on this filesystem: a copy still works
                    shutil.copyfile(self.blobs.path(entry["sha256"]), dst)
            (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
            staging.chmod(0o755)
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(staging, folder)
            except OSError:  # another process materialised it first
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder, True

    def scratch(self, prefix: str) -> Path:
        """A new folder under ``$GPUX_HOME/tmp`` (same filesystem as the blobs, so files can be moved in).

        Named ``<prefix>-<pid>-<random>``: if this process is killed, :meth:`prune`
        sees the pid is dead and reclaims the folder.
        """
        try:
            return Path(tempfile.mkdtemp(prefix=f"{prefix.rstrip('-')}-{os.getpid()}-", dir=self._tmp()))
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise disk_full(self.root, exc, "a scratch folder") from exc
            raise StoreError(f"cannot write to the model store: {exc.strerror}",
                             hint=f"check GPUX_HOME ({self.root})") from exc

    def _tmp(self) -> Path:
        tmp = self.root / "tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write to the model store {self.root}: {exc.strerror}",
                             hint="set GPUX_HOME to a writable folder") from exc
        return tmp

    # -- writing -----------------------------------------------------------------------

    def publish(self, manifest: Manifest, files: Mapping[str, Path], move: frozenset[str] = frozenset()) -> Bundle:
        """Store ``files`` (name in bundle -> source path) as blobs, then ``manifest`` naming them.

        Files named in ``move`` are scratch files under ``$GPUX_HOME/tmp`` and are
        renamed into the blob store rather than copied. Replaces an existing
        manifest of the same name and tag atomically; the previous model stays
        readable until the new manifest lands. Raises :class:`StoreError` if the
        store cannot be written.
        """
        parse_ref(f"{manifest.name}:{manifest.tag}")  # never store what ls, rm and prune cannot name
        self._tmp()
        for rel, src in files.items():
            digest, size, verified = self.blobs.put(src, move=rel in move)
            manifest.files[rel] = {"sha256": digest, "size": size, "verified": verified}
        manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest.gpux_version = __version__
        try:
            _write_atomic(self.manifest_path(manifest.name, manifest.tag), manifest.to_json().encode())
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise disk_full(self.root, exc, f"model {manifest.name!r}") from exc
            raise StoreError(f"could not store model {manifest.name!r}: {exc}",
                             hint="check free disk space and permissions of GPUX_HOME") from exc
        return self.get(f"{manifest.name}:{manifest.tag}")

    def remove(self, ref: str) -> list[str]:
        """Delete ``name[:tag]`` (every tag when none is given) and the blobs no other model uses."""
        name, tag = parse_ref(ref)
        tags = [tag] if tag else self.tags(name)
        if not tags or (tag and not self.manifest_path(name, tag).is_file()):
            raise ModelNotFoundError(f"no model {ref!r} in the store {self.root}", hint="gpux ls lists what is stored")
        with self.lock(name):
            for t in tags:
                self.manifest_path(name, t).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.root / "manifests" / name).rmdir()
        if not tag:
            stats.forget(self.root, name)
        self.prune()
        return [f"{name}:{t}" for t in tags]

    def verify(self, ref: str) -> list[str]:
        """Hash every blob of ``name:tag``; returns what was wrong (each bad blob is deleted), [] if all good."""
        manifest = self.manifest(ref)
        bad = []
        for file, entry in manifest.files.items():
            try:
                self.blobs.check(entry["sha256"], entry["size"], None, full=True)
            except CorruptBlobError as exc:
                bad.append(f"{file}: {exc.message}")
        if not bad:
            self.get(ref)  # records the fresh stamps
        return bad

    def _live(self) -> tuple[set[str], set[str], set[str]]:
        """Digests, bundle ids and source folders (``sources/gguf-<sha>``) named by any manifest file, read
        as raw JSON.

        Raw, so a manifest this gpux cannot load (a newer schema, an invalid
        name) still protects its blobs from prune.
        """
        live: set[str] = set()
        live_bundles: set[str] = set()
        live_sources: set[str] = set()
        base = self.root / "manifests"
        for path in base.rglob("*.json") if base.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
                doc = json.loads(path.read_text(encoding="utf-8"))
                files = doc.get("files") or {}
                live.update(str(e["sha256"]) for e in files.values())
                live_bundles.add(hashlib.sha256(json.dumps(sorted((k, v["sha256"]) for k, v in files.items()))
                                                .encode()).hexdigest()[:20])
                source = doc.get("source") or {}
                if source.get("kind") == "gguf":
                    live_sources.add(f"gguf-{str(source.get('sha256'))[:16]}")
        return live, live_bundles, live_sources

    def prune_scratch(self) -> int:
        """Delete leftovers under tmp/ of writers that died; returns bytes freed (see gpux.store.scratch)."""
        return scratch.prune(self.root / "tmp")

    def prune(self) -> int:
        """Delete blobs and bundle folders no manifest names, stale scratch, and GGUF source folders
        (``sources/``) no stored model came from and untouched for an hour (a pull may be converting one
        it just built); returns bytes freed."""
        live, live_bundles, live_sources = self._live()
        freed = self.prune_scratch()
        sources = self.root / "sources"
        for folder in sources.glob("gguf-*") if sources.is_dir() else []:
            with contextlib.suppress(OSError):
                if folder.name not in live_sources and time.time() - folder.stat().st_mtime > SOURCE_GRACE_S:
                    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                    shutil.rmtree(folder)
                    freed += size
        for digest, size in self.blobs.all().items():
            if digest not in live:
                self.blobs.path(digest).unlink(missing_ok=True)
                freed += size
        for folder in (self.root / "bundles").glob("*") if (self.root / "bundles").is_dir() else []:
            if folder.name not in live_bundles:
                shutil.rmtree(folder, ignore_errors=True)
        return freed

    @staticmethod
    def _materialize_id(manifest: Manifest) -> str:
        return hashlib.sha256(json.dumps(sorted((k, v["sha256"]) for k, v in manifest.files.items()))
                              .encode()).hexdigest()[:20]

    def size(self, manifest: Manifest) -> int:
        return sum(int(e["size"]) for e in manifest.files.values())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
