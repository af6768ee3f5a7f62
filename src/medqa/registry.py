"""The register stage: log the model to MLflow as a pyfunc, register a version, and move the
``champion`` alias only when the new version passes the gate (:mod:`medqa.champion`). Every
decision and its reason go to reports/registration.json and onto the model version.

Registration is idempotent: a checkpoint already registered (same weights, tokenizer and decoding
settings, by content hash) is never logged again; a rerun caused by a gate-only change (say
``register.min_f1``) re-decides the alias for the existing version and says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from medqa.champion import current_champion, finite_or_none, gate, tag_value
from medqa.config import RegisterParams
from medqa.contracts import (
    DECODING_FILE,
    INFERENCE_CONFIG,
    MODEL_CARD,
    REGISTRATION_REPORT,
    RELIABILITY_PLOT,
    RISK_COVERAGE_PLOT,
    TRAIN_CURVE,
    DecodingSettings,
)
from medqa.envlock import lock_digest
from medqa.errors import ModelError
from medqa.fileio import read_jsonl, strict_json, write_json_atomic, write_text_atomic
from medqa.modelcard import model_card
from medqa.modelsource import load_model_config, usable_positions
from medqa.reports import figure
from medqa.tracking import (
    configure_tracking,
    file_md5,
    folder_digest,
    git_commit,
    run_link,
    shareable_uri,
)

PACKAGE_DIR = Path(__file__).resolve().parent


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
    outputs=Schema(
        [
            ColSpec("string", "answer"),
            ColSpec("double", "score"),
            ColSpec("double", "confidence", required=False),  # null: no calibrator recorded
            ColSpec("long", "start"),
            ColSpec("long", "end"),
            ColSpec("boolean", "abstained"),
            ColSpec("string", "reason", required=False),  # why it abstained; null when it answers
        ]
    ),
    # a request's own answer policy (null: the version's); medqa.contracts.REQUEST_PARAMS
    params=ParamSchema([ParamSpec("min_confidence", "double", None)]),
)


INPUT_EXAMPLE = pd.DataFrame(
    [
        {
            "question": "Which supplement formula is advised for intermediate AMD?",
            "context": "For intermediate AMD, the AREDS2 formula of vitamins, zinc, copper, lutein "
            "and zeaxanthin lowers the risk of progression to late disease.",
        }
    ]
)


def lineage_tags(client: MlflowClient, run_id: str, tracking_uri: str) -> dict[str, str]:
    """Where a version came from, read off its training run: code, data, params, device, run link."""
    run = client.get_run(run_id)
    tags = run.data.tags
    device = ", ".join(
        v
        for v in (
            tags.get("backend"),
            tags.get("device_name"),
            tags.get("device_arch"),
            tags.get("precision"),
        )
        if v
    )
    return {
        "git_commit": tags.get("git_commit") or git_commit(),
        "env_lock_sha256": tags.get("env_lock_sha256") or lock_digest(),
        "data_md5_train": tags.get("data_md5_train", "unknown"),
        "data_md5_dev": tags.get("data_md5_dev", "unknown"),
        "params": json.dumps(run.data.params, sort_keys=True, separators=(",", ":")),
        "device": device or "unknown",
        "tracking_uri": shareable_uri(tracking_uri),
        "run_link": run_link(tracking_uri, run.info.experiment_id, run_id),
    } | {k: v for k, v in tags.items() if k.startswith("dvc_experiment")}


def checkpoint_hash(model_dir: Path, decoding: DecodingSettings) -> str:
    """SHA-256 of what serving depends on: every file of the checkpoint except the run's own records
    (medqa.json, train_curve.json: timings differ between identical trainings) and the decoding
    settings. Equal hashes mean the same answers for every question."""
    files = folder_digest(model_dir, exclude=(INFERENCE_CONFIG, TRAIN_CURVE))
    settings = json.dumps(decoding.to_json(), sort_keys=True)
    return hashlib.sha256(files.encode() + settings.encode()).hexdigest()


def _version_with_hash(client: MlflowClient, name: str, content_hash: str) -> str | None:
    """The version of ``name`` already holding this checkpoint, or None."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next(
        (str(mv.version) for mv in versions if mv.tags.get("content_hash") == content_hash), None
    )


