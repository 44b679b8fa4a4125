"""``gpux info``: this machine's cores, memory, CPU, ISA and providers, its tier, and the serving defaults.

The same facts ``gpux serve`` sizes itself by (gpux.engine.hardware), shown so a
user can see why the server chose its memory budget, batch size and precision
before starting it. onnxruntime is imported inside the command (for its
providers), never when the CLI loads.
"""

from __future__ import annotations

from typing import Any

import typer


def info(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show this machine's cores, memory, ISA, accelerators and providers, its tier and serving defaults."""
    from gpux.engine import hardware

    hw = hardware.describe()
    tier = hardware.tier_of(hw)
    if json_out:
        from gpux.cli.inputs import dump

        typer.echo(dump({"hardware": hw.as_json(), "tier": tier.as_json()}))
        return
    _table(hw, tier)


def _table(hw: Any, tier: Any) -> None:
    """The facts and defaults as a two-column Rich table on stdout."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gpux.engine.providers import alias_of

    d = tier.defaults
    limit = "" if hw.memory_limit_bytes is None else f", cgroup limit {_gib(hw.memory_limit_bytes)}"
    accel = "; ".join(f"{alias_of(a.provider)}: {', '.join(a.devices) or a.hardware}" for a in hw.accelerators)
    rows = [
        ("CPU", f"{hw.cpu_model} ({hw.arch})"),
        ("cores", f"{hw.cores_usable} usable of {hw.cores_logical} logical"),
        ("memory", f"{_gib(hw.memory_total_bytes)} total, {_gib(hw.memory_available_bytes)} available{limit}"),
        ("ISA", ", ".join(hw.isa) or "-"),
        ("accelerators", accel or "none"),
        ("providers", ", ".join(alias_of(p) for p in hw.providers) or "-"),
        ("tier", f"{tier.name} ({tier.reason})"),
        ("memory budget", "none (memory unknown)" if d.memory_budget_bytes is None else _gib(d.memory_budget_bytes)),
        ("concurrent sequences", str(d.max_sequences)),
        ("KV cache", f"{d.kv_cache_tokens} tokens"),
        ("precision", f"{d.precision} ({d.precision_reason})"),
    ]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value))  # Text: a CPU name with [brackets] is not markup
    console = Console() if sys.stdout.isatty() else Console(width=250)  # pipes get whole lines
    console.print(table, highlight=False)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
