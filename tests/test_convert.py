"""Pull + convert + run end to end on real transformers models: parity with PyTorch asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hf_models
from gpux.store.local import Store
from conftest import gpux as cli

TEXTS = ["I loved this film.", "Terrible, never again", "it was fine I guess, nothing special at all"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: each conversion is paid once."""
    return tmp_path_factory.mktemp("convert-home")


def _env(home: Path) -> dict[str, str]:
    return {"GPUX_HOME": str(home)}


def _torch_probs(folder: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    if model.config.model_type != "bert":
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        return torch.softmax(model(**enc).logits, -1).numpy()


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_text_classification_end_to_end(tmp_path_factory: pytest.TempPathFactory, home: Path, family: str) -> None:
    folder = hf_models.tiny(tmp_path_factory.mktemp(family) / f"tiny-{family}", family)
    hf_models.set_architectures(folder, [{"bert": "BertForSequenceClassification",
                                          "distilbert": "DistilBertForSequenceClassification",
                                          "roberta": "RobertaForSequenceClassification"}[family]])
    pulled = cli("pull", str(folder), env=_env(home))
    assert pulled.returncode == 0, pulled.stderr
    ref = pulled.stdout.strip()
    assert ref == f"tiny-{family}:text-classification"
    manifest = json.loads(Store(home).manifest_path(f"tiny-{family}", "text-classification").read_text())
    parity = manifest["conversion"]["parity"]
    assert parity["cosine_min"] >= 0.999 and len(parity["cases"]) == 3
    assert manifest["conversion"]["exporter"] == "torchscript" and manifest["conversion"]["rejected_exporters"] == {}

    res = cli("run", ref, "--input", json.dumps({"inputs": TEXTS}), env=_env(home))
    assert res.returncode == 0, res.stderr
    preds = json.loads(res.stdout)["predictions"]
    expected = _torch_probs(folder, TEXTS)
    assert len(preds) == len(TEXTS)
    for row, probs in zip(preds, expected):
        assert [p["label"] for p in row] == [hf_models.LABELS[i] for i in np.argsort(-probs, kind="stable")]
        got = {p["label"]: p["score"] for p in row}
        np.testing.assert_allclose([got[hf_models.LABELS[i]] for i in range(3)], probs, atol=1e-5)
    # One text as a plain string gives one list of predictions.
    one = json.loads(cli("run", ref, "-i", json.dumps({"inputs": TEXTS[0]}), env=_env(home)).stdout)
    assert len(one["predictions"]) == 1 and len(one["predictions"][0]) == 3


def test_real_minilm_embeddings_match_sentence_transformers_math(home: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    res = cli("run", "sentence-transformers/all-MiniLM-L6-v2", "-i", json.dumps({"inputs": TEXTS}), env=_env(home))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    got = np.array(out["embeddings"])
    assert got.shape == (3, 384) and out["task"] == "feature-extraction"

    folder = hf_models.minilm_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1).numpy()
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    # The second run is a cache hit: no pull, and this process path never imports torch.
    code = ("import sys\nfrom gpux.cli.app import main\nsys.argv = ['gpux', 'run', "
            "'sentence-transformers/all-MiniLM-L6-v2', '-i', '{\"inputs\": \"hi\"}']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))")
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**__import__("os").environ, **_env(home)})
    assert "HEAVY []" in again.stdout and "pulling" not in again.stderr


def test_pull_twice_is_a_cache_hit(home: Path) -> None:
    first = cli("pull", "sentence-transformers/all-MiniLM-L6-v2", env=_env(home))
    assert first.returncode == 0, first.stderr
    assert "is up to date" in first.stderr or "pulled" in first.stderr
    second = cli("pull", "sentence-transformers/all-MiniLM-L6-v2", env=_env(home))
    assert second.returncode == 0 and "is up to date" in second.stderr
    assert second.stdout.strip() == "sentence-transformers/all-MiniLM-L6-v2:feature-extraction"


