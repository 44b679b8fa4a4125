"""The diversity index (DI) of an ensemble: how differently N models answer the same prompt.

An ensemble sends one prompt to N models at once. Whether that is worth N times the compute depends on
whether the models say different things; the DI measures it, in [0, 1]: 0 when they all agree, 1 when
they have nothing in common.

- **Models sharing a tokenizer** see the same vocabulary, so at every decode step their next-token
  distributions can be compared directly: the step DI is the mean pairwise Jensen–Shannon divergence of
  those distributions (:func:`step_di`), with base-2 logarithms so it lies in [0, 1] without any other
  normalisation. JS rather than KL because it is symmetric (model order must not matter), finite when one
  model gives a token zero probability (KL is not), and bounded (so steps and runs average meaningfully).
  The run's DI is the mean of its step DIs (:class:`DiversityMeter`).
- **Models with different tokenizers** have no common distribution to compare, only their text. The
  text DI (:func:`text_di`) is the same mean pairwise JS divergence, taken between the texts' character
  3-gram frequency profiles: tokenizer-free, bounded in [0, 1], 0 for identical texts and exactly 1 for
  texts with no 3-gram in common. See :func:`text_di` for why 3-grams and frequencies.

The ensemble's cost is reported beside its DI: :func:`ensemble_efficiency` is the aggregate tokens/s of
the N models run together over N × their mean solo tokens/s.

numpy only (no torch): this runs inside the serving loop, on logits already in numpy.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DiversityMeter", "char_ngrams", "ensemble_efficiency", "js_divergence", "softmax", "step_di",
           "step_di_from_logits", "text_di"]


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Next-token probabilities from logits (last axis), in float64.

    Stable: the maximum is subtracted before ``exp``, so logits of any magnitude (fp16 models emit ±6e4,
    masked tokens -inf) give finite probabilities that sum to 1. ``temperature`` divides the logits first,
    as the sampler does, so the DI can be taken on the distributions the models actually sample from.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = np.asarray(logits, dtype=np.float64) / temperature
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("logits need a non-empty last (vocabulary) axis")
    top = np.max(x, axis=-1, keepdims=True)
    if not np.all(np.isfinite(top)):
        raise ValueError("logits must have a finite maximum (some token must be possible)")
    e = np.exp(x - top)
    return np.asarray(e / np.sum(e, axis=-1, keepdims=True), dtype=np.float64)


def _distribution(p: npt.ArrayLike, size: int | None = None) -> npt.NDArray[np.float64]:
    """``p`` as a 1-D float64 probability vector summing to 1, zero-padded to ``size``."""
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"a distribution is a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("probabilities must be finite and non-negative (pass logits through softmax())")
    total = float(a.sum())
    if total <= 0:
        raise ValueError("probabilities must not all be zero")
    if size is not None and size > a.size:
        a = np.concatenate([a, np.zeros(size - a.size)])
    return a / total


def _kl2(p: npt.NDArray[np.float64], m: npt.NDArray[np.float64]) -> float:
    """KL(p || m) in bits, with 0 · log 0 = 0 (m > 0 wherever p > 0, as m is a mixture containing p)."""
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))


def js_divergence(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen–Shannon divergence of two probability distributions, in bits: a value in [0, 1].

    ``0.5·KL(p‖m) + 0.5·KL(q‖m)`` with ``m = (p + q) / 2``. Inputs are normalised (so counts work too);
    a shorter vector is zero-padded, since models sharing a tokenizer may pad their output layer to
    different sizes and a token beyond a model's vocabulary has probability 0 under it. Computed as two
    KL terms rather than ``H(m) − (H(p) + H(q)) / 2`` so identical inputs give exactly 0 (each ratio
    p/m is exactly 1), and disjoint supports return exactly 1; tiny negatives and overshoots from
    rounding are clamped into [0, 1].
    """
    size = max(np.size(p), np.size(q))
    a, b = _distribution(p, size), _distribution(q, size)
    if not np.any((a > 0) & (b > 0)):
        return 1.0  # disjoint supports: exactly one bit (the sum below would give 1 − 1 ulp)
    m = 0.5 * (a + b)
    js = 0.5 * _kl2(a, m) + 0.5 * _kl2(b, m)
    return min(1.0, max(0.0, js))


def step_di(dists: Sequence[npt.ArrayLike]) -> float:
    """DI of one decode step: the mean pairwise JS divergence of N models' next-token distributions.

    ``dists`` are probability vectors over one shared vocabulary (see :func:`softmax`), one per model that
    is still generating at this step. With fewer than two there is nothing to disagree with: 0.0.
    Mean over all N·(N−1)/2 pairs rather than, say, the JS of N distributions against their mixture,
    because the pairwise mean is what "how much do two members differ" means to a user, and stays
    comparable between ensembles of different sizes.
    """
    if len(dists) < 2:
        return 0.0
    values = [js_divergence(p, q) for p, q in combinations(dists, 2)]
    return min(1.0, max(0.0, math.fsum(values) / len(values)))


def step_di_from_logits(logits: Sequence[npt.ArrayLike], temperature: float = 1.0) -> float:
    """:func:`step_di` of the models' raw next-token logits (each through :func:`softmax`)."""
    return step_di([softmax(x, temperature) for x in logits])


