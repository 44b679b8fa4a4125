"""``gpux bench``: each model x precision x batch size x sequence length, with its baselines, in one run.

For every model: the precision variants are found in the store or built (and
parity-checked) by the convert box; one feed per grid point is tokenized once and
saved, so every runner times the same tensors; each runner lives in its own
process (:mod:`gpux.bench.worker`): gpux per precision, raw onnxruntime on the
same file per precision, PyTorch eager once (fp32, from the folder the model was
converted from). Each point's runs are taken in :data:`ROUNDS` rounds that
alternate between the runners. Ratios are gpux's throughput over each baseline's.

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
#: Each point's timed runs are split into this many rounds, alternating between the runners.
ROUNDS = 4


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


def _save(work: Path, feed: dict[str, np.ndarray]) -> str:
    """Write one point's feed where every runner process can read it; its path."""
    with tempfile.NamedTemporaryFile(dir=work, suffix=".npz", delete=False) as f:
        np.savez(f, **feed)  # type: ignore[arg-type]
    return f.name


def _given(target: Target, work: Path) -> None:
    """The one point of a model benchmarked on the user's own input (``--input``)."""
    from gpux.bench.runner import batch_size
    from gpux.engine.model import load

    model = load(target.bundle, "cpu")
    feed = {k: np.asarray(v) for k, v in model.check(target.given or {}).items()}
    target.points.append({"key": "input", "batch_size": batch_size(model, feed), "seq_len": None,
                          "feed": _save(work, feed), "texts": None})


def make_points(target: Target, work: Path) -> None:
    """Tokenize (or synthesise) and save one feed per batch size x sequence length."""
    from gpux.engine.model import load
    from gpux.tasks import task_class
    from gpux.tasks.text import TextEncoder

    if target.given is not None:
        return _given(target, work)
    # Image and audio models (a processor, no tokenizer) are timed on their graph with synthetic tensors, like
    # raw models; their pre-processing is measured apart by benchmarks/vision_audio.py.
    text = task_class(target.bundle.manifest.task) is not None and "processor" not in target.bundle.manifest.assets
    encoder = TextEncoder(target.bundle) if text else None
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
            target.points.append({"key": key, "batch_size": b, "seq_len": s if uses_seq else None,
                                  "feed": _save(work, feed), "texts": texts, "synthetic": encoder is None})


