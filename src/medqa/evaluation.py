"""The evaluate stage: decode the fine-tuned model's answers, score them the SQuAD v2 way, and put
them beside baselines measured in the same run on the same split.

The abstention threshold is tuned on dev and applied unchanged on test; it is written to
``reports/decoding.json`` and travels with the registered model so predictions match evaluation.

Baselines: a lexical window matcher and the untrained base model are the floor the model must beat
(``best_baseline``, ``lead_over_best_baseline``). The stage reads nothing but its dvc.yaml deps: the
registry's ``@champion`` is compared with the candidate by the register stage, on the same rows.

``evaluate_model`` is the ad-hoc mode (``medqa evaluate --model ... --split ...``): any saved or
registered model on a validated split or a user's data file, with the model's recorded threshold.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag
from transformers import PreTrainedModel

from medqa.baselines import lexical_answer
from medqa.config import DecodeParams, EvaluateParams, ValidateParams
from medqa.decoding import SpanDecision, predict_logits, tune_null_threshold
from medqa.device import cast_for_autocast, precision_context, to_inference_device
from medqa.errors import DataError
from medqa.fileio import (
    read_jsonl,
    strict_json,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from medqa.metrics import score_question
from medqa.modelsource import load_qa_model, load_tokenizer, pad_id
from medqa.predictor import (
    load_saved_model,
    resolve_inference_precision,
    score_saved_model,
)
from medqa.scoring import f1_of, gold_texts, span_decisions, span_decisions_timed, summarize
from medqa.tracking import configure_tracking, file_md5


def measure_speed(
    model: PreTrainedModel,
    features: Sequence[dict[str, Any]],
    batch_size: int,
    pad_id: int,
    batched_seconds: float,
    n_single: int = 30,
) -> dict[str, float]:
    """Batched questions/s and p50/p95 latency of one question (all of its windows) at a time.

    ``batched_seconds`` is the timed forward over all of ``features`` in batches of ``batch_size``
    (``span_decisions_timed`` on the test split), so throughput costs no extra pass; only the first
    ``n_single`` questions are run again, one at a time, for latency.
    """
    if not features:
        return {}
    by_example: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in features:
        by_example[int(f["example_index"])].append(f)
    qps = len(by_example) / batched_seconds
    singles = []
    for ex in list(by_example.values())[:n_single]:
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


def _load_split(
    features_dir: Path, validated_dir: Path, split: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from datasets import load_from_disk

    rows = read_jsonl(Path(validated_dir) / f"{split}.jsonl")
    path = Path(features_dir) / split
    return (load_from_disk(str(path)).to_list() if rows and path.exists() else []), rows


def _tuned_predictions(
    model: PreTrainedModel,
    dev: tuple,
    test: tuple,
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> tuple[float, list[SpanDecision], float, dict[str, Any]]:
    """Threshold tuned on dev, the test decisions it will be applied to, the test pass's seconds,
    and dev EM/F1 at that threshold (the figure a recipe study selects on)."""
    dev_dec = span_decisions(model, dev[0], dev[1], decode, batch_size, pad_id)
    thr, _ = (
        tune_null_threshold(dev_dec, [gold_texts(r) for r in dev[1]], f1_of)
        if dev_dec
        else (0.0, 0.0)
    )
    dev_scores = summarize([d.answer(thr) for d in dev_dec], dev[1]) if dev_dec else {}
    return (
        thr,
        *span_decisions_timed(model, test[0], test[1], decode, batch_size, pad_id),
        dev_scores,
    )


def _prediction_records(
    rows: Sequence[dict[str, Any]], preds: Sequence[str], decisions: Sequence[SpanDecision]
) -> list[dict[str, Any]]:
    """One predictions.jsonl line per question: the prediction, its score and margin, EM and F1."""
    return [
        {
            "id": r["id"],
            "question": r["question"],
            "question_type": r.get("question_type"),
            "gold_answers": gold_texts(r),
            "prediction": p,
            "score": d.answer_prob if p else 1 - d.answer_prob,
            "margin": d.margin,
            **dict(zip(("exact", "f1"), score_question(p, gold_texts(r)))),
        }
        for r, p, d in zip(rows, preds, decisions)
    ]


def _write_reports(
    reports_dir: Path,
    report: dict[str, Any],
    decoding: dict[str, Any],
    records: list[dict[str, Any]],
    split: str,
) -> None:
    write_jsonl_atomic(reports_dir / "predictions.jsonl", records)
    write_text_atomic(
        reports_dir / "errors.md", error_report(records, report.get("by_type", {}), split=split)
    )
    write_json_atomic(reports_dir / "decoding.json", decoding)
    write_json_atomic(reports_dir / "metrics.json", report)


def completed_curve(model_dir: Path, dev_scores: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The training curve saved with the model, its last epoch's dev EM/F1 filled in from this
    stage's dev pass (training leaves that point to evaluate: the same model on the same split)."""
    path = Path(model_dir) / "train_curve.json"
    if not path.exists():
        return None
    curve = json.loads(path.read_text())
    if curve and curve[-1].get("dev_f1") is None and dev_scores:
        curve[-1] = {**curve[-1], "dev_f1": dev_scores["f1"], "dev_em": dev_scores["exact"]}
    return curve


