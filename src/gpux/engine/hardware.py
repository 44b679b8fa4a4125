"""What this machine is, and the serving defaults that follow from it (``gpux info``).

A generation server's safe limits depend on the machine: how many sequences can
decode at once before they only slow each other down, how much memory models and
their key/value caches may take before the kernel starts killing processes, and
which precision decodes fastest without giving up too much quality. Rather than
one set of numbers that is wrong on a laptop or wasteful on a server, gpux sorts
machines into three tiers (low / mid / high) and gives each tier defaults;
``gpux serve`` uses them unless a flag or gpux.yml says otherwise.

Two halves, kept apart so tests can feed facts without touching this machine:

- :func:`describe` reads the facts (cores, memory, CPU, ISA, providers) from
  /proc, the cgroup files and onnxruntime. Nothing is imported at module import
  time but the standard library: onnxruntime is imported inside the function, so
  ``gpux --help`` stays light.
- :func:`tier_of` is pure: a :class:`Hardware` in, a :class:`Tier` with its
  :class:`Defaults` out. The thresholds and per-tier numbers are data at the top
  of this module (documented in docs/hardware.md).

Limits are what *this process* may use, not what the box has: cores are the
affinity mask (taskset, cpuset) narrowed by a cgroup CPU quota, and memory is
the smaller of the machine's and the cgroup's limit, because a container sized
at 4 GiB on a 512 GiB host must be served as a 4 GiB machine.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

GIB = 1 << 30

# --- Tier thresholds (data; docs/hardware.md shows the same table) -------------------------------------

#: Fewer usable cores than this is the low tier: decode threads and the HTTP loop fight for them.
LOW_BELOW_CORES = 4
#: Less usable memory than this is the low tier: a 1B-parameter model in fp32 alone is 4 GiB.
LOW_BELOW_MEMORY = 8 * GIB
#: At least this many usable cores *and* this much memory is the high tier without an accelerator.
HIGH_MIN_CORES = 16
HIGH_MIN_MEMORY = 64 * GIB
#: Providers that mean a discrete GPU with its own memory and fast half-precision math: any one of them,
#: with a device present, makes the machine high tier whatever its CPU. CoreML, DirectML and OpenVINO are
#: reported as accelerators but do not raise the tier: they are often an integrated GPU or NPU sharing the
#: CPU's memory, where the CPU's own numbers are the better guide.
GPU_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
)

TierName = Literal["low", "mid", "high"]


@dataclass(frozen=True)
class TierSpec:
    """The per-tier numbers :func:`tier_of` turns into :class:`Defaults`."""

    #: Share of usable memory models may take (``gpux serve --memory-budget``). The rest is for the key/value
    #: caches, activations, the server itself and the OS; bigger machines have more of it to spare.
    memory_fraction: float
    #: Sequences decoded at once in one continuous batch. Past this, a CPU's per-step time grows about
    #: linearly with the batch, so more only raises every stream's inter-token latency.
    max_sequences: int
    #: Context each admitted sequence is guaranteed in the key/value cache; the cache budget in tokens is
    #: ``max_sequences * kv_tokens_per_sequence``, so a full batch of full contexts always fits.
    kv_tokens_per_sequence: int


TIERS: dict[TierName, TierSpec] = {
    "low": TierSpec(memory_fraction=0.50, max_sequences=16, kv_tokens_per_sequence=2048),
    "mid": TierSpec(memory_fraction=0.60, max_sequences=32, kv_tokens_per_sequence=4096),
    "high": TierSpec(memory_fraction=0.75, max_sequences=64, kv_tokens_per_sequence=4096),
}

# --- ISA names -----------------------------------------------------------------------------------------

#: Readable ISA name -> the /proc/cpuinfo flags any one of which means the CPU has it. Only extensions that
#: change which onnxruntime kernels run (and so speed, and for int8 the exact results) are listed.
ISA: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),  # int8 dot products: where int8 activations pay (MatMulNBits level 4)
    "AVX-512-BF16": ("avx512_bf16",),
    "AMX": ("amx_tile", "amx_int8", "amx_bf16"),
    "NEON": ("asimd",),  # Arm: /proc/cpuinfo's "Features" line
    "DotProd": ("asimddp",),  # Arm's int8 dot product, its VNNI
    "I8MM": ("i8mm",),
    "SVE": ("sve",),
}
KNOWN_ISA: tuple[str, ...] = tuple(ISA)
#: ISA names that give fast int8 dot products.
INT8_DOT = ("VNNI", "AMX", "DotProd", "I8MM")


# --- Facts ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accelerator:
    """A non-CPU execution provider this onnxruntime offers, and the devices seen for it."""

    provider: str
    hardware: str
    #: Device names found (e.g. "NVIDIA H200" from the driver); empty when the platform gives no list.
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hardware:
    """The facts about this machine that serving defaults depend on. Every field is plain data, so tests
    build one by hand."""

    cores_logical: int
    cores_usable: int
    memory_total_bytes: int
    memory_available_bytes: int
    cpu_model: str
    isa: tuple[str, ...] = ()
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    accelerators: tuple[Accelerator, ...] = ()
    #: A cgroup memory limit below the machine's memory, or None.
    memory_limit_bytes: int | None = None
    arch: str = field(default_factory=platform.machine)

    @property
    def memory_usable_bytes(self) -> int:
        """What this process may use: the machine's memory, or the cgroup limit when smaller (0: unknown)."""
        limit, total = self.memory_limit_bytes, self.memory_total_bytes
        if limit is not None and (not total or limit < total):
            return limit
        return self.memory_total_bytes

    @property
    def gpu(self) -> Accelerator | None:
        """The first accelerator that is a discrete GPU (:data:`GPU_PROVIDERS`), best first."""
        return next((a for a in self.accelerators if a.provider in GPU_PROVIDERS), None)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the facts (lists for tuples, and the derived usable memory)."""
        data = asdict(self)
        data["isa"] = list(self.isa)
        data["providers"] = list(self.providers)
        data["accelerators"] = [{**asdict(a), "devices": list(a.devices)} for a in self.accelerators]
        data["memory_usable_bytes"] = self.memory_usable_bytes
        return data


@dataclass(frozen=True)
class Defaults:
    """What ``gpux serve`` uses on a machine when no flag or gpux.yml says otherwise."""

    #: Bytes models may take before idle ones are evicted (``--memory-budget``); None when this machine's
    #: memory could not be read (no budget, as without the flag).
    memory_budget_bytes: int | None
    #: Sequences decoded at once in one continuous batch.
    max_sequences: int
    #: Key/value cache budget in tokens across all running sequences; past it, requests wait or get 429.
    kv_cache_tokens: int
    #: Preferred stored variant of a generation model: "fp16", "int8" or "int4" (fp32 when it has none).
    precision: str
    #: Why that precision, in a sentence (shown by ``gpux info``).
    precision_reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tier:
    """A machine's tier, why, and its serving defaults."""

    name: TierName
    reason: str
    defaults: Defaults

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "defaults": self.defaults.as_json()}


