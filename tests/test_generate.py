"""Text generation end to end: random-weight GPT-2, OPT and LLaMA converted with their cache graph, run by
gpux's loop, compared with transformers' ``generate`` on the same weights and tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import gpux
from gpux.store.local import Store
from lm_models import LM_FAMILIES, tiny_lm

FAMILIES = list(LM_FAMILIES)
PROMPTS = ["The capital of France is", "Once upon a time there was a small model that", "Hi"]


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store with each family converted through gpux's real pipeline (paid once for the module)."""
    from gpux.convert.pipeline import convert

    root = tmp_path_factory.mktemp("lm-home")
    src = tmp_path_factory.mktemp("lm-src")
    out: dict[str, Any] = {"root": root, "src": {}, "ref": {}}
    for family in FAMILIES:
        folder = tiny_lm(src / f"tiny-{family}", family)
        bundle = convert(folder, name=folder.name, source={"kind": "local", "path": str(folder)}, store=Store(root))
        assert bundle.manifest.task == "text-generation"  # detected from config.architectures
        out["src"][family], out["ref"][family] = folder, f"{folder.name}:text-generation"
    return out


def _load(lms: dict[str, Any], family: str) -> gpux.Model:
    return gpux.load(lms["ref"][family], store=Store(lms["root"]))


