"""The evaluate stage: decode the fine-tuned model's answers, score them the SQuAD v2 way, and put
them beside baselines measured in the same run on the same split.

The abstention threshold is tuned on dev and applied unchanged on test; it is written to
``reports/decoding.json`` and travels with the registered model so predictions match evaluation.

Baselines: a lexical window matcher and the untrained base model are the floor the model must beat
(``best_baseline``, ``lead_over_best_baseline``). The stage reads nothing but its dvc.yaml deps: the
registry's ``@champion`` is compared with the candidate by the register stage, on the same rows.

Any other model on any data (``medqa evaluate --model ... --split ...``) is ``medqa.adhoc_eval``;
what both modes write is ``medqa.evalreports``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag
from transformers import PreTrainedModel

from medqa.baselines import lexical_answer
from medqa.calibration import Calibrator, calibration_report, fit_calibrator, risk_coverage
from medqa.config import DecodeParams, EvaluateParams
from medqa.contracts import (
    INFERENCE_CONFIG,
    METRICS_REPORT,
    RELIABILITY_PLOT,
    RISK_COVERAGE_PLOT,
    TRAIN_CURVE,
    DecodingSettings,
)
from medqa.decoding import SpanDecision, tune_null_threshold
from medqa.device import (
    cast_for_autocast,
    keep_freed_memory,
    precision_context,
    resolve_precision,
    to_inference_device,
)
from medqa.engine import MIN_TRIAL_QUESTIONS, engine_candidate, judge_trial, run_trial
from medqa.evalreports import measure_speed, prediction_records, write_reports
from medqa.fileio import read_jsonl, strict_json, write_json_atomic
from medqa.modelsource import load_qa_model, load_tokenizer, pad_id
from medqa.plots import reliability_png, risk_coverage_png
from medqa.scoring import (
    f1_of,
    gold_texts,
    questions_with_windows,
    span_decisions_timed,
    summarize,
)
from medqa.tracking import configure_tracking, file_md5


@dataclass(frozen=True)
class _Passes:
    """What the stage's passes over dev and test decided, all at the precision it is served at."""

    threshold: float  # tuned on dev
    dev_scores: dict[str, Any]  # dev EM/F1 at that threshold (empty without dev rows)
    dev: list[SpanDecision]  # what the threshold and the calibrator are fitted on
    test: list[SpanDecision]
    untrained: list[SpanDecision]  # the base model, its QA head untrained, on test
    speed: dict[str, float]


def _load_split(
    features_dir: Path, validated_dir: Path, split: str
) -> tuple[Any, list[dict[str, Any]]]:
    """The split's windows (a Dataset, or [] without rows) and its validated rows."""
    from datasets import load_from_disk

    rows = read_jsonl(Path(validated_dir) / f"{split}.jsonl")
    path = Path(features_dir) / split
    # the windows stay in their Arrow files: scoring streams them (``scoring.question_chunks``)
    return (load_from_disk(str(path)) if rows and path.exists() else []), rows


def _load_checkpoint(
    model_dir: Path, params: EvaluateParams
) -> tuple[PreTrainedModel, int, str, str]:
    """The checkpoint on the inference device, its pad id, and the precision (and why) at which it
    will be served; the weights are cast for it."""
    tokenizer = load_tokenizer(str(model_dir))
    model = to_inference_device(load_qa_model(str(model_dir)))
    # every pass at the precision the model will be served with, so test F1 is the served F1
    precision, precision_reason = resolve_precision(
        params.precision, model.device, "evaluate.precision"
    )
    cast_for_autocast(model, precision)  # as load_saved_model serves it: the same arithmetic
    return model, pad_id(tokenizer), precision, precision_reason


def _tuned_predictions(
    model: PreTrainedModel,
    dev: tuple,
    test: tuple,
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> tuple[float, list[SpanDecision], float, dict[str, Any], list[SpanDecision]]:
    """Threshold tuned on dev, the test decisions it will be applied to, the test pass's seconds,
    dev EM/F1 at that threshold (the figure a recipe study selects on) and the dev decisions."""
    dev_dec, _ = span_decisions_timed(model, dev[0], dev[1], decode, batch_size, pad_id)
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
        dev_dec,
    )