# --- The pure half -------------------------------------------------------------------------------------

def tier_of(hw: Hardware) -> Tier:
    """The tier of ``hw`` and its defaults. Pure: depends only on the facts passed in.

    Rules, first match wins: a discrete GPU (:data:`GPU_PROVIDERS` with a device) is high; fewer than
    :data:`LOW_BELOW_CORES` usable cores or less than :data:`LOW_BELOW_MEMORY` usable memory is low; at
    least :data:`HIGH_MIN_CORES` cores and :data:`HIGH_MIN_MEMORY` memory is high; anything else is mid.
    Memory that could not be read (0) counts as low: the small defaults are the safe ones.
    """
    gpu = hw.gpu
    mem, cores = hw.memory_usable_bytes, hw.cores_usable
    name: TierName
    if gpu is not None:
        name, reason = "high", f"GPU provider {gpu.provider}"
    elif cores < LOW_BELOW_CORES or mem < LOW_BELOW_MEMORY:
        why = []
        if cores < LOW_BELOW_CORES:
            why.append(f"{cores} usable cores < {LOW_BELOW_CORES}")
        if mem < LOW_BELOW_MEMORY:
            why.append(f"{_gib(mem)} usable memory < {_gib(LOW_BELOW_MEMORY)}")
        name, reason = "low", "; ".join(why)
    elif cores >= HIGH_MIN_CORES and mem >= HIGH_MIN_MEMORY:
        name, reason = "high", f"{cores} cores >= {HIGH_MIN_CORES} and {_gib(mem)} >= {_gib(HIGH_MIN_MEMORY)}"
    else:
        name, reason = "mid", (f"{cores} cores and {_gib(mem)}: neither low (< {LOW_BELOW_CORES} cores or "
                               f"< {_gib(LOW_BELOW_MEMORY)}) nor high (>= {HIGH_MIN_CORES} cores and "
                               f">= {_gib(HIGH_MIN_MEMORY)})")
    spec = TIERS[name]
    precision, precision_reason = _precision(hw, name)
    defaults = Defaults(
        memory_budget_bytes=int(mem * spec.memory_fraction) if mem else None,
        max_sequences=spec.max_sequences,
        kv_cache_tokens=spec.max_sequences * spec.kv_tokens_per_sequence,
        precision=precision,
        precision_reason=precision_reason,
    )
    return Tier(name=name, reason=reason, defaults=defaults)


