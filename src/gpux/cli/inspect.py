"""``gpux inspect``: a model's signature, opset, producer, metadata, size and parameters."""

from __future__ import annotations

from typing import Optional

import typer

from gpux.cli import common
from gpux.cli.run import MODEL_HELP, PROVIDER_HELP


def inspect(
    model: str = typer.Argument(..., help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),  # noqa: UP007
) -> None:
    """Show what MODEL expects and returns, and what it is made of."""
    from gpux.cli.inputs import dump
    from gpux.engine.model import load

    # Resolved as `gpux run` resolves it: a Hugging Face folder or Hub id means its stored conversion.
    info = load(common.bundle_or_pull(model), provider, log_level=common.ort_log_level()).info
    if as_json:
        typer.echo(dump(info))
        return
    from gpux.cli.render import console, inspect_view

    console().print(inspect_view(info))
