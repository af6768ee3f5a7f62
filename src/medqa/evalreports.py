"""What an evaluation reports, in either mode (the evaluate stage, ``medqa.evaluation``, and the
ad-hoc mode, ``medqa.adhoc_eval``): speed figures, one line per question, an error report by question
type, the headline figures, and the files they are written to. Shared here so that the stage never
imports the ad-hoc mode.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from medqa.calibration import Calibrator, decide
from medqa.contracts import (
    DECODING_FILE,
    ERRORS_REPORT,
    HEADLINE_METRICS,
    METRICS_REPORT,
    PREDICTIONS_REPORT,
    DecodingSettings,
)
from medqa.decoding import SpanDecision, predict_logits
from medqa.fileio import write_json_atomic, write_jsonl_atomic, write_text_atomic
from medqa.metrics import score_question
from medqa.scoring import first_questions, gold_texts


def measure_speed(
    model: torch.nn.Module,
    features: Iterable[dict[str, Any]],
    questions: int,
    batch_size: int,
    pad_id: int,
    batched_seconds: float,
    n_single: int = 30,
) -> dict[str, float]:
    """Batched questions/s and p50/p95 latency of one question (all of its windows) at a time.

    ``batched_seconds`` is the timed forward over all of ``features`` (the windows of
    ``questions`` questions) in batches of ``batch_size`` (``span_decisions_timed`` on the scored
    split), so throughput costs no extra pass; only the first ``n_single`` questions are run
    again, one at a time, for latency. The caller counts the questions: it knows them without
    reading every window again.
    """
    if not questions:
        return {}
    qps = questions / batched_seconds
    singles = []
    for ex in first_questions(features, n_single):
        t0 = time.perf_counter()
        predict_logits(model, ex, batch_size, pad_id)
        singles.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(singles, n=20) if len(singles) > 1 else singles * 19
    return {
        "questions_per_s": qps,
        "batched_pass_s": batched_seconds,
        "latency_p50_ms": statistics.median(singles),
        "latency_p95_ms": q[18],
    }


def error_report(
    records: Sequence[dict[str, Any]],
    by_type: dict[str, dict[str, float]],
    per_type: int = 3,
    split: str = "test split",
) -> str:
    """Markdown: F1 per question type, worst first, with that type's lowest-scoring questions."""
    lines = [
        f"# Error report ({split})",
        "",
        "| question type | n | EM | F1 |",
        "|---|---|---|---|",
    ]
    worst_types = sorted(by_type.items(), key=lambda kv: kv[1]["f1"])
    lines += [f"| {t} | {v['n']} | {v['exact']:.3f} | {v['f1']:.3f} |" for t, v in worst_types]
    for t, _ in worst_types:
        rows = sorted(
            (r for r in records if (r.get("question_type") or "unlabelled") == t),
            key=lambda r: r["f1"],
        )
        lines += ["", f"## {t}", ""]
        for r in rows[:per_type]:
            gold = " | ".join(r["gold_answers"]) or "(no answer)"
            predicted = r["prediction"] or "(abstained)"
            lines.append(
                f"- F1 {r['f1']:.2f} — {r['question']}  \n  gold: {gold}; predicted: {predicted}"
            )
    return "\n".join(lines) + "\n"


def prediction_records(
    rows: Sequence[dict[str, Any]],
    decisions: Sequence[SpanDecision],
    threshold: float,
    calibrator: Calibrator | None,
) -> list[dict[str, Any]]:
    """One predictions.jsonl line per question: the prediction at the abstention threshold (what
    EM/F1 score), its raw score and margin, and what predict and serve would say under the answer
    policy (the same ``calibration.decide``): the calibrated confidence, the answer or the reason
    it is withheld."""
    records = []
    for r, d in zip(rows, decisions):
        p, served = d.answer(threshold), decide(d, threshold, calibrator)
        records.append(
            {
                "id": r["id"],
                "question": r["question"],
                "question_type": r.get("question_type"),
                "gold_answers": gold_texts(r),
                "prediction": p,
                "score": d.answer_prob if p else 1 - d.answer_prob,
                "margin": d.margin,
                **dict(zip(("exact", "f1"), score_question(p, gold_texts(r)))),
                "confidence": served["confidence"],
                "policy_answer": served["answer"],
                "policy_reason": served["reason"],
            }
        )
    return records


def headline_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader compares first, flat and few, for `dvc metrics show` and `dvc exp show`
    (metrics.json has every figure: per question type, calibration, speed, about a hundred columns
    in those tables). Named as in metrics.json; there best_baseline_f1 is under baselines_f1, and
    ece and the policy's figures under calibration."""
    baselines = report.get("baselines_f1") or {}
    calibration = report.get("calibration") or {}
    figures = {
        "n": report.get("n"),
        "exact": report.get("exact"),
        "f1": report.get("f1"),
        "dev_f1": report.get("dev_f1"),
        "best_baseline_f1": baselines.get(report.get("best_baseline")),
        "lead_over_best_baseline": report.get("lead_over_best_baseline"),
        "ece": calibration.get("ece"),
        "policy_coverage": calibration.get("policy_coverage"),
        "policy_answered_f1": calibration.get("policy_answered_f1"),
    }
    return {k: v for k, v in figures.items() if v is not None}


def write_reports(
    reports_dir: Path,
    report: dict[str, Any],
    decoding: DecodingSettings,
    records: list[dict[str, Any]],
    split: str,
) -> None:
    """The five files of one evaluation: predictions, the error report, the decoding settings the
    answers were read with, the metrics and their headline; each written atomically, never
    half-written."""
    write_jsonl_atomic(reports_dir / PREDICTIONS_REPORT, records)
    write_text_atomic(
        reports_dir / ERRORS_REPORT, error_report(records, report.get("by_type", {}), split=split)
    )
    write_json_atomic(reports_dir / DECODING_FILE, decoding.to_json())
    write_json_atomic(reports_dir / METRICS_REPORT, report)
    write_json_atomic(reports_dir / HEADLINE_METRICS, headline_metrics(report))