def _precision(hw: Hardware, tier: TierName) -> tuple[str, str]:
    """The default generation precision and why.

    - A discrete GPU: fp16. Tensor cores run half precision at several times fp32's rate, and it halves
      weight and cache memory; fp16 parity is checked when a variant is made, like every variant.
    - Low tier CPU: int4 (4-bit blocks, 8-bit head). Few cores or little memory: int4 is an eighth of
      fp32's weight bytes and measured the fastest decode, 1.25x int8's tok/s on SmolLM2-135M on a 2-core
      machine (docs/generate.md). It costs quality (70% top-1 agreement with fp32 against int8's 94.5%,
      within int4's floors); on a low machine speed and fitting at all come first, and a flag or gpux.yml
      that names int8 takes it back.
    - Other CPUs: int8 (8-bit blocks). Near-lossless (94.5% top-1 agreement, +0.05% perplexity on
      SmolLM2-135M) at ~2.4x fp32's decode speed. With int8 dot products (VNNI, AMX, Arm DotProd/I8MM)
      activations are int8 too; without them the 8-bit weights still read a quarter of fp32's bytes per
      token, and bytes read are what bound decode.
    """
    if hw.gpu is not None:
        return "fp16", f"{hw.gpu.provider}: half precision on the GPU's tensor cores, half the memory of fp32"
    if tier == "low":
        return "int4", "low tier: 4-bit weights are the smallest and decode fastest, at some cost in quality"
    dot = [n for n in INT8_DOT if n in hw.isa]
    if dot:
        return "int8", f"{'/'.join(dot)}: int8 dot products, near-lossless 8-bit blocks"
    return "int8", "no int8 dot products, but 8-bit weights read a quarter of fp32's bytes per token"


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


# --- Parsing (pure, fed text by tests) -----------------------------------------------------------------

def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The CPU's model name and flag set from /proc/cpuinfo text (x86 "flags", Arm "Features")."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if not model and key in ("model name", "Model", "Hardware", "cpu model"):
            model = value.strip()
        elif not flags and key in ("flags", "Features"):
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def isa_names(flags: frozenset[str] | set[str]) -> tuple[str, ...]:
    """The readable ISA names (:data:`ISA`, in its order) that a CPU flag set has."""
    return tuple(name for name, need in ISA.items() if any(f in flags for f in need))


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo text; 0 for what is missing.

    Kernels older than 3.14 have no MemAvailable: MemFree + Buffers + Cached stands in for it.
    """
    kb: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            kb[key.strip()] = int(parts[0])
    total = kb.get("MemTotal", 0) * 1024
    avail = kb.get("MemAvailable")
    if avail is None:
        avail = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    return total, avail * 1024


def parse_limit(text: str) -> int | None:
    """A cgroup memory limit in bytes, or None for "no limit" ("max", or v1's page-rounded 2**63)."""
    value = text.strip()
    if not value.isdigit():
        return None
    n = int(value)
    return n if 0 < n < (1 << 60) else None


def parse_cpu_quota(text: str, period_text: str | None = None) -> int | None:
    """Cores a cgroup CPU quota allows (rounded up), or None for no quota.

    v2 ``cpu.max`` is "QUOTA PERIOD" or "max PERIOD"; v1 is ``cpu.cfs_quota_us`` (-1: none) with the period
    in ``cpu.cfs_period_us`` passed as ``period_text``.
    """
    parts = text.split()
    if period_text is not None:
        parts = parts[:1] + period_text.split()[:1]
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[1]) == 0:
        return None
    return max(1, math.ceil(int(parts[0]) / int(parts[1])))


