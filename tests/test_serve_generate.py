"""Serving generation end to end: real servers on 127.0.0.1, the real ``openai`` and ``ollama`` clients, httpx.

Tiny random-weight LMs (converted through gpux's pipeline) for protocol shapes; the real SmolLM2 (from its
GGUF) where a test needs decoding slow enough to act during it (a request joining, a client leaving, a
budget taken) or real answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gpux
from gpux.serve.app import create_app
from gpux.serve.manager import GenerationConfig, ModelManager
from gpux.store.local import Store
from lm_models import tiny_lm
from serve_helpers import LiveServer

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny LLaMA and a tiny feature-extraction model in one store: (generation model name, store root)."""
    from gpux.convert.pipeline import convert

    root = tmp_path_factory.mktemp("gen-home")
    folder = tiny_lm(tmp_path_factory.mktemp("gen-src") / "tiny-llama", "llama")
    bundle = convert(folder, name="tiny-llama", source={"kind": "local", "path": str(folder)}, store=Store(root))
    return f"{bundle.manifest.name}:{bundle.manifest.tag}", root


def _server(root: Path, **generation: Any) -> LiveServer:
    return LiveServer(create_app(ModelManager(store=Store(root), generation=GenerationConfig(**generation))))


@pytest.fixture(scope="module")
def tiny_server(tiny: tuple[str, Path]) -> Iterator[LiveServer]:
    with _server(tiny[1]) as server:
        yield server


@pytest.fixture(scope="module")
def smol_server(smollm2_ref: tuple[str, Path]) -> Iterator[LiveServer]:
    with _server(smollm2_ref[1]) as server:
        yield server


def _openai(server: LiveServer) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _offline(tiny: tuple[str, Path], payload: dict[str, Any]) -> dict[str, Any]:
    return gpux.load(tiny[0], store=Store(tiny[1])).generate(**payload)  # type: ignore[no-any-return]


# -- OpenAI ---------------------------------------------------------------------------------------------