def evaluate_checkpoint(
    model_dir: Path,
    features_dir: Path,
    validated_dir: Path,
    reports_dir: Path,
    base_model: str,
    params: EvaluateParams,
) -> dict[str, Any]:
    """Score the fine-tuned model on test against the baselines; write metrics, predictions, decoding."""
    from transformers import set_seed

    from medqa.device import keep_freed_memory

    keep_freed_memory()
    model_dir, reports_dir = Path(model_dir), Path(reports_dir)
    config = json.loads((model_dir / "medqa.json").read_text())
    tokenizer = load_tokenizer(str(model_dir))
    pad = pad_id(tokenizer)
    model = to_inference_device(load_qa_model(str(model_dir)))
    # every pass at the precision the model will be served with, so test F1 is the served F1
    precision, precision_reason = resolve_inference_precision(params.precision, model.device)
    cast_for_autocast(model, precision)  # as load_saved_model serves it: the same arithmetic
    dev, test = (
        _load_split(features_dir, validated_dir, "dev"),
        _load_split(features_dir, validated_dir, "test"),
    )
    test_rows = test[1]
    with precision_context(model, precision):
        thr, test_dec, test_seconds, dev_scores = _tuned_predictions(
            model, dev, test, params.decode, params.batch_size, pad
        )
        speed = measure_speed(model, test[0], params.batch_size, pad, test_seconds)
        set_seed(0)  # the untrained QA head is random: fix it so the floor is reproducible
        base_dec = span_decisions(
            to_inference_device(load_qa_model(base_model)),
            test[0],
            test_rows,
            params.decode,
            params.batch_size,
            pad,
        )
    preds = [d.answer(thr) for d in test_dec]
    metrics = summarize(preds, test_rows, params.bootstrap_samples)

    # Baselines on the same split in the same run.
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in test_rows], test_rows)
    # The floor's threshold is tuned on test itself: its best case, so the lead over it is a lower
    # bound (and one dev pass is saved).
    base_thr, _ = (
        tune_null_threshold(base_dec, [gold_texts(r) for r in test_rows], f1_of)
        if base_dec
        else (0.0, 0.0)
    )
    untrained = summarize([d.answer(base_thr) for d in base_dec], test_rows)
    baselines = {"lexical_window": lexical["f1"], "base_model_untrained": untrained["f1"]}
    best_name = max(baselines, key=lambda k: baselines[k])

    report = {
        "split": "test",
        **metrics,
        "dev_f1": dev_scores.get("f1"),
        "dev_exact": dev_scores.get("exact"),
        "null_threshold": thr,
        "baselines_f1": baselines,
        "best_baseline": best_name,
        "lead_over_best_baseline": metrics["f1"] - baselines[best_name],
        "test_md5": file_md5(Path(validated_dir) / "test.jsonl"),
        "speed": speed,
        "speed_device": str(model.device),
        "backend": config.get("backend"),
        "precision": precision,
        "precision_reason": precision_reason,
    }
    decoding = {
        "n_best": params.decode.n_best,
        "max_answer_length": params.decode.max_answer_length,
        "null_threshold": thr,
        "max_seq_length": config["max_seq_length"],
        "doc_stride": config["doc_stride"],
        "precision": precision,
    }
    _write_reports(
        reports_dir, report, decoding, _prediction_records(test_rows, preds, test_dec), "test split"
    )
    curve = completed_curve(model_dir, dev_scores)
    if curve is not None:
        write_json_atomic(reports_dir / "train_curve.json", curve)
    if config.get("run_id"):
        scores = (
            {
                "test_f1": metrics["f1"],
                "test_em": metrics["exact"],
                "test_has_ans_f1": metrics["has_ans_f1"],
                "test_no_ans_f1": metrics["no_ans_f1"],
                "null_threshold": thr,
                "lead_over_best_baseline": report["lead_over_best_baseline"],
            }
            | {f"baseline_f1_{k}": v for k, v in baselines.items()}
            | dict(speed)
        )
        last_dev = (
            ({"dev_f1": dev_scores["f1"], "dev_em": dev_scores["exact"]}, curve[-1]["epoch"])
            if curve and dev_scores
            else None
        )
        _log_to_training_run(config["run_id"], scores, last_dev, precision, report)
    return report


