"""One runner measured in its own process: ``python -m gpux.bench.worker`` (a JSON spec, then commands, on stdin).

Each runner (gpux, raw onnxruntime, PyTorch eager) gets a fresh interpreter, so
its cold load (importing its runtime + building the model) and its peak RSS are
its own and not the sum of everything measured before it. The spec:

    {"runner": "gpux" | "onnxruntime" | "pytorch", "unit": "vectors",
     "ref": "name:tag", "graph": "/path/model.onnx", "providers": [...],
     "source": "/hf/folder", "task": "...", "threads": null | int,
     "warm_loads": 3,
     "points": [{"key": "b1_s128", "batch_size": 1, "seq_len": 128, "feed": "/x.npz", "texts": [...]}]}

Every runner times the same tensors (``feed``); the gpux runner times its whole
task pipeline from ``texts`` (tokenize, run, pool/softmax) and checks that its
tokenizer produced exactly ``feed``. After loading, the worker waits for
commands (see :func:`main`): the parent alternates short rounds between all
runners of a model, so a machine whose speed drifts slows them all alike.
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

    tasks: dict[int, Any] = {}  # one task pipeline per model: its tokenizer is read once, not per point

    def call(model: Any, point: dict[str, Any]) -> Call:
        import numpy as np

        feed = _feed(point)
        if id(model) not in tasks:
            tasks[id(model)] = for_model(model)
        task = tasks[id(model)]
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


class Session:
    """One runner, loaded once, then timing whichever point the parent asks for next."""

    def __init__(self, spec: dict[str, Any], started_ns: int) -> None:
        self.spec = spec
        self.state, make, self._call_for = RUNNERS[spec["runner"]](spec)
        cold_ms = (time.perf_counter_ns() - started_ns) / 1e6
        first = self._call_for(self.state, spec["points"][0])
        t0 = time.perf_counter_ns()
        first()
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        warm = []
        for _ in range(int(spec.get("warm_loads", 3))):
            t0 = time.perf_counter_ns()
            make()
            warm.append((time.perf_counter_ns() - t0) / 1e6)
        self.load = {"cold_ms": cold_ms, "warm_ms": statistics.median(warm) if warm else None, "first_run_ms": first_ms}
        self._point: int | None = None
        self._call: Call | None = None

    def measure(self, index: int, runs: int, warmup: int) -> list[float]:
        """``runs`` timed calls on point ``index``; the first time a point is asked for, ``warmup`` untimed first."""
        if index != self._point:
            self._point, self._call = index, self._call_for(self.state, self.spec["points"][index])
            for _ in range(warmup):
                self._call()
        assert self._call is not None
        from gpux.bench.runner import time_calls

        return time_calls(self._call, runs)

    def finish(self) -> dict[str, Any]:
        from gpux.bench.env import peak_rss_mb

        return {"load": self.load, "peak_rss_mb": peak_rss_mb(), **self.describe()}

    def describe(self) -> dict[str, Any]:
        """What ran: providers (gpux) and intra-op threads."""
        out: dict[str, Any] = {}
        if self.spec["runner"] == "gpux":
            from gpux.engine.providers import alias_of

            out["providers"] = [alias_of(p) for p in self.state.providers]
            out["providers_full"] = list(self.state.ort_providers)
            out["threads"] = self.state.settings.get("intra_op_threads")
        elif self.spec["runner"] == "pytorch":
            import torch

            out["threads"] = torch.get_num_threads()
        else:
            out["threads"] = self.spec.get("threads")
        return out


def main() -> None:
    """Spec on the first stdin line; then one command a line: ``{"measure": i, "runs": n, "warmup": w}`` or
    ``{"finish": true}``. Each gets one JSON line back (``samples``, ``result``), or ``error`` and exit 1."""
    started = time.perf_counter_ns()
    try:
        session = Session(json.loads(sys.stdin.readline()), started)
        _emit({"event": "ready", "load": session.load, **session.describe()})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("finish"):
                _emit({"event": "result", **session.finish()})
                return
            _emit({"event": "samples", "samples": session.measure(int(cmd["measure"]), int(cmd["runs"]),
                                                                  int(cmd["warmup"]))})
    except Exception as exc:  # reported to the parent, which records it beside the other runners
        hint = getattr(exc, "hint", None)
        if isinstance(exc, ImportError):
            hint = "install the convert extra: pip install 'gpux[convert]'"
        _emit({"event": "error", "message": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}", "hint": hint})
        sys.exit(1)


if __name__ == "__main__":
    main()
