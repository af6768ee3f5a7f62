"""Confidence that means what it says, and answering only where it is likely right.

The raw ``answer_prob`` of a span (a softmax over the null score and the n-best spans) is
overconfident: on the shipped test split, answers scored >= 0.9 were exact matches half the time.
The evaluate stage fits, on dev only, a logistic calibrator over a few signals of each decision and
reports on test how well it holds: expected calibration error (ECE) with a bootstrap interval, the
Brier score, and the risk-coverage curve of answers ordered by confidence.

"Right" is strict: exact match after SQuAD normalisation (lower case, no punctuation or articles).
For an answer, confidence is the probability that the span is exactly right; for an abstention,
that the question has no answer in its context.

The answer policy: answers whose confidence is below ``min_confidence`` are withheld (the response
says so and why). ``min_confidence`` is the lowest one at which the answered questions of dev reach
mean F1 >= ``evaluate.target_f1``; it is stored with the model (decoding.json) beside the
calibrator, so evaluate, predict and serve report the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medqa.decoding import SpanDecision
from medqa.signals import SIGNALS

# The signals read before any were selected (decoding.json of earlier versions names these).
DEFAULT_FEATURES = ("margin", "answer_prob", "runner_up_gap", "log_span_words")
_MIN_CLASS = 5  # fewer right (or wrong) examples than this: no curve to fit, use the base rate


def features_of(d: SpanDecision, names: Sequence[str]) -> list[float]:
    """The calibrator's inputs for one decision (finite, whatever the decoder found)."""
    return [SIGNALS[name](d) for name in names]


