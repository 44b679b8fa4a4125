"""Cache hit/miss counters and last use per stored model, persisted in ``$GPUX_HOME/stats.json``.

A *hit* is a run or pull served from the store; a *miss* is one that had to
pull or convert. Updates are serialised by a file lock and written atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gpux.errors import StoreError
from gpux.store.lock import file_lock


def _path(root: Path) -> Path:
    return root / "stats.json"


def load(root: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(root: Path, ref: str, hit: bool) -> None:
    """Count one hit or miss for ``ref`` (``name:tag``) and stamp its last use."""
    try:
        with file_lock(root / "locks" / "stats.lock"):
            data = load(root)
            entry = data.setdefault(ref, {"hits": 0, "misses": 0})
            entry["hits" if hit else "misses"] += 1
            entry["last_used"] = time.time()
            tmp = _path(root).with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, _path(root))
    except (OSError, StoreError):
        pass  # statistics must never fail a run


def forget(root: Path, name: str) -> None:
    with file_lock(root / "locks" / "stats.lock"):
        data = {k: v for k, v in load(root).items() if k.partition(":")[0] != name}
        tmp = _path(root).with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, _path(root))
