"""The ad-hoc evaluation mode (``medqa evaluate --model ... --split ...``): any saved or registered
model on a validated split or a user's data file, scored as it is served, with the model's recorded
abstention threshold and the lexical baseline beside it.

A data file is held to the validate stage's policy, repairs included (``validate.repair``), so a file
the stage takes whole is scored rather than refused; the repairs made are counted in the metrics and
listed in repairs.jsonl beside them. Nothing is logged to MLflow. The evaluate stage
(``medqa.evaluation``) never imports this module, nor the registry or the data readers it uses.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from medqa.baselines import lexical_answer
from medqa.calibration import calibration_report
from medqa.config import EvaluateParams, ValidateParams
from medqa.contracts import DECODING_FILE, REPAIRS_LOG, DecodingSettings
from medqa.decoding import SpanDecision
from medqa.device import precision_context
from medqa.errors import DataError
from medqa.evalreports import measure_speed, prediction_records, write_reports
from medqa.fileio import read_jsonl, write_jsonl_atomic
from medqa.modelsource import pad_id
from medqa.predictor import (
    SavedModel,
    SavedModelWindows,
    load_saved_model,
    score_saved_model,
)
from medqa.records import SPLITS
from medqa.scoring import summarize
from medqa.tracking import configure_tracking


@dataclass(frozen=True)
class EvalSet:
    """What is scored: the rows, a label per row naming where it came from, and the repairs the
    validate stage's rules made to a data file (none for a validated split: the stage made them)."""

    rows: list[dict[str, Any]]
    labels: list[str]
    repairs: list[dict[str, Any]]


@dataclass(frozen=True)
class ModelRun:
    """A model as served and what it decided on every question of an evaluation set."""

    saved: SavedModel
    version: str | None  # the registry version, for a models:/ URI
    threshold_from: str  # where the abstention threshold was read
    decisions: list[SpanDecision]
    speed: dict[str, float]


def load_eval_rows(split: str, validated_dir: Path, params: ValidateParams) -> EvalSet:
    """A validated split (train, dev or test) as written, or a data file repaired and checked by
    the validate stage's policy (``medqa.validate.validate_eval_file``)."""
    if split not in SPLITS:
        from medqa.validate import validate_eval_file  # pandera: imported only for a data file

        data = validate_eval_file(Path(split), params)
        return EvalSet(data.rows, data.labels, data.repairs)
    path = Path(validated_dir) / f"{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: missing; run the validate stage first (dvc repro validate)")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows to evaluate")
    return EvalSet(rows, [f"{path} line {i + 1}" for i in range(len(rows))], [])


def split_label(split: str) -> str:
    """How reports name what was evaluated: "test split", or the data file's path."""
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


def _run_model(
    model: str,
    data: EvalSet,
    batch_size: int,
    decoding_file: Path | None,
    precision: str | None,
) -> ModelRun:
    """Load ``model`` (a folder, or a registry URI fetched to a temporary folder that is gone once
    scored) as it is served, and decide every question of ``data``, timed."""
    name = version = None
    with tempfile.TemporaryDirectory(prefix="medqa-eval-") as tmp:
        if model.startswith("models:/"):
            from medqa.champion import fetch_registered_model

            configure_tracking()
            folder, name, version = fetch_registered_model(model, Path(tmp))
        else:
            folder = Path(model)
        saved = load_saved_model(folder, decoding_file, precision=precision)
        threshold_from = str(saved.settings_file)
        if version and not decoding_file:  # the download is deleted once scored: name the version
            threshold_from = f"models:/{name}/{version} (its {DECODING_FILE})"
            reason = saved.precision_reason.replace(str(saved.settings_file), threshold_from)
            saved = replace(saved, precision_reason=reason)
        decisions, seconds = score_saved_model(saved, data.rows, data.labels, batch_size)
        with precision_context(saved.model, saved.precision):
            speed = measure_speed(
                saved.model,
                SavedModelWindows(saved, data.rows),
                len(data.rows),  # the tokenizer gives every question at least one window
                batch_size,
                pad_id(saved.tokenizer),
                seconds,
            )
    return ModelRun(saved, version, threshold_from, decisions, speed)


def _report(
    model: str, split: str, data: EvalSet, run: ModelRun, preds: list[str], bootstrap: int
) -> dict[str, Any]:
    """metrics.json: the scores, the lexical baseline on the same rows, the repairs made to a data
    file before scoring, and how the model was run."""
    metrics = summarize(preds, data.rows, bootstrap)
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in data.rows], data.rows)
    return {
        "split": split,
        "model": model,
        "model_version": run.version,
        **metrics,
        "null_threshold": run.saved.threshold,
        "threshold_from": run.threshold_from,
        "baselines_f1": {"lexical_window": lexical["f1"]},
        "best_baseline": "lexical_window",
        "lead_over_best_baseline": metrics["f1"] - lexical["f1"],
        "repairs": len(data.repairs),
        "repairs_by_kind": dict(Counter(r["what"] for r in data.repairs).most_common()),
        "speed": run.speed,
        "speed_device": str(run.saved.model.device),
        "precision": run.saved.precision,
        "precision_reason": run.saved.precision_reason,
    }


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

    Writes metrics.json, predictions.jsonl, errors.md, decoding.json (the settings used) and
    repairs.jsonl to ``reports_dir``, with the lexical baseline beside the model.
    """
    data = load_eval_rows(split, validated_dir, validate)  # bad data fails before any download
    run = _run_model(model, data, params.batch_size, decoding_file, precision)
    saved = run.saved
    preds = [d.answer(saved.threshold) for d in run.decisions]
    report = _report(model, split, data, run, preds, params.bootstrap_samples)
    decoding = DecodingSettings(
        n_best=saved.decode.n_best,
        max_answer_length=saved.decode.max_answer_length,
        null_threshold=saved.threshold,
        max_seq_length=saved.tokenize.max_seq_length,
        doc_stride=saved.tokenize.doc_stride,
        precision=saved.precision,
        calibration=saved.calibrator.to_json() if saved.calibrator else None,
    )
    if saved.calibrator is not None:  # how the recorded confidence holds on this data
        report["calibration"] = calibration_report(
            saved.calibrator, run.decisions, data.rows, saved.threshold, params.bootstrap_samples
        )[0]
    records = prediction_records(data.rows, run.decisions, saved.threshold, saved.calibrator)
    write_jsonl_atomic(Path(reports_dir) / REPAIRS_LOG, data.repairs)
    write_reports(Path(reports_dir), report, decoding, records, split_label(split))
    return report
