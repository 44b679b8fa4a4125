"""One runner measured in its own process: ``python -m gpux.bench.worker`` (a JSON spec on stdin).

Each runner (gpux, raw onnxruntime, PyTorch eager) gets a fresh interpreter, so
its cold load (importing its runtime + building the model) and its peak RSS are
its own and not the sum of everything measured before it. The spec:

    {"runner": "gpux" | "onnxruntime" | "pytorch", "unit": "vectors",
     "ref": "name:tag", "graph": "/path/model.onnx", "providers": [...],
     "source": "/hf/folder", "task": "...", "threads": null | int,
     "runs": 20, "warmup": 3, "warm_loads": 3,
     "points": [{"key": "b1_s128", "batch_size": 1, "seq_len": 128, "feed": "/x.npz", "texts": [...]}]}

Every runner times the same tensors (``feed``); the gpux runner times its whole
task pipeline from ``texts`` (tokenize, run, pool/softmax) and checks that its
tokenizer produced exactly ``feed``. Stdout carries JSON lines: ``{"event":
"point", ...}`` after each point (progress), then one ``{"event": "result"}`` or
``{"event": "error"}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

Call = Callable[[], Any]
#: What a runner gives back: its cold-loaded state, a loader for warm loads, a call factory per point.
Runner = tuple[Any, Callable[[], Any], Callable[[Any, dict[str, Any]], Call]]


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _feed(point: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    with np.load(point["feed"]) as data:
        return {k: data[k] for k in data.files}


def _gpux(spec: dict[str, Any]) -> Runner:
    from gpux.engine.model import load
    from gpux.tasks import for_model

    def make() -> Any:
        return load(spec["ref"], spec.get("provider"), intra_op_threads=spec.get("threads"))

    def call(model: Any, point: dict[str, Any]) -> Call:
        import numpy as np

        feed = _feed(point)
        task = for_model(model)
        if task is None or point.get("texts") is None:
            return lambda: model.run(feed)
        task.encode.fix_length(point["seq_len"])  # type: ignore[attr-defined]
        texts = point["texts"]
        mine = task.encode(texts)  # type: ignore[attr-defined]
        if set(mine) != set(feed) or any(not np.array_equal(mine[k], feed[k]) for k in feed):
            raise RuntimeError("gpux's tokenizer did not reproduce the benchmark feed")
        return lambda: task.run_batch(texts)

    return make(), make, call


def _onnxruntime(spec: dict[str, Any]) -> Runner:
    import onnxruntime as ort

    def make() -> Any:
        opts = ort.SessionOptions()
        if spec.get("threads"):
            opts.intra_op_num_threads = int(spec["threads"])
        return ort.InferenceSession(spec["graph"], opts, providers=spec["providers"])

    def call(session: Any, point: dict[str, Any]) -> Call:
        feed = _feed(point)
        return lambda: session.run(None, feed)

    return make(), make, call


def _pytorch(spec: dict[str, Any]) -> Runner:
    import torch
    import transformers

    from gpux.convert.export import TASK_HEADS

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cls = getattr(transformers, TASK_HEADS[spec["task"]][0])

    def make() -> Any:
        return cls.from_pretrained(spec["source"], dtype=torch.float32).eval()

    def call(model: Any, point: dict[str, Any]) -> Call:
        feed = {k: torch.from_numpy(v) for k, v in _feed(point).items()}

        def forward() -> Any:
            with torch.inference_mode():
                return model(**feed)

        return forward

    return make(), make, call


RUNNERS: dict[str, Callable[[dict[str, Any]], Runner]] = {
    "gpux": _gpux, "onnxruntime": _onnxruntime, "pytorch": _pytorch}


def _timed(call: Call, runs: int) -> list[float]:
    clock, out = time.perf_counter_ns, []
    for _ in range(runs):
        t0 = clock()
        call()
        out.append((clock() - t0) / 1e6)
    return out


def measure(spec: dict[str, Any], started_ns: int) -> dict[str, Any]:
    """Cold load, first call, warm loads, then every point: warmup untimed, runs timed."""
    from gpux.bench.env import peak_rss_mb
    from gpux.bench.stats import summarize_ms

    state, make, call_for = RUNNERS[spec["runner"]](spec)
    cold_ms = (time.perf_counter_ns() - started_ns) / 1e6
    points = spec["points"]
    first = call_for(state, points[0])
    t0 = time.perf_counter_ns()
    first()
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    warm = []
    for _ in range(int(spec.get("warm_loads", 3))):
        t0 = time.perf_counter_ns()
        make()
        warm.append((time.perf_counter_ns() - t0) / 1e6)
    out: dict[str, Any] = {}
    unit = f"{spec.get('unit', 'items')}_per_s"
    for point in points:
        call = call_for(state, point)
        for _ in range(int(spec["warmup"])):
            call()
        samples = _timed(call, int(spec["runs"]))
        latency = summarize_ms(samples)
        out[point["key"]] = {"batch_size": point["batch_size"], "seq_len": point.get("seq_len"),
                             "latency": latency, unit: point["batch_size"] * 1e3 / latency["mean_ms"]}
        _emit({"event": "point", "key": point["key"]})
    result: dict[str, Any] = {
        "load": {"cold_ms": cold_ms, "warm_ms": statistics.median(warm) if warm else None,
                 "first_run_ms": first_ms},
        "peak_rss_mb": peak_rss_mb(), "points": out}
    if spec["runner"] == "gpux":
        from gpux.engine.providers import alias_of

        result["providers"] = [alias_of(p) for p in state.providers]
        result["providers_full"] = list(state.providers)
        result["threads"] = state.settings.get("intra_op_threads")
    elif spec["runner"] == "pytorch":
        import torch

        result["threads"] = torch.get_num_threads()
    else:
        result["threads"] = spec.get("threads")
    return result


def main() -> None:
    started = time.perf_counter_ns()
    spec = json.loads(sys.stdin.read())
    try:
        result = measure(spec, started)
    except Exception as exc:  # reported to the parent, which records it beside the other runners
        hint = getattr(exc, "hint", None)
        if isinstance(exc, ImportError):
            hint = "install the convert extra: pip install 'gpux[convert]'"
        _emit({"event": "error", "message": f"{type(exc).__name__}: {exc}", "hint": hint})
        sys.exit(1)
    _emit({"event": "result", **result})


if __name__ == "__main__":
    main()
