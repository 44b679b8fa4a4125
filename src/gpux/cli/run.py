"""``gpux run``: one inference (or a benchmark) on a model, result as JSON on stdout."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from gpux.cli import common
from gpux.errors import UsageError

if TYPE_CHECKING:
    from gpux.engine.model import Model

OPT_HELP = "Graph optimisation level: disable, basic, extended or all."
MODEL_HELP = "An .onnx file, a bundle folder, a folder with gpux.yml, or a built name."
PROVIDER_HELP = "auto, cpu, cuda, tensorrt, rocm, migraphx, coreml, directml, openvino."


def run(
    models: list[str] = typer.Argument(..., help=MODEL_HELP + " Several text-generation models: an ensemble "
                                       "(each answers the same prompt; their diversity index is reported).",
                                       metavar="MODEL..."),
    input: str = typer.Option(..., "--input", "-i", help="Inputs as JSON, or @file.json / @file.npz."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the JSON result here instead of stdout."),  # noqa: UP007
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),  # noqa: UP007
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: cores available)."),  # noqa: UP007
    optimization: Optional[str] = typer.Option(None, "--optimization", help=OPT_HELP),  # noqa: UP007
    bench: bool = typer.Option(False, "--benchmark", help="Time repeated runs and report latency, throughput, memory."),
    runs: int = typer.Option(100, "--runs", min=1, help="Timed runs with --benchmark."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed runs before timing."),
) -> None:
    """Run MODEL on --input and print the outputs (and providers, timings) as JSON."""
    if len(models) > 1:
        return _ensemble(models, input, provider, threads, output)
    model = models[0]
    from gpux.cli.inputs import dump, read_input
    from gpux.engine.model import load
    from gpux.engine.options import OPT_LEVELS

    if optimization is not None and optimization not in OPT_LEVELS:
        raise UsageError(f"--optimization {optimization!r} is not a level",
                         hint=f"use one of {', '.join(OPT_LEVELS)}")

    feed = read_input(input)
    m = load(common.bundle_or_pull(model), provider, intra_op_threads=threads, graph_optimization=optimization,
             placement=True, log_level=common.ort_log_level())
    task = m.task
    call: Callable[[], Any] = (lambda: task(feed)) if task is not None else (lambda: m.run(feed))
    with _truncation_warnings():
        if bench:
            result = _benchmark(m, feed, runs, warmup, call if task is not None else None)
        else:
            start = time.perf_counter()
            answer = call()
            run_ms = (time.perf_counter() - start) * 1e3
            answer = dict(answer) if task is not None else {"outputs": answer}
            timings = {"load_ms": m.load_ms, **answer.pop("timings", {}), "run_ms": run_ms}
            result = {"model": m.name, "task": m.bundle.manifest.task, **answer,
                      "providers": m.providers, "placement": m.placement, "timings": timings}
    text = dump(result)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        typer.echo(text)


def _ensemble(refs: list[str], input: str, provider: str | None, threads: int | None, output: Path | None) -> None:
    """``gpux run A B ...``: one prompt to every model at once, through one scheduler per model."""
    from gpux.cli.inputs import dump, read_input
    from gpux.engine.model import load
    from gpux.generate.ensemble import run_together

    feed = read_input(input)
    loaded: dict[str, Any] = {}
    for ref in refs:
        if ref not in loaded:
            loaded[ref] = load(common.bundle_or_pull(ref), provider, intra_op_threads=threads,
                               log_level=common.ort_log_level())
        if not hasattr(loaded[ref].task, "scheduler"):
            raise UsageError(f"model {ref!r} does not generate text ({loaded[ref].bundle.manifest.task}): an "
                             "ensemble takes text-generation models", hint="name text-generation models only")
    if not isinstance(feed, dict):
        raise UsageError("an ensemble's --input must be a JSON object", hint='{"inputs": "prompt"}')
    result = run_together([loaded[r].task for r in refs], list(refs), dict(feed))
    text = dump(result)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        typer.echo(text)


@contextlib.contextmanager
def _truncation_warnings() -> Iterator[None]:
    """Print each text the task layer cut to the model's limit once, on stderr, after the run."""
    from gpux.tasks.text import TruncationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("once", TruncationWarning)
        yield
    for w in caught:
        if issubclass(w.category, TruncationWarning):
            sys.stderr.write(f"warning: {w.message} "
                             '(send "truncate": false in --input to refuse texts that are too long)\n')


def _benchmark(m: Model, feed: Mapping[str, Any], runs: int, warmup: int,
               call: Callable[[], Any] | None) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from gpux.bench.runner import benchmark
    from gpux.cli.render import benchmark_table

    from gpux.cli.render import console as make_console

    console = make_console(stderr=True)
    every = max(1, runs // 50)
    columns = (TextColumn("benchmark {task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(m.name, total=runs)

        def step(i: int) -> None:
            if i % every == 0 or i == runs:
                progress.update(task, completed=i)

        result = benchmark(m, feed, runs=runs, warmup=warmup, on_step=step, call=call)
    console.print(benchmark_table(result))
    return result