def test_openai_chat_equals_the_offline_greedy_answer(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    client = _openai(tiny_server)
    reply = client.chat.completions.create(model=tiny[0], messages=CHAT, temperature=0, max_tokens=12)
    model = gpux.load(tiny[0], store=Store(tiny[1]))
    want = model.task({"messages": CHAT, "parameters": {"max_new_tokens": 12}})["generations"][0]
    assert reply.choices[0].message.content == want["text"]
    assert reply.choices[0].finish_reason == want["finish_reason"]
    assert reply.usage.completion_tokens == len(want["token_ids"]) and reply.usage.prompt_tokens > 0
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")


def test_openai_stream_n2_logprobs_and_usage(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    client = _openai(tiny_server)
    whole = client.chat.completions.create(model=tiny[0], messages=CHAT, temperature=0, max_tokens=10)
    chunks = list(client.chat.completions.create(model=tiny[0], messages=CHAT, temperature=0, max_tokens=10, n=2,
                                                 stream=True, stream_options={"include_usage": True},
                                                 logprobs=True, top_logprobs=3))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    text: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, list[Any]] = {0: [], 1: []}
    tokens = 0
    for c in chunks[:-1]:
        assert c.usage is None
        for ch in c.choices:
            text[ch.index] += ch.delta.content or ""
            finishes[ch.index].append(ch.finish_reason)
            if ch.logprobs and ch.logprobs.content:
                for lp in ch.logprobs.content:
                    tokens += 1
                    assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
                    assert lp.top_logprobs[0].logprob >= lp.logprob - 1e-6
    assert text[0] == text[1] == whole.choices[0].message.content  # greedy: both choices, and not streamed
    for f in finishes.values():
        assert all(x is None for x in f[:-1]) and f[-1] in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == tokens == 2 * whole.usage.completion_tokens


def test_openai_stream_ends_with_done(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    body = {"model": tiny[0], "messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_openai_completions_with_logprobs(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    client = _openai(tiny_server)
    done = client.completions.create(model=tiny[0], prompt="The capital of France is", max_tokens=6, temperature=0,
                                     logprobs=2)
    want = _offline(tiny, {"prompt": "The capital of France is", "max_new_tokens": 6})
    choice = done.choices[0]
    assert choice.text == want["generations"][0]["text"] and done.object == "text_completion"
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == done.usage.completion_tokens
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=tiny[0], prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == choice.text


def test_openai_seeded_sampling_repeats(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    client = _openai(tiny_server)
    runs = [client.chat.completions.create(model=tiny[0], messages=CHAT, temperature=1.0, top_p=0.95, seed=7,
                                           max_tokens=16, n=2) for _ in range(2)]
    assert [c.message.content for c in runs[0].choices] == [c.message.content for c in runs[1].choices]


# -- Ollama ---------------------------------------------------------------------------------------------

def test_ollama_generate_and_chat_stream(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    import ollama

    client = ollama.Client(host=tiny_server.url)
    options = {"temperature": 0, "num_predict": 10}
    whole = client.generate(model=tiny[0], prompt="Hello", options=options)
    parts = list(client.generate(model=tiny[0], prompt="Hello", options=options, stream=True))
    assert "".join(p.response for p in parts) == whole.response and parts[-1].done and not parts[0].done
    final = parts[-1]
    assert final.done_reason in ("stop", "length") and final.eval_count == whole.eval_count
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, key), int), key
    assert final.total_duration >= final.eval_duration > 0 and final.context
    # /api/generate templates the prompt as one user turn, as Ollama does: the same answer as /api/chat
    chat = list(client.chat(model=tiny[0], messages=[{"role": "user", "content": "Hello"}], options=options,
                            stream=True, logprobs=True, top_logprobs=2))
    assert "".join(c.message.content for c in chat) == whole.response
    assert any(c.logprobs for c in chat) and all(len(lp.top_logprobs) == 2 for c in chat for lp in (c.logprobs or []))


def test_ollama_keep_alive_zero_unloads_and_empty_prompt_loads(tiny: tuple[str, Path], tmp_path: Path) -> None:
    import ollama

    with _server(tiny[1]) as server:
        client = ollama.Client(host=server.url)
        loaded = client.generate(model=tiny[0], prompt="")
        assert loaded.done and loaded.done_reason == "load"
        ps = client.ps().models
        assert [m.model for m in ps] == [tiny[0]] and ps[0].expires_at is not None and ps[0].size > 0
        assert ps[0].context_length == 256
        client.generate(model=tiny[0], prompt="Hi", options={"num_predict": 2}, keep_alive=0)
        assert client.ps().models == []
        client.chat(model=tiny[0], messages=[])
        assert len(client.ps().models) == 1
        assert client.generate(model=tiny[0], prompt="", keep_alive=0).done_reason == "unload"
        assert client.ps().models == []
        shown = client.show(tiny[0])
        assert shown.capabilities == ["completion"] and "im_start" in (shown.template or "")


# -- KServe, native -------------------------------------------------------------------------------------

def test_kserve_generate_and_stream(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    body = {"text_input": "The capital of France is", "parameters": {"max_tokens": 6}}
    whole = httpx.post(f"{tiny_server.url}/v2/models/{tiny[0]}/generate", json=body, timeout=60)
    assert whole.status_code == 200, whole.text
    out = whole.json()
    assert out["model_name"] == tiny[0] and isinstance(out["text_output"], str)
    with httpx.stream("POST", f"{tiny_server.url}/v2/models/{tiny[0]}/generate_stream", json=body, timeout=60) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == out["text_output"]
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_native_generate_streams_tokens_then_the_answer(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    body = {"model": tiny[0], "inputs": "Once upon a time", "parameters": {"max_new_tokens": 8},
            "signals": {"ema_alpha": 0.5}}
    with httpx.stream("POST", tiny_server.url + "/generate", json=body, timeout=60) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    tokens, final = events[:-1], events[-1]
    assert final["done"] and final["generations"][0]["token_ids"] == [e["token"]["id"] for e in tokens]
    assert "".join(e["text"] for e in tokens) == final["generations"][0]["text"]
    ema = None
    for e in tokens:  # the EMA signal is what its definition gives from the reported entropies
        h = e["token"]["entropy"]
        ema = h if ema is None else 0.5 * h + 0.5 * ema
        assert e["signals"]["entropy_ema"] == pytest.approx(ema) and e["signals"]["logprob"] == e["token"]["logprob"]
    whole = httpx.post(tiny_server.url + "/generate", json={**body, "stream": False}, timeout=60).json()
    assert whole["generations"][0]["text"] == final["generations"][0]["text"] and whole["usage"]["prompt_tokens"] > 0


def test_stats_report_ttft_and_tokens_per_second(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    for _ in range(3):
        httpx.post(tiny_server.url + "/generate", json={"model": tiny[0], "inputs": "Hi", "stream": False,
                                                        "parameters": {"max_new_tokens": 6, "min_new_tokens": 6}},
                   timeout=60).raise_for_status()
    gen = httpx.get(tiny_server.url + "/stats").json()["models"][tiny[0]]["generation"]
    assert gen["requests"] >= 3 and gen["completion_tokens"] >= 18
    assert gen["ttft"]["p50_ms"] > 0 and gen["tokens_per_s"]["p50"] > 0
    view = next(m for m in httpx.get(tiny_server.url + "/models").json()["models"] if m["name"] == tiny[0])
    assert view["generation"]["running"] == 0 and view["generation"]["kv_reserved_tokens"] == 0


# -- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,status,words", [
    ("/v1/chat/completions", {"model": "no-such-model", "messages": CHAT}, 404, "not in the store"),
    ("/v1/chat/completions", {"model": "M", "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "M", "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", {"model": "M", "messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": "M", "messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ("/v1/chat/completions", {"model": "M", "messages": CHAT, "bogus": 1}, 400, "bogus"),
    ("/v1/completions", {"model": "M", "prompt": "word " * 400}, 400, "context"),
    ("/v1/completions", {"model": "M", "prompt": [1, 2, 3]}, 400, "prompt"),
    ("/api/generate", {"model": "M", "prompt": "hi", "options": {"mirostat": 2}}, 400, "mirostat"),
    ("/api/generate", {"model": "M", "prompt": "hi", "options": {"num_predict": "ten"}}, 400, "num_predict"),
    ("/api/chat", {"model": "M", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0]"),
    ("/generate", {"model": "M", "inputs": "hi", "parameters": {"top-p": 0.9}}, 400, "top-p"),
    ("/v2/models/M/generate", {"parameters": {}}, 400, "text_input"),
    ("/generate", {"model": "M", "inputs": "hi", "pace_hz": 0}, 400, "pace_hz"),
])
def test_bad_generation_requests_are_4xx_with_the_error_body(tiny: tuple[str, Path], tiny_server: LiveServer,
                                                             path: str, body: dict[str, Any], status: int,
                                                             words: str) -> None:
    body = json.loads(json.dumps(body).replace('"M"', json.dumps(tiny[0])))
    path = path.replace("/M/", f"/{tiny[0]}/")
    r = httpx.post(tiny_server.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    message = err["message"] if isinstance(err, dict) else err
    assert words in message or words in r.text
    assert httpx.get(tiny_server.url + "/health").status_code == 200


def test_a_model_that_does_not_generate_says_so(tiny: tuple[str, Path], tmp_path: Path, model_dir: Path) -> None:
    from serve_helpers import build_with_serving

    env = build_with_serving(tmp_path, model_dir, "mlp", "batch_size: 4")
    with _server(Path(env["GPUX_HOME"])) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "mlp", "messages": CHAT}, timeout=60)
    assert r.status_code == 400 and "does not generate text" in r.json()["error"]["message"]


def test_an_unknown_route_lists_the_routes(tiny_server: LiveServer) -> None:
    r = httpx.get(tiny_server.url + "/api/nothing-here")
    assert r.status_code == 404
    body = r.json()
    assert body["error"] == "no route GET /api/nothing-here" and "POST /api/chat" in body["hint"]
    assert "POST /v1/chat/completions" in body["hint"] and "POST /v2/models/{name:path}/generate" in body["hint"]


# -- the scheduler, on the real SmolLM2 ---------------------------------------------------------------------

def _chat(server: LiveServer, model: str, content: str, tokens: int, **extra: Any) -> dict[str, Any]:
    r = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": tokens,
        **extra})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_short_request_joins_a_running_decode_and_finishes_first(smollm2_ref: tuple[str, Path],
                                                                   smol_server: LiveServer) -> None:
    model = smollm2_ref[0]
    long_q, short_q = "Write a long story about a dragon who learns to bake bread.", "What is the capital of France?"
    solo_long = _chat(smol_server, model, long_q, 96, min_tokens=96)["choices"][0]["message"]["content"]
    solo_short = _chat(smol_server, model, short_q, 12)["choices"][0]["message"]["content"]
    assert "Paris" in solo_short
    finished: dict[str, float] = {}
    texts: dict[str, str] = {}
    started = threading.Event()

    def long_stream() -> None:
        body = {"model": model, "messages": [{"role": "user", "content": long_q}], "temperature": 0,
                "max_tokens": 96, "min_tokens": 96, "stream": True}
        out = ""
        with httpx.stream("POST", smol_server.url + "/v1/chat/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    out += delta.get("content") or ""
                    if len(out) > 20:
                        started.set()
        texts["long"], finished["long"] = out, time.monotonic()

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert started.wait(120)
    texts["short"] = _chat(smol_server, model, short_q, 12)["choices"][0]["message"]["content"]
    finished["short"] = time.monotonic()
    worker.join(300)
    assert finished["short"] < finished["long"]
    assert texts == {"long": solo_long, "short": solo_short}  # batched output is the solo greedy output
    view = next(m for m in httpx.get(smol_server.url + "/models").json()["models"] if m["name"] == model)
    assert view["generation"]["peak_sequences"] >= 2


def test_a_client_that_disconnects_is_cancelled(smollm2_ref: tuple[str, Path], smol_server: LiveServer) -> None:
    model = smollm2_ref[0]
    before = httpx.get(smol_server.url + "/stats").json()["models"].get(model, {}).get("items_dropped", {})
    body = {"model": model, "messages": CHAT, "max_tokens": 3000, "min_tokens": 3000, "stream": True}
    with httpx.stream("POST", smol_server.url + "/v1/chat/completions", json=body, timeout=300) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        view = next(m for m in httpx.get(smol_server.url + "/models").json()["models"] if m["name"] == model)
        if view["generation"]["running"] == 0 and view["generation"]["kv_reserved_tokens"] == 0:
            break
        time.sleep(0.1)
    assert view["generation"]["running"] == 0 and view["generation"]["kv_reserved_tokens"] == 0
    dropped = httpx.get(smol_server.url + "/stats").json()["models"][model]["items_dropped"]
    assert dropped.get("cancelled", 0) == before.get("cancelled", 0) + 1


def test_the_cache_budget_answers_429_and_what_never_fits_400(smollm2_ref: tuple[str, Path]) -> None:
    model = smollm2_ref[0]
    with _server(smollm2_ref[1], kv_budget_tokens=400) as server:
        body = {"model": model, "messages": CHAT, "max_tokens": 300, "min_tokens": 300, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as r:
            assert r.status_code == 200
            next(r.iter_lines())
            full = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                              json={"model": model, "messages": CHAT, "max_tokens": 100})
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert "budget" in full.json()["error"]["message"]
        never = httpx.post(server.url + "/api/generate", timeout=60,
                           json={"model": model, "prompt": "hi", "options": {"num_predict": 1000}})
        assert never.status_code == 400 and "--kv-budget" in never.json()["hint"]
        ok = _chat(server, model, "What is the capital of France?", 12)  # the budget came back
        assert "Paris" in ok["choices"][0]["message"]["content"]


def test_a_request_past_its_timeout_is_stopped(smollm2_ref: tuple[str, Path]) -> None:
    model = smollm2_ref[0]
    with _server(smollm2_ref[1], request_timeout_s=0.5) as server:
        r = httpx.post(server.url + "/api/generate", timeout=60, json={
            "model": model, "prompt": "Tell me a story.", "stream": False, "options": {"num_predict": 2000}})
        assert r.status_code == 504 and "timeout" in r.json()["error"]
        view = next(m for m in httpx.get(server.url + "/models").json()["models"] if m["name"] == model)
        assert view["generation"]["kv_reserved_tokens"] == 0


def test_frame_paced_stream_holds_its_rate(smollm2_ref: tuple[str, Path], smol_server: LiveServer) -> None:
    model = smollm2_ref[0]
    body = {"model": model, "inputs": "Count from one to fifty: one, two,", "pace_hz": 60,
            "parameters": {"max_new_tokens": 48, "min_new_tokens": 48}}
    arrivals, tokens = [], 0
    with httpx.stream("POST", smol_server.url + "/generate", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("frame"):
                    arrivals.append(time.monotonic())
                    tokens += len(event["events"])
    assert tokens == 48
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
    assert len(gaps) >= 10
    median = gaps[len(gaps) // 2]
    assert 1 / 60 * 0.7 < median < 1 / 60 * 1.5, gaps
    frames = httpx.get(smol_server.url + "/stats").json()["models"][model]["generation"]["frames_per_minute"]
    assert frames["sent"] >= len(arrivals) - 1


# -- ensembles ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rivals(tiny: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two tiny LLaMAs built to disagree: different seeds, head weights scaled so each is sure of its token."""
    import torch
    from transformers import AutoModelForCausalLM

    from gpux.convert.pipeline import convert

    names = []
    for seed in (1, 2):
        folder = tiny_lm(tmp_path_factory.mktemp(f"rival-{seed}") / f"rival-{seed}", "llama", seed=seed)
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            model.lm_head.weight.mul_(40.0)
        model.save_pretrained(folder, safe_serialization=True)
        bundle = convert(folder, name=f"rival-{seed}", source={"kind": "local", "path": str(folder)},
                         store=Store(tiny[1]))
        names.append(f"{bundle.manifest.name}:{bundle.manifest.tag}")
    return names


def test_ensemble_of_one_model_twice_has_zero_diversity(tiny: tuple[str, Path], tiny_server: LiveServer) -> None:
    body = {"models": [tiny[0], tiny[0]], "inputs": "Once upon a time", "parameters": {"max_new_tokens": 10}}
    with httpx.stream("POST", tiny_server.url + "/ensemble", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    final = events[-1]
    tokens = [e for e in events if "token" in e]
    steps = [e for e in events if "step" in e]
    assert {e["model_index"] for e in tokens} == {0, 1} and all(e["model"] == tiny[0] for e in tokens)
    assert final["models"][0]["token_ids"] == final["models"][1]["token_ids"]
    assert final["di_kind"] == "next-token distributions" and final["di"] < 1e-6 and final["text_di"] == 0.0
    assert [s["step"] for s in steps] == list(range(len(final["models"][0]["token_ids"])))
    assert final["aggregate_tokens_per_s"] > 0


def test_ensemble_of_models_built_to_disagree_is_diverse(tiny: tuple[str, Path], rivals: list[str],
                                                         tiny_server: LiveServer) -> None:
    body = {"models": rivals, "inputs": "Once upon a time", "parameters": {"max_new_tokens": 12,
                                                                          "min_new_tokens": 12},
            "stream": False}
    final = httpx.post(tiny_server.url + "/ensemble", json=body, timeout=60).json()
    assert final["di"] > 0.7, final["di_per_step"]
    assert len(final["di_per_step"]) == 12 and all(0.0 <= d <= 1.0 for d in final["di_per_step"])
    bad = httpx.post(tiny_server.url + "/ensemble", json={"models": [rivals[0]], "inputs": "x"}, timeout=60)
    assert bad.status_code == 400 and "2 to 8" in bad.json()["error"]


def test_gpux_run_with_several_models_is_an_ensemble(tiny: tuple[str, Path], rivals: list[str]) -> None:
    from conftest import gpux as cli

    payload = json.dumps({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 6, "min_new_tokens": 6}})
    done = cli("run", tiny[0], tiny[0], rivals[0], "--input", payload, env={"GPUX_HOME": str(tiny[1])})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [m["model"] for m in out["models"]] == [tiny[0], tiny[0], rivals[0]]
    assert out["tokens"] == [6, 6, 6] and 0 < out["di"] <= 1 and len(out["di_per_step"]) == 6
