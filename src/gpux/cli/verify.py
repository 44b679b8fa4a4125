"""``gpux verify [MODEL...]``: hash every stored blob, repair what a pull can make again.

Reads are cheap because a blob whose stamp is unchanged is trusted (see
gpux.store.blobs); this is the full check for when that trust is not enough
(after a disk error, a restore from backup, or on a schedule). Exit 0 when
everything verifies or was repaired; otherwise the first unrepaired error's code
(6, the store's family) after every model has been looked at.
"""

from __future__ import annotations

from typing import Any

import typer

from gpux.cli import common


def verify(
    models: list[str] = typer.Argument(None, help="name[:tag] to check; every stored model when none is given."),
    repair: bool = typer.Option(True, "--repair/--no-repair", help="Pull damaged models again from their source."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per model instead of lines."),
) -> None:
    """Hash every file of the stored models and repair the damaged ones from their source."""
    from gpux.errors import GpuxError
    from gpux.store import repair as repairs
    from gpux.store.blobs import CorruptBlobError
    from gpux.store.local import Store

    store = Store()
    console = common.err_console()
    refs = [_canonical(store, m) for m in models] if models else [f"{n}:{t}" for n, t in store.names()]
    failed: GpuxError | None = None
    results: list[dict[str, Any]] = []
    for ref in refs:
        row: dict[str, Any] = {"model": ref}
        try:
            bad = store.verify(ref)
            row["status"] = "ok" if not bad else "damaged"
            if bad:
                row["problems"] = bad
                if not repair:
                    raise CorruptBlobError(f"{ref}: {'; '.join(bad)}", hint=f"gpux verify {ref} repairs it")
                console.print(f"{ref}: {'; '.join(bad)}; pulling it again", markup=False, highlight=False)
                repairs.repair(store, ref, CorruptBlobError("; ".join(bad)))
                if store.verify(ref):
                    raise CorruptBlobError(f"{ref} is still damaged after pulling it again",
                                           hint="check the disk holding GPUX_HOME")
                row["status"] = "repaired"
        except GpuxError as exc:
            row.update(status="broken", error=str(exc))
            failed = failed or exc
        results.append(row)
        if not as_json:
            typer.echo(f"{ref}: {row['status']}" + (f" ({row['error']})" if "error" in row else ""))
    if as_json:
        from gpux.cli.inputs import dump

        typer.echo(dump({"models": results}))
    if failed is not None:
        raise typer.Exit(failed.exit_code)


def _canonical(store: Any, ref: str) -> str:
    """``name:tag`` for a user's MODEL (short names and default tags resolved, as run does)."""
    m = store.manifest(ref)
    return f"{m.name}:{m.tag}"
