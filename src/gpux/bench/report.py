"""Turn a ``gpux bench`` results document into what people read: report.md and three PNG plots.

The plots use matplotlib's Agg backend (no display needed); matplotlib comes with
the ``bench`` extra, and without it the JSON and Markdown are still written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = {"latency_vs_batch.png": "Latency (p50, band min–p90) vs batch size",
         "throughput_vs_precision.png": "Throughput vs precision at the largest batch",
         "ratio_vs_baselines.png": "gpux throughput ÷ baseline throughput"}


def _rows(model: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(precision, point key, gpux point, ratios) for every measured point of a model."""
    out = []
    for label, p in model["precisions"].items():
        for key, point in p.get("gpux", {}).get("points", {}).items():
            out.append((label, key, point, p.get("ratios", {}).get(key, {})))
    return out


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _problem(what: str, entry: dict[str, Any]) -> str | None:
    if "error" in entry:
        return f"- {what}: **failed** — {entry['error']}" + (f" ({entry['hint']})" if entry.get("hint") else "")
    if "skipped" in entry:
        return f"- {what}: skipped — {entry['skipped']}"
    return None


def markdown(doc: dict[str, Any], plots: list[str]) -> str:
    env = doc["environment"]
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    s = doc["settings"]
    lines = [f"# gpux bench — {doc['date'][:10]}", "",
             f"{env['cpu']} ({env['cores_logical']} logical cores"
             + (f"; {' '.join(env['isa'])}" if env.get("isa") else "") + f"), Python {env['python']}, {pkgs}.",
             f"{s['runs']} timed runs after {s['warmup']} warm-up runs per point; latency percentiles over those runs; "
             "throughput = batch ÷ mean latency. Every runner ran in its own process on the same tensors; "
             "gpux is timed end to end (tokenize, run, post-process), the baselines on the model call alone.", ""]
    for ref, m in doc["models"].items():
        unit = m["unit"]
        lines += [f"## {ref}", "", f"Task: {m['task'] or 'raw tensors'}; throughput in {unit}/s.", ""]
        first = next((p["gpux"] for p in m["precisions"].values() if "points" in p.get("gpux", {})), None)
        if first is not None:
            lines += [f"Providers: {', '.join(first['providers'])}; gpux intra-op threads: {first['threads']}.", ""]
        lines += [f"| precision | batch | seq | p50 ms | p90 ms | p99 ms | {unit}/s | raw ORT {unit}/s | × raw ORT | "
                  "× PyTorch |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, key, pt, ratio in _rows(m):
            ort = m["precisions"][label].get("onnxruntime", {}).get("points", {}).get(key, {})
            lat = pt["latency"]
            lines.append(f"| {label} | {pt['batch_size']} | {pt['seq_len'] or '—'} | {lat['p50_ms']:.2f} | "
                         f"{lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {pt[f'{unit}_per_s']:.1f} | "
                         f"{_fmt(ort.get(f'{unit}_per_s'))} | {_fmt(ratio.get('vs_onnxruntime'), '.2f')} | "
                         f"{_fmt(ratio.get('vs_pytorch'), '.2f')} |")
        for pt in m["pytorch"].get("points", {}).values():
            lat = pt["latency"]
            lines.append(f"| PyTorch eager fp32 | {pt['batch_size']} | {pt['seq_len'] or '—'} | {lat['p50_ms']:.2f} | "
                         f"{lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {pt[f'{unit}_per_s']:.1f} | | | |")
        lines += ["", "| runner | precision | size MB | cold load ms | warm load ms | first run ms | peak RSS MB | "
                  "min cosine vs fp32 | argmax agreement vs fp32 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        problems = []
        for label, p in m["precisions"].items():
            parity = p.get("parity_vs_fp32") or {}
            for runner in ("gpux", "onnxruntime"):
                r = p.get(runner)
                if r is None or "load" not in r:
                    continue
                lines.append(f"| {runner} | {label} | {_fmt(p.get('size_mb'))} | {r['load']['cold_ms']:.0f} | "
                             f"{_fmt(r['load']['warm_ms'], '.0f')} | {r['load']['first_run_ms']:.1f} | "
                             f"{r['peak_rss_mb']:.0f} | {_fmt(parity.get('cosine_min'), '.5f')} | "
                             f"{_fmt(parity.get('argmax_agreement'), '.1%')} |")
            problems += [x for x in (_problem(f"{label}", p), _problem(f"{label} gpux", p.get("gpux", {})),
                                     _problem(f"{label} raw onnxruntime", p.get("onnxruntime", {}))) if x]
        pt = m["pytorch"]
        if "load" in pt:
            load = pt["load"]
            lines.append(f"| PyTorch eager | fp32 | | {load['cold_ms']:.0f} | {_fmt(load['warm_ms'], '.0f')} "
                         f"| {load['first_run_ms']:.1f} | {pt['peak_rss_mb']:.0f} | | |")
        problems += [x for x in (_problem("PyTorch eager baseline", pt),) if x]
        lines += [""] + (["Not measured:", *problems, ""] if problems else [])
        lines += ["Cold load: from the runner's process start to the model ready (imports + session/model "
                  "creation); warm load: median of later loads in the same process; peak RSS: the runner "
                  "process's high-water mark over all its points.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{PLOTS[p]}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out: Path) -> list[str]:
    """Write the PNGs of :data:`PLOTS` under ``out``; the names written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    models = [(ref, m) for ref, m in doc["models"].items() if _rows(m)]
    if not models:
        return []
    width = 5.5 * len(models)
    figs = {name: plt.subplots(1, len(models), figsize=(width, 4), squeeze=False) for name in PLOTS}
    for i, (ref, m) in enumerate(models):
        unit, rows = m["unit"], _rows(m)
        seq = rows[0][2]["seq_len"]
        _, ax = figs["latency_vs_batch.png"]
        a = ax[0][i]
        for label in m["precisions"]:
            pts = sorted((pt["batch_size"], pt["latency"]) for lab, _, pt, _ in rows
                         if lab == label and pt["seq_len"] == seq)
            if pts:
                xs = [b for b, _ in pts]
                a.plot(xs, [lat["p50_ms"] for _, lat in pts], marker="o", label=f"gpux {label}")
                a.fill_between(xs, [lat["min_ms"] for _, lat in pts], [lat["p90_ms"] for _, lat in pts], alpha=0.2)
        for name, src, style in (("raw ORT fp32", m["precisions"].get("fp32", {}).get("onnxruntime", {}), "--"),
                                 ("PyTorch eager", m["pytorch"], ":")):
            pts = sorted((p["batch_size"], p["latency"]["p50_ms"]) for p in src.get("points", {}).values()
                         if p["seq_len"] == seq)
            if pts:
                a.plot([b for b, _ in pts], [v for _, v in pts], style, marker=".", label=name)
        batches = sorted({pt["batch_size"] for _, _, pt, _ in rows})
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xticks(batches, [str(b) for b in batches])
        a.minorticks_off()
        a.set(xlabel="batch size", ylabel="latency ms", title=f"{ref}" + (f" (seq {seq})" if seq else ""))
        a.legend(fontsize=7)
        _, ax = figs["throughput_vs_precision.png"]
        a = ax[0][i]
        top = max(pt["batch_size"] for _, _, pt, _ in rows)
        labels = [lab for lab in m["precisions"] if any(r[0] == lab and r[2]["batch_size"] == top for r in rows)]
        key = f"{unit}_per_s"

        def at(runner: dict[str, Any], top: int = top, key: str = key, seq: int | None = seq) -> float:
            hits = [p[key] for p in runner.get("points", {}).values() if p["batch_size"] == top and p["seq_len"] == seq]
            return hits[0] if hits else 0.0

        slots = list(range(len(labels)))
        a.bar([x - 0.2 for x in slots], [at(m["precisions"][lab]["gpux"]) for lab in labels], 0.4, label="gpux")
        a.bar([x + 0.2 for x in slots], [at(m["precisions"][lab].get("onnxruntime", {})) for lab in labels], 0.4,
              label="raw onnxruntime")
        if at(m["pytorch"]):
            a.axhline(at(m["pytorch"]), color="gray", linestyle=":", label="PyTorch eager fp32")
        a.set_xticks(slots, labels)
        a.set(ylabel=f"{unit}/s", title=f"{ref}, batch {top}")
        a.legend(fontsize=7)
        _, ax = figs["ratio_vs_baselines.png"]
        a = ax[0][i]
        names = [f"{lab}\nb{pt['batch_size']}" for lab, _, pt, _ in rows if pt["seq_len"] == seq]
        picked = [r for lab, _, pt, r in rows if pt["seq_len"] == seq]
        slots = list(range(len(names)))
        for off, base in ((-0.2, "onnxruntime"), (0.2, "pytorch")):
            a.bar([x + off for x in slots], [r.get(f"vs_{base}", 0.0) for r in picked], 0.4, label=f"÷ {base}")
        a.axhline(1.0, color="black", linewidth=0.8)
        a.set_xticks(slots, names, fontsize=7)
        a.set(ylabel="ratio (higher is better)", title=ref)
        a.legend(fontsize=7)
    written = []
    for name, (fig, _) in figs.items():
        fig.suptitle(PLOTS[name])
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def write(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, report.md and the plots under ``out``; the paths written by kind."""
    from gpux.jsonout import dump

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(dump(doc) + "\n", encoding="utf-8")
    plots = plot(doc, out)
    (out / "report.md").write_text(markdown(doc, plots), encoding="utf-8")
    return {"results": out / "results.json", "report": out / "report.md", **{p: out / p for p in plots}}
