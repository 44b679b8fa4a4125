"""``gpux bench MODEL...`` (measure against baselines, write a report) and ``gpux bench compare`` (gates).

``gpux bench MODEL`` is short for ``gpux bench run MODEL``: the group routes any
first argument that is not one of its commands to ``run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from gpux.errors import UsageError


class _DefaultRun(TyperGroup):
    """A group whose unknown first word is a model for ``run`` rather than an unknown command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(cls=_DefaultRun, no_args_is_help=True, add_completion=False,
                        help="Measure models against raw onnxruntime and PyTorch (gpux bench MODEL...), "
                             "or compare two results (gpux bench compare BASE.json NEW.json).")


def _read(path: Path) -> dict[str, Any]:
    from gpux.jsonout import read_object

    return read_object(path, UsageError, "give a benchmark results JSON file", what="benchmark result")


@bench_app.command("compare")
def compare(
    base: Path = typer.Argument(..., help="The baseline results JSON."),
    new: Path = typer.Argument(..., help="The results JSON to judge."),
    latency: float = typer.Option(0.50, "--latency", "--api-latency", min=0.0, help="Allowed increase of a "
                                  "latency: per call, inter-token, load (0.5 = +50%)."),
    throughput: float = typer.Option(0.15, "--throughput", min=0.0, help="Allowed throughput drop (items/s)."),
    memory: float = typer.Option(0.25, "--memory", min=0.0, help="Allowed memory increase."),
    ttft: float = typer.Option(0.20, "--ttft", min=0.0, help="Allowed time-to-first-token increase."),
    tokens_per_s: float = typer.Option(0.15, "--tokens-per-s", min=0.0, help="Allowed tokens/s drop (decode, "
                                       "prefill)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Compare NEW against BASE; exit 1 if any metric regresses past its gate and its noise.

    Generation results are understood too: TTFT and tokens/s percentiles are gated by --ttft and --tokens-per-s.
    """
    from gpux.bench.compare import compare as run_compare
    from gpux.bench.compare import regressions

    rows = run_compare(_read(base), _read(new), {"latency": latency, "throughput": throughput, "memory": memory,
                                                 "ttft": ttft, "tokens_per_s": tokens_per_s})
    if not rows:
        raise UsageError("the two results share no metric", hint="compare results of the same benchmark")
    bad = regressions(rows)
    if as_json:
        from gpux.jsonout import dump

        typer.echo(dump({"rows": [{**vars(r), "delta": r.delta} for r in rows], "regressions": len(bad)}))
    else:
        from rich.table import Table

        from gpux.cli.render import console as make_console

        table = Table(show_header=True, header_style="bold", box=None)
        # Metric names differ only at their ends (...b1_s128.latency.p50_ms): fold, never cut with an ellipsis.
        table.add_column("metric", overflow="fold")
        for col in ("base", "new", "delta", "gate", "noise", "verdict"):
            table.add_column(col, justify="right" if col != "verdict" else "left", no_wrap=True)
        for r in rows:
            style = "bold red" if r.verdict == "REGRESSION" else ("green" if r.verdict == "better" else "")
            table.add_row(r.metric, f"{r.base:.4g}", f"{r.new:.4g}", f"{r.delta:+.1%}", f"{r.gate:.0%}",
                          f"±{r.noise:.1%}", f"[{style}]{r.verdict}[/]" if style else r.verdict)
        console = make_console()
        console.print(table)
        console.print(f"{len(bad)} regression(s) in {len(rows)} metrics", markup=False)
    if bad:
        raise typer.Exit(1)


@bench_app.command("run", no_args_is_help=True)
def run(
    models: Optional[list[str]] = typer.Argument(None, help="Models: Hub ids, HF folders, stored names, .onnx files."),  # noqa: UP007
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated (default 1,4,16)."),  # noqa: UP007
    seq_lens: Optional[str] = typer.Option(None, "--seq-lens", help="Tokens per text, comma-separated (default 128)."),  # noqa: UP007
    precisions: Optional[str] = typer.Option(None, "--precisions", help="fp32, fp16, int8, int8-static; O2+int8 adds "  # noqa: UP007
                                             "graph fusions (default fp32). Missing variants are built."),
    new_tokens: Optional[int] = typer.Option(None, "--new-tokens", min=1, help="Text-generation: tokens made per "  # noqa: UP007
                                             "run (default 64); --seq-lens are then prompt lengths."),
    runs: Optional[int] = typer.Option(None, "--runs", min=1, help="Timed runs per point (default 20)."),  # noqa: UP007
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="Untimed runs per point (default 3)."),  # noqa: UP007
    baseline: Optional[str] = typer.Option(None, "--baseline", help="onnxruntime,pytorch (default both) or none."),  # noqa: UP007
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads for every runner."),  # noqa: UP007
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="gpux's provider (default: best here)."),  # noqa: UP007
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Accuracy floor for variants built "  # noqa: UP007
                                               "here (default: per precision, see docs/optimize.md)."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Argmax agreement floor for "  # noqa: UP007
                                                  "classifier variants built here."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Real inputs for raw ONNX models (JSON or "  # noqa: UP007
                                        "@file, as gpux run takes); default: synthesised from the signature."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for results.json, report.md, plots."),  # noqa: UP007
    suite: Optional[Path] = typer.Option(None, "--suite", help="A suite.yml with models and any of these settings."),  # noqa: UP007
) -> None:
    """Benchmark MODELs: latency percentiles, throughput, load time, memory, vs raw onnxruntime and PyTorch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import tempfile

    from gpux.bench import report
    from gpux.bench.plan import build_plan, split_list
    from gpux.bench.suite import Target, failures, make_points, run_plan, total_steps
    from gpux.cli import common
    from gpux.cli.inputs import read_input
    from gpux.store.local import Store
    from gpux.tasks import unit_of

    plan = build_plan(models or [], suite, {
        "batch_sizes": split_list("--batch-sizes", batch_sizes, int),
        "seq_lens": split_list("--seq-lens", seq_lens, int), "precisions": split_list("--precisions", precisions),
        "new_tokens": new_tokens,
        "runs": runs, "warmup": warmup, "baselines": split_list("--baseline", baseline), "threads": threads,
        "provider": provider, "input": input, "out": out, "min_cosine": min_cosine, "min_agreement": min_agreement})
    from gpux.cli.render import console as make_console

    console = make_console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="gpux-bench-") as work:
        targets = []
        for entry in plan.entries():
            bundle = common.bundle_or_pull(entry.model)
            if bundle.manifest.task in ("text-generation", "text2text-generation"):
                _bench_generation(plan, entry, bundle, console)
                continue
            if "decoder" in bundle.manifest.graphs:
                raise UsageError(f"gpux bench does not time {bundle.manifest.task} generation yet",
                                 hint="benchmarks/whisper.py measures Whisper end to end (load, encoder, "
                                      "transcription, RSS, WER against faster-whisper and PyTorch)")
            given = read_input(entry.input) if entry.input else None
            targets.append(Target(entry.model, bundle, entry, unit_of(bundle.manifest.task), given))
            make_points(targets[-1], Path(work))
        if not targets:
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("bench", total=total_steps(plan, targets))

            def progress(description: str | None, steps: int) -> None:
                if description:
                    bar.update(task, description=description)
                bar.update(task, advance=steps)

            doc = run_plan(plan, targets, progress, Store())
    paths = report.write(doc, plan.out)
    console.print(_summary(doc))
    for kind, path in paths.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False, soft_wrap=True)
    bad = failures(doc)
    if bad:
        for line in bad:
            console.print(f"failed: {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _bench_generation(plan: Any, entry: Any, bundle: Any, console: Any) -> None:
    """A text-generation model: its own measurements (gpux.bench.generation), results in ``out/<name>``."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from gpux.bench import generation
    from gpux.store.local import Store

    explicit = plan.model_fields_set
    batches = entry.batch_sizes if "batch_sizes" in explicit or not isinstance(plan.models[0], str) else [1]
    prompts = entry.seq_lens if "seq_lens" in explicit else [32]
    baselines = [b for b in plan.baselines if b != "onnxruntime"] if "baselines" in explicit else ["pytorch", "llamacpp"]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(f"bench {bundle.name}", total=None)
        doc = generation.bench(bundle, prompt_lens=prompts, new_tokens=plan.new_tokens, batch_sizes=batches,
                               precisions=entry.precisions, baselines=baselines, runs=plan.runs, warmup=plan.warmup,
                               threads=plan.threads, store=Store(), min_agreement=plan.min_agreement,
                               progress=lambda d, _n: bar.update(task, description=d))
    paths = generation.write(doc, plan.out / bundle.name.replace("/", "--"))
    console.print(generation.markdown(doc), markup=False, highlight=False, soft_wrap=True)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False, soft_wrap=True)
    if any("error" in r for r in doc["engines"].values()):
        raise typer.Exit(1)


def _summary(doc: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    tables = []
    for ref, m in doc["models"].items():
        table = Table(title=ref, title_justify="left", show_header=True, header_style="bold", box=None)
        for col in ("precision", "batch", "seq", "p50 ms", "p99 ms", f"{m['unit']}/s", "× raw ORT", "× PyTorch"):
            table.add_column(col, justify="left" if col == "precision" else "right")
        for label, p in m["precisions"].items():
            for key, pt in p.get("gpux", {}).get("points", {}).items():
                r = p.get("ratios", {}).get(key, {})
                table.add_row(label, str(pt["batch_size"]), str(pt["seq_len"] or "—"),
                              f"{pt['latency']['p50_ms']:.2f}", f"{pt['latency']['p99_ms']:.2f}",
                              f"{pt[m['unit'] + '_per_s']:.1f}",
                              *(f"{r[k]:.2f}" if k in r else "—" for k in ("vs_onnxruntime", "vs_pytorch")))
        tables.append(table)
    return Group(*tables)
