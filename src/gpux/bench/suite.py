"""``gpux bench``: each model x precision x batch size x sequence length, with its baselines, in one run.

For every model: the precision variants are found in the store or built (and
parity-checked) by the convert box; one feed per grid point is tokenized once and
saved, so every runner times the same tensors; then each runner is measured in
its own process (:mod:`gpux.bench.worker`): gpux per precision, raw onnxruntime
on the same file per precision, PyTorch eager once (fp32, from the folder the
model was converted from). Ratios are gpux's throughput over each baseline's.

A baseline that cannot run (no torch installed, no original folder, a raw ONNX
model) is recorded with its reason, never silently dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpux.bench.plan import ModelEntry, Plan, variant_of
from gpux.errors import GpuxError, InputError, UsageError
from gpux.store.bundle import Bundle
from gpux.store.local import Store

#: progress(description or None, steps done since the last call)
Progress = Callable[[str | None, int], None]


@dataclass
class Target:
    """One model of the plan, resolved to a bundle, with its grid points."""

    ref: str
    bundle: Bundle
    entry: ModelEntry
    unit: str
    #: The user's own input (``--input``, read by the CLI) for models whose inputs cannot be synthesised.
    given: dict[str, Any] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        return bool(self.bundle.manifest.files)

    @property
    def loadable(self) -> str:
        m = self.bundle.manifest
        return f"{m.name}:{m.tag}" if self.stored else self.ref


def _texts(encoder: Any, batch: int, seq: int) -> list[str]:
    """``batch`` different real-sentence texts, each at least ``seq`` tokens long (so none is padded)."""
    from gpux.convert.optimize import SENTENCES

    out = []
    for i in range(batch):
        parts: list[str] = []
        while not parts or encoder.lengths([" ".join(parts)])[0] < seq:
            parts.append(SENTENCES[(i + len(parts)) % len(SENTENCES)])
        out.append(" ".join(parts))
    return out


def _synthetic(inputs: list[Any], batch: int, seq: int) -> tuple[dict[str, np.ndarray], bool]:
    """Random tensors fitting a raw model's inputs: a dim named twice gets one size; otherwise
    a free dim 0 is the batch and any other free dim the sequence length."""
    rng, uses_seq = np.random.default_rng(0), False
    feed: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for spec in inputs:
        if spec.shape is None or spec.dtype == "string":
            raise InputError(f"input {spec.name!r} ({spec.describe()}) cannot be synthesised for a benchmark",
                             hint="give real inputs with --input file.json")
        dims = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
                continue
            size = sizes.get(d) if isinstance(d, str) else None
            if size is None:
                size = batch if i == 0 else seq
                uses_seq |= i > 0
                if isinstance(d, str):
                    sizes[d] = size
            dims.append(size)
        if spec.dtype.startswith("float"):
            feed[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        elif spec.dtype == "bool":
            feed[spec.name] = rng.random(dims) < 0.5
        else:
            feed[spec.name] = rng.integers(0, 2, dims).astype(spec.dtype)
    return feed, uses_seq


def _given(target: Target, work: Path) -> None:
    """The one point of a model benchmarked on the user's own input (``--input``)."""
    from gpux.bench.runner import batch_size
    from gpux.engine.model import load

    model = load(target.bundle, "cpu")
    feed = {k: np.asarray(v) for k, v in model.check(target.given or {}).items()}
    path = work / f"{len(list(work.iterdir()))}-input.npz"
    np.savez(path, **feed)  # type: ignore[arg-type]
    target.points.append({"key": "input", "batch_size": batch_size(model, feed), "seq_len": None,
                          "feed": str(path), "texts": None})


def make_points(target: Target, work: Path) -> None:
    """Tokenize (or synthesise) and save one feed per batch size x sequence length."""
    from gpux.engine.model import load
    from gpux.tasks import task_class
    from gpux.tasks.text import TextEncoder

    if target.given is not None:
        return _given(target, work)
    encoder = TextEncoder(target.bundle) if task_class(target.bundle.manifest.task) else None
    inputs = load(target.bundle, "cpu").inputs if encoder is None else []
    seen: set[str] = set()
    for b in target.entry.batch_sizes or ():
        for s in target.entry.seq_lens or ():
            texts = None
            if encoder is not None:
                encoder.fix_length(s)
                texts = _texts(encoder, b, s)
                feed, uses_seq = encoder(texts), True
            else:
                feed, uses_seq = _synthetic(inputs, b, s)
            key = f"b{b}_s{s}" if uses_seq else f"b{b}"
            if key in seen:
                continue
            seen.add(key)
            path = work / f"{len(list(work.iterdir()))}-{key}.npz"
            np.savez(path, **feed)  # type: ignore[arg-type]
            target.points.append({"key": key, "batch_size": b, "seq_len": s if uses_seq else None,
                                  "feed": str(path), "texts": texts})


