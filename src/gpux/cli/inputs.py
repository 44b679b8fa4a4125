"""Reading ``--input`` values and writing results as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gpux.errors import UsageError


def read_input(value: str) -> dict[str, Any]:
    """Parse ``--input``: inline JSON, ``@file.json``, or ``@file.npz``/``@file.npy``.

    Returns name -> value (lists, numbers, strings or numpy arrays); the
    engine casts them to the model's dtypes. Raises :class:`UsageError`.
    """
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            raise UsageError(f"--input file {path} does not exist", hint="check the path after '@'")
        if path.suffix in (".npz", ".npy"):
            return _read_numpy(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --input file {path}: {exc}", hint="give a UTF-8 JSON file") from exc
        where = str(path)
    else:
        text, where = value, "--input"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         hint="put inline JSON in single quotes, or use --input @file.json") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a JSON object mapping input names to values",
                         hint='for example {"x": [[1.0, 2.0]]}')
    return data


def _read_numpy(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --input file {path}: {exc}", hint="save it with numpy.savez") from exc
    if path.suffix == ".npy":
        raise UsageError(f"{path} holds one unnamed array", hint="save named arrays with numpy.savez(f, name=arr)")
    with loaded:
        return {k: loaded[k] for k in loaded.files}


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