def _hf_greedy(folder: Path, prompts: list[str], new: int) -> list[list[int]]:
    """transformers' own greedy generate on a left-padded batch, each row cut at its first eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batch_is_token_identical_to_transformers(lms: dict[str, Any], family: str) -> None:
    m = _load(lms, family)
    answer = m.generate(PROMPTS, max_new_tokens=24)
    theirs = _hf_greedy(lms["src"][family], PROMPTS, 24)
    mine = [g["token_ids"] for g in answer["generations"]]
    assert mine == theirs
    for g, ids in zip(answer["generations"], mine):
        assert g["finish_reason"] == ("stop" if len(ids) < 24 else "length")
    assert answer["usage"]["completion_tokens"] == sum(len(ids) for ids in mine)
    assert answer["usage"]["prompt_tokens"] > len(PROMPTS)


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_is_stored_in_the_manifest(lms: dict[str, Any], family: str) -> None:
    parity = Store(lms["root"]).manifest(lms["ref"][family]).conversion["parity"]
    assert parity["cosine_prefill"] >= 0.999 and parity["cosine_decode_min"] >= 0.999
    assert parity["decode_steps"] == 8 and parity["greedy_new_tokens"] == 32
    assert parity["greedy_agreement"] == 1.0
    assert len(set(parity["prompt_lengths"])) > 1  # prompts of different lengths: padding exercised


def test_seeded_sampling_is_reproducible(lms: dict[str, Any]) -> None:
    m = _load(lms, "llama")
    params = {"max_new_tokens": 16, "do_sample": True, "temperature": 1.3, "top_p": 0.95, "min_p": 0.01}
    first = m.generate("Once upon a time", seed=11, **params)["generations"][0]["token_ids"]
    again = m.generate("Once upon a time", seed=11, **params)["generations"][0]["token_ids"]
    other = [m.generate("Once upon a time", seed=s, **params)["generations"][0]["token_ids"] for s in (12, 13, 14)]
    assert first == again
    assert any(o != first for o in other)


def test_stop_strings_cut_the_text_where_they_start(lms: dict[str, Any]) -> None:
    m = _load(lms, "gpt2")
    full = m.generate("Once upon a time", max_new_tokens=30)["generations"][0]
    text = full["text"]
    visible = [i for i in range(3, len(text) - 2) if text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2]]
    assert visible, text
    at = visible[len(visible) // 2]
    stop = text[at:at + 2]
    cut = m.generate("Once upon a time", max_new_tokens=30, stop=[stop])["generations"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == text[:text.index(stop)]
    assert stop not in cut["text"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_streamed_pieces_join_to_the_full_text(lms: dict[str, Any], family: str) -> None:
    m = _load(lms, family)
    for prompt in ("Café 東京 🚀", "The capital of"):
        whole = m.generate(prompt, max_new_tokens=40)["generations"][0]
        tokens = list(m.generate(prompt, max_new_tokens=40, stream=True))
        assert "".join(t.text for t in tokens) == whole["text"]
        assert [t.id for t in tokens] == whole["token_ids"]
        assert tokens[-1].finish_reason == whole["finish_reason"]
        assert all(t.finish_reason is None for t in tokens[:-1])


def test_chat_prompt_is_what_apply_chat_template_gives(lms: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    m = _load(lms, "opt")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est Paris? 🗼"}]
    tok = AutoTokenizer.from_pretrained(lms["src"]["opt"])
    theirs = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert m.task.prompts({"messages": messages})[0] == [list(theirs)]  # type: ignore[union-attr]
    answer = m.generate(messages, max_new_tokens=4)
    assert len(answer["generations"]) == 1


def test_an_over_long_prompt_names_the_limit(lms: dict[str, Any]) -> None:
    from conftest import gpux as cli

    env = {"GPUX_HOME": str(lms["root"])}
    long = "word " * 400  # the tiny models' context is 256 tokens
    done = cli("run", lms["ref"]["llama"], "--input", json.dumps({"inputs": long}), env=env)
    assert done.returncode == 2, done.stderr
    assert "context is 256 tokens" in done.stderr and "truncate" in done.stderr
    ok = cli("run", lms["ref"]["llama"], "--input",
             json.dumps({"inputs": long, "truncate": True, "parameters": {"max_new_tokens": 6}}), env=env)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["usage"]["prompt_tokens"] == 250 and len(result["generations"][0]["token_ids"]) == 6


def test_gpux_run_prints_generations_usage_and_timings(lms: dict[str, Any]) -> None:
    from conftest import gpux as cli

    payload = {"inputs": ["Hello", "The capital of France is"],
               "parameters": {"max_new_tokens": 5, "logprobs": True, "top_logprobs": 2}}
    done = cli("run", lms["ref"]["gpt2"], "--input", json.dumps(payload), env={"GPUX_HOME": str(lms["root"])})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["task"] == "text-generation" and out["providers"] == ["cpu"]
    assert len(out["generations"]) == 2
    for g in out["generations"]:
        assert set(g) >= {"text", "token_ids", "finish_reason", "logprobs"}
        assert len(g["logprobs"]) == len(g["token_ids"])
        first = g["logprobs"][0]
        assert first["logprob"] <= 0 and first["entropy"] >= 0 and len(first["top_logprobs"]) == 2
        assert first["top_logprobs"][0]["logprob"] >= first["logprob"]
    assert set(out["timings"]) >= {"load_ms", "ttft_ms", "decode_tokens_per_s", "total_ms"}
    assert out["usage"]["completion_tokens"] == sum(len(g["token_ids"]) for g in out["generations"])


@pytest.mark.parametrize("payload, words", [
    ({"inputs": "x", "parameters": {"temperature": -1}}, "temperature"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({"inputs": "x", "parameters": {"top_q": 0.5}}, "top_q"),
    ({"inputs": "x", "messages": [{"role": "user", "content": "x"}]}, "not both"),
    ({"messages": [{"role": "user"}]}, "content"),
])
def test_bad_generation_input_is_exit_2_naming_it(lms: dict[str, Any], payload: dict[str, Any], words: str) -> None:
    from conftest import gpux as cli

    done = cli("run", lms["ref"]["gpt2"], "--input", json.dumps(payload), env={"GPUX_HOME": str(lms["root"])})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert words in done.stderr


def test_the_generation_run_path_imports_neither_torch_nor_transformers(lms: dict[str, Any]) -> None:
    script = f"""