def _log_to_training_run(
    run_id: str,
    scores: dict[str, Any],
    dev: tuple[dict[str, float], int] | None,
    precision: str,
    report: dict[str, Any],
) -> None:
    """Test scores (and the last epoch's dev point) onto the training run through the client,
    without reopening the run: reopening would move its end time, so an 18-minute training would
    show evaluation's minutes as its own."""
    configure_tracking()
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in scores.items() if v is not None]
    if dev is not None:
        metrics += [Metric(k, v, now, dev[1]) for k, v in dev[0].items() if v is not None]
    client = mlflow.MlflowClient()
    client.log_batch(run_id, metrics=metrics, tags=[RunTag("inference_precision", precision)])
    client.log_dict(run_id, strict_json(report), "evaluation/metrics.json")


def load_eval_rows(
    split: str, validated_dir: Path, params: ValidateParams
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and row labels of a validated split (train, dev or test) or of a data file to validate."""
    from medqa.data import SPLITS, validate_eval_file

    if split not in SPLITS:
        return validate_eval_file(Path(split), params)
    path = Path(validated_dir) / f"{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: missing; run the validate stage first (dvc repro validate)")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows to evaluate")
    return rows, [f"{path} line {i + 1}" for i in range(len(rows))]


def _split_label(split: str) -> str:
    """How reports name what was evaluated: "test split", or the data file's path."""
    from medqa.data import SPLITS

    return f"{split} split" if split in SPLITS else split


def default_reports_dir(model: str, split: str, now: datetime | None = None) -> Path:
    """reports/eval-<model>-<split>-<YYYYmmdd-HHMMSS>: a new folder per ad-hoc run, beside (never
    over) the evaluate stage's DVC-tracked reports/metrics.json."""
    if model.startswith("models:/"):
        name = model.removeprefix("models:/").replace("@", "-")
        name = re.sub(r"/(\d+)$", r"-v\1", name)
    else:
        name = Path(model).resolve().name
    split_name = Path(split).stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-{split_name}").strip("-")
    return Path("reports") / f"eval-{slug}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def evaluate_model(
    model: str,
    split: str,
    validated_dir: Path,
    reports_dir: Path,
    validate: ValidateParams,
    params: EvaluateParams,
    decoding_file: Path | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Score a saved model folder or a registered model (models:/name@alias, models:/name/version) on
    a validated split or a user's data file, as the model is served: its own tokenizer, windows,
    decoding and recorded abstention threshold (nothing is re-tuned, so dev is fair game too).

    Writes metrics.json, predictions.jsonl, errors.md and decoding.json (the settings used) to
    ``reports_dir``, with the lexical baseline beside the model; nothing is logged to MLflow.
    """
    rows, labels = load_eval_rows(
        split, validated_dir, validate
    )  # bad data fails before any download
    name = version = None
    with tempfile.TemporaryDirectory(prefix="medqa-eval-") as tmp:
        if model.startswith("models:/"):
            from medqa.registry import fetch_registered_model

            configure_tracking()
            folder, name, version = fetch_registered_model(model, Path(tmp))
        else:
            folder = Path(model)
        saved = load_saved_model(folder, decoding_file, precision=precision)
        threshold_from = (
            f"models:/{name}/{version} (its decoding.json)"
            if version and not decoding_file
            else str(saved.settings_file)
        )
        decisions, features, seconds = score_saved_model(saved, rows, labels, params.batch_size)
        with precision_context(saved.model, saved.precision):
            speed = measure_speed(
                saved.model, features, params.batch_size, pad_id(saved.tokenizer), seconds
            )
    preds = [d.answer(saved.threshold) for d in decisions]
    metrics = summarize(preds, rows, params.bootstrap_samples)
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in rows], rows)
    report = {
        "split": split,
        "model": model,
        "model_version": version,
        **metrics,
        "null_threshold": saved.threshold,
        "threshold_from": threshold_from,
        "baselines_f1": {"lexical_window": lexical["f1"]},
        "best_baseline": "lexical_window",
        "lead_over_best_baseline": metrics["f1"] - lexical["f1"],
        "speed": speed,
        "speed_device": str(saved.model.device),
        "precision": saved.precision,
        "precision_reason": saved.precision_reason,
    }
    decoding = {
        "n_best": saved.decode.n_best,
        "max_answer_length": saved.decode.max_answer_length,
        "null_threshold": saved.threshold,
        "max_seq_length": saved.tokenize.max_seq_length,
        "doc_stride": saved.tokenize.doc_stride,
        "precision": saved.precision,
    }
    _write_reports(
        Path(reports_dir),
        report,
        decoding,
        _prediction_records(rows, preds, decisions),
        _split_label(split),
    )
    return report
