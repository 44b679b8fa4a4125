"""Reading ``--input`` values (results are written with :mod:`gpux.jsonout`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpux.errors import UsageError
from gpux.jsonout import dump, to_jsonable

__all__ = ["dump", "read_input", "to_jsonable"]


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