def _log_version(model_dir: Path, decoding_path: Path, run_id: str, model_name: str) -> str:
    """Log the checkpoint as a pyfunc into the training run and register it; return the version."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "model_dir"
        shutil.copytree(model_dir, bundle)
        shutil.copy(decoding_path, bundle / DECODING_FILE)
        try:
            MlflowClient().get_run(run_id)
        except MlflowException as e:
            raise ModelError(
                f"training run {run_id} is not in the MLflow store ({e.message.splitlines()[0]}); "
                "was mlruns/ removed? Retrain with `dvc repro -f train`"
            ) from None
        # Model.log with the run id, not pyfunc.log_model inside start_run(run_id): reopening the
        # finished training run would move its end time, and its duration, to now
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(PACKAGE_DIR / "qa_model.py"),
            artifacts={"model_dir": str(bundle)},
            code_paths=[str(PACKAGE_DIR)],
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=["torch", "transformers>=5", "pandas", "mlflow>=3"],
        )
    return _create_version(model_name, info.model_uri, info.model_id, run_id)


def _create_version(model_name: str, source: str, model_id: str | None, run_id: str) -> str:
    """Register the logged model as a new version of ``model_name`` (created on first use).

    The client calls, not ``registered_model_name=`` on the log: that path prints "Successfully
    registered model ..." to stderr itself, which ``medqa -q`` cannot silence; the stage says what
    it registered in its own words.
    """
    client = MlflowClient()
    try:
        client.create_registered_model(model_name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return str(client.create_model_version(model_name, source, run_id, model_id=model_id).version)


@dataclass(frozen=True)
class Candidate:
    """What the register stage reads: the checkpoint, its evaluate reports and the test rows."""

    model_dir: Path
    config: dict[str, Any]  # the checkpoint's medqa.json
    metrics: dict[str, Any]
    decoding: DecodingSettings
    decoding_path: Path
    rows: list[dict[str, Any]]
    test_md5: str
    reports_dir: Path  # where evaluate left its reports and plots

    @property
    def calibration(self) -> dict[str, Any]:
        return dict(self.metrics.get("calibration") or {})

    @property
    def run_id(self) -> str:
        return str(self.config["run_id"])


def _read_candidate(
    model_dir: Path, metrics_path: Path, decoding_path: Path, test_path: Path
) -> Candidate:
    """The candidate's records, refusing metrics scored on another test set than ``test_path``."""
    model_dir = Path(model_dir)
    metrics = json.loads(Path(metrics_path).read_text())
    try:
        decoding = DecodingSettings.from_json(json.loads(Path(decoding_path).read_text()))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{decoding_path}: cannot read decoding settings ({e})") from None
    rows, test_md5 = read_jsonl(Path(test_path)), file_md5(Path(test_path))
    if metrics.get("test_md5") not in (None, test_md5):
        raise ModelError(
            f"{metrics_path}: scored on another test set than {test_path}; rerun `dvc repro evaluate`"
        )
    config = json.loads((model_dir / INFERENCE_CONFIG).read_text())
    return Candidate(
        model_dir,
        config,
        metrics,
        decoding,
        Path(decoding_path),
        rows,
        test_md5,
        Path(metrics_path).parent,
    )


def _version_tags(c: Candidate, content_hash: str) -> dict[str, str]:
    """The figures a new version is tagged with, readable in the registry without its weights."""
    f1, em = finite_or_none(c.metrics.get("f1")), finite_or_none(c.metrics.get("exact"))
    best = c.metrics["best_baseline"]
    # the longest window its positions take: predict and serve refuse windows past the limit
    # when they load it (predictor.load_saved_model)
    positions = usable_positions(load_model_config(str(c.model_dir)))
    return {
        "max_seq_length": str(c.decoding.max_seq_length),
        "usable_positions": str(positions) if positions is not None else "unlimited",
        "test_f1": tag_value(f1),
        "test_em": tag_value(em),
        "test_n": str(len(c.rows)),
        "test_md5": c.test_md5,
        "content_hash": content_hash,
        "backend": c.config.get("backend", ""),
        "base_model": c.config.get("base_model", ""),
        "run_id": c.run_id,
        "best_baseline_f1": tag_value(c.metrics["baselines_f1"][best]),
        # test F1 was measured at this precision, and predict/serve run the version at it
        "precision": c.decoding.precision or "fp32",
        # what ran the test pass; `medqa serve` runs the version on it (medqa.engine)
        "engine": c.decoding.engine or "eager",
        # how far its confidence holds on test, and the answer policy predict and serve apply
        "test_ece": tag_value(finite_or_none(c.calibration.get("ece"))),
        "test_aurc": tag_value(finite_or_none(c.calibration.get("aurc"))),
        "answer_policy_min_confidence": tag_value(
            finite_or_none(c.calibration.get("policy_min_confidence"))
        ),
        "answer_policy_test_coverage": tag_value(
            finite_or_none(c.calibration.get("policy_coverage"))
        ),
    }


