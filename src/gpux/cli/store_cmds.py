"""``gpux ls``, ``gpux rm``, ``gpux prune``: what is stored, and getting rid of it."""

from __future__ import annotations

import time
from typing import Any

import typer

from gpux.cli import common


def _revision(source: dict[str, Any]) -> str:
    if source.get("kind") == "hf":
        return f"{source.get('revision')}@{str(source.get('sha', ''))[:12]}"
    return str(source.get("package") or source.get("kind") or "-")


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = int(time.time() - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def ls(
    show_stats: bool = typer.Option(False, "--stats", help="Add cache hits, misses and the hit rate."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List stored models: name, task, size, revision, last used."""
    from gpux.cli.inputs import dump
    from gpux.store import stats
    from gpux.store.local import Store

    store = Store()
    counters = stats.load(store.root)
    rows: list[dict[str, Any]] = []
    for name, tag in store.names():
        try:
            m = store.manifest(f"{name}:{tag}")
        except Exception as exc:  # a damaged manifest is listed, not fatal
            rows.append({"name": name, "tag": tag, "error": str(exc)})
            continue
        c = counters.get(f"{name}:{tag}", {})
        rows.append({"name": name, "tag": tag, "task": m.task, "size_bytes": store.size(m),
                     "revision": _revision(m.source), "created": m.created, "last_used": c.get("last_used"),
                     "hits": c.get("hits", 0), "misses": c.get("misses", 0)})
    hits = sum(int(c.get("hits", 0)) for c in counters.values())
    misses = sum(int(c.get("misses", 0)) for c in counters.values())
    rate = hits / (hits + misses) if hits + misses else None
    if as_json:
        typer.echo(dump({"models": rows, "stats": {"hits": hits, "misses": misses, "hit_rate": rate}}
                        if show_stats else {"models": rows}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None)
    for col in ("NAME", "TASK", "SIZE", "REVISION", "LAST USED", *(("HITS", "MISSES") if show_stats else ())):
        table.add_column(col)
    for r in rows:
        if "error" in r:
            table.add_row(f"{r['name']}:{r['tag']}", "damaged", "", r["error"][:60], "")
            continue
        table.add_row(f"{r['name']}:{r['tag']}", r["task"] or "-", f"{r['size_bytes'] / 1e6:.1f} MB", r["revision"],
                      _ago(r["last_used"]), *((str(r["hits"]), str(r["misses"])) if show_stats else ()))
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=250)  # pipes get whole names
    console.print(table)
    if show_stats:
        console.print(f"cache: {hits} hits, {misses} misses, hit rate "
                      + ("-" if rate is None else f"{rate:.0%}"), markup=False)


def rm(model: str = typer.Argument(..., help="name[:tag]; without a tag every tag of the model.")) -> None:
    """Remove a stored model and the files no other model uses."""
    import sys

    from gpux.store import leases
    from gpux.store.local import Store

    store = Store()
    held = leases.holders(store.root, model)  # read first: a server may drop its lease as files go
    for ref in store.remove(model):
        typer.echo(f"removed {ref}")
    for lease in held:
        where = f" at {lease['url']}" if lease.get("url") else ""
        names = ", ".join(m for m in lease.get("models", []) if m == model or m.partition(":")[0] == model)
        sys.stderr.write(f"warning: a running gpux serve (pid {lease['pid']}{where}) has {names or model} loaded; "
                         "it serves it from memory until it unloads it, and cannot load it again\n")


def prune() -> None:
    """Delete stored files no model uses any more, and scratch files of killed or finished processes."""
    from gpux.store.local import Store

    freed = Store().prune()
    common.err_console().print(f"freed {freed / 1e6:.1f} MB", markup=False)
