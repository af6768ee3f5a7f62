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
