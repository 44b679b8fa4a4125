"""``gpux bench compare``: regression gates between two benchmark results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gpux.errors import UsageError

bench_app = typer.Typer(help="Benchmark tools.", no_args_is_help=True, add_completion=False)


def _read(path: Path) -> dict[str, Any]:
    from gpux.jsonout import read_object

    return read_object(path, UsageError, "give a benchmark results JSON file", what="benchmark result")


@bench_app.command("compare")
def compare(
    base: Path = typer.Argument(..., help="The baseline results JSON."),
    new: Path = typer.Argument(..., help="The results JSON to judge."),
    latency: float = typer.Option(0.50, "--latency", help="Allowed latency increase (0.5 = +50%)."),
    throughput: float = typer.Option(0.15, "--throughput", help="Allowed throughput drop."),
    memory: float = typer.Option(0.25, "--memory", help="Allowed memory increase."),
    ttft: float = typer.Option(0.20, "--ttft", help="Allowed time-to-first-token increase."),
    tokens_per_s: float = typer.Option(0.15, "--tokens-per-s", help="Allowed tokens/s drop."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Compare NEW against BASE; exit 1 if any metric regresses past its gate and its noise."""
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
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("metric", "base", "new", "delta", "gate", "noise", "verdict"):
            table.add_column(col, justify="right" if col not in ("metric", "verdict") else "left")
        for r in rows:
            style = "bold red" if r.verdict == "REGRESSION" else ("green" if r.verdict == "better" else "")
            table.add_row(r.metric, f"{r.base:.4g}", f"{r.new:.4g}", f"{r.delta:+.1%}", f"{r.gate:.0%}",
                          f"±{r.noise:.1%}", f"[{style}]{r.verdict}[/]" if style else r.verdict)
        console = Console()
        console.print(table)
        console.print(f"{len(bad)} regression(s) in {len(rows)} metrics", markup=False)
    if bad:
        raise typer.Exit(1)
