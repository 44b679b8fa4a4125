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
  recomputed whenever the file's (size, mtime, inode, ctime) differ from the
  stamp taken when it was last verified, when that stamp is older than
  :data:`VERIFY_EVERY_S`, or when the caller asks (``gpux verify``, ``gpux
  pull``), so an untouched blob costs one ``stat``. ctime is in the stamp
  because nobody can set it: an in-place overwrite that restores mtime (``cp
  --preserve``, ``os.utime``) still moves it. A blob that fails is deleted and
  :class:`CorruptBlobError` is raised; a missing one raises
  :class:`MissingBlobError` (a subclass, so every caller that repairs a corrupt
  blob repairs a missing one too). Neither is ever served.
- ``before_commit`` is a test hook called with the temp file just before its
  rename, to inject faults (a full disk, a crash) at the worst moment.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gpux.errors import StoreError

CHUNK = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")

#: Test hook: called with the temp file of a blob just before it is renamed into place.
before_commit: Callable[[Path], None] | None = None
#: A verified stamp older than this is hashed again on read, even if nothing about the file changed
#: (bit rot leaves size, mtime and ctime alone). ``GPUX_VERIFY_EVERY_S`` overrides it.
VERIFY_EVERY_S = 7 * 86400
#: errno values that mean "no room to write": a full disk, a quota, a file size limit (RLIMIT_FSIZE).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class CorruptBlobError(StoreError):
    """A stored blob's bytes do not match its name; it has been deleted."""


class MissingBlobError(CorruptBlobError):
    """A blob a manifest names is gone. Repaired exactly like a corrupt one, hence the subclass."""


def stamp(path: Path) -> list[int]:
    """What must not change for a verified blob to stay verified without re-hashing, plus when it was taken.

    ``[size, mtime_ns, inode, ctime_ns, verified_at_s]``: the first four are
    compared; the last makes a periodic re-hash possible.
    """
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, int(time.time())]


def _fresh(verified: list[int] | None, now: list[int]) -> bool:
    """Whether ``verified`` still vouches for a file whose stamp is ``now``."""
    if not verified or len(verified) != 5 or verified[:4] != now[:4]:
        return False
    every = float(os.environ.get("GPUX_VERIFY_EVERY_S", VERIFY_EVERY_S))
    return time.time() - verified[4] < every


def no_space(exc: BaseException | None) -> OSError | None:
    """The OSError meaning "no room to write" in ``exc`` or its causes, if any.

    Exporters wrap the OS error (or only keep its text), so the chain and the
    message are both searched.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        text = str(exc)
        for code in NO_SPACE:
            if os.strerror(code) in text:
                return OSError(code, os.strerror(code))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def disk_full(root: Path, exc: OSError, what: str) -> StoreError:
    """The error for running out of room under ``root`` (GPUX_HOME): where, and how much is free."""
    try:
        free = f"{shutil.disk_usage(root if root.exists() else root.parent).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    why = {errno.EFBIG: "a file grew past the file size limit (ulimit -f)",
           errno.EDQUOT: "the disk quota is exhausted"}.get(exc.errno or 0, "the disk is full")
    detail = exc.strerror or (os.strerror(exc.errno) if exc.errno else "")
    return StoreError(f"no space to write {what}: {why} ({detail}) under GPUX_HOME {root} ({free})",
                      hint="free disk space, or set GPUX_HOME to a folder on a disk with room")


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
                fd, name = tempfile.mkstemp(prefix=f"blob-{os.getpid()}-", dir=self.tmp)
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
            if exc.errno in NO_SPACE:
                raise disk_full(self.root, exc, src.name) from exc
            raise StoreError(f"could not store {src.name}: {exc}",
                             hint="check free disk space and permissions of GPUX_HOME") from exc
        finally:
            if staged is not None and not move:
                staged.unlink(missing_ok=True)

    def check(self, digest: str, size: int, verified: list[int] | None, full: bool = False) -> list[int]:
        """Verify blob ``digest`` of ``size`` bytes; returns its current stamp.

        ``verified`` is the stamp from the last successful check (None: never);
        ``full`` hashes regardless. Raises :class:`CorruptBlobError` (after
        deleting the blob) or :class:`MissingBlobError`. Messages name the blob,
        never a path: the server sends them to clients.
        """
        path = self.path(digest)
        try:
            now = stamp(path)
        except FileNotFoundError:
            raise MissingBlobError(f"blob sha256-{digest[:12]}… is missing from the store",
                                   hint="pull or build the model again") from None
        if now[0] != size:
            self._drop(path)
            raise CorruptBlobError(f"blob sha256-{digest[:12]}… is {now[0]} bytes, expected {size} (truncated?)",
                                   hint="it was deleted; pull or build the model again")
        if not full and _fresh(verified, now):
            return verified  # type: ignore[return-value]  # _fresh checked it is a full stamp
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
