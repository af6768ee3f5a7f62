import numpy as np
import pytest

from medqa.metrics import bootstrap_ci, exact_match, normalize_answer, score_question, token_f1


def test_normalisation_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The   Anti-VEGF, injection! ") == "antivegf injection"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # 'the' only as a whole word


def test_exact_match_after_normalisation():
    assert exact_match("the macula.", "Macula") == 1.0
    assert exact_match("macula lutea", "macula") == 0.0


def test_token_f1_hand_computed():
    # pred tokens: 80 mg zinc (3); gold: 80 mg of zinc oxide -> 80 mg of zinc oxide (5); common 3
    # precision 3/3, recall 3/5 -> F1 = 2*1*0.6/1.6 = 0.75
    assert token_f1("80 mg zinc", "80 mg of zinc oxide") == pytest.approx(0.75)
    assert token_f1("", "") == 1.0
    assert token_f1("", "zinc") == 0.0
    assert token_f1("copper", "zinc") == 0.0


def test_max_over_several_gold_answers():
    em, f1 = score_question("every four weeks", ["monthly", "every 4 weeks", "four weeks"])
    assert em == 0.0
    assert f1 == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # vs "four weeks"


def test_unanswerable_rewards_abstention_only():
    assert score_question("", []) == (1.0, 1.0)
    assert score_question("drusen", []) == (0.0, 0.0)
    assert score_question("", ["drusen"]) == (0.0, 0.0)


def test_bootstrap_interval_brackets_the_mean():
    lo, hi = bootstrap_ci([0, 1] * 50, samples=500)
    assert lo < 0.5 < hi
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)


def test_duplicate_tokens_count_once_per_gold_occurrence():
    # pred zinc zinc (2), gold zinc (1): common 1 -> precision 1/2, recall 1 -> F1 2/3
    assert token_f1("zinc zinc", "zinc") == pytest.approx(2 / 3)


def test_split_summary_hand_computed_on_punctuation_articles_empty_several_golds_unanswerable():
    from medqa.scoring import summarize

    def row(golds):
        return {"answers": [{"text": g, "answer_start": 0} for g in golds]}

    rows = [
        row(["the AREDS2 formula"]),
        row(["80 mg of zinc", "zinc"]),
        row(["drusen"]),
        row([]),
        row([]),
    ]
    preds = [
        "AREDS2 formula.",  # article and punctuation dropped: EM 1, F1 1
        "zinc oxide",  # best gold "zinc": P 1/2, R 1 -> 2/3 (vs "80 mg of zinc": 1/3); EM 0
        "",  # empty prediction on an answerable question: 0, 0
        "",  # abstained on an unanswerable one: 1, 1
        "geographic atrophy",
    ]  # answered an unanswerable one: 0, 0
    s = summarize(preds, rows)
    assert s["n"] == 5 and s["has_ans_n"] == 3 and s["no_ans_n"] == 2
    assert s["exact"] == pytest.approx(2 / 5)
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 0 + 1 + 0) / 5)
    assert s["has_ans_exact"] == pytest.approx(1 / 3) and s["has_ans_f1"] == pytest.approx(
        (1 + 2 / 3) / 3
    )
    assert s["no_ans_f1"] == pytest.approx(1 / 2)


def test_bootstrap_in_blocks_is_the_same_interval(monkeypatch):
    """Resampled a few rows at a time (bounded memory at any size), the interval is the one drawn
    all at once: the generator's stream runs on across blocks."""
    from medqa import metrics

    values = [float(v) for v in np.random.default_rng(3).random(301)]
    whole = bootstrap_ci(values, samples=200, seed=5)
    monkeypatch.setattr(metrics, "_BOOTSTRAP_BLOCK", 301 * 7)  # 7 samples a block, the last short
    assert bootstrap_ci(values, samples=200, seed=5) == whole
