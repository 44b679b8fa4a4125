"""`gpux info` and gpux.engine.hardware: real detection on this machine, tiers from given facts, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from conftest import gpux
from typer.testing import CliRunner

from gpux.cli import info as info_cmd
from gpux.engine import hardware as hwm
from gpux.engine.hardware import GIB, Accelerator, Hardware, tier_of


def facts(cores: int = 8, memory: int = 32 * GIB, **kw: object) -> Hardware:
    """Hardware facts as data: the tier rules take these, not this machine."""
    base = Hardware(cores_logical=cores, cores_usable=cores, memory_total_bytes=memory,
                    memory_available_bytes=memory // 2, cpu_model="Test CPU", isa=("AVX2",),
                    providers=("CPUExecutionProvider",), arch="x86_64")
    return replace(base, **kw)  # type: ignore[arg-type]


CUDA = Accelerator("CUDAExecutionProvider", "NVIDIA GPU (CUDA)", ("NVIDIA H200",))


# --- real detection --------------------------------------------------------------------------------------

def test_describe_this_machine() -> None:
    hw = hwm.describe()
    assert hw.cores_logical >= 1 and 1 <= hw.cores_usable <= hw.cores_logical
    assert hw.memory_total_bytes > 0 and 0 < hw.memory_available_bytes <= hw.memory_total_bytes
    assert isinstance(hw.isa, tuple) and set(hw.isa) <= set(hwm.KNOWN_ISA)
    assert "CPUExecutionProvider" in hw.providers and hw.providers[-1] == "CPUExecutionProvider"
    assert all(a.provider in hw.providers and a.provider != "CPUExecutionProvider" for a in hw.accelerators)
    assert hw.cpu_model
    tier = tier_of(hw)
    assert tier.name in ("low", "mid", "high")
    d = tier.defaults
    assert 0 < d.memory_budget_bytes < hw.memory_usable_bytes and d.max_sequences >= 1
    assert d.kv_cache_tokens >= d.max_sequences and d.precision in ("fp16", "int8", "int4")
    json.dumps(hw.as_json())  # plain JSON, no tuples or dataclasses left


def test_importing_hardware_does_not_import_onnxruntime() -> None:
    code = ("import sys\nimport gpux.engine.hardware, gpux.cli.info\n"
            "print('ORT', 'onnxruntime' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ORT False False" in out


@pytest.mark.skipif(sys.platform != "linux", reason="device files are checked on Linux only")
def test_a_provider_built_in_without_its_device_is_no_accelerator() -> None:
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    # onnxruntime-gpu lists CUDA on a machine with no GPU; OpenVINO has no device file to check, so it stays
    accel = hwm._accelerators(["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert [a.provider for a in accel] == ["OpenVINOExecutionProvider"]


# --- tiers from facts: every threshold hit exactly ------------------------------------------------------

@pytest.mark.parametrize(("cores", "memory", "tier"), [
    (hwm.LOW_BELOW_CORES - 1, 32 * GIB, "low"),
    (hwm.LOW_BELOW_CORES, 32 * GIB, "mid"),
    (8, hwm.LOW_BELOW_MEMORY - 1, "low"),
    (8, hwm.LOW_BELOW_MEMORY, "mid"),
    (hwm.LOW_BELOW_CORES, hwm.LOW_BELOW_MEMORY, "mid"),
    (1, 1 * GIB, "low"),
    (hwm.HIGH_MIN_CORES, hwm.HIGH_MIN_MEMORY, "high"),
    (hwm.HIGH_MIN_CORES - 1, hwm.HIGH_MIN_MEMORY, "mid"),
    (hwm.HIGH_MIN_CORES, hwm.HIGH_MIN_MEMORY - 1, "mid"),
    (128, 1024 * GIB, "high"),
    (128, 4 * GIB, "low"),  # many cores do not make up for too little memory
])
def test_tier_thresholds(cores: int, memory: int, tier: str) -> None:
    t = tier_of(facts(cores, memory))
    assert t.name == tier, t.reason
    spec = hwm.TIERS[t.name]
    assert t.defaults.max_sequences == spec.max_sequences
    assert t.defaults.kv_cache_tokens == spec.max_sequences * spec.kv_tokens_per_sequence
    assert t.defaults.memory_budget_bytes == int(memory * spec.memory_fraction)


def test_tier_defaults_grow_with_the_tier() -> None:
    low, mid, high = (tier_of(facts(c, m)).defaults for c, m in ((2, 4 * GIB), (8, 32 * GIB), (32, 128 * GIB)))
    assert (low.max_sequences, mid.max_sequences, high.max_sequences) == (16, 32, 64)
    assert low.kv_cache_tokens < mid.kv_cache_tokens < high.kv_cache_tokens
    assert low.memory_budget_bytes < mid.memory_budget_bytes < high.memory_budget_bytes


def test_gpu_provider_is_high_whatever_the_cpu() -> None:
    t = tier_of(facts(2, 4 * GIB, providers=("CUDAExecutionProvider", "CPUExecutionProvider"), accelerators=(CUDA,)))
    assert t.name == "high" and "CUDAExecutionProvider" in t.reason
    assert t.defaults.precision == "fp16"


def test_integrated_accelerators_do_not_raise_the_tier() -> None:
    dml = Accelerator("DmlExecutionProvider", "Windows GPU (DirectML)")
    t = tier_of(facts(8, 16 * GIB, providers=("DmlExecutionProvider", "CPUExecutionProvider"), accelerators=(dml,)))
    assert t.name == "mid"


def test_a_cgroup_limit_is_the_memory_that_counts() -> None:
    boxed = facts(32, 512 * GIB, memory_limit_bytes=4 * GIB)
    assert boxed.memory_usable_bytes == 4 * GIB
    t = tier_of(boxed)
    assert t.name == "low" and t.defaults.memory_budget_bytes == int(4 * GIB * hwm.TIERS["low"].memory_fraction)
    assert facts(8, 16 * GIB, memory_limit_bytes=64 * GIB).memory_usable_bytes == 16 * GIB  # a limit above the box


def test_unknown_memory_is_low_with_no_budget() -> None:
    t = tier_of(facts(32, 0))
    assert t.name == "low" and t.defaults.memory_budget_bytes is None
    assert facts(32, 0, memory_limit_bytes=2 * GIB).memory_usable_bytes == 2 * GIB


@pytest.mark.parametrize(("isa", "cores", "precision"), [
    (("AVX2", "AVX-512", "VNNI"), 8, "int8"),
    (("AVX2",), 8, "int8"),
    (("NEON", "DotProd"), 8, "int8"),
    (("AVX2", "AVX-512", "VNNI", "AMX"), 64, "int8"),
    (("AVX2", "VNNI"), 2, "int4"),
])
def test_default_precision(isa: tuple[str, ...], cores: int, precision: str) -> None:
    d = tier_of(facts(cores, 32 * GIB if cores < 64 else 256 * GIB, isa=isa)).defaults
    assert d.precision == precision and d.precision_reason
    if precision == "int8" and "VNNI" in isa:
        assert "VNNI" in d.precision_reason


# --- parsing ---------------------------------------------------------------------------------------------

def test_parse_cpuinfo_and_isa_names() -> None:
    x86 = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
           "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
           "processor\t: 1\nmodel name\t: ignored\n")
    model, flags = hwm.parse_cpuinfo(x86)
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and "amx_tile" in flags
    assert hwm.isa_names(flags) == ("AVX2", "AVX-512", "VNNI", "AVX-512-BF16", "AMX")
    assert hwm.isa_names(frozenset({"avx2", "avx_vnni"})) == ("AVX2", "VNNI")
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm\nCPU part\t: 0xd40\n"
    model, flags = hwm.parse_cpuinfo(arm)
    assert model == "" and hwm.isa_names(flags) == ("NEON", "DotProd", "I8MM", "SVE")
    assert hwm.parse_cpuinfo("") == ("", frozenset())


def test_parse_meminfo_and_limits() -> None:
    assert hwm.parse_meminfo("MemTotal:  16000 kB\nMemFree: 1000 kB\nMemAvailable:  8000 kB\n") == \
        (16000 * 1024, 8000 * 1024)
    old_kernel = "MemTotal: 16000 kB\nMemFree: 1000 kB\nBuffers: 500 kB\nCached: 2500 kB\n"
    assert hwm.parse_meminfo(old_kernel) == (16000 * 1024, 4000 * 1024)
    assert hwm.parse_meminfo("garbage") == (0, 0)
    assert hwm.parse_limit("max\n") is None and hwm.parse_limit("9223372036854771712\n") is None
    assert hwm.parse_limit("4294967296\n") == 4 * GIB
    assert hwm.parse_cpu_quota("max 100000") is None and hwm.parse_cpu_quota("250000 100000") == 3
    assert hwm.parse_cpu_quota("-1", "100000") is None and hwm.parse_cpu_quota("50000", "100000") == 1


# --- the command -----------------------------------------------------------------------------------------

def _local_app() -> typer.Typer:
    """The command on an app of its own, so it is tested whether or not gpux's app registers it yet."""
    app = typer.Typer()
    app.command("info")(info_cmd.info)

    @app.callback()
    def _root() -> None:  # keeps "info" a subcommand, as in gpux
        pass

    return app


def test_info_json_in_process() -> None:
    res = CliRunner().invoke(_local_app(), ["info", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["tier"]["name"] in ("low", "mid", "high")
    assert "CPUExecutionProvider" in out["hardware"]["providers"]
    assert set(out["tier"]["defaults"]) == {"memory_budget_bytes", "max_sequences", "kv_cache_tokens",
                                            "precision", "precision_reason"}


def test_info_table_in_process() -> None:
    res = CliRunner().invoke(_local_app(), ["info"])
    assert res.exit_code == 0, res.output
    for label in ("cores", "memory", "ISA", "providers", "tier", "memory budget", "concurrent sequences",
                  "KV cache", "precision"):
        assert label in res.output


def test_gpux_info_json_subprocess() -> None:
    if not re.search(r"^[\s│|]*info\s", gpux("--help").stdout, re.MULTILINE):
        pytest.skip("`info` is not registered in gpux.cli.app yet")
    res = gpux("info", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["hardware"]["cores_usable"] >= 1 and out["hardware"]["memory_total_bytes"] > 0
    assert out["tier"]["name"] in ("low", "mid", "high")
