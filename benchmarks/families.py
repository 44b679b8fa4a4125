"""Any encoder, any head: does every family of the list convert with no code for it, and how long does it take?

Two measurements over ``tests/hf_models.FAMILIES`` (random-weight, hidden 32, 2 layers, the MiniLM tokenizer):

1. ``gpux validate`` (src/gpux/bench/validate.py, the command's own code) on each family saved as a
   sequence classifier: ``gpux run FOLDER`` cold (pull, detect, convert, parity, run) then warm, in a fresh store.
   Success rate over the list and seconds per model.
2. In-process ``convert()`` of each family for every other head (fill-mask, token-classification,
   question-answering, text-ranking), timed: task detected from the saved head, parity checked.

Then ``hf_models.UNEXPORTABLE``: families torch cannot export here, to show that each is a ConvertError naming
its architecture and task (and how long finding that out takes).

Writes benchmarks/results/families.json and .md. Run: ``.venv/bin/python benchmarks/families.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import env_line, write  # noqa: E402

HEADS = ("fill-mask", "token-classification", "question-answering", "text-ranking")


def _convert(folder: Path, store: Any) -> dict[str, Any]:
    """One in-process conversion (task detected), timed; the error message when it fails."""
    from gpux.convert.pipeline import convert
    from gpux.errors import GpuxError

    start = time.perf_counter()
    try:
        bundle = convert(folder, name=folder.name, source={"kind": "path", "path": str(folder)}, store=store)
    except GpuxError as exc:
        return {"converted": False, "seconds": round(time.perf_counter() - start, 3), "error": exc.message}
    conv = bundle.manifest.conversion
    return {"converted": True, "seconds": round(time.perf_counter() - start, 3), "task": bundle.manifest.task,
            "exporter": conv["exporter"], "parity_cosine": conv["parity"]["cosine_min"]}


def main() -> None:
    import hf_models
    from gpux.bench.env import environment
    from gpux.bench.validate import Thresholds, validate
    from gpux.store.local import Store

    families = list(hf_models.FAMILIES)
    with tempfile.TemporaryDirectory(prefix="gpux-families-") as tmp:
        root = Path(tmp)
        folders = [hf_models.build_family(root / "cls" / f, f, "text-classification") for f in families]
        thresholds = Thresholds(min_conversion=1.0, max_seconds=60.0)
        report_v = validate([str(p) for p in folders], thresholds)
        validated = {Path(r["model"]).name: r for r in report_v["rows"]}

        store = Store(root / "home")
        _convert(hf_models.build_family(root / "warm" / "bert", "bert", "fill-mask"), store)  # pay lazy imports
        heads: dict[str, dict[str, Any]] = {}
        for family in families:
            heads[family] = {task: _convert(hf_models.build_family(root / task / family, family, task), store)
                             for task in HEADS}
        unexportable = {f: _convert(hf_models.build_family(root / "bad" / f, f, "text-classification"), store)
                        for f in hf_models.UNEXPORTABLE}

    rows = []
    for family in families:
        v, h = validated[family], heads[family]
        wrong = [t for t, r in h.items() if not r["converted"] or r["task"] != t]
        rows.append({"family": family, "config": hf_models.FAMILIES[family][0], "validate_ok": v["converted"],
                     "validate_task": v.get("task"), "pull_convert_run_s": v["pull_convert_run_s"],
                     "second_run_s": v.get("second_pass_s"), "validate_error": v["error"],
                     "heads": h, "heads_ok": len(HEADS) - len(wrong), "heads_failed": wrong,
                     "head_convert_s_mean": round(sum(r["seconds"] for r in h.values()) / len(h), 3)})
    attempts = len(rows) * (1 + len(HEADS))
    ok = sum(r["validate_ok"] for r in rows) + sum(r["heads_ok"] for r in rows)
    summary = {"families": len(rows), "validate_ok": sum(r["validate_ok"] for r in rows),
               "validate_rate": sum(r["validate_ok"] for r in rows) / len(rows),
               "conversions": attempts, "conversions_ok": ok, "success_rate": ok / attempts,
               "validate_passed": report_v["passed"], "validate_checks": report_v["checks"]}
    report = {"summary": summary, "families": rows, "unexportable": unexportable,
              "environment": environment(("torch", "transformers", "onnxscript")), "date": time.strftime("%Y-%m-%d")}

    lines = ["# Encoder families: conversion with no code per family", "",
             env_line("families.py", report["environment"]), "",
             "Random-weight models (hidden 32, 2 layers, the all-MiniLM-L6-v2 tokenizer) of each family in "
             "`tests/hf_models.FAMILIES`. *gpux validate*: the family saved as a sequence classifier, "
             "`gpux run FOLDER` cold (pull, detect, convert, parity, run; a fresh process each) and warm. "
             "*Heads*: in-process `convert()` of the family saved with each other head, task detected from it.", "",
             "| family | config | gpux validate | cold s | warm s | heads converted | mean convert s per head | failed |",
             "|---|---|:-:|---:|---:|:-:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['config']} | {'yes' if r['validate_ok'] else 'no'} | "
                     f"{r['pull_convert_run_s']:.1f} | {r['second_run_s'] if r['second_run_s'] is not None else '-'} "
                     f"| {r['heads_ok']}/{len(HEADS)} | {r['head_convert_s_mean']:.2f} | "
                     f"{', '.join(r['heads_failed']) or r['validate_error'] or ''} |")
    lines += ["", f"**Success: {ok}/{attempts} conversions ({summary['success_rate']:.0%})**; gpux validate "
              f"{summary['validate_ok']}/{summary['families']} families ({summary['validate_rate']:.0%}; "
              f"thresholds {'held' if report_v['passed'] else 'missed: ' + ', '.join(k for k, v in report_v['checks'].items() if not v)}).",
              "", "## Families torch cannot export here", "",
              "| family | result | s | message |", "|---|---|---:|---|"]
    for f, r in unexportable.items():
        msg = (r.get("error") or "").replace("|", "\\|")
        lines.append(f"| {f} | {'converted' if r['converted'] else 'ConvertError'} | {r['seconds']:.1f} | {msg} |")
    lines.append("")
    write("families", report, "\n".join(lines))


if __name__ == "__main__":
    main()
