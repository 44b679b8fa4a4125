"""Session settings chosen on purpose, and a record of what was chosen.

onnxruntime's defaults are reasonable but invisible; gpux sets each setting that
changes speed explicitly (threads, optimisation level, execution mode) so a
benchmark result can say exactly what ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

OPT_LEVELS = ("disable", "basic", "extended", "all")


def cpu_count() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RuntimeOptions:
    """What a session is created with. None means "gpux's default" (see :meth:`session_options`)."""

    provider: str = "auto"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    graph_optimization: str = "all"
    #: onnxruntime's own log level: 0 verbose .. 4 fatal. 3 keeps its warnings off stderr.
    log_level: int = 3
    #: Let intra-op threads busy-wait for work (onnxruntime's default). Lowest latency for one
    #: caller; a server sharing cores with its HTTP thread turns it off.
    spinning: bool = True
    #: Keep weights pre-packed for onnxruntime's GEMM kernels (its default): a second copy of every
    #: MatMul weight, which pays for itself when many rows share it (an encoder), not for a decoder's one row.
    prepacking: bool = True
    #: onnxruntime's CPU arena: keeps the largest activations allocated between runs (its default).
    memory_arena: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})

    def override(self, **changes: Any) -> RuntimeOptions:
        """A copy with every non-None value in ``changes`` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def session_options(self, profile_prefix: str | None = None) -> tuple[Any, dict[str, Any]]:
        """An ``onnxruntime.SessionOptions`` and the JSON record of its settings."""
        import onnxruntime as ort

        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.graph_optimization]
        so.intra_op_num_threads = self.intra_op_threads or cpu_count()
        so.inter_op_num_threads = self.inter_op_threads or 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = self.log_level
        # Which provider got each node, kept at load so Model.placement needs no profiled run (no run cost).
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if not self.prepacking:
            so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_cpu_mem_arena = self.memory_arena
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        record = {
            "graph_optimization": self.graph_optimization,
            "intra_op_threads": so.intra_op_num_threads,
            "inter_op_threads": so.inter_op_num_threads,
            "execution_mode": "sequential",
            "spinning": self.spinning,
            **({"prepacking": False} if not self.prepacking else {}),
            **({"memory_arena": False} if not self.memory_arena else {}),
        }
        return so, record
