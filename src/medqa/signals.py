"""What a decision's confidence may be read from: signals of the span, its rivals and the question.

The span's own probability ranks answers poorly (answers scored >= 0.9 were exact matches half the
time), so the evaluate stage offers the calibrator more: how the probability spreads over the
n-best spans, how much of it falls on spans overlapping the answer, whether the windows that see the
answer agree on it, and how many of the question's words stand in the answer's sentence (an answer
from a sentence sharing nothing with the question is rarely right). It keeps only the signals that
lower the risk-coverage area on dev (``calibration.select_signals``), so a signal that does not pay
costs nothing at serving time.

Every signal is computed from what decoding already has (the candidates, the context, the question),
so evaluate, predict and serve compute the same numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

GAP_CAP = 20.0  # a logit gap past this says nothing more; also the value of a missing runner-up
# Words too common in questions to say anything about where the answer is.
_STOP_WORDS = frozenset(
    "the a an of in on at to for and or is are was were be been by with what which how why where "  # noqa: SIM905
    "when who whom whose does do did can could should would will that this these those it its as "
    "from their his her than into about after before most more many much there".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_STEM = 5  # words match on their first letters, so "injection" meets "injections"
_YES_NO = frozenset("is are was were does do did can could should would will has have".split())  # noqa: SIM905


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _content_stems(text: str) -> set[str]:
    return {w[:_STEM] for w in _words(text) if w not in _STOP_WORDS and len(w) > 2}


def _sentence(context: str, start: int, end: int) -> str:
    """The sentence(s) holding ``context[start:end]``."""
    begin = max(context.rfind(". ", 0, start), 0)
    stop = context.find(". ", end)
    return context[begin : len(context) if stop < 0 else stop]


def lexical_agreement(question: str, context: str, start: int, end: int) -> float:
    """Share of the question's content words (by stem) found in the answer's sentence."""
    asked = _content_stems(question)
    if not asked:
        return 0.0
    return len(asked & _content_stems(_sentence(context, start, end))) / len(asked)


def candidate_signals(
    null_score: float,
    candidates: Sequence[tuple[float, int, int]],
    n_best: int,
    windows_agree: float,
) -> dict[str, float]:
    """Signals of the best span against its rivals; ``candidates`` are (score, start, end), best
    first, and ``windows_agree`` the share of the windows holding the best span that rank it first.
    """
    top = candidates[:n_best]
    scores = np.array([null_score] + [c[0] for c in top])
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    _, start, end = top[0]
    spread = float(-(probs * np.log(probs + 1e-12)).sum() / math.log(len(probs)))
    return {
        "answer_prob": float(probs[1]),
        "entropy": spread,  # 0: all on one choice; 1: even over the null and every span
        "overlap_mass": float(
            sum(p for p, c in zip(probs[1:], top) if c[1] < end and start < c[2])
        ),
        "window_agreement": windows_agree,
    }


def question_signals(question: str, context: str, start: int, end: int) -> dict[str, float]:
    """Signals of the question and of the answer against it."""
    first = (_words(question) or [""])[0]
    answer_words = _words(context[start:end])
    asked = set(_words(question))
    return {
        "lexical_agreement": lexical_agreement(question, context, start, end),
        "answer_in_question": sum(w in asked for w in answer_words) / max(len(answer_words), 1),
        "numeric_answer": float(any(ch.isdigit() for ch in context[start:end])),
        "question_how": float(first == "how"),
        "question_why": float(first == "why"),
        "question_yes_no": float(first in _YES_NO),
    }


def _decision(name: str) -> Callable[[Any], float]:
    """A signal stored on the decision by ``decode_best_spans`` (0 where it had no span)."""
    return lambda d: float(d.signals.get(name, 0.0))


def _margin(d: Any) -> float:
    return float(np.clip(d.margin, -GAP_CAP, GAP_CAP)) if math.isfinite(d.margin) else -GAP_CAP


def _runner_up_gap(d: Any) -> float:
    gap = d.best_score - d.runner_up_score if math.isfinite(d.runner_up_score) else GAP_CAP
    return float(min(gap, GAP_CAP))


# Every signal the calibrator may use, by the name stored with it; each maps a SpanDecision to a
# finite number whatever the decoder found.
SIGNALS: Mapping[str, Callable[[Any], float]] = {
    "margin": _margin,
    "answer_prob": lambda d: float(d.answer_prob),
    "runner_up_gap": _runner_up_gap,
    "log_span_words": lambda d: math.log1p(len(d.best_text.split())),
    **{
        name: _decision(name)
        for name in (
            "entropy",
            "overlap_mass",
            "window_agreement",
            "lexical_agreement",
            "answer_in_question",
            "numeric_answer",
            "question_how",
            "question_why",
            "question_yes_no",
        )
    },
}
