"""Content-addressed blobs: every file gpux stores lives once, named by its sha256.

Layout::

    $GPUX_HOME/blobs/sha256-<64 hex>     immutable content, mode 0444
    $GPUX_HOME/tmp/blob-*                 a blob being written (removed on failure)

Contracts:

- :meth:`Blobs.put` hashes while it copies, fsyncs, checks the digest (and the
  expected one, if given) *before* the rename that makes the blob visible, so a
  reader never sees a partial or wrong blob. Two processes putting the same
  content race harmlessly: both renames carry identical bytes.
- :meth:`Blobs.check` verifies a blob on read. Size always; the sha256 is
  recomputed whenever the file's (size, mtime, inode) differ from the stamp
  taken when it was last verified, so an untouched blob costs one ``stat``.
  A blob that fails is deleted and :class:`CorruptBlobError` is raised: it is
  never served.
- ``before_commit`` is a test hook called with the temp file just before its
  rename, to inject faults (a full disk, a crash) at the worst moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gpux.errors import StoreError

CHUNK = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")

#: Test hook: called with the temp file of a blob just before it is renamed into place.
before_commit: Callable[[Path], None] | None = None


class CorruptBlobError(StoreError):
    """A stored blob's bytes do not match its name; it has been deleted."""


def stamp(path: Path) -> list[int]:
    """What must not change for a verified blob to stay verified without re-hashing."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _hash(src: Path, copy_to: BinaryIO | None, sync: bool = True) -> str:
    """sha256 of ``src``, copying it to ``copy_to`` on the way; with ``sync`` the data is fsynced first."""
    h = hashlib.sha256()
    with open(src, "rb") as fin:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            if copy_to is not None:
                copy_to.write(chunk)
        if sync:
            target = copy_to if copy_to is not None else fin
            target.flush()
            os.fsync(target.fileno())
    return h.hexdigest()


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs"
        self.tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise StoreError(f"invalid blob digest {digest!r}", hint="the manifest is damaged; pull the model again")
        return self.dir / f"sha256-{digest}"

    def put(self, src: Path, expected: str | None = None, move: bool = False) -> tuple[str, int, list[int]]:
        """Store the bytes of ``src``; returns (sha256, size, verified stamp). Raises :class:`StoreError`.

        With ``move`` (``src`` is a scratch file on the store's filesystem) the
        file is hashed in place and renamed into ``blobs/`` instead of copied.
        """
        staged: Path | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if move:
                staged, digest = src, _hash(src, None)
            else:
                self.tmp.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix="blob-", dir=self.tmp)
                staged = Path(name)
                with os.fdopen(fd, "wb") as out:
                    digest = _hash(src, out)
            if expected is not None and digest != expected:
                raise CorruptBlobError(f"{src.name}: sha256 {digest[:12]}… is not the expected {expected[:12]}…",
                                       hint="the source changed or is damaged; fetch it again")
            if before_commit is not None:
                before_commit(staged)
            final = self.path(digest)
            staged.chmod(0o444)
            os.replace(staged, final)
            return digest, final.stat().st_size, stamp(final)
        except OSError as exc:
            raise StoreError(f"could not store {src.name}: {exc}",
                             hint="check free disk space and permissions of GPUX_HOME") from exc
        finally:
            if staged is not None and not move:
                staged.unlink(missing_ok=True)

    def check(self, digest: str, size: int, verified: list[int] | None) -> list[int]:
        """Verify blob ``digest`` of ``size`` bytes; returns its current stamp.

        ``verified`` is the stamp from the last successful check (None: never).
        Raises :class:`CorruptBlobError` (after deleting the blob) or
        :class:`StoreError` if it is missing.
        """
        path = self.path(digest)
        try:
            now = stamp(path)
        except FileNotFoundError:
            raise StoreError(f"blob sha256-{digest[:12]}… is missing from {self.dir}",
                             hint="pull or build the model again") from None
        if now[0] != size:
            self._drop(path)
            raise CorruptBlobError(f"blob sha256-{digest[:12]}… is {now[0]} bytes, expected {size} (truncated?)",
                                   hint="it was deleted; pull or build the model again")
        if verified == now:
            return now
        if _hash(path, None, sync=False) != digest:
            self._drop(path)
            raise CorruptBlobError(f"blob sha256-{digest[:12]}… does not match its content",
                                   hint="it was deleted; pull or build the model again")
        return now

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def all(self) -> dict[str, int]:
        """Every blob digest with its size."""
        if not self.dir.is_dir():
            return {}
        return {p.name[len("sha256-"):]: p.stat().st_size for p in self.dir.glob("sha256-*")}
