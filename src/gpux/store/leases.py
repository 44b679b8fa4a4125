"""Which running servers hold which stored models, so ``gpux rm`` can warn before it pulls a file away.

Layout::

    $GPUX_HOME/serving/<pid>.json     {"pid": 123, "url": "http://127.0.0.1:8080", "models": ["name:tag", ...]}

Contracts: a server rewrites its own file (atomically) whenever the set of loaded
models changes and deletes it on a clean stop. A file whose process is gone is
stale: readers ignore it and delete it, so a killed server leaves nothing that
lasts. Leases are advisory: a warning for people, never a lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _folder(root: Path) -> Path:
    return root / "serving"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def record(root: Path, models: list[str], url: str = "", pid: int | None = None) -> None:
    """Say that process ``pid`` (default: this one) holds ``models`` loaded; best effort, never raises."""
    pid = os.getpid() if pid is None else pid
    folder = _folder(root)
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lease-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"pid": pid, "url": url, "models": sorted(models)}, fh)
        os.replace(tmp, folder / f"{pid}.json")


def release(root: Path, pid: int | None = None) -> None:
    """Remove this process's lease (on a clean stop)."""
    with contextlib.suppress(OSError):
        (_folder(root) / f"{os.getpid() if pid is None else pid}.json").unlink(missing_ok=True)


def active(root: Path) -> list[dict[str, Any]]:
    """Every live server's lease; stale ones (process gone, unreadable) are deleted on the way."""
    folder = _folder(root)
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            continue
        out.append(data)
    return out


def holders(root: Path, ref: str) -> list[dict[str, Any]]:
    """Live servers that have ``ref`` loaded: ``name:tag`` exactly, or any tag of ``name`` when no tag is given."""
    name, colon, _ = ref.partition(":")
    return [lease for lease in active(root)
            if any(m == ref or (not colon and m.partition(":")[0] == name) for m in lease.get("models", []))]
