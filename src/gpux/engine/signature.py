"""A model's input/output signature, and turning user values into tensors that fit it.

The check runs on every call, so it is split in two: a fast path for arrays that
already have the right dtype and rank (a handful of attribute reads), and a slow
path that casts JSON-ish values (lists, numbers, strings) to the declared dtype,
refusing casts that would lose information (1.5 into int64, 70000 into float16).
Every refusal is a :class:`gpux.errors.InputError` naming the input, what was
expected and what was given.

The numeric policy, one rule for the CLI, the Python API and every server route
(they all pass values through :meth:`InputPlan.prepare`): a value gpux casts must
be a finite number (NaN and ±Infinity are refused: JSON has no such numbers) that
the declared dtype holds exactly enough: a float must not overflow it (1e39 into
float32), an integer must be whole and inside its range (including Python ints
wider than 64 bits). Arrays already of the declared dtype are the caller's
tensors and pass as they are. No dimension may be zero: onnxruntime aborts the
process on some graphs given an empty tensor, so it never sees one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from gpux.errors import InputNameError, InputShapeError, InputTypeError

Dim = Union[int, str, None]

#: onnxruntime's type strings -> gpux dtype names (the names gpux.yml uses).
ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "string", "tensor(bfloat16)": "bfloat16",
}
_NUMPY: dict[str, Any] = {n: (object if n == "string" else np.dtype(n))
                          for n in ORT_TYPES.values() if n != "bfloat16"}


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    ``shape`` holds ints for fixed dims, strings for named symbolic dims and
    None for anonymous dynamic dims; ``shape is None`` means the rank is unknown.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    @classmethod
    def from_ort(cls, arg: Any) -> TensorSpec:
        shape = arg.shape
        dims = None if shape is None else tuple(
            d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) and d else None)
            for d in shape)
        return cls(arg.name, ORT_TYPES.get(arg.type, arg.type), dims)

    def describe(self) -> str:
        """``float32 [batch, 64]`` — how messages and tables show a spec."""
        if self.shape is None:
            return f"{self.dtype} [?]"
        return f"{self.dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}


@dataclass
class _Check:
    """Precomputed per-input facts so the fast path does no dictionary work."""

    spec: TensorSpec
    np_dtype: Any
    rank: int
    fixed: tuple[tuple[int, int], ...]
    symbols: tuple[tuple[int, str], ...] = field(default=())


class InputPlan:
    """Validates and casts a feed for one graph; built once per session."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = tuple(specs)
        self.names = tuple(s.name for s in self.specs)
        self._checks = tuple(self._compile(s) for s in self.specs)
        seen: dict[str, int] = {}
        for c in self._checks:
            for _, sym in c.symbols:
                seen[sym] = seen.get(sym, 0) + 1
        # Only symbols shared by several inputs can disagree; most models have none.
        self._shared = frozenset(s for s, n in seen.items() if n > 1)

    @staticmethod
    def _compile(spec: TensorSpec) -> _Check:
        np_dtype = _NUMPY.get(spec.dtype)
        if spec.shape is None:
            return _Check(spec, np_dtype, -1, ())
        fixed = tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, int))
        symbols = tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, str))
        return _Check(spec, np_dtype, len(spec.shape), fixed, symbols)

    def prepare(self, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return a feed onnxruntime accepts, or raise an :class:`InputError`.

        When every value is already an array of the right dtype and shape the
        caller's own mapping is returned unchanged (no copy, no new dict).
        """
        if len(inputs) != len(self._checks):
            self._names_error(inputs)
        feed: dict[str, Any] | None = None
        for c in self._checks:
            name = c.spec.name
            try:
                value = inputs[name]
            except KeyError:
                self._names_error(inputs)
            if type(value) is np.ndarray and value.dtype == c.np_dtype and value.ndim == c.rank:
                shape = value.shape
                for axis, size in c.fixed:
                    if shape[axis] != size:
                        self._shape_error(c, value)
                if 0 in shape:
                    self._empty_error(c, shape)
                continue
            if feed is None:
                feed = dict(inputs)
            feed[name] = self._coerce(c, value)
        if self._shared:
            self._check_symbols(feed if feed is not None else inputs)
        return inputs if feed is None else feed

    # -- slow path -----------------------------------------------------------------

    def _names_error(self, inputs: Mapping[str, Any]) -> None:
        missing = [n for n in self.names if n not in inputs]
        unknown = [n for n in inputs if n not in self.names]
        expected = ", ".join(f"{s.name}: {s.describe()}" for s in self.specs)
        parts = []
        if missing:
            parts.append(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown input{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
        raise InputNameError("; ".join(parts) or "inputs do not match the model",
                             hint=f"the model takes {expected}")

    def _shape_error(self, c: _Check, arr: np.ndarray) -> None:
        spec = c.spec
        if arr.ndim != c.rank:
            raise InputShapeError(
                f"input {spec.name!r} expects rank {c.rank} {spec.describe()}; "
                f"got shape {tuple(arr.shape)} (rank {arr.ndim})",
                hint="reshape the value; a scalar is rank 0, [1, 2] is rank 1")
        for axis, size in c.fixed:
            if arr.shape[axis] != size:
                raise InputShapeError(
                    f"input {spec.name!r} expects dimension {axis} to be {size} "
                    f"({spec.describe()}); got shape {tuple(arr.shape)}",
                    hint="only dimensions shown as names or ? may vary")

    @staticmethod
    def _empty_error(c: _Check, shape: tuple[int, ...]) -> None:
        raise InputShapeError(
            f"input {c.spec.name!r} has a zero-size dimension: shape {tuple(shape)} "
            f"({c.spec.describe()})",
            hint="every dimension needs at least one element: send a batch of one row or more")

    def _coerce(self, c: _Check, value: Any) -> Any:
        spec = c.spec
        if c.np_dtype is None:  # non-tensor or bfloat16 input: hand over untouched
            return value
        arr = _as_array(spec.name, value)
        arr = _cast(spec, c.np_dtype, arr)
        if c.rank >= 0 and (arr.ndim != c.rank or any(arr.shape[a] != s for a, s in c.fixed)):
            self._shape_error(c, arr)
        if 0 in arr.shape:
            self._empty_error(c, arr.shape)
        return arr

    def _check_symbols(self, feed: Mapping[str, Any]) -> None:
        bound: dict[str, tuple[str, int, int]] = {}
        for c in self._checks:
            shape = np.shape(feed[c.spec.name])
            for axis, sym in c.symbols:
                if sym not in self._shared:
                    continue
                size = shape[axis]
                prev = bound.setdefault(sym, (c.spec.name, axis, size))
                if prev[2] != size:
                    raise InputShapeError(
                        f"dimension {sym!r} is {prev[2]} in input {prev[0]!r} (axis {prev[1]}) "
                        f"but {size} in input {c.spec.name!r} (axis {axis})",
                        hint=f"inputs that share the dimension name {sym!r} must agree on its size")


def _as_array(name: str, value: Any) -> np.ndarray:
    """``value`` as an array. Lists of numbers, of strings, or Python ints too wide for
    64 bits (an object array :func:`_cast` judges against the dtype) are accepted."""
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        raise InputShapeError(f"input {name!r} is a ragged list (rows of different lengths)",
                              hint="pad every row to the same length") from exc
    if arr.dtype == object:
        items = arr.ravel().tolist()
        if all(isinstance(v, str) for v in items) or all(_is_number(v) for v in items):
            return arr
        odd = [v for v in items if not (isinstance(v, str) or _is_number(v))]
        if not odd:
            raise InputTypeError(f"input {name!r} mixes numbers and text",
                                 hint="give a rectangular list of numbers, or of strings")
        what = "null" if odd[0] is None else f"{type(odd[0]).__name__} {odd[0]!r}"
        raise InputTypeError(f"input {name!r} holds {what}, which is neither a number nor text",
                             hint="give a rectangular list of numbers, or of strings")
    return arr


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _kind_name(arr: np.ndarray) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats",
            "U": "strings", "S": "bytes", "O": "strings"}.get(arr.dtype.kind, str(arr.dtype))


def _first(arr: np.ndarray, bad: np.ndarray) -> Any:
    """The first offending value (as a Python number) where ``bad`` is True."""
    return arr[bad].flat[0].item()


_NOT_FINITE_HINT = "numbers must be finite: NaN and ±Infinity are refused, JSON has no such numbers"


_NUMBER = object()  # sentinel: "every item was a number"


def _wide_ints(spec: TensorSpec, target: np.dtype[Any], arr: np.ndarray) -> np.ndarray:
    """An object array of Python numbers (some too wide for 64 bits), judged exactly against ``target``."""
    want = f"input {spec.name!r} expects {spec.dtype}"
    items = [v.item() if isinstance(v, np.generic) else v for v in arr.ravel().tolist()]
    odd = next((v for v in items if not _is_number(v)), _NUMBER)
    if odd is not _NUMBER:  # a caller's own object array: strings among numbers, None, ...
        raise InputTypeError(f"{want}; got an object array holding {type(odd).__name__} {odd!r}",
                             hint="pass an array of numbers")
    if target.kind in "iu":
        info = np.iinfo(target)
        for v in items:
            if isinstance(v, float) and not np.isfinite(v):
                raise InputTypeError(f"{want}; got a non-finite value {v!r}", hint=_NOT_FINITE_HINT)
            if isinstance(v, float) and not v.is_integer():
                raise InputTypeError(f"{want}; got a non-integer value {v!r}", hint="pass whole numbers")
            if not info.min <= v <= info.max:
                raise InputTypeError(f"{want}; value {_show(int(v))} is out of {spec.dtype}'s range "
                                     f"[{info.min}, {info.max}]", hint="pass values the dtype can hold")
        return np.array(items, dtype=target).reshape(arr.shape)
    floats = []
    for v in items:
        try:
            floats.append(float(v))
        except OverflowError as exc:
            raise InputTypeError(f"{want}; value {_show(v)} is out of {spec.dtype}'s range "
                                 f"(max ±{np.finfo(target).max})", hint="scale the input") from exc
    return np.array(floats, dtype=np.float64).reshape(arr.shape)


def _show(v: int) -> str:
    """A huge Python int in a message without its hundreds of digits: ``1.000e+400``."""
    digits = str(abs(v))
    if len(digits) <= 24:
        return str(v)
    return f"{'-' if v < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


def _cast(spec: TensorSpec, np_dtype: Any, arr: np.ndarray) -> np.ndarray:
    """Cast ``arr`` to ``np_dtype`` under the numeric policy (module docstring), or raise
    :class:`InputTypeError` naming the first value that breaks it."""
    kind = arr.dtype.kind
    want = f"input {spec.name!r} expects {spec.dtype}"
    if spec.dtype == "string":
        if kind in "USO" and (kind != "O" or all(isinstance(v, str) for v in arr.flat)):
            return arr.astype(object, copy=False) if kind != "O" else arr
        raise InputTypeError(f"{want} (text); got {_kind_name(arr) if kind != 'O' else 'numbers'}",
                             hint="pass strings")
    target = np.dtype(np_dtype)
    if kind == "O" and arr.size and not isinstance(arr.flat[0], str):
        arr = _wide_ints(spec, target, arr)  # Python ints wider than 64 bits, or a caller's object array
        kind = arr.dtype.kind
        if target.kind in "iu":
            return arr
    if kind in "USO":
        raise InputTypeError(f"{want}; got {_kind_name(arr)}", hint="pass numbers, not text")
    if kind == "c":
        raise InputTypeError(f"{want}; got complex numbers", hint="pass real numbers")
    if arr.size == 0:
        return arr.astype(np_dtype)
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise InputTypeError(f"{want}; got a non-finite value {_first(arr, ~finite)!r}",
                                 hint=_NOT_FINITE_HINT)
    if target.kind == "b":
        if kind == "b":
            return arr
        if kind in "iu" and np.isin(arr, (0, 1)).all():
            return arr.astype(bool)
        raise InputTypeError(f"{want}; got {_kind_name(arr)}", hint="pass true/false or 0/1")
    if target.kind in "iu":
        info = np.iinfo(target)
        lo, hi = arr.min(), arr.max()
        if kind == "f":
            whole = arr == np.floor(arr)
            if not whole.all():
                raise InputTypeError(f"{want}; got a non-integer value {_first(arr, ~whole)!r}",
                                     hint="pass whole numbers")
            # 2**bits is exact in float64, info.max may not be: compare against the exclusive bound.
            out_of_range = lo < float(info.min) or hi >= float(info.max + 1)
        else:
            out_of_range = lo < info.min or hi > info.max
        if out_of_range:
            bad = lo if lo < info.min else hi
            shown = int(bad) if kind == "f" else bad.item()
            raise InputTypeError(f"{want}; value {shown} is out of {spec.dtype}'s range "
                                 f"[{info.min}, {info.max}]", hint="pass values the dtype can hold")
        return arr.astype(target, copy=False)
    # float targets: every value is finite here; it must stay finite in the target dtype.
    with np.errstate(over="ignore"):
        out = arr.astype(target, copy=False)
    if kind != "b" and not np.isfinite(out).all():
        bad = _first(arr, ~np.isfinite(out))
        raise InputTypeError(f"{want}; value {bad!r} is out of {spec.dtype}'s range "
                             f"(max ±{np.finfo(target).max})", hint="scale the input or use a float32 model")
    return out
