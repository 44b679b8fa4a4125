"""The environment a measurement was taken in: versions, CPU, cores, memory high-water mark."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux: ``VmHWM``, the high-water mark of this process's own memory. Not
    ``ru_maxrss``: that survives ``exec`` and so reports the parent's size at fork
    when the parent was the bigger of the two (a benchmark worker would inherit
    the peak of the process that started it).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


#: CPU features that change int8/fp16/bf16 numerics and speed (onnxruntime picks kernels by them).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16")


def isa() -> list[str]:
    """The CPU's vector extensions that matter for inference, from /proc/cpuinfo: int8 results differ by
    ISA (VNNI vs AVX2 kernels round differently), so every figure records them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in _ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions and hardware facts to store beside every figure."""
    from gpux._version import __version__
    from gpux.engine.options import cpu_count

    packages = {"gpux": __version__}
    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", *extra_packages):
        v = _version(dist)
        if v is not None:
            packages[dist] = v
    return {
        "packages": packages,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "isa": isa(),
        "cores_logical": cpu_count(),
    }
