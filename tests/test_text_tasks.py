"""The text tasks of issue 10 end to end: random-weight PyTorch models converted by gpux.convert, run by gpux,
answers checked against transformers (its pipelines where it still has them, else PyTorch's logits).

transformers and torch are used here as the reference only: the gpux run path never imports them
(test_the_run_path_imports_neither_torch_nor_transformers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import hf_models
import numpy as np
import pytest

import gpux
from gpux.errors import InputError, UsageError
from gpux.store.local import Store
from gpux.tasks.text import TruncationWarning

#: BIO labels, so grouping (B- starts a span, I- continues it) is exercised.
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
NER_TEXTS = ["My name is Wolfgang and I live in Berlin.",
             "Unbelievably, Hugging Face's headquarters are in NYC, xqzzy-land!", "ok"]
HEADS = {"fill-mask": "BertForMaskedLM", "token-classification": "BertForTokenClassification",
         "question-answering": "BertForQuestionAnswering", "text-ranking": "BertForSequenceClassification",
         "text-classification": "BertForSequenceClassification"}


def tiny_task(folder: Path, task: str, seed: int = 0) -> Path:
    """A random-weight tiny BERT (hidden 32, 2 layers, MiniLM tokenizer) with ``task``'s head.

    initializer_range 0.3 (not BERT's 0.02) spreads the logits, so rankings are decided by clear margins
    rather than by float noise between ONNX Runtime and PyTorch.
    """
    import torch
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=30522, max_position_embeddings=128, pad_token_id=0, initializer_range=0.3,
                        **hf_models.TINY)
    if task == "token-classification":
        cfg.num_labels = len(NER_LABELS)
        cfg.id2label, cfg.label2id = dict(NER_LABELS), {v: k for k, v in NER_LABELS.items()}
    elif task == "text-classification":
        cfg.num_labels = len(hf_models.LABELS)
        cfg.id2label, cfg.label2id = dict(hf_models.LABELS), {v: k for k, v in hf_models.LABELS.items()}
    elif task == "text-ranking":
        cfg.num_labels = 1
    torch.manual_seed(seed)
    model = getattr(tf, HEADS[task])(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in hf_models.TOKENIZER_FILES:
        (folder / name).write_bytes((hf_models.minilm_folder() / name).read_bytes())
    return folder


def convert_into(root: Path, src: Path, task: str) -> str:
    """Convert ``src`` into the store at ``root`` with gpux's real pipeline; the stored ref."""
    from gpux.convert.pipeline import convert

    bundle = convert(src, name=src.name, source={"kind": "local", "path": str(src)}, store=Store(root))
    assert bundle.manifest.task == task, bundle.manifest.task  # detected from config.architectures
    return f"{src.name}:{task}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store, one converted model per task (conversion paid once for the module)."""
    root = tmp_path_factory.mktemp("tasks-home")
    src = tmp_path_factory.mktemp("tasks-src")
    out: dict[str, Any] = {"root": root, "src": {}, "ref": {}}
    for task in HEADS:
        folder = tiny_task(src / f"tiny-{task}", task)
        out["src"][task], out["ref"][task] = folder, convert_into(root, folder, task)
    return out


def _load(built: dict[str, Any], task: str) -> gpux.Model:
    return gpux.load(built["ref"][task], store=Store(built["root"]))


# -- fill-mask -----------------------------------------------------------------------


def test_fill_mask_matches_transformers_pipeline(built: dict[str, Any]) -> None:
    from transformers import pipeline

    model = _load(built, "fill-mask")
    reference = pipeline("fill-mask", model=str(built["src"]["fill-mask"]))
    texts = ["paris is the [MASK] of france.", "the [MASK] sat on the [MASK] today"]
    got = model({"inputs": texts, "parameters": {"top_k": 4}})["predictions"]
    for text, answer in zip(texts, got):
        expected = reference(text, top_k=4)
        if text.count("[MASK]") == 1:  # one mask: a list of candidates; several: one list per mask
            expected, answer = [expected], [answer]
        assert len(answer) == len(expected) == text.count("[MASK]")
        for mine, theirs in zip(answer, expected):
            assert [c["token"] for c in mine] == [c["token"] for c in theirs]
            assert [c["token_str"] for c in mine] == [c["token_str"] for c in theirs]
            assert [c["sequence"] for c in mine] == [c["sequence"] for c in theirs]
            np.testing.assert_allclose([c["score"] for c in mine], [c["score"] for c in theirs], rtol=1e-4)
    targeted = model({"inputs": texts[0], "parameters": {"targets": ["city", "capital", "river"]}})["predictions"][0]
    theirs = reference(texts[0], targets=["city", "capital", "river"])
    assert [c["token_str"] for c in targeted] == [c["token_str"] for c in theirs]
    np.testing.assert_allclose([c["score"] for c in targeted], [c["score"] for c in theirs], rtol=1e-4)


def test_fill_mask_without_a_mask_names_the_mask_token(built: dict[str, Any]) -> None:
    model = _load(built, "fill-mask")
    with pytest.raises(InputError, match=r"text 1 has no mask token \[MASK\]") as err:
        model({"inputs": ["a [MASK] here", "none here"]})
    assert err.value.hint is not None and "[MASK]" in err.value.hint
    limit = model.task.encode.max_length  # type: ignore[union-attr]
    with pytest.raises(InputError, match="last mask token of text 0 is past"):
        model({"inputs": "word " * limit + "[MASK]"})
    with pytest.warns(TruncationWarning, match="cut to the model's limit"):  # cut after the mask: answered
        assert model({"inputs": "[MASK] " + "word " * limit})["predictions"][0]
    with pytest.raises(UsageError, match="top_k"):
        model({"inputs": "a [MASK]", "parameters": {"top_k": 0}})
    with pytest.raises(UsageError, match="no parameter 'topk'"):
        model({"inputs": "a [MASK]", "parameters": {"topk": 2}})


# -- token classification -----------------------------------------------------------


def _plain(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (float(v) if k == "score" else int(v) if k in ("start", "end", "index") else v)
             for k, v in e.items()} for e in entities]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max", "average"])