import json, sys
from pathlib import Path
import gpux
from gpux.store.local import Store
m = gpux.load({lms["ref"]["llama"]!r}, store=Store(Path({str(lms["root"])!r})))
m.generate([{{"role": "user", "content": "hi"}}], max_new_tokens=3)
list(m.generate("hi", max_new_tokens=3, stream=True, do_sample=True, seed=1))
print(json.dumps(sorted(x for x in ("torch", "transformers") if x in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_gpux_chat_through_a_pseudo_terminal(lms: dict[str, Any]) -> None:
    """Interactive chat as a person drives it: a prompt, an answer, /clear, another, /bye."""
    from pty_chat import PtyChat

    chat = PtyChat([lms["ref"]["llama"], "--max-new-tokens", "6"], {**os.environ, "GPUX_HOME": str(lms["root"])})
    try:
        chat.prompts(1, timeout=60)
        assert b"/bye" in chat.seen  # the help line a terminal user sees
        chat.type(b"Hello there\n")
        chat.prompts(2, timeout=60)
        chat.type(b"/clear\n")
        chat.read_until(lambda s: b"Cleared" in s, timeout=60)
        chat.type(b"/bye\n")
        assert chat.exit_status() == 0, chat.seen.decode(errors="replace")
    finally:
        chat.close()


def test_gpux_chat_with_a_prompt_streams_one_answer(lms: dict[str, Any]) -> None:
    from conftest import gpux as cli

    done = cli("chat", lms["ref"]["gpt2"], "Hello", "--max-new-tokens", "5", "--verbose",
               env={"GPUX_HOME": str(lms["root"])})
    assert done.returncode == 0, done.stderr
    assert "eval rate" in done.stderr and "prompt eval count" in done.stderr and "time to first token" in done.stderr
    expected = _load(lms, "gpt2").generate([{"role": "user", "content": "Hello"}], max_new_tokens=5)
    assert done.stdout == expected["generations"][0]["text"] + "\n"


def test_chat_on_a_model_without_generation_says_what_to_use(lms: dict[str, Any], tmp_path: Path) -> None:
    from conftest import gpux as cli

    import hf_models

    folder = hf_models.tiny(tmp_path / "enc", "bert")
    pulled = cli("pull", str(folder))
    assert pulled.returncode == 0, pulled.stderr
    done = cli("chat", pulled.stdout.strip(), "hi")
    assert done.returncode == 2 and "not a text-generation one" in done.stderr and "gpux run" in done.stderr
    int4 = cli("pull", str(folder), "--quantize", "int4")
    assert int4.returncode == 2 and "int4 is for text-generation models" in int4.stderr, int4.stderr


def test_quantised_variants_are_judged_by_agreement_and_perplexity(lms: dict[str, Any]) -> None:
    """int8 and int4 (MatMulNBits blocks) stored with their numbers; a floor nothing can meet refuses, storing nothing."""
    from conftest import gpux as cli

    env = {"GPUX_HOME": str(lms["root"])}
    folder = str(lms["src"]["llama"])
    for precision in ("int8", "int4"):
        done = cli("pull", folder, "--quantize", precision, "--min-agreement", "0", "--max-ppl-increase", "10", env=env)
        assert done.returncode == 0, done.stderr
        ref = done.stdout.strip().splitlines()[-1]
        assert ref.endswith(f":text-generation-{precision}")
        manifest = Store(lms["root"]).manifest(ref)
        par = manifest.conversion["parity_vs_fp32"]
        assert 0.0 <= par["agreement"] <= 1.0 and par["ppl_fp32"] > 1.0 and par["text_tokens"] > 50
        assert par["ppl_increase"] == pytest.approx(par["ppl"] / par["ppl_fp32"] - 1.0)
        nbits, fp32_weights = _matmuls(Store(lms["root"]).get(ref).graph_path())
        assert nbits and not fp32_weights  # every weight MatMul quantised, the head too (8-bit)
        out = gpux.load(ref, store=Store(lms["root"])).generate("Hello", max_new_tokens=4)
        assert len(out["generations"][0]["token_ids"]) >= 1
        again = cli("pull", folder, "--quantize", precision, "--min-agreement", "0", "--max-ppl-increase", "10", env=env)
        assert "up to date" in again.stderr, again.stderr
    refused = cli("pull", folder, "--quantize", "int4", "--max-ppl-increase", "-1", "--force", env=env)
    assert refused.returncode == 7, refused.stderr
    assert "perplexity" in refused.stderr and "agreement" in refused.stderr and "nothing was stored" in refused.stderr


def _matmuls(path: Path) -> tuple[int, int]:
    """(MatMulNBits nodes, MatMuls still multiplying by a stored fp32 weight)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return (sum(n.op_type == "MatMulNBits" for n in graph.node),
            sum(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node))


@pytest.mark.parametrize("args, words", [
    (["--quantize", "int8-static"], "not offered for text-generation"),
    (["--optimize", "O2"], "not offered for text-generation"),
])
def test_encoder_only_variants_are_refused_for_generation(lms: dict[str, Any], args: list[str], words: str) -> None:
    from conftest import gpux as cli

    done = cli("pull", str(lms["src"]["gpt2"]), *args, env={"GPUX_HOME": str(lms["root"])})
    assert done.returncode == 2 and words in done.stderr, done.stderr


def test_gpux_bench_on_a_generation_model(lms: dict[str, Any], tmp_path: Path) -> None:
    """TTFT percentiles, decode/prefill rates, ITL, RSS per engine; PyTorch's generate beside it; ratios."""
    from conftest import gpux as cli

    env = {"GPUX_HOME": str(lms["root"])}
    done = cli("bench", lms["ref"]["llama"], "--precisions", "fp32,int8", "--seq-lens", "8", "--new-tokens", "6",
               "--batch-sizes", "1,2", "--runs", "3", "--warmup", "1", "--threads", "1", "--baseline", "pytorch",
               "--out", str(tmp_path / "out"), env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "out" / "tiny-llama" / "results.json").read_text())
    assert set(doc["engines"]) == {"gpux fp32", "gpux int8", "pytorch"}
    for label, engine in doc["engines"].items():
        assert engine["peak_rss_mb"] > 10 and engine["load_ms_median"] > 0
        assert set(engine["points"]) == {"p8-n6-b1", "p8-n6-b2"}
        for point in engine["points"].values():
            assert point["runs"] == 3
            assert 0 < point["ttft_ms"]["p50"] <= point["ttft_ms"]["p95"] <= point["ttft_ms"]["p99"]
            assert point["decode_tokens_per_s"]["median"] >= point["decode_tokens_per_s"]["p5"] > 0
            assert point["prefill_tokens_per_s"] > 0 and point["itl_p99_ms"] > 0
    assert set(doc["ratios"]["gpux fp32/pytorch"]) == {"p8-n6-b1", "p8-n6-b2"}
    assert doc["environment"]["isa"] is not None
    assert "| gpux int8 | 8 | 6 | 2 |" in (tmp_path / "out" / "tiny-llama" / "report.md").read_text()


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "OPTForCausalLM", "LlamaForCausalLM", "BertLMHeadModel"])
def test_decoders_are_detected_as_text_generation(tmp_path: Path, arch: str) -> None:
    from gpux.convert.detect import check_task, detect_task
    from gpux.convert.pipeline import SUPPORTED_TASKS
    from gpux.errors import ConvertError

    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "x"}))
    assert detect_task(tmp_path, SUPPORTED_TASKS) == "text-generation"  # not feature-extraction by its "Model" end
    check_task(tmp_path, "text-generation")
    with pytest.raises(ConvertError) as err:
        check_task(tmp_path, "token-classification")
    assert "text-generation" in (err.value.hint or "")


