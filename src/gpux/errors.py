"""One exception hierarchy for everything gpux raises on purpose.

Every message names the problem; ``hint`` says what to do next. The CLI prints
both on one line each and exits with ``exit_code``, so shell scripts can tell the
families apart::

    GpuxError                     exit 1
    ├── UsageError                exit 2   bad flag values, unreadable --input
    │   └── ConfigError                    gpux.yml does not validate
    ├── InputError                exit 2   tensors that do not fit the model
    │   ├── InputNameError                 missing or unknown input names
    │   ├── InputShapeError                rank, fixed dims, symbolic dims disagree
    │   └── InputTypeError                 values that cannot be cast to the dtype
    ├── ModelError                exit 3
    │   ├── ModelNotFoundError             no such file, bundle or built model
    │   └── ModelLoadError                 the file is not a model onnxruntime can load
    ├── ProviderError             exit 4
    │   ├── ProviderUnknownError           a name that is no execution provider
    │   └── ProviderUnavailableError       a real provider this machine cannot run
    ├── InferenceError            exit 5   onnxruntime failed while running
    ├── StoreError                exit 6   the local model store cannot be read or written
    ├── ConvertError              exit 7   export or parity check failed, unsupported task
    └── RegistryError             exit 8   the model source (Hub, package) cannot be reached or read

Foreign errors (onnxruntime's, the OS's) are turned into these in one place,
:func:`map_exceptions`, so callers never see a bare ``RuntimeException``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class GpuxError(Exception):
    """Base class: every error gpux raises deliberately."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(GpuxError):
    """A command was called with arguments that cannot work."""

    exit_code = 2


class ConfigError(UsageError):
    """A gpux.yml file does not validate."""


class InputError(GpuxError):
    """Inputs do not fit the model's signature."""

    exit_code = 2


class InputNameError(InputError):
    """An input is missing, or a name is not one of the model's inputs."""


class InputShapeError(InputError):
    """An input has the wrong rank or a dimension that does not fit."""


class InputTypeError(InputError):
    """An input's values cannot be cast to the declared dtype without loss."""


class ModelError(GpuxError):
    """The model cannot be found or loaded."""

    exit_code = 3


class ModelNotFoundError(ModelError):
    """No file, bundle or built model has this name."""


class ModelLoadError(ModelError):
    """The file exists but onnxruntime cannot load it."""


class ProviderError(GpuxError):
    """An execution provider request that cannot be met."""

    exit_code = 4


class ProviderUnknownError(ProviderError):
    """The name is not an execution provider gpux knows."""


class ProviderUnavailableError(ProviderError):
    """The provider exists but this machine or onnxruntime build cannot run it."""


class InferenceError(GpuxError):
    """onnxruntime failed while running a model."""

    exit_code = 5


class StoreError(GpuxError):
    """The local model store cannot be read or written."""

    exit_code = 6


class ConvertError(GpuxError):
    """Turning a model into ONNX failed, or the result did not match the original."""

    exit_code = 7


class RegistryError(GpuxError):
    """A model source (the Hub, a local folder, a model package) cannot be reached or read."""

    exit_code = 8


def _ort_error_types() -> tuple[type[BaseException], ...]:
    # Imported here: the module must stay importable without onnxruntime loaded.
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:  # pragma: no cover - onnxruntime is a base dependency
        return ()
    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented",
             "NoSuchFile", "NoModel", "InvalidProtobuf", "ModelLoaded", "EPFail", "EngineError")
    return tuple(t for t in (getattr(state, n, None) for n in names) if isinstance(t, type))


_LOAD_ERRORS = {"NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph", "NotImplemented"}


@contextlib.contextmanager
def map_exceptions(action: str, *, loading: bool = False) -> Iterator[None]:
    """Turn onnxruntime and OS errors raised inside the block into gpux errors.

    ``action`` names what was being done ("loading model.onnx"), so the message
    reads as a sentence. ``loading`` picks :class:`ModelLoadError` over
    :class:`InferenceError` for onnxruntime failures.
    """
    try:
        yield
    except GpuxError:
        raise
    except _ort_error_types() as exc:
        kind = type(exc).__name__
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
        if loading or kind in _LOAD_ERRORS:
            raise ModelLoadError(
                f"onnxruntime could not load the model while {action}: {detail}",
                hint="check that the file is a complete ONNX model (gpux inspect shows its opset)",
            ) from exc
        raise InferenceError(
            f"onnxruntime failed while {action}: {detail}",
            hint="run with -v for the full trace; gpux inspect shows what the model expects",
        ) from exc
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{action}: no such file {exc.filename!s}",
                                 hint="check the path") from exc
    except PermissionError as exc:
        raise StoreError(f"{action}: permission denied on {exc.filename!s}",
                         hint="check the file's permissions or set GPUX_HOME") from exc