def _run_passes(
    model: PreTrainedModel,
    base_model: str,
    dev: tuple,
    test: tuple,
    params: EvaluateParams,
    pad: int,
    precision: str,
) -> _Passes:
    """The model on dev (to tune the threshold) and test (timed, for speed too), and the untrained
    base model on test (the floor)."""
    from transformers import set_seed

    with precision_context(model, precision):
        thr, test_dec, test_seconds, dev_scores, dev_dec = _tuned_predictions(
            model, dev, test, params.decode, params.batch_size, pad
        )
        speed = measure_speed(
            model, test[0], questions_with_windows(test[0]), params.batch_size, pad, test_seconds
        )
        set_seed(0)  # the untrained QA head is random: fix it so the floor is reproducible
        base_dec, _ = span_decisions_timed(
            to_inference_device(load_qa_model(base_model)),
            test[0],
            test[1],
            params.decode,
            params.batch_size,
            pad,
        )
    return _Passes(thr, dev_scores, dev_dec, test_dec, base_dec, speed)


def _served_engine(
    model: PreTrainedModel,
    passes: _Passes,
    test: tuple,
    params: EvaluateParams,
    pad: int,
    precision: str,
) -> tuple[_Passes, dict[str, Any]]:
    """The passes as the version will be served (test decisions and speed from the compiled model
    when compile is chosen, so the registered F1 is the served F1) and the report's engine entries.

    Under auto, compile is timed against the eager test pass and kept only if it was faster with
    the same answers (``medqa.engine.judge_trial``), on a sample first when test is large; a test
    split too small to time stays eager.
    """
    engine, why = engine_candidate(params.engine, model.device.type, precision, "evaluate.engine")
    n = len(test[1])
    if engine == "compile" and params.engine == "auto" and n < MIN_TRIAL_QUESTIONS:
        engine, why = (
            "eager",
            (
                f"auto: {n} test questions are too few to time torch.compile against eager "
                f"(it takes {MIN_TRIAL_QUESTIONS})"
            ),
        )
    if engine == "eager" or not n:
        return passes, {"engine": "eager", "engine_reason": why, "engine_trial": None}
    eager_seconds = passes.speed.get("batched_pass_s", 0.0)
    with precision_context(model, precision):
        compiled, trial, test_dec, seconds = run_trial(
            model,
            test,
            passes.test,
            eager_seconds,
            passes.threshold,
            params.decode,
            params.batch_size,
            pad,
            params.engine,
        )
        engine, why = judge_trial(params.engine, trial)
        if compiled.failed is not None:
            engine, why = "eager", f"torch.compile failed, so eager: {compiled.failed}"
        if engine == "compile":
            speed = measure_speed(
                compiled, test[0], questions_with_windows(test[0]), params.batch_size, pad, seconds
            )
            passes = replace(passes, test=test_dec, speed=speed)
    return passes, {"engine": engine, "engine_reason": why, "engine_trial": trial.to_json()}


def _baseline_f1(
    test_rows: list[dict[str, Any]], untrained: list[SpanDecision]
) -> dict[str, float]:
    """F1 of the floors on the same split in the same run: the lexical window matcher and the
    untrained base model."""
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in test_rows], test_rows)
    # The floor's threshold is tuned on test itself: its best case, so the lead over it is a lower
    # bound (and one dev pass is saved).
    base_thr, _ = (
        tune_null_threshold(untrained, [gold_texts(r) for r in test_rows], f1_of)
        if untrained
        else (0.0, 0.0)
    )
    base = summarize([d.answer(base_thr) for d in untrained], test_rows)
    return {"lexical_window": lexical["f1"], "base_model_untrained": base["f1"]}


