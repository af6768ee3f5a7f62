"""The register stage: log the model to MLflow as a pyfunc, register a version, and move the
``champion`` alias only when the new version passes the gate.

Gate: test F1 >= ``register.min_f1`` and not below the current champion's test F1. Every new version
gets the ``candidate`` alias; every decision is written to reports/registration.json with its reason.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from medqa.atomic import write_json_atomic
from medqa.config import RegisterParams
from medqa.predictor import DECODING_FILE
from medqa.tracking import configure_tracking

PACKAGE_DIR = Path(__file__).resolve().parent
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
    outputs=Schema([ColSpec("string", "answer"), ColSpec("double", "score"), ColSpec("long", "start"),
                    ColSpec("long", "end"), ColSpec("boolean", "abstained")]),
)
INPUT_EXAMPLE = pd.DataFrame([{
    "question": "Which supplement formula is advised for intermediate AMD?",
    "context": "For intermediate AMD, the AREDS2 formula of vitamins, zinc, copper, lutein and zeaxanthin "
               "lowers the risk of progression to late disease.",
}])


def champion_f1(client: MlflowClient, name: str) -> tuple[str | None, float | None]:
    """(version, test F1) of the current champion, or (None, None)."""
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    f1 = mv.tags.get("test_f1")
    return mv.version, float(f1) if f1 is not None else None


def promote_if_better(client: MlflowClient, name: str, version: str, f1: float, min_f1: float) -> dict[str, Any]:
    """Move ``champion`` to ``version`` if it passes the gate; return the decision and its reason."""
    prev_version, prev_f1 = champion_f1(client, name)
    if f1 < min_f1:
        promoted, reason = False, f"test F1 {f1:.4f} is below register.min_f1 {min_f1:.4f}"
    elif prev_f1 is not None and f1 < prev_f1:
        promoted, reason = False, f"test F1 {f1:.4f} is below champion v{prev_version}'s {prev_f1:.4f}"
    else:
        promoted = True
        reason = (f"test F1 {f1:.4f} >= min_f1 {min_f1:.4f}" +
                  (f" and >= champion v{prev_version}'s {prev_f1:.4f}" if prev_f1 is not None else "; no champion yet"))
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
        if prev_version is not None and prev_version != version:
            client.set_model_version_tag(name, version, "previous_champion", prev_version)
    return {"promoted": promoted, "reason": reason, "previous_champion": prev_version,
            "previous_champion_f1": prev_f1}


def register_model(model_dir: Path, metrics_path: Path, decoding_path: Path, out_path: Path,
                   params: RegisterParams) -> dict[str, Any]:
    """Log and register the checkpoint, tag it with its figures, apply the gate, write the decision."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "medqa.json").read_text())
    metrics = json.loads(Path(metrics_path).read_text())
    configure_tracking()
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "model_dir"
        shutil.copytree(model_dir, bundle)
        shutil.copy(decoding_path, bundle / DECODING_FILE)
        with mlflow.start_run(run_id=config["run_id"]) as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PACKAGE_DIR / "qa_model.py"), artifacts={"model_dir": str(bundle)},
                code_paths=[str(PACKAGE_DIR)], signature=SIGNATURE, input_example=INPUT_EXAMPLE,
                registered_model_name=params.model_name,
                pip_requirements=["torch", "transformers>=5", "pandas", "mlflow>=3"],
            )
    version = str(info.registered_model_version)
    f1 = float(metrics["f1"])
    tags = {"test_f1": f"{f1:.6f}", "test_em": f"{metrics['exact']:.6f}", "backend": config.get("backend", ""),
            "base_model": config.get("base_model", ""), "run_id": run.info.run_id,
            "best_baseline_f1": f"{metrics['baselines_f1'][metrics['best_baseline']]:.6f}"}
    for k, v in tags.items():
        client.set_model_version_tag(params.model_name, version, k, v)
    client.update_model_version(params.model_name, version, description=(
        f"Extractive QA for AMD clinical text (research use, not medical advice). Test F1 {f1:.4f}, "
        f"EM {metrics['exact']:.4f}; best baseline {metrics['best_baseline']} F1 "
        f"{metrics['baselines_f1'][metrics['best_baseline']]:.4f}. Run {run.info.run_id}."))
    client.set_registered_model_alias(params.model_name, "candidate", version)
    decision = promote_if_better(client, params.model_name, version, f1, params.min_f1)
    record = {"model_name": params.model_name, "version": version, "test_f1": f1, "min_f1": params.min_f1,
              "run_id": run.info.run_id, "model_uri": f"models:/{params.model_name}/{version}", **decision}
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_dict(record, "registration.json")
        mlflow.set_tag("registered_version", version)
    write_json_atomic(out_path, record)
    return record
