"""Scoring a model on a split: decode one answer per question and compute SQuAD v2 EM/F1.

Shared by the train stage's per-epoch dev monitor, the evaluate stage and the register stage's
champion check, so all three score questions the same way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedModel

from medqa.config import DecodeParams
from medqa.decoding import SpanDecision, decode_best_spans, predict_logits, tune_null_threshold
from medqa.metrics import bootstrap_ci, score_question


def gold_texts(row: dict[str, Any]) -> list[str]:
    """Gold answer strings of a validated row ([] when unanswerable)."""
    return [a["text"] for a in row["answers"]]


def span_decisions_timed(
    model: PreTrainedModel,
    features: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> tuple[list[SpanDecision], float]:
    """One SpanDecision per question from the model over a split's windows, and the seconds of its
    batched model forward over all of ``features``.

    The pass is timed where it runs so throughput needs no second pass over the split; decoding is
    left out of the clock, as it was when throughput had a pass of its own. ``predict_logits`` copies
    every batch's logits to the CPU, so on a GPU the clock stops only when the work is done.
    """
    if not rows:
        return [], 0.0
    start = time.perf_counter()
    starts, ends = predict_logits(model, features, batch_size, pad_id)
    seconds = time.perf_counter() - start
    return decode_best_spans(features, starts, ends, [r["context"] for r in rows], decode), seconds


def f1_of(pred: str, golds: Sequence[str]) -> float:
    """SQuAD F1 of one prediction against its gold answers (what threshold tuning maximises)."""
    return score_question(pred, golds)[1]


def score_split(
    model: PreTrainedModel,
    features: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> dict[str, float]:
    """EM/F1 on a split with the threshold tuned on that same split (a monitoring figure)."""
    decisions, _ = span_decisions_timed(model, features, rows, decode, batch_size, pad_id)
    golds = [gold_texts(r) for r in rows]
    thr, _ = tune_null_threshold(decisions, golds, f1_of)
    return summarize([d.answer(thr) for d in decisions], rows)


def summarize(
    predictions: Sequence[str], rows: Sequence[dict[str, Any]], bootstrap_samples: int = 0
) -> dict[str, Any]:
    """EM/F1 overall, on answerable and unanswerable questions, and per question type."""
    per_q = [score_question(p, gold_texts(r)) for p, r in zip(predictions, rows)]

    def mean(idx: list[int], k: int) -> float:
        return float(np.mean([per_q[i][k] for i in idx])) if idx else float("nan")

    all_i = list(range(len(rows)))
    has = [i for i in all_i if rows[i]["answers"]]
    no = [i for i in all_i if not rows[i]["answers"]]
    out: dict[str, Any] = {
        "n": len(rows),
        "exact": mean(all_i, 0),
        "f1": mean(all_i, 1),
        "has_ans_n": len(has),
        "has_ans_f1": mean(has, 1),
        "has_ans_exact": mean(has, 0),
        "no_ans_n": len(no),
        "no_ans_f1": mean(no, 1),
    }
    if bootstrap_samples:
        lo, hi = bootstrap_ci([q[1] for q in per_q], bootstrap_samples)
        out["f1_ci95"] = [lo, hi]
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in all_i:
            by_type[rows[i].get("question_type") or "unlabelled"].append(i)
        out["by_type"] = {
            t: {"n": len(ix), "f1": mean(ix, 1), "exact": mean(ix, 0)}
            for t, ix in sorted(by_type.items())
        }
    return out