def _new_version(
    client: MlflowClient, c: Candidate, name: str, content_hash: str, tracking_uri: str
) -> str:
    """Log and register the candidate as a new version of ``name``, tagged and described; it
    becomes ``@candidate`` whatever the gate decides."""
    version = _log_version(c.model_dir, c.decoding_path, c.run_id, name)
    tags = _version_tags(c, content_hash) | lineage_tags(client, c.run_id, tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    f1, em = finite_or_none(c.metrics.get("f1")), finite_or_none(c.metrics.get("exact"))
    best = c.metrics["best_baseline"]
    client.update_model_version(
        name,
        version,
        description=(
            "Extractive QA for AMD clinical text (research use, not medical advice). "
            f"Test F1 {figure(f1)}, EM {figure(em)} on {len(c.rows)} questions; best baseline "
            f"{best} F1 {figure(c.metrics['baselines_f1'][best])}. Run {c.run_id}."
        ),
    )
    client.set_registered_model_alias(name, "candidate", version)
    return version


def register_model(
    model_dir: Path,
    metrics_path: Path,
    decoding_path: Path,
    test_path: Path,
    out_path: Path,
    params: RegisterParams,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Register the checkpoint (once per content hash), tag it with its figures, apply the gate on
    the test rows of ``test_path``, write the decision."""
    c = _read_candidate(model_dir, metrics_path, decoding_path, test_path)
    f1 = finite_or_none(c.metrics.get("f1"))
    tracking_uri = configure_tracking()
    client = MlflowClient()
    content_hash = checkpoint_hash(c.model_dir, c.decoding)
    version = _version_with_hash(client, params.model_name, content_hash)
    reused = version is not None
    if version is None:
        version = _new_version(client, c, params.model_name, content_hash, tracking_uri)
    refusal = clinical_refusal(c.calibration, params)
    decision = (
        gate(client, params.model_name, version, f1, c.rows, c.test_md5, params.min_f1, batch_size)
        if refusal is None
        else {
            "previous_champion": current_champion(client, params.model_name)[0],
            "previous_champion_f1": None,
            "previous_champion_f1_from": None,
            "promoted": False,
            "reason": refusal,
        }
    )
    if reused:
        decision["reason"] = (
            f"already registered as v{version} (same checkpoint); gate re-decided: {decision['reason']}"
        )
    client.set_model_version_tag(
        params.model_name, version, "gate_promoted", str(decision["promoted"]).lower()
    )
    client.set_model_version_tag(params.model_name, version, "gate_reason", decision["reason"])
    record = {
        "model_name": params.model_name,
        "version": version,
        "new_version": not reused,
        "test_f1": f1,
        "test_n": len(c.rows),
        "test_md5": c.test_md5,
        "min_f1": params.min_f1,
        "run_id": c.run_id,
        "content_hash": content_hash,
        "model_uri": f"models:/{params.model_name}/{version}",
        **decision,
    }
    _record_on_run(client, c.run_id, record, version)
    _publish_card(client, c, params.model_name, version)
    write_json_atomic(Path(out_path), record)
    return record


def clinical_refusal(calibration: dict[str, Any], params: RegisterParams) -> str | None:
    """Why the version may not become champion under ``register.max_ece`` / ``min_coverage``
    (both off when null), or None."""
    ece, coverage = calibration.get("ece"), calibration.get("policy_coverage")
    if params.max_ece is not None and (ece is None or not ece <= params.max_ece):
        return f"test ECE {figure(ece, '.3f')} is above register.max_ece {params.max_ece:.3f}"
    if params.min_coverage is not None and (
        coverage is None or not coverage >= params.min_coverage
    ):
        return (
            f"the answer policy answers {figure(coverage, '.3f')} of test questions, below "
            f"register.min_coverage {params.min_coverage:.3f}"
        )
    return None


def _publish_card(client: MlflowClient, c: Candidate, name: str, version: str) -> None:
    """The version's model card and plots: beside the reports, as artifacts of the training run
    (``model_card/v<version>/``), and named by the version's ``model_card`` tag."""
    card = model_card(name, version, c.metrics, client.get_model_version(name, version).tags)
    write_text_atomic(c.reports_dir / MODEL_CARD, card)
    folder = f"model_card/v{version}"
    try:
        client.log_text(c.run_id, card, f"{folder}/{MODEL_CARD}")
        for plot in (RELIABILITY_PLOT, RISK_COVERAGE_PLOT):
            if (c.reports_dir / plot).exists():
                client.log_artifact(c.run_id, str(c.reports_dir / plot), folder)
    except MlflowException:
        return  # a reused version whose training run was removed: the card stays in reports/
    client.set_model_version_tag(
        name, version, "model_card", f"runs:/{c.run_id}/{folder}/{MODEL_CARD}"
    )


def _record_on_run(client: MlflowClient, run_id: str, record: dict[str, Any], version: str) -> None:
    """The decision as an artifact and tag of the training run (which stays closed)."""
    try:
        client.log_dict(run_id, strict_json(record), REGISTRATION_REPORT)
        client.set_tag(run_id, "registered_version", version)
    except MlflowException:
        pass  # a reused version whose training run was removed: the registry already holds the record
