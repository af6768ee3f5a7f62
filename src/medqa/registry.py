"""The register stage: log the model to MLflow as a pyfunc, register a version, and move the
``champion`` alias only when the new version passes the gate.

Gate: test F1 >= ``register.min_f1`` and not below the current champion's test F1. Every new version
gets the ``candidate`` alias; every decision is written to reports/registration.json with its reason.

Every move of ``champion`` (the gate, ``medqa promote``, ``medqa rollback``) is appended to the
registered model's ``champion_history`` tag, a JSON list kept in the registry itself so that any
machine with the tracking URI sees the same history and rollback can go back more than one step.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
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
from medqa.errors import ModelError
from medqa.predictor import DECODING_FILE
from medqa.tracking import configure_tracking, git_commit

HISTORY_TAG = "champion_history"

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
    """(version as a string, test F1) of the current champion, or (None, None).

    The SQLite store hands versions back as ints, the register stage as strings: strings throughout.
    """
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    f1 = mv.tags.get("test_f1")
    return str(mv.version), float(f1) if f1 is not None else None


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
        move_champion(client, name, version, "gate", reason)
    return {"promoted": promoted, "reason": reason, "previous_champion": prev_version,
            "previous_champion_f1": prev_f1}


def champion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of ``champion``, oldest first."""
    raw = _registered_model(client, name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def move_champion(client: MlflowClient, name: str, version: str, action: str, reason: str) -> dict[str, Any]:
    """Point ``champion`` at ``version`` and append the move to the history; return the event.

    ``action`` is gate, promote or rollback; the version also gets a ``previous_champion`` tag.
    """
    previous, _ = champion_f1(client, name)
    history = champion_history(client, name)
    client.set_registered_model_alias(name, "champion", version)
    event = {"version": str(version), "previous": previous, "action": action, "reason": reason,
             "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history + [event]))
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, version, "previous_champion", previous)
    return event


def _registered_model(client: MlflowClient, name: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise ModelError(f"no registered model named {name!r} (run the register stage first)") from None


def _model_version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise ModelError(f"{name} has no version {version!r}") from None


MODEL_DIR_ARTIFACT = "artifacts/model_dir"  # where log_model puts the checkpoint (weights, tokenizer, decoding.json)


def fetch_registered_model(uri: str, dst: Path) -> tuple[Path, str, str]:
    """Download the model folder of ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` into ``dst``.

    Returns (folder, name, version). Only the checkpoint folder is fetched, not the pyfunc's code
    copy: callers load it with the safe loader and its own decoding.json, exactly as it is served.
    Call ``configure_tracking`` first.
    """
    rest = uri.removeprefix("models:/")
    name, sep, ref = rest.partition("@") if "@" in rest else rest.rpartition("/")
    if rest == uri or not name or not ref:
        raise ModelError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    client = MlflowClient()
    registered = _registered_model(client, name)
    if sep == "@":
        if ref not in registered.aliases:
            known = ", ".join(sorted(registered.aliases)) or "none"
            raise ModelError(f"{uri}: {name} has no alias {ref!r} (aliases: {known})")
        version = str(registered.aliases[ref])
    else:
        version = str(_model_version(client, name, ref).version)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}/{MODEL_DIR_ARTIFACT}", dst_path=str(dst)))
    except MlflowException as e:
        raise ModelError(f"{uri}: cannot download v{version} ({e.message.splitlines()[0]})") from None
    if not (folder / "config.json").exists():
        raise ModelError(f"{uri}: v{version} has no {MODEL_DIR_ARTIFACT}/config.json (not a medqa model?)")
    return folder, name, version


def promote(client: MlflowClient, name: str, version: str) -> dict[str, Any] | None:
    """Make ``version`` the champion by hand, bypassing the gate; None when it already is."""
    _registered_model(client, name)
    mv = _model_version(client, name, str(version))
    version, (current, current_f1) = str(mv.version), champion_f1(client, name)
    if current == version:
        return None
    f1 = mv.tags.get("test_f1", "unknown")
    was = f"v{current} (test F1 {current_f1})" if current is not None else "no champion"
    return move_champion(client, name, version, "promote", f"manual promote: test F1 {f1}, replacing {was}")


def _champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """The champions in force, oldest first, after replaying promotions (push) and rollbacks (pop)."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rollback":
            while stack and stack[-1] != event["version"]:
                stack.pop()
            if not stack:
                stack.append(event["version"])
        else:
            stack.append(event["version"])
    return stack


def rollback(client: MlflowClient, name: str) -> dict[str, Any]:
    """Move ``champion`` back to the champion before the current one; repeated calls go further back.

    Versions deleted since they were champion are skipped; a champion set outside medqa counts as the
    latest move.
    """
    current, _ = champion_f1(client, name)
    if current is None:
        raise ModelError(f"{name} has no champion to roll back")
    stack = _champion_stack(champion_history(client, name))
    if not stack or stack[-1] != current:
        stack.append(current)
    existing = {str(mv.version) for mv in client.search_model_versions(f"name='{name}'")}
    for target in reversed(stack[:-1]):
        if target != current and target in existing:
            return move_champion(client, name, target, "rollback", f"rollback from v{current}")
    raise ModelError(f"{name}: no earlier champion to roll back to (history holds only v{current})")


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with its test figures and aliases."""
    aliases: dict[str, list[str]] = {}
    for alias, version in _registered_model(client, name).aliases.items():  # search results omit aliases
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                     "test_f1": float(mv.tags["test_f1"]) if "test_f1" in mv.tags else None,
                     "test_em": float(mv.tags["test_em"]) if "test_em" in mv.tags else None,
                     "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
                     .isoformat(timespec="seconds"),
                     "run_id": mv.run_id})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def lineage_tags(client: MlflowClient, run_id: str, tracking_uri: str) -> dict[str, str]:
    """Where a version came from, read off its training run: code, data, params, device, run link."""
    run = client.get_run(run_id)
    tags = run.data.tags
    device = ", ".join(v for v in (tags.get("backend"), tags.get("device_name"), tags.get("device_arch"),
                                   tags.get("precision")) if v)
    return {"git_commit": tags.get("git_commit") or git_commit(),
            "data_md5_train": tags.get("data_md5_train", "unknown"),
            "data_md5_dev": tags.get("data_md5_dev", "unknown"),
            "params": json.dumps(run.data.params, sort_keys=True, separators=(",", ":")),
            "device": device or "unknown",
            "tracking_uri": tracking_uri,
            "run_link": f"{tracking_uri}#/experiments/{run.info.experiment_id}/runs/{run_id}"}


def register_model(model_dir: Path, metrics_path: Path, decoding_path: Path, out_path: Path,
                   params: RegisterParams) -> dict[str, Any]:
    """Log and register the checkpoint, tag it with its figures, apply the gate, write the decision."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "medqa.json").read_text())
    metrics = json.loads(Path(metrics_path).read_text())
    tracking_uri = configure_tracking()
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
            "best_baseline_f1": f"{metrics['baselines_f1'][metrics['best_baseline']]:.6f}"} | \
        lineage_tags(client, run.info.run_id, tracking_uri)
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
