"""Rich renderings of results; the data itself is always available as JSON too."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table


#: Width of a console that is not a terminal: a pipe or a file gets whole rows, never wrapped at 80 columns.
PIPE_WIDTH = 250


def console(stderr: bool = False) -> Console:
    """The console every table is printed on: the terminal's width on a tty, :data:`PIPE_WIDTH` otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def benchmark_table(r: dict[str, Any]) -> Table:
    lat = r["latency"]
    t = Table(title=f"gpux benchmark: {r['model']}", show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    placement = r.get("placement")
    where = ", ".join(r["providers"])
    if placement:
        where += "  (nodes: " + ", ".join(f"{k} {v}" for k, v in placement.items()) + ")"
    rows = [
        ("providers", where),
        ("inputs", ", ".join(f"{k} {v}" for k, v in r["inputs"].items())),
        ("batch size", str(r["batch_size"])),
        ("runs / warmup", f"{r['runs']} / {r['warmup']}"),
        *((f"latency {k[:-3]}", f"{v:.3f} ms") for k, v in lat.items()),
        ("throughput", f"{r['throughput_items_per_s']:.1f} items/s"),
        ("load", f"{r['load_ms']:.1f} ms"),
        ("first run", f"{r['first_run_ms']:.3f} ms"),
        ("peak RSS", f"{r['peak_rss_mb']:.1f} MiB"),
        ("threads", f"intra {r['session']['intra_op_threads']}, inter {r['session']['inter_op_threads']}"),
        ("cpu", r["environment"]["cpu"]),
    ]
    for k, v in rows:
        t.add_row(k, escape(v))
    return t


def _specs(title: str, specs: list[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    for col in ("name", "dtype", "shape"):
        t.add_column(col)
    for s in specs:
        shape = "?" if s["shape"] is None else "[" + ", ".join("?" if d is None else str(d) for d in s["shape"]) + "]"
        t.add_row(escape(s["name"]), s["dtype"], escape(shape))
    return t


def inspect_view(info: dict[str, Any]) -> Group:
    parts: list[Any] = []
    for role, g in info["graphs"].items():
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        size = _mb(g["file_bytes"]) + (f" + {_mb(g['external_data_bytes'])} external data"
                                        if g["external_data_bytes"] else "")
        opsets = ", ".join(f"{d} {v}" for d, v in g["opsets"].items())
        dtypes = ", ".join(f"{d} {n:,}" for d, n in g["parameters_by_dtype"].items())
        top_ops = ", ".join(f"{op} {n}" for op, n in list(g["op_types"].items())[:8])
        for k, v in (("model", f"{info['name']}  (graph: {role})"), ("file", g["file"]), ("size", size),
                     ("producer", g["producer"] or "-"), ("ir version", str(g["ir_version"])),
                     ("opsets", opsets), ("parameters", f"{g['parameters']:,}" + (f"  ({dtypes})" if dtypes else "")),
                     ("nodes", f"{g['nodes']}  ({top_ops})")):
            head.add_row(k, escape(v))
        for k, v in g["metadata"].items():
            head.add_row(escape(f"metadata {k}"), escape(v))
        parts += [head, _specs("inputs", g["inputs"]), _specs("outputs", g["outputs"])]
    conv = info.get("conversion") or {}
    if conv:
        line = (f"[bold]conversion[/] {escape(str(conv.get('exporter')))} opset {conv.get('opset')}, "
                f"{conv.get('dtype')}" + (f", optimize {conv['optimize']}" if conv.get("optimize") else ""))
        if conv.get("parity"):
            line += f"; vs PyTorch: cosine {conv['parity']['cosine_min']:.6f}, max-abs {conv['parity']['max_abs']:.2e}"
        vs = conv.get("parity_vs_fp32")
        if vs:
            line += f"; vs fp32: cosine {vs['cosine_min']:.5f}, max-abs {vs['max_abs']:.2e}"
            if vs.get("argmax_agreement") is not None:
                line += f", argmax agreement {vs['argmax_agreement']:.1%}"
        parts.append(line)
    prov = info["providers"]
    runtime = info["runtime"]
    parts.append(f"[bold]providers[/] session: {', '.join(prov['session'])}; available: {', '.join(prov['available'])}")
    parts.append(f"[bold]session[/] optimisation {runtime['graph_optimization']}, "
                 f"intra-op threads {runtime['intra_op_threads']}, inter-op threads {runtime['inter_op_threads']}")
    return Group(*parts)
