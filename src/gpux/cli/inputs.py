"""Reading ``--input`` values (results are written with :mod:`gpux.jsonout`).

Every way an ``--input`` can be wrong gets its own sentence (a folder, a device,
an empty file, bytes that are not UTF-8, a file that is not a numpy archive, a
NaN that JSON does not have), because "does not exist" for a folder that plainly
exists sends people looking in the wrong place.
"""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path
from typing import Any, NoReturn

from gpux.errors import UsageError
from gpux.jsonout import dump, to_jsonable

__all__ = ["dump", "read_input", "to_jsonable"]

_AT_HINT = "give a .json, .npz or .npy file after '@'"
#: The first bytes of a zip archive (what numpy.savez writes) and of a .npy file.
_MAGIC = {".npz": (b"PK\x03\x04", b"PK\x05\x06"), ".npy": (b"\x93NUMPY",)}


def read_input(value: str) -> dict[str, Any]:
    """Parse ``--input``: inline JSON, ``@file.json``, or ``@file.npz``/``@file.npy``.

    Returns name -> value (lists, numbers, strings or numpy arrays); the
    engine casts them to the model's dtypes. Raises :class:`UsageError`.
    """
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        _check_file(path)
        if path.suffix in _MAGIC:
            return _read_numpy(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --input file {path}: {exc.strerror}", hint=_AT_HINT) from exc
        if not raw.strip():
            raise UsageError(f"--input file {path} is empty", hint="write a JSON object of inputs into it")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _not_utf8(str(path), raw[exc.start], exc.start)
        where = str(path)
    else:
        text, where = value, "--input"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # the shell handed bytes that are not UTF-8 (kept as surrogates)
            bad = text[exc.start]
            if "\udc80" <= bad <= "\udcff":
                _not_utf8(where, ord(bad) - 0xDC00, exc.start)
            raise UsageError(f"--input holds a lone surrogate U+{ord(bad):04X} at position {exc.start}, "
                             "which is not text", hint="pass UTF-8 text") from exc
    data = _loads(text, where)
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a JSON object mapping input names to values",
                         hint='for example {"x": [[1.0, 2.0]]}')
    return data


def _not_utf8(where: str, byte: int, offset: int) -> NoReturn:
    raise UsageError(f"{where} is not valid UTF-8: byte 0x{byte:02x} at offset {offset}",
                     hint="pass UTF-8 text, or save the file as UTF-8")


def _loads(text: str, where: str) -> Any:
    """JSON as the standard says: NaN and Infinity are refused, and so are lone surrogates (``"\\ud800"``)."""

    def constant(name: str) -> NoReturn:
        raise UsageError(f"{where} holds {name}, which is not a JSON number",
                         hint="numbers must be finite: NaN and ±Infinity are refused")

    try:
        data = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         hint="put inline JSON in single quotes, or use --input @file.json") from exc
    except RecursionError as exc:
        raise UsageError(f"{where} nests too deeply", hint="give tensors of a sensible rank") from exc
    if "\\u" in text:  # only an escape can make a lone surrogate out of valid UTF-8
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError(f"{where} holds a lone surrogate escape (\\u{ord(exc.object[exc.start]):04x}), "
                             "which is not text", hint="escape whole characters, as surrogate pairs") from exc
    return data


def _check_file(path: Path) -> None:
    """A readable file, or a :class:`UsageError` saying what the path is instead."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"--input file {path} does not exist", hint="check the path after '@'") from None
    except OSError as exc:
        raise UsageError(f"cannot read --input file {path}: {exc.strerror}", hint=_AT_HINT) from exc
    if stat.S_ISDIR(mode):
        raise UsageError(f"--input file {path} is a folder, not a file", hint=_AT_HINT)
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe from <(...) is fine; a device is not
        raise UsageError(f"--input file {path} is not a regular file (a device or socket)", hint=_AT_HINT)


def _read_numpy(path: Path) -> dict[str, Any]:
    import numpy as np

    magic = _MAGIC[path.suffix]
    try:
        with path.open("rb") as fh:
            head = fh.read(max(len(m) for m in magic))
    except OSError as exc:
        raise UsageError(f"cannot read --input file {path}: {exc.strerror}", hint=_AT_HINT) from exc
    kind = "numpy .npz archive" if path.suffix == ".npz" else "numpy .npy file"
    if not head:
        raise UsageError(f"--input file {path} is empty", hint="save arrays with numpy.savez(path, name=array)")
    if not any(head.startswith(m) for m in magic):
        raise UsageError(f"--input file {path} is not a {kind}",
                         hint="save arrays with numpy.savez(path, name=array), or give a .json file")
    if path.suffix == ".npy":
        raise UsageError(f"{path} holds one unnamed array", hint="save named arrays with numpy.savez(f, name=arr)")
    try:
        with np.load(path, allow_pickle=False) as loaded:
            return {k: _member(loaded, k, path) for k in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a damaged archive
        raise UsageError(f"--input file {path} is not a readable {kind}: {exc}",
                         hint="save arrays with numpy.savez(path, name=array)") from exc


def _member(loaded: Any, key: str, path: Path) -> Any:
    try:
        return loaded[key]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UsageError(f"--input file {path}: array {key!r} holds Python objects (pickled), "
                             "which gpux does not load", hint="save numeric or string arrays") from exc
        raise