def spawn(spec: dict[str, Any], step: Callable[[], None]) -> dict[str, Any]:
    """Run one worker; ``step()`` after each point it finishes; its result or ``{"error": ...}``."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gpux.bench.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        final: dict[str, Any] | None = None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printing to stdout; not ours
            if event.get("event") == "point":
                step()
            elif event.get("event") in ("result", "error"):
                final = event
        rc = proc.wait()
        err.seek(0)
        tail = err.read().strip().splitlines()[-3:]
    if final is None:
        return {"error": f"the {spec['runner']} worker exited with code {rc}: {' | '.join(tail) or 'no output'}"}
    kind = final.pop("event")
    if kind == "error":
        return {k: v for k, v in final.items() if v is not None and k != "message"} | {"error": final["message"]}
    return final


def _variant(target: Target, label: str, store: Store, plan: Plan) -> Bundle:
    """The bundle for precision ``label``: the model itself for fp32, else its stored or freshly built variant."""
    variant = variant_of(label)
    if variant is None:
        return target.bundle
    if not target.stored or "task_config" not in target.bundle.manifest.assets:
        raise UsageError(f"precision {label} needs a model converted by gpux pull; {target.ref} is a raw ONNX model",
                         hint="benchmark it at fp32, or pull the Hugging Face model it came from")
    from gpux.convert.optimize import make_variant

    m = target.bundle.manifest
    base = str(m.conversion.get("base") or f"{m.name}:{m.tag}")
    name, _, base_tag = base.partition(":")
    tag = f"{base_tag}-{variant.suffix()}"
    if tag in store.tags(name):
        return store.get(f"{name}:{tag}")
    return make_variant(base, variant, store=store, min_cosine=plan.min_cosine, min_agreement=plan.min_agreement)


def _pytorch_spec(target: Target) -> dict[str, Any] | str:
    """The PyTorch worker's spec, or why there is no PyTorch baseline for this model."""
    from gpux.convert.export import TASK_HEADS
    from gpux.registry import source_folder

    m = target.bundle.manifest
    if not target.stored or m.task not in TASK_HEADS:
        return "no PyTorch original: the model was given as ONNX"
    folder = source_folder(m.source)
    if folder is None:
        return f"the original files ({m.source.get('kind')}: {m.source.get('repo') or m.source.get('path')}) are gone"
    return {"runner": "pytorch", "source": str(folder), "task": m.task}


def _ratios(runs: dict[str, Any], pytorch: dict[str, Any], unit: str) -> dict[str, dict[str, float]]:
    key = f"{unit}_per_s"
    out: dict[str, dict[str, float]] = {}
    for point, got in runs.get("gpux", {}).get("points", {}).items():
        row = {}
        for name, base in (("onnxruntime", runs.get("onnxruntime", {})), ("pytorch", pytorch)):
            ref = base.get("points", {}).get(point, {}).get(key)
            if ref:
                row[f"vs_{name}"] = got[key] / ref
        out[point] = row
    return out


def run_plan(plan: Plan, targets: list[Target], progress: Progress, store: Store | None = None) -> dict[str, Any]:
    """Measure every target; the whole ``results.json`` document."""
    from gpux.bench.env import environment

    store = store or Store()
    common = {"runs": plan.runs, "warmup": plan.warmup, "warm_loads": plan.warm_loads, "threads": plan.threads}
    results: dict[str, Any] = {}
    for t in targets:
        base = {**common, "unit": t.unit, "points": t.points}
        n = len(t.points)
        pt_spec = _pytorch_spec(t) if "pytorch" in plan.baselines else None
        pytorch: dict[str, Any] = {"skipped": "not asked for (--baseline)"}
        if isinstance(pt_spec, dict):
            progress(f"{t.ref} · pytorch eager", 0)
            pytorch = spawn({**base, **pt_spec}, lambda: progress(None, 1))
        elif pt_spec is not None:
            pytorch = {"skipped": pt_spec}
        if not isinstance(pt_spec, dict) and "pytorch" in plan.baselines:
            progress(None, n)
        precisions: dict[str, Any] = {}
        for label in t.entry.precisions or ():
            progress(f"{t.ref} · {label} · preparing", 0)
            try:
                bundle = _variant(t, label, store, plan)
            except GpuxError as exc:
                precisions[label] = {"error": exc.message, "hint": exc.hint}
                progress(None, n * (1 + ("onnxruntime" in plan.baselines)))
                continue
            m = bundle.manifest
            entry: dict[str, Any] = {
                "ref": f"{m.name}:{m.tag}" if m.files else t.ref,
                "size_mb": (store.size(m) if m.files else bundle.graph_path().stat().st_size) / 1e6,
                "parity_vs_fp32": m.conversion.get("parity_vs_fp32")}
            progress(f"{t.ref} · {label} · gpux", 0)
            entry["gpux"] = spawn({**base, "runner": "gpux", "ref": entry["ref"] if m.files else t.ref,
                                   "provider": plan.provider}, lambda: progress(None, 1))
            if "onnxruntime" in plan.baselines:
                progress(f"{t.ref} · {label} · onnxruntime", 0)
                providers = entry["gpux"].get("providers_full") or ["CPUExecutionProvider"]
                entry["onnxruntime"] = spawn({**base, "runner": "onnxruntime", "graph": str(bundle.graph_path()),
                                              "providers": providers}, lambda: progress(None, 1))
            entry["ratios"] = _ratios(entry, pytorch, t.unit)
            precisions[label] = entry
        results[t.ref] = {"model": t.bundle.manifest.name, "task": t.bundle.manifest.task, "unit": t.unit,
                          "source": t.bundle.manifest.source, "pytorch": pytorch, "precisions": precisions}
    return {"schema": "gpux.bench/1", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {**plan.model_dump(mode="json", exclude={"models", "out"}),
                         "models": [e.model_dump(mode="json") for e in plan.entries()]},
            "environment": environment(("torch", "transformers")), "models": results}


def total_steps(plan: Plan, targets: list[Target]) -> int:
    """Progress steps of :func:`run_plan`: one per point per runner."""
    per = 1 + ("onnxruntime" in plan.baselines)
    return sum(len(t.points) * (len(t.entry.precisions or ()) * per + ("pytorch" in plan.baselines)) for t in targets)


def failures(doc: dict[str, Any]) -> list[str]:
    """``model precision: error`` for every gpux runner (or variant) that failed; baselines are not counted."""
    out = []
    for ref, m in doc["models"].items():
        for label, p in m["precisions"].items():
            err = p.get("error") or p.get("gpux", {}).get("error")
            if err:
                out.append(f"{ref} {label}: {err}")
    return out