def test_weights_beside_the_graph_survive_store_variants_and_runs(lms: dict[str, Any], tmp_path: Path) -> None:
    """A model stored with model.onnx.data (as large ones are): same tokens, and a variant reads the store's
    hard-linked data file (onnx's own loader refuses hard links)."""
    from conftest import gpux as cli

    env = {"GPUX_HOME": str(tmp_path / "home"), "GPUX_EXTERNAL_OVER": "0"}
    folder = str(lms["src"]["gpt2"])
    pulled = cli("pull", folder, env=env)
    assert pulled.returncode == 0, pulled.stderr
    ref = pulled.stdout.strip().splitlines()[-1]
    store = Store(tmp_path / "home")
    assert set(store.manifest(ref).files) >= {"model.onnx", "model.onnx.data"}
    ops = _op_types(store.get(ref).graph_path())
    assert "Gemm" in ops  # GPT-2 ties its head to the embedding: one copy, read by Gather and Gemm
    mine = gpux.load(ref, store=store).generate(PROMPTS, max_new_tokens=12)["generations"]
    theirs = _load(lms, "gpt2").generate(PROMPTS, max_new_tokens=12)["generations"]
    assert [g["token_ids"] for g in mine] == [g["token_ids"] for g in theirs]
    variant = cli("pull", folder, "--quantize", "int8", "--min-agreement", "0", "--max-ppl-increase", "10", env=env)
    assert variant.returncode == 0, variant.stderr
    assert "model.onnx.data" in store.manifest(variant.stdout.strip().splitlines()[-1]).files


def _op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
