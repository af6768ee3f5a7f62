"""A full article (~20,000 tokens, ``benchmarks.scale_data.long_article``) through tokenize and decoding
(issue "Corpus-scale data", long contexts): it becomes many windows, each answer is labelled in exactly
the windows that hold it whole (the late answer in late windows only), and scoring streamed from
Arrow in chunks finds an answer that only a late window points at, at its characters in the whole
context."""

from __future__ import annotations

import random

import numpy as np
import pytest
from benchmarks.scale_data import LONG_ANSWER_AT, long_article
from datasets import Dataset

from medqa import scoring
from medqa.config import DecodeParams, TokenizeParams
from medqa.decoding import decode_best_spans
from medqa.features import build_eval_features, build_train_features
from medqa.modelsource import load_qa_model, pad_id

WINDOWS = TokenizeParams()  # the shipped windows: 384 tokens, stride 128
DECODE = DecodeParams(n_best=20, max_answer_length=30)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """The article's questions as validated rows: answered 2%, 50% and 97% through it, then one
    unanswerable."""
    (paragraph,) = long_article(random.Random(0), "long")["paragraphs"]
    return [
        {"id": qa["id"], "question": qa["question"], "context": paragraph["context"]}
        | {"answers": qa["answers"]}
        for qa in paragraph["qas"]
    ]


@pytest.fixture(scope="module")
def windows(rows, packaged_tokenizer) -> tuple[list[dict], list[dict]]:
    """Training windows (labelled) and evaluation windows (offsets) of every question, in the same
    order: both come from one tokenizer call over the same rows."""
    train = build_train_features(packaged_tokenizer, rows, WINDOWS)
    evals = build_eval_features(packaged_tokenizer, rows, WINDOWS)
    assert len(train) == len(evals)
    return train, evals


def _context_span(offsets: list) -> tuple[int, int]:
    spans = [o for o in offsets if o[0] >= 0]
    return spans[0][0], spans[-1][1]


def test_a_20k_token_article_is_many_windows_with_each_answer_where_it_is(
    rows, windows, packaged_tokenizer
):
    context = rows[0]["context"]
    tokens = len(packaged_tokenizer(context, add_special_tokens=False)["input_ids"])
    assert 18_000 <= tokens <= 22_000
    assert [r["answers"] != [] for r in rows] == [True] * len(LONG_ANSWER_AT) + [False]
    train, evals = windows
    for q, row in enumerate(rows):
        ours = [i for i, f in enumerate(evals) if f["example_index"] == q]
        assert len(ours) > 60  # ~230 new context tokens a window
        if not row["answers"]:
            assert all(train[i]["start_positions"] == 0 for i in ours)
            continue
        gold = row["answers"][0]
        a_start, a_end = gold["answer_start"], gold["answer_start"] + len(gold["text"])
        holding = [
            k
            for k, i in enumerate(ours)
            if _context_span(evals[i]["offset_mapping"])[0] <= a_start
            and a_end <= _context_span(evals[i]["offset_mapping"])[1]
        ]
        labelled = [k for k, i in enumerate(ours) if train[i]["start_positions"] > 0]
        assert labelled == holding and labelled  # labelled exactly where it is whole
        for k in labelled:
            offsets, f = evals[ours[k]]["offset_mapping"], train[ours[k]]
            assert (
                context[offsets[f["start_positions"]][0] : offsets[f["end_positions"]][1]]
                == (gold["text"])
            )
    late = [i for i, f in enumerate(evals) if f["example_index"] == 2]
    late_labelled = [k for k, i in enumerate(late) if train[i]["start_positions"] > 0]
    assert min(late_labelled) >= 0.9 * len(late)  # the 97% answer: in the last windows only


def _pointing_logits(train: list[dict], target: dict[int, int]) -> tuple[list, list]:
    """Logits of every window: the null score 0 everywhere, -5 elsewhere, and in window
    ``target[q]`` of question q a span of 6 + 6 on its labelled answer tokens."""
    starts, ends = [], []
    for i, f in enumerate(train):
        s, e = np.full(len(f["input_ids"]), -5.0), np.full(len(f["input_ids"]), -5.0)
        s[0] = e[0] = 0.0
        if i in target.values():
            s[f["start_positions"]], e[f["end_positions"]] = 6.0, 6.0
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_streamed_scoring_reads_the_answer_off_the_last_window_that_holds_it(
    rows, windows, monkeypatch
):
    train, evals = windows
    # each answered question: only the last window holding its answer points at it
    target = {
        q: max(
            i
            for i, f in enumerate(train)
            if evals[i]["example_index"] == q and f["start_positions"]
        )
        for q, row in enumerate(rows)
        if row["answers"]
    }
    starts, ends = _pointing_logits(train, target)
    first_of = {q: min(i for i, f in enumerate(evals) if f["example_index"] == q) for q in target}
    assert all(target[q] - first_of[q] > 0 for q in target)  # never the question's first window

    def fake_logits(model, chunk, batch_size, pad):  # the logits above, read by window number
        return [starts[w["window"]] for w in chunk], [ends[w["window"]] for w in chunk]

    monkeypatch.setattr(scoring, "predict_logits", fake_logits)
    monkeypatch.setattr(scoring, "CHUNK_WINDOWS", 50)  # a chunk per question: offsets re-based
    split = Dataset.from_list([f | {"window": i} for i, f in enumerate(evals)])
    decisions, _ = scoring.span_decisions_timed(None, split, rows, DECODE, 8, 0)
    assert len(decisions) == len(rows)
    for q, (row, d) in enumerate(zip(rows, decisions)):
        if not row["answers"]:
            assert d.answer(0.0) == ""  # nothing beats the null score: abstains
            continue
        gold = row["answers"][0]
        assert (d.best_text, d.start) == (gold["text"], gold["answer_start"])
        assert row["context"][d.start : d.end] == gold["text"] == d.answer(0.0)
        assert d.margin == pytest.approx(12.0)
        first_end = _context_span(evals[first_of[q]]["offset_mapping"])[1]
        assert q == 0 or d.start > first_end  # middle and late: past the first window's text

    # the check has teeth: offsets of the late window shifted by a few characters misplace the span
    late = target[2]
    shifted = [
        f
        | {"offset_mapping": [[a + 7, b + 7] if a >= 0 else [a, b] for a, b in f["offset_mapping"]]}
        if i == late
        else f
        for i, f in enumerate(evals)
    ]
    (wrong,) = decode_best_spans(
        [f | {"example_index": 0} for f in shifted if f["example_index"] == 2],
        [starts[i] for i, f in enumerate(evals) if f["example_index"] == 2],
        [ends[i] for i, f in enumerate(evals) if f["example_index"] == 2],
        [rows[2]["context"]],
        DECODE,
        [rows[2]["question"]],
    )
    assert wrong.best_text != rows[2]["answers"][0]["text"]


def test_a_tiny_model_scores_the_long_article_streamed(
    rows, windows, tiny_model_dir, packaged_tokenizer, monkeypatch
):
    """The real forward pass over every window, streamed in chunks: one decision per question,
    each span read off the context at its offsets."""
    _, evals = windows
    monkeypatch.setattr(scoring, "CHUNK_WINDOWS", 64)
    model = load_qa_model(str(tiny_model_dir))
    decisions, seconds = scoring.span_decisions_timed(
        model, Dataset.from_list(evals), rows, DECODE, 32, pad_id(packaged_tokenizer)
    )
    assert seconds > 0 and len(decisions) == len(rows)
    context = rows[0]["context"]
    for d in decisions:
        assert 0 <= d.start < d.end <= len(context) and d.best_text == context[d.start : d.end]
