"""gpux validate: a cold pass and a cached pass over real conversions, thresholds decide the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import hf_models
from conftest import gpux as cli


def test_validate_reports_and_gates(tmp_path: Path) -> None:
    good = hf_models.tiny(tmp_path / "tiny-good", "distilbert")
    hf_models.set_architectures(good, ["DistilBertForSequenceClassification"])
    bad = hf_models.tiny(tmp_path / "tiny-mlm", "bert", task="feature-extraction")
    hf_models.set_architectures(bad, ["BertForMultipleChoice"])  # a head gpux does not run
    out = tmp_path / "report"
    res = cli("validate", "sentence-transformers/all-MiniLM-L6-v2", str(good), str(bad), "--out", str(out))
    assert res.returncode == 1  # 2 of 3 converted: under the 90% default
    report = json.loads((out / "validate.json").read_text())
    rows = {Path(r["model"]).name: r for r in report["rows"]}
    assert rows["all-MiniLM-L6-v2"]["converted"] and rows["all-MiniLM-L6-v2"]["parity_cosine"] >= 0.999
    assert rows["tiny-good"]["task"] == "text-classification"
    assert not rows["tiny-mlm"]["converted"] and "a task gpux does not support" in rows["tiny-mlm"]["error"]
    s = report["summary"]
    assert (s["models"], s["converted"]) == (3, 2) and s["hit_rate"] == 1.0 and s["second_pass_misses"] == 0
    assert report["checks"] == {"conversion_rate": False, "pull_convert_run_s": True, "hit_rate": True}
    assert "| tiny-mlm" not in res.stdout or "failed" in res.stdout
    assert "**failed**: conversion_rate" in (out / "validate.md").read_text()

    ok = cli("validate", str(good), "--out", str(out), "--min-conversion", "0.5")
    assert ok.returncode == 0 and "**passed**" in ok.stdout
