"""``gpux pull``: fetch a model, convert it to ONNX for its task, check parity, store it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from gpux.cli import common
from gpux.errors import ConvertError

if TYPE_CHECKING:
    from gpux.store.local import Store


def pull(
    model: str = typer.Argument(..., help="A Hugging Face id (org/name[@revision]) or a local HF-layout folder."),
    task: Optional[str] = typer.Option(None, "--task", help="Override the task read from the model's metadata."),  # noqa: UP007
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit sha."),  # noqa: UP007
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights."),
    force: bool = typer.Option(False, "--force", help="Convert again even if a matching bundle is stored."),
) -> None:
    """Pull MODEL and convert it; afterwards `gpux run MODEL` is instant."""
    from gpux.registry import locate
    from gpux.store import stats
    from gpux.store.local import Store

    from gpux.cli.progress import download_progress, rich_tqdm

    console = common.err_console()
    with download_progress(console) as progress:
        located = locate(model, revision, allow_pickle, rich_tqdm(progress, f"downloading {model}"))
    store = Store()
    with store.lock(located.name):  # a second pull of the same model waits, then finds it stored
        hit = None if force else _stored(store, located.name, located.source, task)
        if hit is not None:
            stats.record(store.root, hit, hit=True)
            console.print(f"{hit} is up to date", markup=False, highlight=False)
            typer.echo(hit)
            return
        try:
            from gpux.convert.pipeline import convert
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConvertError(f"converting needs the convert extra ({exc.name} is missing)",
                               hint="pip install 'gpux[convert]'") from exc
        with console.status(f"converting {located.name} (export + parity check)"):
            bundle = convert(located.folder, name=located.name, source=located.source, task=task,
                             allow_pickle=allow_pickle, store=store)
    ref = f"{bundle.name}:{bundle.manifest.tag}"
    stats.record(store.root, ref, hit=False)
    conv = bundle.manifest.conversion
    par = conv["parity"]
    console.print(f"pulled {ref}  task {bundle.manifest.task}, "
                  f"parity cosine {par['cosine_min']:.6f} max-abs {par['max_abs']:.2e}, "
                  f"converted in {conv['seconds']:.1f} s", markup=False, highlight=False)
    typer.echo(ref)


def _stored(store: Store, name: str, source: dict[str, Any], task: str | None) -> str | None:
    """``name:tag`` of a stored conversion of exactly this source (and task), if its files verify."""
    from gpux.errors import GpuxError

    for tag in store.tags(name):
        if task is not None and tag != task:
            continue
        try:
            if store.manifest(f"{name}:{tag}").source == source:
                store.get(f"{name}:{tag}")  # verifies every blob; a corrupt one means convert again
                return f"{name}:{tag}"
        except GpuxError:
            continue
    return None
