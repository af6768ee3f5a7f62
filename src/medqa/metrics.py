"""SQuAD v2.0 exact match and F1, with the official answer normalisation.

Normalisation: lower case, drop punctuation, drop the articles a/an/the, collapse whitespace.
A question's score is the maximum over its gold answers; an unanswerable question's only gold
answer is the empty string, so abstaining scores 1 and any answer scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_BOOTSTRAP_BLOCK = 2**21  # resampled values held at once by bootstrap_ci (16 MB of indices)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, collapse whitespace (SQuAD's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between normalised strings; two empty strings score 1."""
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_toks), common / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def score_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) against the best-matching gold answer; no golds means unanswerable."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(prediction, g) for g in golds), max(
        token_f1(prediction, g) for g in golds
    )


def bootstrap_ci(
    values: Sequence[float], samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # Drawn a block of samples at a time: all at once was samples x n indices and values (240 MB
    # at 15,000 questions, issue 28). The generator's stream runs on across calls and each mean is
    # of its own row, so the interval is the same to the last bit.
    step = max(1, _BOOTSTRAP_BLOCK // len(arr))
    means = np.concatenate(
        [
            arr[rng.integers(0, len(arr), size=(min(step, samples - done), len(arr)))].mean(axis=1)
            for done in range(0, samples, step)
        ]
    )
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