@dataclass
class DiversityMeter:
    """Running DI of one ensemble run: every step's DI, and their mean (the run's DI).

    Steps are kept, not just a running sum, because the per-step series is what an ensemble stream reports
    (where the models diverge matters as much as how much). A run with no step has DI 0.0 and ``steps == 0``.
    """

    per_step: list[float] = field(default_factory=list)

    def add(self, di: float) -> float:
        """Record one step's DI (a value from :func:`step_di`); returns it."""
        value = float(di)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a step DI lies in [0, 1], got {di}")
        self.per_step.append(value)
        return value

    def add_distributions(self, dists: Sequence[npt.ArrayLike]) -> float:
        """Record the DI of one step's next-token distributions; returns it."""
        return self.add(step_di(dists))

    def add_logits(self, logits: Sequence[npt.ArrayLike], temperature: float = 1.0) -> float:
        """Record the DI of one step's next-token logits; returns it."""
        return self.add(step_di_from_logits(logits, temperature))

    @property
    def steps(self) -> int:
        return len(self.per_step)

    @property
    def mean(self) -> float:
        """The run's DI: the mean over its steps (0.0 before the first)."""
        return math.fsum(self.per_step) / len(self.per_step) if self.per_step else 0.0

    def report(self) -> dict[str, Any]:
        """JSON-ready: ``{"per_step": [...], "mean": ..., "steps": n}``."""
        return {"per_step": list(self.per_step), "mean": self.mean, "steps": self.steps}


def char_ngrams(text: str, n: int = 3) -> Counter[str]:
    """Frequency profile of ``text``'s character ``n``-grams, after Unicode NFKC and whitespace folding.

    NFKC and folding runs of whitespace to one space keep two renderings of the same answer (composed vs
    decomposed accents, a tokenizer that emits "  " for " ") from counting as a difference. A non-empty
    text shorter than ``n`` is one gram: itself.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    norm = " ".join(unicodedata.normalize("NFKC", text).split())
    if not norm:
        return Counter()
    if len(norm) < n:
        return Counter([norm])
    return Counter(norm[i:i + n] for i in range(len(norm) - n + 1))


def _profile_js(a: Counter[str], b: Counter[str]) -> float:
    if not a and not b:
        return 0.0  # two empty answers agree
    if not a or not b:
        return 1.0  # an empty answer shares nothing with a non-empty one
    keys = list(a.keys() | b.keys())
    return js_divergence([a.get(k, 0) for k in keys], [b.get(k, 0) for k in keys])


def text_di(texts: Sequence[str], n: int = 3) -> float:
    """Text-level DI of N answers, for models that do not share a tokenizer: in [0, 1].

    The mean pairwise JS divergence (bits) of the texts' character ``n``-gram frequency profiles
    (:func:`char_ngrams`). Identical texts give 0, texts without a common ``n``-gram give exactly 1, and
    fewer than two texts give 0. Why this definition:

    - characters, not tokens or words: every model emits text, whatever its tokenizer, and character
      n-grams need no word segmentation (CJK, code, emoji work as well as English);
    - 3-grams: long enough that two unrelated texts share far fewer of them than of single letters or
      bigrams (which almost any two texts of one language share), short enough that a rephrasing with
      the same words still overlaps — the usual choice for short-text similarity;
    - frequency profiles with JS, not sets with Jaccard: JS is the same divergence as the token-level
      :func:`step_di`, so the two DIs read alike, and counting frequencies lets a model stuck repeating one
      phrase differ from one that says it once (a set would not see it).

    It measures what was said, not how confident the models were: two models that agree on the text but
    not on their distributions have text DI 0 and step DI > 0.
    """
    if len(texts) < 2:
        return 0.0
    profiles = [char_ngrams(t, n) for t in texts]
    values = [_profile_js(a, b) for a, b in combinations(profiles, 2)]
    return min(1.0, max(0.0, math.fsum(values) / len(values)))


def ensemble_efficiency(aggregate_tok_s: float, solo_tok_s: Sequence[float]) -> float:
    """Ensemble efficiency: aggregate tok/s of N models run together ÷ (N × their mean solo tok/s).

    ``solo_tok_s`` holds each model's tokens/s run alone on the same machine (one entry per ensemble
    member; the same model twice is listed twice). N × mean solo = the sum of the solo rates: what the
    ensemble would make if running together cost nothing. So 1.0 means free parallelism, 1/N what running
    the members one after another gives (for equal rates), and above 1.0 is possible when running
    together batches work the solo runs could not (the same model twice sharing its weights).
    """
    rates = [float(s) for s in solo_tok_s]
    if not rates:
        raise ValueError("give at least one solo tokens/s")
    if any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ValueError(f"solo tokens/s must be positive and finite, got {list(solo_tok_s)}")
    if not (aggregate_tok_s >= 0 and math.isfinite(aggregate_tok_s)):
        raise ValueError(f"aggregate tokens/s must be non-negative and finite, got {aggregate_tok_s}")
    return float(aggregate_tok_s) / math.fsum(rates)