class Worker:
    """One runner in its own process, driven a command at a time; a failure is kept, never raised."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.runner = str(spec["runner"])
        self.samples: dict[str, list[float]] = {}
        self.error: dict[str, Any] | None = None
        self._err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "gpux.bench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1)
        self._send(spec)
        self.ready = self._reply() or {}

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except OSError:  # the worker died; _reply reads why
            pass

    def _reply(self) -> dict[str, Any] | None:
        if self.error is not None:
            return None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printing to stdout; not ours
            if event.get("event") == "error":
                self.error = {"error": event["message"], **({"hint": event["hint"]} if event.get("hint") else {})}
                return None
            return event  # type: ignore[no-any-return]
        rc = self.proc.wait()
        self._err.seek(0)
        tail = " | ".join(self._err.read().strip().splitlines()[-3:]) or "no output"
        self.error = {"error": f"the {self.runner} worker exited with code {rc}: {tail}"}
        return None

    def measure(self, index: int, key: str, runs: int, warmup: int) -> None:
        """``runs`` more timed calls on point ``index``, added to its samples."""
        self._send({"measure": index, "runs": runs, "warmup": warmup})
        reply = self._reply()
        if reply is not None:
            self.samples.setdefault(key, []).extend(reply["samples"])

    def finish(self, points: list[dict[str, Any]], unit: str) -> dict[str, Any]:
        """The runner's block of results.json: load, memory, what ran, and every point's statistics."""
        from gpux.bench.stats import summarize_ms

        final = None
        if self.error is None:
            self._send({"finish": True})
            final = self._reply()
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:  # the worker is gone with commands unread
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        if final is None:
            return self.error or {"error": f"the {self.runner} worker gave no result"}
        final.pop("event", None)
        final["points"] = {}
        for p in points:
            if p["key"] in self.samples:
                latency = summarize_ms(self.samples[p["key"]])
                final["points"][p["key"]] = {"batch_size": p["batch_size"], "seq_len": p.get("seq_len"),
                                             "runs": len(self.samples[p["key"]]), "latency": latency,
                                             f"{unit}_per_s": p["batch_size"] * 1e3 / latency["mean_ms"]}
        return final


def rounds_of(runs: int) -> list[int]:
    """``runs`` split into up to :data:`ROUNDS` rounds (the first ones take the remainder)."""
    k = min(ROUNDS, runs)
    return [runs // k + (1 if i < runs % k else 0) for i in range(k)]


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
    if target.stored and "processor" in m.assets:
        return "the PyTorch runner feeds text; image and audio baselines: benchmarks/vision_audio.py"
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
    """Measure every target; the whole ``results.json`` document.

    Per model, every runner (gpux and raw onnxruntime per precision, PyTorch once) is
    started in its own process; then each point's runs are taken in rounds that
    alternate between all of them, so drift in the machine's speed hits every runner alike.
    """
    from gpux.bench.env import environment

    store = store or Store()
    common = {"warm_loads": plan.warm_loads, "threads": plan.threads}
    rounds = rounds_of(plan.runs)
    results: dict[str, Any] = {}
    for t in targets:
        base = {**common, "unit": t.unit, "points": t.points}
        steps = len(t.points) * len(rounds)
        workers: list[Worker] = []
        pytorch_w: Worker | None = None
        pytorch: dict[str, Any] = {"skipped": "not asked for (--baseline)"}
        if "pytorch" in plan.baselines:
            pt_spec = _pytorch_spec(t)
            if isinstance(pt_spec, dict):
                progress(f"{t.ref} · loading PyTorch eager", 0)
                pytorch_w = Worker({**base, **pt_spec})
                workers.append(pytorch_w)
            else:
                pytorch = {"skipped": pt_spec}
                progress(None, steps)
        precisions: dict[str, Any] = {}
        runners: dict[str, tuple[Worker, Worker | None]] = {}
        for label in t.entry.precisions or ():
            progress(f"{t.ref} · {label} · preparing", 0)
            try:
                bundle = _variant(t, label, store, plan)
            except GpuxError as exc:
                precisions[label] = {"error": exc.message, "hint": exc.hint}
                progress(None, steps * (1 + ("onnxruntime" in plan.baselines)))
                continue
            m = bundle.manifest
            ref = f"{m.name}:{m.tag}" if m.files else t.ref
            precisions[label] = {"ref": ref,
                                 "size_mb": (store.size(m) if m.files else bundle.graph_path().stat().st_size) / 1e6,
                                 "parity_vs_fp32": m.conversion.get("parity_vs_fp32")}
            progress(f"{t.ref} · {label} · loading gpux", 0)
            gw = Worker({**base, "runner": "gpux", "ref": ref, "provider": plan.provider})
            ow = None
            if "onnxruntime" in plan.baselines:
                progress(f"{t.ref} · {label} · loading onnxruntime", 0)
                ow = Worker({**base, "runner": "onnxruntime", "graph": str(bundle.graph_path()),
                             "providers": gw.ready.get("providers_full") or ["CPUExecutionProvider"]})
            runners[label] = (gw, ow)
            workers += [w for w in (gw, ow) if w is not None]
        for i, point in enumerate(t.points):
            for r, runs in enumerate(rounds):
                progress(f"{t.ref} · {point['key']} · round {r + 1}/{len(rounds)}", 0)
                for w in workers:
                    w.measure(i, point["key"], runs, plan.warmup)
                    progress(None, 1)
        if pytorch_w is not None:
            pytorch = pytorch_w.finish(t.points, t.unit)
        for label, (gw, ow) in runners.items():
            entry = precisions[label]
            entry["gpux"] = gw.finish(t.points, t.unit)
            if ow is not None:
                entry["onnxruntime"] = ow.finish(t.points, t.unit)
            entry["ratios"] = _ratios(entry, pytorch, t.unit)
            for block in (entry["gpux"], entry.get("onnxruntime", {})):
                if "error" in block and t.points and t.points[0].get("synthetic"):
                    block["hint"] = "its inputs were synthesised from the signature; give real ones with --input"
        results[t.ref] = {"model": t.bundle.manifest.name, "task": t.bundle.manifest.task, "unit": t.unit,
                          "source": t.bundle.manifest.source, "pytorch": pytorch, "precisions": precisions}
    return {"schema": "gpux.bench/1", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {**plan.model_dump(mode="json", exclude={"models", "out"}), "rounds": len(rounds),
                         "models": [e.model_dump(mode="json") for e in plan.entries()]},
            "environment": environment(("torch", "transformers")), "models": results}


def total_steps(plan: Plan, targets: list[Target]) -> int:
    """Progress steps of :func:`run_plan`: one per point, round and runner."""
    per = 1 + ("onnxruntime" in plan.baselines)
    rounds = len(rounds_of(plan.runs))
    return sum(len(t.points) * rounds * (len(t.entry.precisions or ()) * per + ("pytorch" in plan.baselines))
               for t in targets)


def failures(doc: dict[str, Any]) -> list[str]:
    """``model precision: error (hint)`` for every gpux runner (or variant) that failed; baselines are not counted."""
    out = []
    for ref, m in doc["models"].items():
        for label, p in m["precisions"].items():
            block = p if "error" in p else p.get("gpux", {})
            if block.get("error"):
                out.append(f"{ref} {label}: {block['error']}" + (f" ({block['hint']})" if block.get("hint") else ""))
    return out
