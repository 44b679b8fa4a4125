"""Results as JSON for people and programs: numpy made plain, non-finite floats as strings,
tensor rows kept on one line. Shared by the CLI and the server."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_object(path: Path, error: type[Exception], hint: str, what: str = "") -> dict[str, Any]:
    """The JSON object in ``path``, or ``error(message, hint=hint)`` saying why it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {what + ' ' if what else ''}{path}: {exc}", hint=hint) from exc  # type: ignore[call-arg]
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object", hint=hint)  # type: ignore[call-arg]
    return data


def to_jsonable(value: Any) -> Any:
    """numpy arrays and scalars to lists/floats; non-finite floats to strings ("nan", "inf")."""
    if hasattr(value, "tolist"):
        kind = getattr(getattr(value, "dtype", None), "kind", "?")
        if kind in ("i", "u", "b") or (kind == "f" and _all_finite(value)):
            return value.tolist()  # nothing to fix inside: skip the per-element walk
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _all_finite(arr: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(arr).all())


def dump(data: Any) -> str:
    """Indented JSON whose innermost lists (tensor rows) stay on one line each."""
    return _fmt(to_jsonable(data), 0)


def _fmt(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k)}: {_fmt(v, depth + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value):
        return "[\n" + ",\n".join(inner + _fmt(v, depth + 1) for v in value) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False)
