"""Reclaiming ``$GPUX_HOME/tmp``: what killed conversions, pulls and runs left behind.

Every scratch entry gpux makes is named ``<kind>-<pid>-<random>`` (``convert-``,
``bundle-``, ``blob-``, ``variant-``, ``profile-``), so a leftover whose writer is
dead can be removed at once, while a conversion in progress in another process
is left alone. Entries without a pid (an older gpux) are judged by age.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

#: A live writer's scratch is kept at most this long: by then its pid has probably been reused.
MAX_AGE_S = 24 * 3600
#: Entries without a pid in their name are stale after this.
ORPHAN_AGE_S = 10 * 60
_PID = re.compile(r"^[a-z]+-(\d+)-")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and can still write (a zombie cannot)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def stale(entry: Path, now: float | None = None) -> bool:
    """Whether the scratch ``entry`` belongs to nobody any more."""
    try:
        age = (now or time.time()) - entry.lstat().st_mtime
    except OSError:
        return False
    m = _PID.match(entry.name)
    if m is None:
        return age > ORPHAN_AGE_S
    return not alive(int(m[1])) or age > MAX_AGE_S


def size(path: Path) -> int:
    """Bytes under ``path`` (symlinks not followed)."""
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            total += 0 if p.is_dir() else p.lstat().st_size
    return total


def prune(tmp: Path) -> int:
    """Delete every stale entry of ``tmp``; returns the bytes freed."""
    freed = 0
    for entry in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if stale(entry):
            freed += size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    return freed