@dataclass(frozen=True)
class Logistic:
    """P(right) = sigmoid(w . (x - mean) / scale + b); w empty: the constant sigmoid(b)."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def prob(self, x: Sequence[float]) -> float:
        if not self.weights:
            return _sigmoid(self.bias)
        z = (np.asarray(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(float(np.dot(self.weights, z)) + self.bias)

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights, "bias": self.bias, "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Logistic:
        def floats(key: str) -> tuple[float, ...]:
            return tuple(float(v) for v in data[key])

        return cls(floats("weights"), float(data["bias"]), floats("mean"), floats("scale"))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fit_logistic(x: Sequence[Sequence[float]], right: Sequence[bool]) -> Logistic:
    """A regularised logistic regression of ``right`` on standardised ``x`` (scikit-learn, which
    MLflow already installs); the base rate alone when a class has too few examples to fit."""
    y = np.asarray(right, dtype=bool)
    n_right = int(y.sum())
    if min(n_right, len(y) - n_right) < _MIN_CLASS:
        rate = (n_right + 1) / (len(y) + 2)  # Laplace: never exactly 0 or 1
        return Logistic((), math.log(rate / (1 - rate)), (), ())
    from sklearn.linear_model import LogisticRegression

    arr = np.asarray(x, dtype=float)
    mean, scale = arr.mean(axis=0), arr.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=1000).fit((arr - mean) / scale, y)
    return Logistic(
        tuple(float(w) for w in model.coef_[0]),
        float(model.intercept_[0]),
        tuple(float(m) for m in mean),
        tuple(float(s) for s in scale),
    )


@dataclass(frozen=True)
class Calibrator:
    """P(right) of an answer and of an abstention, and the answer policy."""

    answer: Logistic
    abstention: Logistic
    min_confidence: float | None  # None: every answer the threshold lets through is given
    features: tuple[str, ...] = DEFAULT_FEATURES  # the signals both models read, in order

    def confidence(self, d: SpanDecision, answered: bool) -> float:
        return (self.answer if answered else self.abstention).prob(features_of(d, self.features))

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "answer": self.answer.to_json(),
            "abstention": self.abstention.to_json(),
            "min_confidence": self.min_confidence,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibrator:
        features = tuple(data.get("features", ()))
        unknown = [name for name in features if name not in SIGNALS]
        if unknown:
            raise ValueError(f"calibrator signals {unknown} are unknown to this medqa")
        floor = data.get("min_confidence")
        return cls(
            Logistic.from_json(data["answer"]),
            Logistic.from_json(data["abstention"]),
            None if floor is None else float(floor),
            features,
        )


def decide(
    d: SpanDecision, threshold: float, cal: Calibrator | None, min_confidence: float | None = None
) -> dict[str, Any]:
    """What predict, serve and evaluate's predictions.jsonl say about one question: the answer or
    the abstention, the raw score, the calibrated confidence, and why it abstained.

    ``min_confidence`` (None: the calibrator's own policy) withholds answers below it; 0 gives
    every answer the threshold lets through. A withheld answer keeps its confidence (the one the
    policy judged) and says so in ``reason``.
    """
    span = d.answer(threshold)
    confidence = cal.confidence(d, answered=bool(span)) if cal is not None else None
    floor = min_confidence
    if floor is None and cal is not None:
        floor = cal.min_confidence
    reason = None
    if not d.best_text:
        reason = "no answer span in the context"
    elif not span:
        reason = "the model finds no answer likelier than the span (abstention threshold)"
    elif confidence is not None and floor is not None and confidence < floor:
        reason = f"confidence {confidence:.3f} is below the answer policy's {floor:.3f}"
        span = ""
    return {
        "answer": span,
        "score": float(d.answer_prob if span else 1 - d.answer_prob),
        "confidence": confidence,
        "start": int(d.start) if span else -1,
        "end": int(d.end) if span else -1,
        "abstained": not span,
        "reason": reason,
    }


def abstention(reason: str) -> dict[str, Any]:
    """The response for a question the model cannot read (no confidence: nothing was decided)."""
    return {
        "answer": "",
        "score": 0.0,
        "confidence": None,
        "start": -1,
        "end": -1,
        "abstained": True,
        "reason": reason,
    }


def reliability_bins(
    conf: Sequence[float], right: Sequence[float], bins: int = 10
) -> list[tuple[float, float, float]]:
    """(mean confidence, share right, share of questions) of each non-empty equal-width confidence
    bin: what the ECE sums over and the reliability diagram draws."""
    c, y = np.asarray(conf, dtype=float), np.asarray(right, dtype=float)
    idx = np.minimum((c * bins).astype(int), bins - 1)
    return [
        (float(c[idx == b].mean()), float(y[idx == b].mean()), float((idx == b).mean()))
        for b in range(bins)
        if (idx == b).any()
    ]


def expected_calibration_error(
    conf: Sequence[float], right: Sequence[bool], bins: int = 10
) -> float:
    """ECE over ``bins`` equal-width confidence bins: the mean |accuracy - confidence| of each
    bin, weighted by its share of the questions."""
    if not len(conf):
        return float("nan")
    return float(sum(abs(acc - mean) * w for mean, acc, w in reliability_bins(conf, right, bins)))


def ece_ci(
    conf: Sequence[float], right: Sequence[bool], samples: int, seed: int = 0
) -> list[float]:
    """A 95% bootstrap interval of the ECE (resampling questions)."""
    c, y = np.asarray(conf), np.asarray(right)
    if not len(c) or samples <= 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    draws = [
        expected_calibration_error(list(c[i]), list(y[i]))
        for i in (rng.integers(0, len(c), len(c)) for _ in range(samples))
    ]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def brier(conf: Sequence[float], right: Sequence[bool]) -> float:
    """Mean squared error of the confidence against right (1) or wrong (0)."""
    c, y = np.asarray(conf, dtype=float), np.asarray(right, dtype=float)
    return float(np.mean((c - y) ** 2)) if len(c) else float("nan")


def risk_coverage(
    conf: Sequence[float], f1: Sequence[float], total: int
) -> tuple[list[float], list[float]]:
    """(coverage, answered F1) after the k most confident answers, k = 1..n; coverage is a share of
    all ``total`` questions, abstentions included."""
    order = np.argsort(-np.asarray(conf, dtype=float), kind="stable")
    scores = np.asarray(f1, dtype=float)[order]
    k = np.arange(1, len(scores) + 1)
    return list(k / max(total, 1)), list(np.cumsum(scores) / k)


def aurc(conf: Sequence[float], f1: Sequence[float]) -> float:
    """Area under the risk-coverage curve of the answers (risk = 1 - F1), averaged over the
    answers in order of confidence: lower means the confident answers are the right ones."""
    if not len(conf):
        return float("nan")
    _, answered_f1 = risk_coverage(conf, f1, len(conf))
    return float(np.mean([1 - v for v in answered_f1]))


def coverage_at(conf: Sequence[float], f1: Sequence[float], total: int, target: float) -> float:
    """The largest share of all questions answerable with answered F1 >= ``target``, answering
    the most confident first; 0 when even the single most confident answer misses it."""
    coverage, answered_f1 = risk_coverage(conf, f1, total)
    ok = [c for c, v in zip(coverage, answered_f1) if v >= target - 1e-12]
    return float(max(ok)) if ok else 0.0


def choose_min_confidence(conf: Sequence[float], f1: Sequence[float], target: float) -> float:
    """The lowest confidence floor whose answers reach mean F1 >= ``target`` (on dev); above every
    confidence (answer nothing) when no floor does."""
    order = np.argsort(-np.asarray(conf, dtype=float), kind="stable")
    c, scores = np.asarray(conf, dtype=float)[order], np.asarray(f1, dtype=float)[order]
    answered_f1 = np.cumsum(scores) / np.arange(1, len(scores) + 1)
    ok = [i for i in range(len(c)) if answered_f1[i] >= target - 1e-12]
    return float(c[max(ok)]) if ok else 1.0 + 1e-9


def _outcomes(
    decisions: Sequence[SpanDecision], rows: Sequence[dict[str, Any]], threshold: float
) -> tuple[list[int], list[int], list[bool], list[float]]:
    """Indices of answered and abstained questions, and per question whether its decision is right
    (exact match; an abstention is right when there is no gold answer) and its F1."""
    from medqa.metrics import score_question

    answered: list[int] = []
    abstained: list[int] = []
    right: list[bool] = []
    f1: list[float] = []
    for i, (d, r) in enumerate(zip(decisions, rows)):
        golds = [a["text"] for a in r["answers"]]
        em, f = score_question(d.answer(threshold), golds)
        (answered if d.answer(threshold) else abstained).append(i)
        right.append(bool(em))
        f1.append(float(f))
    return answered, abstained, right, f1


# Signal selection: a signal joins only if it lowers dev's cross-validated AURC by this much. On
# the shipped data's ~240 answered dev questions smaller gains were noise: added, they raised test
# AURC (docs/guide.md, "Confidence").
MIN_GAIN = 0.01
_FOLDS, _REPEATS = 5, 3


def cv_aurc(x: np.ndarray, right: Sequence[bool], f1: Sequence[float]) -> float:
    """AURC of out-of-fold calibrated confidences (columns of ``x``), averaged over repeats."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    y, scores = np.asarray(right, dtype=bool), np.asarray(f1, dtype=float)
    folds = RepeatedStratifiedKFold(n_splits=_FOLDS, n_repeats=_REPEATS, random_state=0)
    out = np.zeros((_REPEATS, len(y)))
    for k, (fit, held) in enumerate(folds.split(x, y)):
        model = fit_logistic(x[fit].tolist(), y[fit].tolist())
        out[k // _FOLDS, held] = [model.prob(row) for row in x[held]]
    return float(np.mean([aurc(list(conf), list(scores)) for conf in out]))


def select_signals(
    decisions: Sequence[SpanDecision], right: Sequence[bool], f1: Sequence[float]
) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Signals chosen greedily on (dev) answers: each round adds the one that lowers the
    cross-validated AURC most, until none lowers it by ``MIN_GAIN``; also each round's figures.
    Too few right or wrong answers to cross-validate: the raw span probability alone."""
    n_right = int(np.sum(right))
    if min(n_right, len(right) - n_right) < _FOLDS * _MIN_CLASS:
        return ("answer_prob",), []
    table = {name: np.array([fn(d) for d in decisions]) for name, fn in SIGNALS.items()}
    chosen: list[str] = []
    steps: list[dict[str, Any]] = []
    best = math.inf
    while len(chosen) < len(table):
        tried = {
            name: cv_aurc(np.column_stack([table[n] for n in (*chosen, name)]), right, f1)
            for name in table
            if name not in chosen
        }
        name, value = min(tried.items(), key=lambda kv: kv[1])
        if value > best - MIN_GAIN:
            break
        chosen.append(name)
        best = value
        steps.append({"added": name, "dev_cv_aurc": value})
    return tuple(chosen), steps


def fit_calibrator(
    decisions: Sequence[SpanDecision],
    rows: Sequence[dict[str, Any]],
    threshold: float,
    target_f1: float | None,
) -> tuple[Calibrator, list[dict[str, Any]]]:
    """The calibrator and answer policy, from dev decisions at the dev-tuned threshold; also the
    rounds of its signal selection."""
    answered, abstained, right, f1 = _outcomes(decisions, rows, threshold)
    names, steps = select_signals(
        [decisions[i] for i in answered], [right[i] for i in answered], [f1[i] for i in answered]
    )
    answer = fit_logistic(
        [features_of(decisions[i], names) for i in answered], [right[i] for i in answered]
    )
    abstention = fit_logistic(
        [features_of(decisions[i], names) for i in abstained], [right[i] for i in abstained]
    )
    floor = None
    if target_f1 is not None:
        conf = [answer.prob(features_of(decisions[i], names)) for i in answered]
        floor = choose_min_confidence(conf, [f1[i] for i in answered], target_f1)
    return Calibrator(answer, abstention, floor, names), steps


TARGETS = (0.6, 0.7, 0.8, 0.9)  # answered-F1 levels the coverage table reports


def calibration_report(
    cal: Calibrator,
    decisions: Sequence[SpanDecision],
    rows: Sequence[dict[str, Any]],
    threshold: float,
    samples: int,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """How the calibrated confidence holds on (test) ``decisions``, beside the raw score, and the
    curves the plots draw. Figures are over answered questions unless named otherwise."""
    answered, _, right, f1 = _outcomes(decisions, rows, threshold)
    conf = [cal.confidence(decisions[i], answered=True) for i in answered]
    raw = [decisions[i].answer_prob for i in answered]
    ok, scores = [right[i] for i in answered], [f1[i] for i in answered]
    kept = [i for i, c in enumerate(conf) if cal.min_confidence is None or c >= cal.min_confidence]
    report = {
        "right_means": "exact match after SQuAD normalisation",
        "answered_n": len(answered),
        "ece": expected_calibration_error(conf, ok),
        "ece_ci95": ece_ci(conf, ok, samples),
        "ece_raw_score": expected_calibration_error(raw, ok),
        "brier": brier(conf, ok),
        "brier_raw_score": brier(raw, ok),
        "aurc": aurc(conf, scores),
        "aurc_raw_score": aurc(raw, scores),
        "coverage_at_f1": {f"{t:.1f}": coverage_at(conf, scores, len(rows), t) for t in TARGETS},
        "coverage_at_f1_raw_score": {
            f"{t:.1f}": coverage_at(raw, scores, len(rows), t) for t in TARGETS
        },
        "policy_min_confidence": cal.min_confidence,
        "policy_coverage": len(kept) / max(len(rows), 1),
        "policy_answered_f1": float(np.mean([scores[i] for i in kept])) if kept else None,
    }
    curves = {"confidence": conf, "raw_score": raw, "right": [float(v) for v in ok], "f1": scores}
    return report, curves