def test_ner_aggregation_matches_transformers_pipeline(built: dict[str, Any], strategy: str) -> None:
    from transformers import pipeline

    model = _load(built, "token-classification")
    reference = pipeline("token-classification", model=str(built["src"]["token-classification"]))
    for ignore in (None, []):  # the default leaves out "O"; [] keeps every token
        params: dict[str, Any] = {"aggregation_strategy": strategy, **({"ignore_labels": ignore} if ignore == [] else {})}
        got = model({"inputs": NER_TEXTS, "parameters": params})["entities"]
        assert len(got) == len(NER_TEXTS)
        for text, mine in zip(NER_TEXTS, got):
            theirs = _plain(reference(text, aggregation_strategy=strategy,
                                      **({"ignore_labels": ignore} if ignore == [] else {})))
            assert [{k: v for k, v in e.items() if k != "score"} for e in mine] == \
                [{k: v for k, v in e.items() if k != "score"} for e in theirs]
            np.testing.assert_allclose([e["score"] for e in mine], [e["score"] for e in theirs], rtol=1e-4)
            for e in mine:  # offsets are characters of the input
                assert text[e["start"]:e["end"]].lower().replace(" ", "") == e["word"].replace(" ", "") \
                    or "[UNK]" in e["word"] or strategy == "none"
    found = model({"inputs": NER_TEXTS[0], "parameters": {"aggregation_strategy": "simple", "ignore_labels": []}})
    assert {"entity_group", "score", "word", "start", "end"} == set(found["entities"][0][0])


def test_ner_refuses_an_unknown_strategy(built: dict[str, Any]) -> None:
    model = _load(built, "token-classification")
    with pytest.raises(UsageError, match="aggregation_strategy 'longest'"):
        model({"inputs": "x", "parameters": {"aggregation_strategy": "longest"}})


# -- question answering -------------------------------------------------------------

LONG_CONTEXT = " ".join(f"Sentence {i} says that the {w} lives near the {r} river."
                        for i, (w, r) in enumerate(zip(["cat", "dog", "bird", "fox", "owl"] * 8,
                                                       ["old", "wide", "north", "quiet"] * 10)))