def completed_curve(model_dir: Path, dev_scores: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The training curve saved with the model, its last epoch's dev EM/F1 filled in from this
    stage's dev pass (training leaves that point to evaluate: the same model on the same split)."""
    path = Path(model_dir) / TRAIN_CURVE
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
    keep_freed_memory()
    model_dir, reports_dir = Path(model_dir), Path(reports_dir)
    config = json.loads((model_dir / INFERENCE_CONFIG).read_text())
    model, pad, precision, precision_reason = _load_checkpoint(model_dir, params)
    dev, test = (_load_split(features_dir, validated_dir, split) for split in ("dev", "test"))
    passes = _run_passes(model, base_model, dev, test, params, pad, precision)
    passes, engine = _served_engine(model, passes, test, params, pad, precision)
    test_rows = test[1]
    preds = [d.answer(passes.threshold) for d in passes.test]
    metrics = summarize(preds, test_rows, params.bootstrap_samples)
    baselines = _baseline_f1(test_rows, passes.untrained)
    best_name = max(baselines, key=lambda k: baselines[k])
    report = {
        "split": "test",
        **metrics,
        "dev_f1": passes.dev_scores.get("f1"),
        "dev_exact": passes.dev_scores.get("exact"),
        "null_threshold": passes.threshold,
        "baselines_f1": baselines,
        "best_baseline": best_name,
        "lead_over_best_baseline": metrics["f1"] - baselines[best_name],
        "test_md5": file_md5(Path(validated_dir) / "test.jsonl"),
        "speed": passes.speed,
        "speed_device": str(model.device),
        "backend": config.get("backend"),
        "precision": precision,
        "precision_reason": precision_reason,
        **engine,
    }
    cal, selection = fit_calibrator(passes.dev, dev[1], passes.threshold, params.target_f1)
    report["calibration"] = _calibration_reports(
        cal, selection, passes, test_rows, params, reports_dir
    )
    decoding = DecodingSettings(
        n_best=params.decode.n_best,
        max_answer_length=params.decode.max_answer_length,
        null_threshold=passes.threshold,
        max_seq_length=config["max_seq_length"],
        doc_stride=config["doc_stride"],
        precision=precision,
        calibration=cal.to_json(),
        engine=engine["engine"],
    )
    records = prediction_records(test_rows, passes.test, passes.threshold, cal)
    write_reports(reports_dir, report, decoding, records, "test split")
    curve = completed_curve(model_dir, passes.dev_scores)
    if curve is not None:
        write_json_atomic(reports_dir / TRAIN_CURVE, curve)
    if config.get("run_id"):
        _log_scores(config["run_id"], report, passes.dev_scores, curve)
    return report


def _calibration_reports(
    cal: Calibrator,
    selection: list[dict[str, Any]],
    passes: _Passes,
    test_rows: list[dict[str, Any]],
    params: EvaluateParams,
    reports_dir: Path,
) -> dict[str, Any]:
    """How the dev-fitted confidence holds on test, the signals it reads (and the rounds of their
    selection on dev), and its two plots beside the reports."""
    report, curves = calibration_report(
        cal, passes.test, test_rows, passes.threshold, params.bootstrap_samples
    )
    report["signals"] = {"chosen": list(cal.features), "selection": selection}
    reliability_png(
        reports_dir / RELIABILITY_PLOT,
        {"calibrated": curves["confidence"], "raw span score": curves["raw_score"]},
        curves["right"],
    )
    total = len(test_rows)
    risk_coverage_png(
        reports_dir / RISK_COVERAGE_PLOT,
        {
            "calibrated confidence": risk_coverage(curves["confidence"], curves["f1"], total),
            "raw span score": risk_coverage(curves["raw_score"], curves["f1"], total),
        },
    )
    return report


def _log_scores(
    run_id: str,
    report: dict[str, Any],
    dev_scores: dict[str, Any],
    curve: list[dict[str, Any]] | None,
) -> None:
    """The stage's figures as the training run's metrics, the last epoch's dev point at its epoch."""
    scores = (
        {
            "test_f1": report["f1"],
            "test_em": report["exact"],
            "test_has_ans_f1": report["has_ans_f1"],
            "test_no_ans_f1": report["no_ans_f1"],
            "null_threshold": report["null_threshold"],
            "lead_over_best_baseline": report["lead_over_best_baseline"],
        }
        | {f"baseline_f1_{k}": v for k, v in report["baselines_f1"].items()}
        | dict(report["speed"])
    )
    last_dev = (
        ({"dev_f1": dev_scores["f1"], "dev_em": dev_scores["exact"]}, curve[-1]["epoch"])
        if curve and dev_scores
        else None
    )
    _log_to_training_run(run_id, scores, last_dev, report["precision"], report)


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
    tags = [RunTag("inference_precision", precision), RunTag("inference_engine", report["engine"])]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, strict_json(report), f"evaluation/{METRICS_REPORT}")
