"""Resuming Hub downloads a killed process left half done.

huggingface_hub 2.x downloads each file into a process-unique
``blobs/<sha256>.<random>.incomplete`` and deletes it when the download fails
*in that process*; it never reuses another process's partial file. So after a
``gpux pull`` is killed (Ctrl-C twice, OOM killer, a closed laptop) the next
pull starts from byte 0 and the partial file stays in the cache forever.

Before each snapshot download, :func:`resume_partials` looks for such files
(a directory listing: free when there are none), asks the Hub which file each
belongs to, and continues it with a ``Range`` request through the client's own
``http_get``. The client's per-file lock is taken first (without waiting), so a
partial file another live process is still writing is left alone. The bytes are
checked against the sha256 the Hub announced before the blob is put in place;
the snapshot download then finds the blob and only links it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _cache_folder(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def partials(repo: str) -> dict[str, Path]:
    """LFS sha256 -> the largest partial download of it in the cache; deletes partials whose blob is there."""
    blobs = _cache_folder(repo) / "blobs"
    found: dict[str, Path] = {}
    for part in blobs.glob("*.incomplete") if blobs.is_dir() else []:
        sha = part.name.split(".", 1)[0]
        if (blobs / sha).exists():  # finished since (by this pull or another): the partial is garbage
            with contextlib.suppress(OSError):
                part.unlink()
            continue
        if not _SHA256.match(sha):  # a small file (named by its git sha1): cheaper to fetch again
            continue
        with contextlib.suppress(OSError):
            if sha not in found or part.stat().st_size > found[sha].stat().st_size:
                found[sha] = part
    return found


def resume_partials(repo: str, revision: str | None) -> list[str]:
    """Finish the partial downloads of ``repo`` left by dead processes; returns the files finished.

    Errors are swallowed: the snapshot download that follows fetches whatever
    is still missing from scratch and reports real problems itself.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return []
    todo = partials(repo)
    if not todo:
        return []
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception:
        return []
    done = []
    for sib in info.siblings or []:
        lfs = getattr(sib, "lfs", None)
        sha = getattr(lfs, "sha256", None)
        if lfs is not None and sha in todo and info.sha:
            with contextlib.suppress(Exception):
                if _resume(repo, sib.rfilename, info.sha, str(sha), int(lfs.size), todo[str(sha)]):
                    done.append(sib.rfilename)
    return done


def _resume(repo: str, filename: str, commit: str, sha: str, size: int, part: Path) -> bool:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils._headers import build_hf_headers
    from huggingface_hub.utils._fixes import WeakFileLock

    lock = Path(constants.HF_HUB_CACHE) / ".locks" / _cache_folder(repo).name / f"{sha}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock, timeout=0.5):  # raises Timeout while a live download holds it
        blob = part.parent / sha
        if blob.exists() or not part.exists():
            return False
        have = part.stat().st_size
        if have > size:
            part.unlink()
            return False
        with open(part, "r+b") as fh:
            fh.seek(have)
            if have < size:
                headers = build_hf_headers()
                meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=commit), headers=headers)
                http_get(meta.location, fh, resume_size=have, headers=headers, expected_size=size)
            fh.flush()
            os.fsync(fh.fileno())
        h = hashlib.sha256()
        with open(part, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != sha:
            part.unlink()
            return False
        part.chmod(0o644)
        os.replace(part, blob)
        return True