# --- The reading half ----------------------------------------------------------------------------------

def describe() -> Hardware:
    """This machine's facts, read now. Imports onnxruntime (for its providers); everything else is /proc,
    /sys and the standard library, and each unreadable source degrades to a neutral value, never an error."""
    from gpux.engine import providers

    cpuinfo = _read("/proc/cpuinfo") or ""
    model, flags = parse_cpuinfo(cpuinfo)
    total, available = _memory()
    have = providers.available()
    limit = _cgroup_memory_limit()
    return Hardware(
        cores_logical=os.cpu_count() or 1,
        cores_usable=_usable_cores(),
        memory_total_bytes=total,
        memory_available_bytes=available,
        memory_limit_bytes=limit if limit is not None and (not total or limit < total) else None,
        cpu_model=model or platform.processor() or platform.machine() or "unknown",
        isa=isa_names(flags),
        providers=tuple(have),
        accelerators=_accelerators(have),
    )


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _memory() -> tuple[int, int]:
    """(total, available) bytes: /proc/meminfo, else sysconf (total only; available unknown = total)."""
    text = _read("/proc/meminfo")
    if text:
        total, available = parse_meminfo(text)
        if total:
            return total, available
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - platforms without sysconf
        return 0, 0
    return total, total


def _cgroup_dirs(controller: str) -> list[Path]:
    """Directories to look for ``controller``'s files in: this process's own cgroup, then the mount root
    (inside a container the root is usually the container's cgroup). v2's unified tree first, then v1."""
    own: dict[str, str] = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(",") if parts[1] else [""]:
                own[name] = parts[2].strip()
    root = Path("/sys/fs/cgroup")
    dirs = []
    for base, key in ((root, ""), (root / controller, controller)):
        if key in own:
            dirs.append(base / own[key].lstrip("/"))
        dirs.append(base)
    return dirs


def _cgroup_memory_limit() -> int | None:
    """The smallest cgroup memory limit on this process, or None."""
    limits = []
    for d in _cgroup_dirs("memory"):
        for name in ("memory.max", "memory.limit_in_bytes"):
            text = _read(d / name)
            limit = parse_limit(text) if text is not None else None
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _usable_cores() -> int:
    """Cores this process may run on: the affinity mask, narrowed by a cgroup CPU quota."""
    from gpux.engine.options import cpu_count

    cores = cpu_count()
    for d in _cgroup_dirs("cpu"):
        text = _read(d / "cpu.max")
        quota = parse_cpu_quota(text) if text is not None else None
        if quota is None:
            v1, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            quota = parse_cpu_quota(v1, period) if v1 is not None and period is not None else None
        if quota is not None:
            cores = min(cores, quota)
    return cores


def _accelerators(have: list[str]) -> tuple[Accelerator, ...]:
    """The non-CPU providers in ``have`` whose device is present.

    onnxruntime lists the providers it was *built* with: onnxruntime-gpu offers CUDA on a machine with no
    GPU. On Linux the driver's device files say whether one is there (NVIDIA: /proc/driver/nvidia/gpus,
    /dev/nvidia0; AMD: /dev/kfd); without them the provider is dropped here. Elsewhere the provider is
    trusted. No nvidia-smi needed.
    """
    from gpux.engine.providers import CPU, PRIORITY

    hardware = {p.ort_name: p.hardware for p in PRIORITY}
    linux = platform.system() == "Linux"
    found = []
    for name in have:
        if name == CPU:
            continue
        devices: tuple[str, ...] = ()
        if linux and name in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
            devices = _nvidia_devices()
            if not devices and not Path("/dev/nvidia0").exists():
                continue
        elif linux and name in ("ROCMExecutionProvider", "MIGraphXExecutionProvider") and \
                not Path("/dev/kfd").exists():
            continue
        found.append(Accelerator(provider=name, hardware=hardware.get(name, name), devices=devices))
    return tuple(found)


def _nvidia_devices() -> tuple[str, ...]:
    """GPU model names from the NVIDIA driver's /proc files ("Model: NVIDIA H200"), one per GPU."""
    root = Path("/proc/driver/nvidia/gpus")
    names = []
    try:
        gpus = sorted(root.iterdir())
    except OSError:
        return ()
    for gpu in gpus:
        for line in (_read(gpu / "information") or "").splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
                break
        else:
            names.append("NVIDIA GPU")
    return tuple(names)
