"""Sliding windows, answer labels and span decoding, with the real packaged tokenizer."""

import math

import numpy as np
import pytest

from medqa.config import DecodeParams, TokenizeParams
from medqa.decoding import SpanDecision, decode_best_spans, tune_null_threshold
from medqa.features import NO_OFFSET, build_eval_features, build_train_features
from medqa.metrics import score_question

FILLER = (
    "Routine review of the fellow eye showed stable drusen and no fluid on the scan today. " * 30
).strip()
ANSWER = "faricimab every sixteen weeks"
LONG_CONTEXT = f"{FILLER} The plan agreed with the patient was {ANSWER} after loading. {FILLER}"
WINDOWS = TokenizeParams(max_seq_length=64, doc_stride=24)


def _row(context=LONG_CONTEXT, answer=ANSWER):
    start = context.index(answer)
    return {
        "question": "What was the plan?",
        "context": context,
        "answers": [{"text": answer, "answer_start": start}],
    }


def test_long_context_becomes_many_windows_and_labels_map_back(packaged_tokenizer):
    row = _row()
    feats = build_train_features(packaged_tokenizer, [row], WINDOWS)
    assert len(feats) > 10  # a context far longer than max_seq_length
    evals = build_eval_features(packaged_tokenizer, [row], WINDOWS)
    labelled = [i for i, f in enumerate(feats) if f["start_positions"] > 0]
    assert labelled, "the answer must be fully inside at least one window"
    for i in labelled:
        offsets = evals[i]["offset_mapping"]
        s, e = feats[i]["start_positions"], feats[i]["end_positions"]
        assert LONG_CONTEXT[offsets[s][0] : offsets[e][1]] == ANSWER
    # windows that do not contain the whole answer point at [CLS]
    assert all(
        f["start_positions"] == f["end_positions"] == 0
        for j, f in enumerate(feats)
        if j not in labelled
    )
    assert all(len(f["input_ids"]) <= WINDOWS.max_seq_length for f in feats)


def test_question_tokens_never_carry_offsets(packaged_tokenizer):
    evals = build_eval_features(packaged_tokenizer, [_row()], WINDOWS)
    first = evals[0]
    assert first["offset_mapping"][0] == list(NO_OFFSET)  # [CLS]
    sep = first["input_ids"].index(packaged_tokenizer.sep_token_id)
    assert all(o == list(NO_OFFSET) for o in first["offset_mapping"][: sep + 1])


def _logits_for(features, target_feature, s, e, n_tokens_default=-5.0):
    starts, ends = [], []
    for i, f in enumerate(features):
        st = np.full(len(f["input_ids"]), n_tokens_default)
        en = np.full(len(f["input_ids"]), n_tokens_default)
        st[0] = en[0] = 0.0  # null score 0 in every window
        if i == target_feature:
            st[s], en[e] = 6.0, 6.0
        starts.append(st)
        ends.append(en)
    return starts, ends


def test_decoding_finds_the_answer_in_a_late_window_and_maps_to_characters(packaged_tokenizer):
    row = _row()
    evals = build_eval_features(packaged_tokenizer, [row], WINDOWS)
    train = build_train_features(packaged_tokenizer, [row], WINDOWS)
    target = max(i for i, f in enumerate(train) if f["start_positions"] > 0)
    s, e = train[target]["start_positions"], train[target]["end_positions"]
    starts, ends = _logits_for(evals, target, s, e)
    (decision,) = decode_best_spans(
        evals,
        starts,
        ends,
        [row["context"]],
        DecodeParams(n_best=5, max_answer_length=30),
        [row["question"]],
    )
    assert decision.best_text == ANSWER
    assert row["context"][decision.start : decision.end] == ANSWER
    assert decision.margin == pytest.approx(12.0)
    assert decision.answer(threshold=0.0) == ANSWER
    assert decision.answer(threshold=20.0) == ""  # abstains above its margin


def test_max_answer_length_and_end_before_start_are_rejected(packaged_tokenizer):
    row = _row()
    evals = build_eval_features(packaged_tokenizer, [row], WINDOWS)
    ctx_tokens = [t for t, o in enumerate(evals[0]["offset_mapping"]) if o[0] >= 0]
    s, e = ctx_tokens[0], ctx_tokens[10]
    starts, ends = _logits_for(evals, 0, s, e)
    (d,) = decode_best_spans(
        evals,
        starts,
        ends,
        [row["context"]],
        DecodeParams(n_best=3, max_answer_length=5),
        [row["question"]],
    )
    assert d.end - d.start < len(
        row["context"][evals[0]["offset_mapping"][s][0] : evals[0]["offset_mapping"][e][1]]
    )
    starts, ends = _logits_for(evals, 0, e, s)  # end before start
    (d2,) = decode_best_spans(
        evals,
        starts,
        ends,
        [row["context"]],
        DecodeParams(n_best=1, max_answer_length=30),
        [row["question"]],
    )
    assert d2.best_text == ""


