"""``gpux pull``: fetch a model, convert it to ONNX for its task, check parity, store it."""

from __future__ import annotations

from typing import Optional

import typer

from gpux.cli import common
from gpux.errors import ConvertError


def pull(
    model: str = typer.Argument(..., help="A Hugging Face id (org/name[@revision]) or a local HF-layout folder."),
    task: Optional[str] = typer.Option(None, "--task", help="Override the task read from the model's metadata."),  # noqa: UP007
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit sha."),  # noqa: UP007
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights."),
    force: bool = typer.Option(False, "--force", help="Convert again even if a matching bundle is stored."),
) -> None:
    """Pull MODEL and convert it; afterwards `gpux run MODEL` is instant."""
    from gpux.registry import locate
    from gpux.store.local import Store

    located = locate(model, revision, allow_pickle)
    store = Store()
    console = common.err_console()
    tag = task
    if not force:
        for existing in store.tags(located.name):
            bundle = store.get(f"{located.name}:{existing}")
            if bundle.manifest.source == located.source and (tag is None or existing == tag):
                console.print(f"{located.name}:{existing} is up to date", markup=False, highlight=False)
                typer.echo(f"{located.name}:{existing}")
                return
    try:
        from gpux.convert.pipeline import convert
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConvertError(f"converting needs the convert extra ({exc.name} is missing)",
                           hint="pip install 'gpux[convert]'") from exc
    with console.status(f"converting {located.name} (export + parity check)"):
        bundle = convert(located.folder, name=located.name, source=located.source, task=task,
                         allow_pickle=allow_pickle, store=store)
    conv = bundle.manifest.conversion
    par = conv["parity"]
    console.print(f"pulled {bundle.name}:{bundle.manifest.tag}  task {bundle.manifest.task}, "
                  f"parity cosine {par['cosine_min']:.6f} max-abs {par['max_abs']:.2e}, "
                  f"converted in {conv['seconds']:.1f} s", markup=False, highlight=False)
    typer.echo(f"{bundle.name}:{bundle.manifest.tag}")
