"""The signals a decision's confidence may be read from (medqa.signals), on hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medqa.config import DecodeParams
from medqa.decoding import SpanDecision, decode_best_spans
from medqa.signals import SIGNALS, candidate_signals, lexical_agreement, question_signals

CONTEXT = (
    "Drusen are yellow deposits under the retina. AREDS2 supplements hold zinc 80 mg and "
    "copper 2 mg. Smoking raises the risk of late disease."
)


def test_lexical_agreement_reads_the_answers_sentence_only():
    start = CONTEXT.index("zinc 80 mg")
    end = start + len("zinc 80 mg")
    assert (
        lexical_agreement("How much zinc do AREDS2 supplements hold?", CONTEXT, start, end) == 1.0
    )
    # the question's words stand in another sentence than the span's
    drusen = CONTEXT.index("yellow deposits")
    assert lexical_agreement("How much zinc is in AREDS2?", CONTEXT, drusen, drusen + 15) == 0.0
    assert lexical_agreement("Is it?", CONTEXT, start, end) == 0.0  # no content words at all


def test_candidate_signals_spread_and_overlap():
    # one span takes nearly all the mass: low entropy, full overlap
    sharp = candidate_signals(-10.0, [(10.0, 5, 9), (-10.0, 20, 30)], 20, 1.0)
    assert sharp["answer_prob"] > 0.99 and sharp["entropy"] < 0.01
    assert sharp["overlap_mass"] == pytest.approx(sharp["answer_prob"])
    # three equal choices (null, the span, a span overlapping it): even spread, overlap counts both
    even = candidate_signals(0.0, [(0.0, 5, 9), (0.0, 7, 12)], 20, 0.5)
    assert even["entropy"] == pytest.approx(1.0)
    assert even["overlap_mass"] == pytest.approx(2 / 3)
    assert even["window_agreement"] == 0.5


def test_question_signals():
    start = CONTEXT.index("80 mg")
    got = question_signals("How much zinc?", CONTEXT, start, start + 5)
    assert got["question_how"] == 1.0 and got["numeric_answer"] == 1.0
    assert got["question_why"] == got["question_yes_no"] == 0.0
    assert question_signals("Does zinc help?", CONTEXT, 0, 6)["question_yes_no"] == 1.0
    assert question_signals("Which metal?", CONTEXT, 0, 6)["answer_in_question"] == 0.0


def _window(offsets: list[tuple[int, int]], index: int = 0) -> dict:
    return {"example_index": index, "offset_mapping": [(-1, -1), *offsets]}


def test_windows_that_see_the_answer_vote_on_it():
    text = "aa bb cc dd ee"
    # two windows both holding "cc" (chars 6-8); the first ranks it best, the second ranks "dd"
    words = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14)]
    features = [_window(words[:4]), _window(words[1:])]
    starts = [np.array([0.0, 0, 0, 5, 0]), np.array([0.0, 0, 3, 4, 0])]
    ends = [np.array([0.0, 0, 0, 5, 0]), np.array([0.0, 0, 3, 4, 0])]
    (d,) = decode_best_spans(features, starts, ends, [text], DecodeParams(5, 1), ["what?"])
    assert d.best_text == "cc"
    assert d.signals["window_agreement"] == 0.5  # both hold "cc"; one of them ranks it first
    assert SIGNALS["window_agreement"](d) == 0.5


def test_every_signal_is_finite_without_a_span():
    empty = SpanDecision("", -1, -1, -math.inf, 0.0, 0.0)
    assert all(math.isfinite(fn(empty)) for fn in SIGNALS.values())
