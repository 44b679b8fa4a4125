"""CTranslate2's ``model.bin``, read in numpy: header, variables (de-quantised to fp32 where scaled), aliases.

The layout (little-endian) is what CTranslate2's ``ModelSpec._serialize`` writes and its C++ loader reads:
``u32`` binary version, then (version >= 2) the spec name and a ``u32`` revision, the variables (name, rank,
shape, dtype id, byte count, bytes; before version 4 an item size and count instead), and (version >= 3)
aliases. Strings are ``u16`` length (with the NUL), bytes, NUL. Every read is bounds-checked, so a cut or
padded file is a :class:`RegistryError`, never a garbage tensor. :mod:`gpux.registry.ct2` maps what this
reads to transformers' names.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpux.errors import RegistryError

#: Binary versions this reader understands (CTranslate2 writes 6 today).
MAX_BINARY_VERSION = 6
_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_ITEM_SIZE_DTYPES = {4: "float32", 1: "int8", 2: "int16"}  # binary versions < 4 stored only the item size
_DAMAGED_HINT = "the file is truncated or damaged: copy or download the model folder again"


@dataclass
class CT2Metadata:
    """What ``model.bin`` says about itself besides its tensors."""

    binary_version: int
    spec: str
    revision: int
    aliases: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # each variable's stored dtype

    def to_dict(self) -> dict[str, Any]:
        return {"binary_version": self.binary_version, "spec": self.spec, "revision": self.revision,
                "aliases": dict(self.aliases)}


# ---------------------------------------------------------------------------------------------- reading


def _header(path: Path) -> tuple[int, str, int] | None:
    """(binary version, spec name, revision) when ``path`` starts like a CTranslate2 model.bin, else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4 + 2 + 256 + 4)
    except OSError:
        return None
    if len(head) < 8:
        return None
    (version,) = struct.unpack_from("<I", head, 0)
    if not 1 <= version <= MAX_BINARY_VERSION:
        return None
    if version < 2:
        return version, "", 1
    (length,) = struct.unpack_from("<H", head, 4)
    if not 2 <= length <= 256 or len(head) < 6 + length + 4 or head[6 + length - 1] != 0:
        return None
    raw = head[6:6 + length - 1]
    try:
        spec = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not spec.isidentifier():
        return None
    (revision,) = struct.unpack_from("<I", head, 6 + length)
    return version, spec, revision


def is_ct2_model(folder: Path) -> bool:
    """Whether ``folder`` holds a CTranslate2 model: config.json plus a model.bin in its binary format."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and _header(folder / "model.bin") is not None


def is_ct2_whisper(folder: Path) -> bool:
    """Whether ``folder`` holds a CTranslate2 Whisper model (its model.bin's spec is ``WhisperSpec``)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return False
    header = _header(folder / "model.bin")
    return header is not None and header[1] == "WhisperSpec"


class _Cursor:
    """Reads little-endian fields from a buffer, raising RegistryError past its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise RegistryError(
                f"{self.path} ends early: {n} bytes needed at offset {self.pos}, {len(self.buf) - self.pos} left",
                hint=_DAMAGED_HINT)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self) -> str:
        length = self.u16()
        if length == 0:
            raise RegistryError(f"{self.path} has an invalid string length at offset {self.pos - 2}",
                                hint=_DAMAGED_HINT)
        raw = bytes(self.take(length))
        if raw[-1] != 0:
            raise RegistryError(f"{self.path} has an unterminated string at offset {self.pos - length}",
                                hint=_DAMAGED_HINT)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RegistryError(f"{self.path} has a string that is not UTF-8 at offset {self.pos - length}",
                                hint=_DAMAGED_HINT) from exc


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2(path: Path) -> tuple[dict[str, np.ndarray], CT2Metadata]:
    """Every variable of a CTranslate2 ``model.bin`` (or the folder holding it) as numpy, and its metadata.

    Arrays keep their stored dtype (bfloat16 becomes float32, numpy having
    none); aliases are resolved, so an aliased name maps to the same array as
    its target. Raises :class:`RegistryError` for a file that is not in the
    format or ends early.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise RegistryError(f"{path} does not exist", hint="a CTranslate2 model folder holds model.bin")
    if _header(path) is None:
        raise RegistryError(f"{path} is not a CTranslate2 model.bin (its header is not binary version "
                            f"1..{MAX_BINARY_VERSION} followed by a spec name)",
                            hint="check the file: it may be another format, or damaged")
    with open(path, "rb") as fh:
        data = fh.read()
    cur = _Cursor(memoryview(data), path)
    version = cur.u32()
    spec, revision = ("", 1)
    if version >= 2:
        spec = cur.string()
        revision = cur.u32()
    meta = CT2Metadata(version, spec, revision)
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.u32()):
        name = cur.string()
        rank = cur.u8()
        shape = tuple(cur.u32() for _ in range(rank))
        if version >= 4:
            type_id = cur.u8()
            if type_id not in _DTYPES:
                raise RegistryError(f"{path}: variable {name!r} has unknown dtype id {type_id}", hint=_DAMAGED_HINT)
            dtype = _DTYPES[type_id]
            n_bytes = cur.u32()
        else:
            item_size = cur.u8()
            if item_size not in _ITEM_SIZE_DTYPES:
                raise RegistryError(f"{path}: variable {name!r} has item size {item_size}", hint=_DAMAGED_HINT)
            dtype = _ITEM_SIZE_DTYPES[item_size]
            n_bytes = cur.u32() * item_size
        stored = np.dtype("uint16" if dtype == "bfloat16" else dtype).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n_bytes != count * stored.itemsize:
            raise RegistryError(f"{path}: variable {name!r} of shape {shape} ({dtype}) has {n_bytes} bytes",
                                hint=_DAMAGED_HINT)
        arr = np.frombuffer(cur.take(n_bytes), dtype=stored).reshape(shape)
        if dtype == "bfloat16":
            arr = _bf16_to_f32(arr)
        variables[name] = arr
        meta.dtypes[name] = dtype
    if version >= 3:
        for _ in range(cur.u32()):
            alias, target = cur.string(), cur.string()
            meta.aliases[alias] = target
    for alias, target in meta.aliases.items():
        if target not in variables:
            raise RegistryError(f"{path}: alias {alias!r} points to {target!r}, which the file does not hold",
                                hint=_DAMAGED_HINT)
        variables[alias] = variables[target]
        meta.dtypes[alias] = meta.dtypes[target]
        for suffix in ("_scale", "_zero"):  # as CTranslate2's loader: a quantised target's scale goes with it
            if target + suffix in variables and alias + suffix not in variables:
                variables[alias + suffix] = variables[target + suffix]
                meta.dtypes[alias + suffix] = meta.dtypes[target + suffix]
    if cur.pos != len(data):
        raise RegistryError(f"{path} has {len(data) - cur.pos} unexpected bytes after its last record",
                            hint=_DAMAGED_HINT)
    return variables, meta
