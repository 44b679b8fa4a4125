"""The diversity index: JS divergence of next-token distributions, the per-run meter, the text-level DI for
models with different tokenizers, and ensemble efficiency (gpux.generate.diversity)."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from gpux.generate.diversity import (DiversityMeter, char_ngrams, ensemble_efficiency, js_divergence, softmax,
                                     step_di, step_di_from_logits, text_di)

VOCAB = 600


def test_softmax_is_stable_and_normalised() -> None:
    logits = np.array([6e4, -6e4, 0.0, 6e4 - 1.0, -np.inf])  # fp16-sized logits and a masked token
    p = softmax(logits)
    assert p.dtype == np.float64 and np.all(np.isfinite(p)) and math.isclose(p.sum(), 1.0)
    assert p[4] == 0.0 and p[0] > p[3] > 0
    batch = softmax(np.random.default_rng(0).normal(size=(3, VOCAB)) * 50)
    assert np.allclose(batch.sum(-1), 1.0)
    assert np.allclose(softmax([1.0, 2.0], temperature=0.5), softmax([2.0, 4.0]))
    with pytest.raises(ValueError):
        softmax([-np.inf, -np.inf])
    with pytest.raises(ValueError):
        softmax([1.0], temperature=0)


def test_identical_logits_give_zero() -> None:
    logits = np.random.default_rng(1).normal(size=VOCAB) * 4
    p = softmax(logits)
    assert js_divergence(p, p) == 0.0
    assert step_di([p, p.copy(), softmax(logits.copy())]) == 0.0
    assert step_di_from_logits([logits, logits]) == 0.0
    # Same distribution, different float rounding (fp32 vs fp64 logits): still 0 up to float error, never < 0.
    assert 0.0 <= step_di_from_logits([logits, logits.astype(np.float32)]) < 1e-12


def test_disjoint_one_hot_ish_distributions_are_close_to_one() -> None:
    a, b, c = (np.zeros(VOCAB) for _ in range(3))
    a[3], b[70], c[500] = 40.0, 40.0, 40.0  # each model all but certain of a different token
    assert js_divergence(softmax(a), softmax(b)) > 0.99
    assert step_di_from_logits([a, b, c]) > 0.99
    one_hot = np.eye(4)
    assert js_divergence(one_hot[0], one_hot[1]) == 1.0  # disjoint supports: exactly 1 bit


def test_symmetry_and_bounds_on_random_inputs() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        scale = rng.choice([0.1, 1.0, 10.0, 100.0])
        p, q = softmax(rng.normal(size=VOCAB) * scale), softmax(rng.normal(size=VOCAB) * scale)
        d = js_divergence(p, q)
        assert 0.0 <= d <= 1.0
        assert d == pytest.approx(js_divergence(q, p), abs=1e-15)
    dists = [softmax(rng.normal(size=VOCAB) * 3) for _ in range(5)]
    di = step_di(dists)
    pairs = [js_divergence(p, q) for p, q in combinations(dists, 2)]
    assert di == pytest.approx(sum(pairs) / len(pairs)) and 0.0 < di < 1.0
    assert step_di(dists[::-1]) == pytest.approx(di)  # model order does not matter


def test_js_matches_the_entropy_form() -> None:
    rng = np.random.default_rng(3)
    p, q = rng.dirichlet(np.ones(50)), rng.dirichlet(np.ones(50))

    def h(x: np.ndarray) -> float:
        x = x[x > 0]
        return float(-(x * np.log2(x)).sum())

    assert js_divergence(p, q) == pytest.approx(h((p + q) / 2) - (h(p) + h(q)) / 2, abs=1e-12)


def test_edge_cases() -> None:
    p = softmax(np.arange(8.0))
    assert step_di([p]) == 0.0 and step_di([]) == 0.0  # one model: nothing to disagree with
    padded = np.concatenate([p, np.zeros(56)])  # the same tokenizer, an output layer padded to 64
    assert js_divergence(p, padded) == 0.0
    assert js_divergence([2, 2], [0.5, 0.5]) == 0.0  # counts are normalised
    for bad in ([], [[0.5, 0.5]], [-0.1, 1.1], [0.0, 0.0], [np.nan, 1.0]):
        with pytest.raises(ValueError):
            js_divergence(bad, [0.5, 0.5])


def test_meter_aggregates_steps() -> None:
    meter = DiversityMeter()
    assert meter.mean == 0.0 and meter.steps == 0
    same = softmax(np.arange(10.0))
    far = np.zeros(10)
    far[0] = 50.0
    assert meter.add_distributions([same, same]) == 0.0
    high = meter.add_logits([np.arange(10.0), far])
    assert 0.5 < high <= 1.0
    meter.add(0.25)
    assert meter.per_step == [0.0, high, 0.25] and meter.steps == 3
    assert meter.mean == pytest.approx((high + 0.25) / 3)
    assert meter.report() == {"per_step": [0.0, high, 0.25], "mean": meter.mean, "steps": 3}
    with pytest.raises(ValueError):
        meter.add(1.5)
    assert meter.steps == 3


def test_text_di_identical_disjoint_and_between() -> None:
    answer = "The capital of France is Paris."
    assert text_di([answer, answer]) == 0.0
    assert text_di([answer, "The  capital of France\nis Paris."]) == 0.0  # whitespace is folded
    assert text_di(["Café", "Cafe\u0301"]) == 0.0  # composed vs decomposed accent
    assert text_di(["aaaa bbbb", "東京 は 日本"]) == 1.0  # no 3-gram in common
    assert text_di(["", "anything"]) == 1.0 and text_di(["", ""]) == 0.0 and text_di([answer]) == 0.0
    close = text_di([answer, "The capital of France is Paris, of course."])
    far = text_di([answer, "def add(a, b):\n    return a + b"])
    assert 0.0 < close < far <= 1.0
    assert text_di(["Paris", "Paris Paris Paris Paris"]) > 0.0  # frequencies count, not just the set
    assert text_di(["ab", "ab"]) == 0.0 and text_di(["ab", "cd"]) == 1.0  # shorter than n: one gram
    three = ["one answer here", "another answer there", "something else entirely"]
    pairs = [text_di([a, b]) for a, b in combinations(three, 2)]
    assert text_di(three) == pytest.approx(sum(pairs) / 3)
    assert sum(char_ngrams("abcd").values()) == 2 and char_ngrams("  ") == {}


def test_ensemble_efficiency() -> None:
    assert ensemble_efficiency(200.0, [100.0, 100.0]) == 1.0  # free parallelism
    assert ensemble_efficiency(100.0, [100.0, 100.0]) == 0.5  # = one after the other
    assert ensemble_efficiency(90.0, [100.0, 50.0]) == pytest.approx(90.0 / (2 * 75.0))  # N x mean solo
    assert ensemble_efficiency(250.0, [100.0, 100.0]) == 1.25  # batching the same model twice can win
    for agg, solo in ((100.0, []), (100.0, [0.0]), (-1.0, [10.0]), (math.nan, [10.0])):
        with pytest.raises(ValueError):
            ensemble_efficiency(agg, solo)