def test_threshold_tuning_picks_the_f1_optimal_cut():
    decisions = [
        SpanDecision("zinc", 0, 4, 5.0, 1.0, 0.9),  # margin 4, correct
        SpanDecision("copper", 0, 6, 2.0, 1.0, 0.6),  # margin 1, unanswerable -> should abstain
        SpanDecision("lutein", 0, 6, 4.0, 1.0, 0.8),
    ]  # margin 3, correct
    golds = [["zinc"], [], ["lutein"]]
    thr, f1 = tune_null_threshold(decisions, golds, lambda p, g: score_question(p, g)[1])
    assert f1 == 1.0
    assert 1.0 <= thr < 3.0
    assert [d.answer(thr) for d in decisions] == ["zinc", "", "lutein"]


def test_threshold_never_answer_is_finite():
    decisions = [SpanDecision("wrong", 0, 5, 2.0, 1.0, 0.5)]
    thr, f1 = tune_null_threshold(decisions, [[]], lambda p, g: score_question(p, g)[1])
    assert f1 == 1.0 and math.isfinite(thr)


def _context_tokens(feature):
    """(token index, (start char, end char)) of a window's context tokens."""
    return [(t, tuple(o)) for t, o in enumerate(feature["offset_mapping"]) if o[0] >= 0]


def test_answer_crossing_a_window_boundary_is_read_from_the_window_that_holds_it_whole(
    packaged_tokenizer,
):
    evals = build_eval_features(packaged_tokenizer, [_row()], WINDOWS)
    w0, w1 = _context_tokens(evals[0]), _context_tokens(evals[1])
    after = [
        o for _, o in w1 if o[0] >= w0[-1][1][1]
    ]  # the context tokens just past window 0's end
    start_char, end_char = w0[-2][1][0], after[1][1]  # two tokens inside window 0, two past it
    answer = LONG_CONTEXT[start_char:end_char]
    row = _row(answer=answer)
    row["answers"][0]["answer_start"] = (
        start_char  # the text also occurs earlier: pin this occurrence
    )

    train = build_train_features(packaged_tokenizer, [row], WINDOWS)
    assert (
        train[0]["start_positions"] == train[0]["end_positions"] == 0
    )  # cut in two there: no answer
    s, e = train[1]["start_positions"], train[1]["end_positions"]
    assert (
        LONG_CONTEXT[evals[1]["offset_mapping"][s][0] : evals[1]["offset_mapping"][e][1]] == answer
    )

    # window 0 points at the part of the answer it has, window 1 at the whole: the whole wins and maps back
    starts, ends = _logits_for(evals, 1, s, e)
    starts[0][w0[-2][0]], ends[0][w0[-1][0]] = 3.0, 3.0
    (d,) = decode_best_spans(
        evals,
        starts,
        ends,
        [LONG_CONTEXT],
        DecodeParams(n_best=5, max_answer_length=30),
        [row["question"]],
    )
    assert (d.best_text, d.start, d.end) == (answer, start_char, end_char)

    # a start in window 0 and an end in window 1 are never joined into one span
    starts, ends = _logits_for(evals, 0, w0[-2][0], w0[-2][0])
    ends[0][w0[-2][0]] = -5.0
    ends[1][e] = 6.0
    (d,) = decode_best_spans(
        evals,
        starts,
        ends,
        [LONG_CONTEXT],
        DecodeParams(n_best=5, max_answer_length=30),
        [row["question"]],
    )
    windows = [(f[0][1][0], f[-1][1][1]) for f in (_context_tokens(x) for x in evals)]
    assert any(lo <= d.start and d.end <= hi for lo, hi in windows)
    assert (d.start, d.end) != (start_char, end_char)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_tuning_matches_rescoring_every_candidate(seed):
    """The suffix-sum sweep picks the threshold and F1 that rescoring every question at every
    candidate picks (the definition), ties in margin and questions without a span included."""
    rng = np.random.default_rng(seed)
    words = ["drusen", "VEGF", "geographic atrophy", "zinc", "OCT", ""]
    decisions, golds = [], []
    for _ in range(120):
        text = str(rng.choice(words))
        margin = float(rng.choice([-1.0, 0.0, 0.5, 2.0])) if rng.random() < 0.3 else rng.normal()
        decisions.append(SpanDecision(text, 0, len(text), margin, 0.0, 0.5))
        golds.append([] if rng.random() < 0.2 else [str(rng.choice(words[:-1]))])

    def f1_of(p, g):
        return score_question(p, g)[1]

    def by_definition():
        best = (math.inf, -1.0)
        margins = sorted({d.margin for d in decisions if d.best_text})
        for thr in [math.inf] + [m - 1e-6 for m in margins]:
            f1 = float(np.mean([f1_of(d.answer(thr), g) for d, g in zip(decisions, golds)]))
            if f1 > best[1] + 1e-12:
                best = (thr, f1)
        return best

    thr, f1 = tune_null_threshold(decisions, golds, f1_of)
    expected_thr, expected_f1 = by_definition()
    assert (thr, f1) == (1e9 if expected_thr == math.inf else expected_thr, expected_f1)
