"""Execution-provider discovery, priority and the user's choice.

gpux picks the fastest provider onnxruntime offers on this machine, in the
order below, and always keeps the CPU provider last so that nodes the
accelerator does not support still run (onnxruntime assigns each node to the
first provider that takes it; :mod:`gpux.engine.placement` reports the split).

Asking for a provider that this machine or this onnxruntime build lacks is an
error naming what *is* available; gpux never silently runs elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpux.errors import ProviderUnavailableError, ProviderUnknownError


@dataclass(frozen=True)
class ProviderKind:
    """One execution provider as gpux names it."""

    alias: str
    ort_name: str
    hardware: str


#: Highest priority first. Order is the product's promise, tested as such.
PRIORITY: tuple[ProviderKind, ...] = (
    ProviderKind("tensorrt", "TensorrtExecutionProvider", "NVIDIA GPU (TensorRT)"),
    ProviderKind("cuda", "CUDAExecutionProvider", "NVIDIA GPU (CUDA)"),
    ProviderKind("rocm", "ROCMExecutionProvider", "AMD GPU (ROCm)"),
    ProviderKind("migraphx", "MIGraphXExecutionProvider", "AMD GPU (MIGraphX)"),
    ProviderKind("coreml", "CoreMLExecutionProvider", "Apple Neural Engine / GPU (CoreML)"),
    ProviderKind("directml", "DmlExecutionProvider", "Windows GPU (DirectML)"),
    ProviderKind("openvino", "OpenVINOExecutionProvider", "Intel CPU/GPU/NPU (OpenVINO)"),
    ProviderKind("cpu", "CPUExecutionProvider", "CPU"),
)

_BY_ALIAS = {p.alias: p for p in PRIORITY}
_BY_ALIAS.update({"trt": _BY_ALIAS["tensorrt"], "dml": _BY_ALIAS["directml"]})
_BY_ORT = {p.ort_name: p for p in PRIORITY}
CPU = _BY_ALIAS["cpu"].ort_name


def available() -> list[str]:
    """onnxruntime's providers on this machine that gpux can use, best first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p.ort_name for p in PRIORITY if p.ort_name in have]


def alias_of(ort_name: str) -> str:
    """The short name (``cuda``) for an onnxruntime provider name."""
    kind = _BY_ORT.get(ort_name)
    return kind.alias if kind else ort_name


def resolve(requested: str | None = "auto", have: list[str] | None = None) -> list[str]:
    """The provider list to hand onnxruntime for a user's ``--provider`` value.

    ``auto`` (or None) gives every available provider, best first. A named one
    gives that provider with the CPU provider after it (for unsupported nodes).
    Raises :class:`ProviderUnknownError` for a name that is no provider and
    :class:`ProviderUnavailableError` for one this machine lacks.
    """
    have = available() if have is None else have
    names = ", ".join(alias_of(n) for n in have)
    key = (requested or "auto").strip().lower()
    if key == "auto":
        return list(have)
    kind = _BY_ALIAS.get(key) or _BY_ORT.get(requested or "")
    if kind is None:
        known = ", ".join(["auto", *(p.alias for p in PRIORITY)])
        raise ProviderUnknownError(
            f"unknown provider {requested!r}; known providers: {known}",
            hint=f"available on this machine: {names}",
        )
    if kind.ort_name not in have:
        raise ProviderUnavailableError(
            f"provider {kind.alias!r} ({kind.hardware}) is not available on this machine; "
            f"available: {names}",
            hint=f"use --provider auto, or install the onnxruntime build for {kind.alias}",
        )
    return [kind.ort_name] if kind.ort_name == CPU else [kind.ort_name, CPU]
