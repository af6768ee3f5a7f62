"""Scoring streams a split's windows in chunks of whole questions (issue "Corpus-scale data"): the
decisions are those of one pass over the whole split, read from Arrow without a list of it."""

from __future__ import annotations

import pyarrow as pa
import pytest
from datasets import Dataset, load_from_disk

from helpers import tiny_squad_slice
from medqa import predictor, scoring
from medqa.config import DecodeParams, TokenizeParams
from medqa.features import build_eval_features
from medqa.modelsource import load_qa_model, load_tokenizer, pad_id
from medqa.predictor import SavedModel, SavedModelWindows, score_saved_model

WINDOWS = TokenizeParams(max_seq_length=64, doc_stride=32)  # several windows per question


@pytest.fixture(scope="module")
def split(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = [
        {"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": []}
        for article in tiny_squad_slice("dev", 2)["data"]
        for p in article["paragraphs"]
        for qa in p["qas"]
    ][:12]
    features = build_eval_features(tokenizer, rows, WINDOWS)
    assert len(features) > 2 * len(rows)  # the windows of a question are several
    return load_qa_model(str(tiny_model_dir)), pad_id(tokenizer), rows, features


def test_chunks_never_split_a_question(split):
    *_, features = split
    chunks = list(scoring.question_chunks(Dataset.from_list(features), chunk_windows=5))
    assert sum(len(c) for c in chunks) == len(features) and len(chunks) > 2
    assert all(len(c) >= 5 for c in chunks[:-1])
    seen = [c[0]["example_index"] for c in chunks[1:]]
    assert all(prev[-1]["example_index"] < first for prev, first in zip(chunks, seen))
    assert len(scoring.first_questions(features, 3)) == 3
    assert scoring.questions_with_windows(Dataset.from_list(features)) == len(
        {f["example_index"] for f in features}
    )


def test_streamed_decisions_are_those_of_one_pass(split, monkeypatch):
    model, pad, rows, features = split
    decode = DecodeParams(n_best=5, max_answer_length=10)
    whole, _ = scoring.span_decisions_timed(model, features, rows, decode, 8, pad)
    monkeypatch.setattr(scoring, "CHUNK_WINDOWS", 7)
    streamed, seconds = scoring.span_decisions_timed(
        model, Dataset.from_list(features), rows, decode, 8, pad
    )
    assert seconds > 0 and len(streamed) == len(rows)
    key = [(d.best_text, d.start, d.end) for d in whole]
    assert [(d.best_text, d.start, d.end) for d in streamed] == key
    assert [d.answer_prob for d in streamed] == pytest.approx([d.answer_prob for d in whole])
    # a question without windows at the end still gets its (empty) decision
    partial, _ = scoring.span_decisions_timed(
        model, [f for f in features if f["example_index"] < len(rows) - 1], rows, decode, 8, pad
    )
    assert len(partial) == len(rows) and partial[-1].best_text == ""


def test_monitor_sample_scores_the_drawn_questions_as_the_whole_split_does(split):
    """A sample for the per-epoch monitor: the same questions for one seed, their windows renumbered
    so that each sampled question gets the decision the whole split gives it."""
    model, pad, rows, features = split
    decode = DecodeParams(n_best=5, max_answer_length=10)
    windows, sampled = scoring.sample_questions(Dataset.from_list(features), rows, 4, seed=7)
    _, again = scoring.sample_questions(features, rows, 4, seed=7)
    assert [r["id"] for r in sampled] == [r["id"] for r in again] and len(sampled) == 4
    assert [r["id"] for r in scoring.sample_questions(features, rows, 4, seed=8)[1]] != [
        r["id"] for r in sampled
    ]
    whole, _ = scoring.span_decisions_timed(model, features, rows, decode, 8, pad)
    by_id = {r["id"]: d for r, d in zip(rows, whole)}
    part, _ = scoring.span_decisions_timed(model, windows, sampled, decode, 8, pad)
    assert [(d.best_text, d.start, d.end) for d in part] == [
        (by_id[r["id"]].best_text, by_id[r["id"]].start, by_id[r["id"]].end) for r in sampled
    ]
    everything, all_rows = scoring.sample_questions(features, rows, None, seed=7)
    assert everything is features and all_rows == rows


def test_ad_hoc_scoring_makes_windows_a_chunk_of_questions_at_a_time(
    split, tiny_model_dir, monkeypatch
):
    """`medqa evaluate --split FILE` tokenizes the file a chunk of questions at a time: the same
    windows, numbered across the file, and the same decisions as one list of all its windows."""
    model, pad, rows, _ = split
    decode = DecodeParams(n_best=5, max_answer_length=10)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    windowing = TokenizeParams(max_seq_length=96, doc_stride=32)  # room for every question
    features = build_eval_features(tokenizer, rows, windowing)
    assert len(features) > len(rows)
    saved = SavedModel(model, tokenizer, windowing, decode, 0.0, tiny_model_dir / "x")
    monkeypatch.setattr(predictor, "WINDOW_CHUNK_QUESTIONS", 5)
    windows = SavedModelWindows(saved, rows)
    assert list(windows) == features and list(windows) == features  # iterable twice
    whole, _ = scoring.span_decisions_timed(model, features, rows, decode, 8, pad)
    chunked, seconds = score_saved_model(saved, rows, [r["id"] for r in rows], 8)
    assert seconds > 0
    assert [(d.best_text, d.start, d.end) for d in chunked] == [
        (d.best_text, d.start, d.end) for d in whole
    ]


def _as_lists(window: dict) -> dict:
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in window.items()}


def test_saved_split_is_read_from_its_files_with_the_same_windows(split, tmp_path, monkeypatch):
    """What evaluate scores: the tokenize stage's split as saved, read batch by batch from its
    Arrow files (token lists as NumPy arrays); a selected split through ``Dataset.iter``. Both give
    the windows as written and the decisions of the in-memory list."""
    model, pad, rows, features = split
    Dataset.from_list(features).save_to_disk(tmp_path / "split")
    saved = load_from_disk(tmp_path / "split")
    opened: list[str] = []
    real_osfile = pa.OSFile
    monkeypatch.setattr(
        "pyarrow.OSFile", lambda name, *a: opened.append(name) or real_osfile(name, *a)
    )
    read = [_as_lists(w) for w in scoring._windows(saved)]
    assert read == features and opened  # from the saved file itself
    opened.clear()
    half = saved.select(range(len(features) // 2))
    assert [_as_lists(w) for w in scoring._windows(half)] == features[: len(features) // 2]
    assert not opened  # a selection is not its files: read through Dataset.iter
    decode = DecodeParams(n_best=5, max_answer_length=10)
    whole, _ = scoring.span_decisions_timed(model, features, rows, decode, 8, pad)
    monkeypatch.setattr(scoring, "CHUNK_WINDOWS", 7)
    from_disk, _ = scoring.span_decisions_timed(model, saved, rows, decode, 8, pad)
    assert [(d.best_text, d.start, d.end) for d in from_disk] == [
        (d.best_text, d.start, d.end) for d in whole
    ]