def test_unsupported_task_names_the_architecture(tmp_path: Path, home: Path) -> None:
    folder = hf_models.tiny(tmp_path / "mc", "bert", task="feature-extraction")
    hf_models.set_architectures(folder, ["BertForMultipleChoice"])
    hf_models.model_card(folder, "multiple-choice")
    res = cli("pull", str(folder), env=_env(home))
    assert res.returncode == 7
    assert "BertForMultipleChoice is a multiple-choice model, a task gpux does not support" in res.stderr
    assert "it converts for: feature-extraction (pass --task)" in res.stderr  # only a task that works
    assert Store(home).tags("mc") == []
    # --task overrides the metadata; an unknown task is refused with the list.
    res = cli("pull", str(folder), "--task", "translation", env=_env(home))
    assert res.returncode == 7 and "task 'translation' is not supported" in res.stderr


def test_task_comes_from_the_model_card_when_config_is_silent(tmp_path: Path, home: Path) -> None:
    from gpux.convert.detect import detect_task

    folder = hf_models.tiny(tmp_path / "card", "bert", task="feature-extraction")
    hf_models.set_architectures(folder, [])
    hf_models.model_card(folder, "sentence-similarity")
    assert detect_task(folder, ("feature-extraction", "text-classification")) == "feature-extraction"


def test_pickle_only_weights_need_allow_pickle(tmp_path: Path, home: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = hf_models.tiny(tmp_path / "pkl", "bert")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    res = cli("pull", str(folder), env=_env(home))
    assert res.returncode == 7 and "--allow-pickle" in res.stderr


def test_task_input_errors(home: Path) -> None:
    for payload, words in (({"text": "x"}, 'needs an "inputs" key'), ({"inputs": [1, 2]}, "must be a string"),
                           ({"inputs": []}, "non-empty list")):
        res = cli("run", "sentence-transformers/all-MiniLM-L6-v2", "-i", json.dumps(payload), env=_env(home))
        assert res.returncode == 2 and words in res.stderr, res.stderr


def test_missing_folder_is_not_found(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("pull", str(empty), env=_env(home))
    assert res.returncode == 3 and "no config.json" in res.stderr
    shutil.rmtree(empty)


def test_concurrent_pulls_convert_once(tmp_path: Path) -> None:
    folder = hf_models.tiny(tmp_path / "tiny-race", "distilbert")
    hf_models.set_architectures(folder, ["DistilBertForSequenceClassification"])
    env = {**__import__("os").environ, "GPUX_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-m", "gpux", "pull", str(folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stderr = "".join(err for _, err in outs)
    assert stderr.count("pulled tiny-race:text-classification") == 1 and stderr.count("is up to date") == 1
    assert Store(tmp_path / "home").names() == [("tiny-race", "text-classification")]


def test_run_repulls_a_model_whose_stored_file_is_corrupt(home: Path) -> None:
    assert cli("pull", "sentence-transformers/all-MiniLM-L6-v2", env=_env(home)).returncode == 0
    store = Store(home)
    entry = store.manifest("sentence-transformers/all-MiniLM-L6-v2").files["model.onnx"]
    blob = store.blobs.path(entry["sha256"])
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:  # flip bytes in place: same size, new content
        fh.seek(entry["size"] // 2)
        fh.write(b"\xff" * 16)
    res = cli("run", "sentence-transformers/all-MiniLM-L6-v2", "-i", '{"inputs": "hello"}', env=_env(home))
    assert res.returncode == 0, res.stderr
    assert "corrupt" in res.stderr and len(json.loads(res.stdout)["embeddings"][0]) == 384
    assert store.blobs.check(entry["sha256"], entry["size"], None)  # the re-pulled blob verifies


def test_dynamo_exporter_also_passes_parity(tmp_path: Path) -> None:
    """The fallback exporter is kept working: a RoBERTa classifier through torch.export."""
    from gpux.convert.export import export

    folder = hf_models.tiny(tmp_path / "dyn", "roberta")
    done = export(folder, "text-classification", tmp_path / "model.onnx", exporters=("dynamo",))
    assert done.exporter == "dynamo" and done.parity["cosine_min"] >= 0.999
    assert [c["batch"] for c in done.parity["cases"]] == [1, 2, 4]
