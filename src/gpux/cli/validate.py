"""``gpux validate``: pull, convert and run a list of models cold, then again; check the thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from gpux.cli import common


def validate(
    models: list[str] = typer.Argument(..., help="Hub ids or local HF folders."),
    out: Path = typer.Option(Path("gpux-validate"), "--out", help="Folder for validate.json and validate.md."),
    min_conversion: float = typer.Option(0.90, "--min-conversion", help="Share of models that must convert."),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="Pull+convert+run limit per model."),
    min_hit_rate: float = typer.Option(0.80, "--min-hit-rate", help="Cache hit rate on the second pass."),
) -> None:
    """Check that MODELS pull, convert (parity-checked) and run; exit 1 if a threshold is missed."""
    from gpux.bench.validate import Thresholds, markdown
    from gpux.bench.validate import validate as run_validate

    console = common.err_console()
    with console.status(f"validating {len(models)} model(s): cold pass, then cached pass"):
        report = run_validate(models, Thresholds(min_conversion, max_seconds, min_hit_rate))
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = markdown(report)
    (out / "validate.md").write_text(md, encoding="utf-8")
    typer.echo(md)
    if not report["passed"]:
        raise typer.Exit(1)