def _reference_answers(folder: Path, question: str, context: str, max_length: int, stride: int, top_k: int,
                       max_answer_len: int = 15, impossible: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The best-span rule over PyTorch's logits, written out (transformers 5 dropped its QA pipeline):
    windows from the tokenizer's overflow with a stride; softmax over context tokens and the first token;
    p_start·p_end for start <= end < start + max_answer_len; spans widened to words; equal texts summed."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    enc = tok(question, context, truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest", return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"])
    answers: list[dict[str, Any]] = []
    null = 1e6
    for w in range(enc["input_ids"].shape[0]):
        seq = enc.sequence_ids(w)
        ok = np.array([s == 1 for s in seq]) | (enc["input_ids"][w].numpy() == tok.cls_token_id)
        ok &= enc["attention_mask"][w].numpy().astype(bool)
        start = np.where(ok, out.start_logits[w].numpy().astype(np.float64), -10000.0)
        end = np.where(ok, out.end_logits[w].numpy().astype(np.float64), -10000.0)
        ps, pe = np.exp(start - start.max()), np.exp(end - end.max())
        ps, pe = ps / ps.sum(), pe / pe.sum()
        null = min(null, ps[0] * pe[0])
        ps[0] = pe[0] = 0.0
        cand = np.tril(np.triu(np.outer(ps, pe)), max_answer_len - 1)
        for idx in np.argsort(-cand.ravel(), kind="stable")[:top_k]:
            s, e = divmod(int(idx), cand.shape[1])
            encoding = enc.encodings[w]
            lo = encoding.word_to_chars(encoding.token_to_word(s), 1)[0]
            hi = encoding.word_to_chars(encoding.token_to_word(e), 1)[1]
            same = [a for a in answers if a["answer"].lower() == context[lo:hi].lower()]
            if same:
                same[0]["score"] += float(cand[s, e])
            else:
                answers.append({"score": float(cand[s, e]), "start": lo, "end": hi, "answer": context[lo:hi]})
    if impossible:
        answers.append({"score": float(null), "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: -a["score"])[:top_k], int(enc["input_ids"].shape[0])


def _same_answers(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [(a["answer"], a["start"], a["end"]) for a in mine] == [(a["answer"], a["start"], a["end"]) for a in theirs]
    np.testing.assert_allclose([a["score"] for a in mine], [a["score"] for a in theirs], rtol=1e-3)


def test_question_answering_matches_the_best_span_rule_over_pytorch(built: dict[str, Any]) -> None:
    model = _load(built, "question-answering")
    folder = built["src"]["question-answering"]
    limit = model.task.encode.max_length  # type: ignore[union-attr]
    short = {"question": "Where does the cat live?", "context": "The cat lives near the old river in Paris."}
    one = model({"inputs": short})["answers"][0]
    theirs, windows = _reference_answers(folder, short["question"], short["context"], limit, min(128, limit // 2), 1)
    assert windows == 1 and set(one) == {"score", "start", "end", "answer"}
    _same_answers([one], theirs)
    assert short["context"][one["start"]:one["end"]] == one["answer"]

    # A context several times the model's limit: windows overlapping by doc_stride tokens.
    long = {"question": "Where does the owl live?", "context": LONG_CONTEXT}
    for stride, top_k in ((32, 3), (8, 1)):
        got = model({"inputs": [long, short], "parameters": {"top_k": top_k, "doc_stride": stride}})["answers"]
        theirs, windows = _reference_answers(folder, long["question"], LONG_CONTEXT, limit, stride, top_k)
        assert windows >= 3
        _same_answers(got[0] if top_k > 1 else [got[0]], theirs)
    got = model({"inputs": long, "parameters": {"top_k": 2, "handle_impossible_answer": True,
                                                "max_answer_len": 5}})["answers"][0]
    theirs, _ = _reference_answers(folder, long["question"], LONG_CONTEXT, limit, min(128, limit // 2), 2, 5, True)
    _same_answers(got, theirs)


def test_question_answering_refuses_bad_inputs(built: dict[str, Any]) -> None:
    model = _load(built, "question-answering")
    with pytest.raises(UsageError, match="question"):
        model({"inputs": "just a text"})
    with pytest.raises(UsageError, match="input 0 must be"):
        model({"inputs": [{"question": "", "context": "x"}]})
    with pytest.raises(UsageError, match="doc_stride"):
        model({"inputs": {"question": "q", "context": "c"}, "parameters": {"doc_stride": 10_000}})
    limit = model.task.encode.max_length  # type: ignore[union-attr]
    long_question = "where " * (limit - 20)  # 17 context tokens fit beside it in each window
    with pytest.raises(UsageError, match=r"doc_stride 40 does not fit question 0: beside it a window holds 17"):
        model({"inputs": {"question": long_question, "context": LONG_CONTEXT}, "parameters": {"doc_stride": 40}})
    # The default stride shrinks to fit beside a long question: still every window, still an answer.
    answer = model({"inputs": {"question": long_question, "context": LONG_CONTEXT}})["answers"][0]
    assert LONG_CONTEXT[answer["start"]:answer["end"]] == answer["answer"]
    with pytest.raises(InputError, match="leaves no room"):
        model({"inputs": {"question": "where " * limit, "context": "here"}})


# -- ranking and pairs --------------------------------------------------------------

QUERY = "how do cats sleep"
DOCUMENTS = ["Cats sleep twelve to sixteen hours a day.", "Paris is the capital of France.",
             "A cat naps often, curled up in the sun.", "Stock markets fell on Tuesday.",
             "Sleep is vital for every animal, cats included, and they sleep a lot more than people do."]


def torch_scores(folder: Path, pairs: list[tuple[str, str]], softmax: bool) -> np.ndarray:
    """What PyTorch gives for text pairs: the logits through sigmoid (one label) or softmax."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    return (torch.softmax(logits, -1) if softmax else torch.sigmoid(logits[:, 0])).numpy()


def test_text_ranking_scores_and_order_match_pytorch(built: dict[str, Any]) -> None:
    model = _load(built, "text-ranking")
    expected = torch_scores(built["src"]["text-ranking"], [(QUERY, d) for d in DOCUMENTS], softmax=False)
    got = model({"inputs": {"query": QUERY, "documents": DOCUMENTS}})["scores"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert list(np.argsort(-np.array(got), kind="stable")) == list(np.argsort(-expected, kind="stable"))
    pairs = model({"inputs": [{"text": QUERY, "text_pair": d} for d in DOCUMENTS]})["scores"]
    np.testing.assert_allclose(pairs, got, atol=1e-6)
    with pytest.raises(UsageError, match="scores pairs"):
        model({"inputs": ["a single text"]})
    # More pairs than one call takes: chunks of similar length, scores back in input order.
    many = [" ".join(DOCUMENTS[i % 5].split()[: 3 + (i * 7) % 15]) for i in range(45)]
    expected = torch_scores(built["src"]["text-ranking"], [(QUERY, d) for d in many], softmax=False)
    np.testing.assert_allclose(model({"inputs": {"query": QUERY, "documents": many}})["scores"], expected, atol=1e-5)
    too_long = [*many[:37], "word " * 300, *many[37:]]
    with pytest.raises(InputError, match="text 37 has 3"):  # its index in the request, not in a chunk
        model({"inputs": {"query": QUERY, "documents": too_long}, "truncate": False})


def test_sentence_pairs_classify_like_pytorch(built: dict[str, Any]) -> None:
    model = _load(built, "text-classification")
    pairs = [("A man is playing a guitar.", "A person plays music."), ("The sky is green.", "Nobody is outside."),
             ("short", "a much longer hypothesis that goes on for a while")]
    got = model({"inputs": [{"text": a, "text_pair": b} for a, b in pairs]})["predictions"]
    expected = torch_scores(built["src"]["text-classification"], pairs, softmax=True)
    for row, probs in zip(got, expected):
        scores = {p["label"]: p["score"] for p in row}
        np.testing.assert_allclose([scores[hf_models.LABELS[i]] for i in range(3)], probs, atol=1e-5)
    single = model({"inputs": {"text": pairs[0][0], "text_pair": pairs[0][1]}})["predictions"]
    assert single == got[:1]
    # A pair is not the same input as its two texts joined: the type ids and separator differ.
    joined = model({"inputs": [f"{pairs[0][0]} {pairs[0][1]}"]})["predictions"][0]
    assert joined != got[0]
    with pytest.raises(UsageError, match="input 1 must be a text"):
        model({"inputs": [{"text": "a", "text_pair": "b"}, {"text": "a", "pair": "b"}]})


def test_the_run_path_imports_neither_torch_nor_transformers(built: dict[str, Any]) -> None:
    """Every new task, run in a fresh process from the store: torch and transformers never load."""
    script = f"""
import json, sys
from pathlib import Path
import gpux
from gpux.store.local import Store
store = Store(Path({str(built["root"])!r}))
payloads = {{
    "fill-mask": {{"inputs": "a [MASK] b"}},
    "token-classification": {{"inputs": "Ada lives in Paris", "parameters": {{"aggregation_strategy": "simple"}}}},
    "question-answering": {{"inputs": {{"question": "who?", "context": "Ada did it."}}}},
    "text-ranking": {{"inputs": {{"query": "q", "documents": ["a", "b"]}}}},
    "text-classification": {{"inputs": [{{"text": "a", "text_pair": "b"}}]}},
}}
refs = {json.dumps(built["ref"])}
for task, payload in payloads.items():
    gpux.load(refs[task], store=store)(payload)
print(json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_gpux_run_answers_a_question(built: dict[str, Any]) -> None:
    from conftest import gpux as cli

    payload = {"inputs": {"question": "Where does the cat live?", "context": "The cat lives near the river."}}
    done = cli("run", built["ref"]["question-answering"], "--input", json.dumps(payload),
               env={"GPUX_HOME": str(built["root"])})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)["answers"][0]
    assert payload["inputs"]["context"][answer["start"]:answer["end"]] == answer["answer"]
