"""The register stage: log the model to MLflow as a pyfunc, register a version, and move the
``champion`` alias only when the new version passes the gate.

One gate, on the same rows: the candidate's test F1 (from the evaluate stage) must be a real number
on a non-empty test split, at least ``register.min_f1``, and not below the current champion scored
*now*, as it is served, on the very same test rows (``data/validated/test.jsonl``). A champion that
cannot be scored is compared by its recorded F1 only when it was measured on the same test set
(same content hash); otherwise the gate refuses and says so. Every decision and its reason go to
reports/registration.json and onto the model version.

Registration is idempotent: a checkpoint already registered (same weights, tokenizer and decoding
settings, by content hash) is never logged again; a rerun caused by a gate-only change (say
``register.min_f1``) re-decides the alias for the existing version and says so.

Every move of ``champion`` (the gate, ``medqa promote``, ``medqa rollback``) is appended to the
registered model's ``champion_history`` tag, a JSON list kept in the registry itself so that any
machine with the tracking URI sees the same history and rollback can go back more than one step.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from medqa.config import RegisterParams
from medqa.envlock import lock_digest
from medqa.errors import ModelError, first_line
from medqa.fileio import read_jsonl, strict_json, write_json_atomic
from medqa.modelsource import load_model_config, usable_positions
from medqa.predictor import DECODING_FILE, load_saved_model, score_saved_model
from medqa.reports import figure
from medqa.scoring import summarize
from medqa.tracking import (
    configure_tracking,
    file_md5,
    folder_digest,
    git_commit,
    run_link,
    shareable_uri,
)

HISTORY_TAG = "champion_history"

PACKAGE_DIR = Path(__file__).resolve().parent
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
    outputs=Schema(
        [
            ColSpec("string", "answer"),
            ColSpec("double", "score"),
            ColSpec("long", "start"),
            ColSpec("long", "end"),
            ColSpec("boolean", "abstained"),
        ]
    ),
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


def current_champion(client: MlflowClient, name: str) -> tuple[str | None, float | None]:
    """(version as a string, recorded test F1) of the current champion, or (None, None).

    The SQLite store hands versions back as ints, the register stage as strings: strings throughout.
    """
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    f1 = mv.tags.get("test_f1")
    return str(mv.version), float(f1) if f1 is not None else None


def _real(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (NaN, infinity, missing, text)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _tag(x: float | None) -> str:
    """A figure as a version tag: six decimals, or "nan" (which reads back as not a number)."""
    return f"{x:.6f}" if x is not None else "nan"


def score_champion(
    client: MlflowClient, name: str, version: str, rows: Sequence[dict[str, Any]], batch_size: int
) -> tuple[float | None, str | None]:
    """Test F1 of ``name`` v``version`` on ``rows``, scored as it is served (its own tokenizer, windows,
    decoding and threshold); (None, why) when it cannot be fetched, loaded or scored."""
    uri = f"models:/{name}/{version}"
    try:
        with tempfile.TemporaryDirectory(prefix="medqa-champion-") as tmp:
            folder, _, _ = fetch_registered_model(uri, Path(tmp))
            saved = load_saved_model(folder)
            decisions, _, _ = score_saved_model(
                saved, rows, [f"test row {i + 1}" for i in range(len(rows))], batch_size
            )
    except Exception as e:  # noqa: BLE001 - whatever breaks the old champion is a reason, not a crash
        return None, f"{uri} could not be scored: {first_line(e)}"
    return _real(summarize([d.answer(saved.threshold) for d in decisions], rows)["f1"]), None


def gate(
    client: MlflowClient,
    name: str,
    version: str,
    f1: float | None,
    rows: Sequence[dict[str, Any]],
    test_md5: str,
    min_f1: float,
    batch_size: int,
) -> dict[str, Any]:
    """Decide whether ``version`` (test F1 ``f1`` on ``rows``) becomes ``champion``; move it if so.

    Returns the decision with its reason and what it was compared against.
    """
    prev_version, prev_recorded = current_champion(client, name)
    decision: dict[str, Any] = {
        "previous_champion": prev_version,
        "previous_champion_f1": None,
        "previous_champion_f1_from": None,
    }

    def refuse(reason: str) -> dict[str, Any]:
        return decision | {"promoted": False, "reason": reason}

    if prev_version == version:
        fails = (
            ""
            if f1 is not None and f1 >= min_f1
            else f"; it would not pass the gate now (test F1 {f1} vs register.min_f1 {min_f1}): "
            "`medqa rollback` moves the alias back"
        )
        return decision | {
            "promoted": True,
            "previous_champion_f1": prev_recorded,
            "reason": f"v{version} is already @champion; alias unchanged{fails}",
        }
    if not rows:
        return refuse("the test split is empty: nothing to compare on")
    if f1 is None:
        return refuse("test F1 is not a number")
    if f1 < min_f1:
        return refuse(f"test F1 {f1:.4f} is below register.min_f1 {min_f1:.4f}")
    if prev_version is not None:
        champ_f1, why = score_champion(client, name, prev_version, rows, batch_size)
        source = "scored now on the same test rows"
        if champ_f1 is None:
            champ = client.get_model_version(name, prev_version)
            recorded = _real(champ.tags.get("test_f1"))
            if champ.tags.get("test_md5") != test_md5 or recorded is None:
                return refuse(
                    f"{why}, and its recorded F1 is not from this test set; "
                    f"compare by hand and use `medqa promote {version}`"
                )
            champ_f1, source = recorded, f"its recorded F1 on the same test set ({why})"
        decision |= {"previous_champion_f1": champ_f1, "previous_champion_f1_from": source}
        if f1 < champ_f1:
            return refuse(
                f"test F1 {f1:.4f} is below champion v{prev_version}'s {champ_f1:.4f} ({source})"
            )
        reason = (
            f"test F1 {f1:.4f} >= min_f1 {min_f1:.4f} and >= champion v{prev_version}'s "
            f"{champ_f1:.4f} ({source})"
        )
    else:
        reason = f"test F1 {f1:.4f} >= min_f1 {min_f1:.4f}; no champion yet"
    move_champion(client, name, version, "gate", reason)
    return decision | {"promoted": True, "reason": reason}


def champion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of ``champion``, oldest first."""
    raw = _registered_model(client, name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def move_champion(
    client: MlflowClient, name: str, version: str, action: str, reason: str
) -> dict[str, Any]:
    """Point ``champion`` at ``version`` and append the move to the history; return the event.

    ``action`` is gate, promote or rollback; the version also gets a ``previous_champion`` tag.
    """
    previous, _ = current_champion(client, name)
    history = champion_history(client, name)
    client.set_registered_model_alias(name, "champion", version)
    event = {
        "version": str(version),
        "previous": previous,
        "action": action,
        "reason": reason,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, event]))
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, version, "previous_champion", previous)
    return event


def _registered_model(client: MlflowClient, name: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise ModelError(
            f"no registered model named {name!r} (run the register stage first)"
        ) from None


def _model_version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise ModelError(f"{name} has no version {version!r}") from None


MODEL_DIR_ARTIFACT = (
    "artifacts/model_dir"  # where log_model puts the checkpoint (weights, tokenizer, decoding.json)
)


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
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}/{MODEL_DIR_ARTIFACT}", dst_path=str(dst)
            )
        )
    except MlflowException as e:
        raise ModelError(
            f"{uri}: cannot download v{version} ({e.message.splitlines()[0]})"
        ) from None
    if not (folder / "config.json").exists():
        raise ModelError(
            f"{uri}: v{version} has no {MODEL_DIR_ARTIFACT}/config.json (not a medqa model?)"
        )
    return folder, name, version


def promote(client: MlflowClient, name: str, version: str) -> dict[str, Any] | None:
    """Make ``version`` the champion by hand, bypassing the gate; None when it already is."""
    _registered_model(client, name)
    mv = _model_version(client, name, str(version))
    version, (current, current_f1) = str(mv.version), current_champion(client, name)
    if current == version:
        return None
    f1 = mv.tags.get("test_f1", "unknown")
    was = f"v{current} (test F1 {current_f1})" if current is not None else "no champion"
    return move_champion(
        client, name, version, "promote", f"manual promote: test F1 {f1}, replacing {was}"
    )


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
    current, _ = current_champion(client, name)
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
    for alias, version in _registered_model(
        client, name
    ).aliases.items():  # search results omit aliases
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "test_f1": float(mv.tags["test_f1"]) if "test_f1" in mv.tags else None,
                "test_em": float(mv.tags["test_em"]) if "test_em" in mv.tags else None,
                "created": datetime.fromtimestamp(
                    mv.creation_timestamp / 1000, timezone.utc
                ).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


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


def checkpoint_hash(model_dir: Path, decoding: dict[str, Any]) -> str:
    """SHA-256 of what serving depends on: every file of the checkpoint except the run's own records
    (medqa.json, train_curve.json: timings differ between identical trainings) and the decoding
    settings. Equal hashes mean the same answers for every question."""
    files = folder_digest(model_dir, exclude=("medqa.json", "train_curve.json"))
    return hashlib.sha256(
        files.encode() + json.dumps(decoding, sort_keys=True).encode()
    ).hexdigest()


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
            registered_model_name=model_name,
            pip_requirements=["torch", "transformers>=5", "pandas", "mlflow>=3"],
        )
    return str(info.registered_model_version)


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
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "medqa.json").read_text())
    metrics = json.loads(Path(metrics_path).read_text())
    decoding = json.loads(Path(decoding_path).read_text())
    rows, test_md5 = read_jsonl(Path(test_path)), file_md5(Path(test_path))
    if metrics.get("test_md5") not in (None, test_md5):
        raise ModelError(
            f"{metrics_path}: scored on another test set than {test_path}; rerun `dvc repro evaluate`"
        )
    f1, em = _real(metrics.get("f1")), _real(metrics.get("exact"))
    tracking_uri = configure_tracking()
    client = MlflowClient()
    content_hash = checkpoint_hash(model_dir, decoding)
    version = _version_with_hash(client, params.model_name, content_hash)
    reused = version is not None
    run_id = config["run_id"]
    if version is None:
        version = _log_version(model_dir, decoding_path, run_id, params.model_name)
        best = metrics["best_baseline"]
        # the windows it was evaluated with and the longest its positions take, readable in the
        # registry without downloading the weights (predict and serve refuse windows past the
        # limit when they load it: predictor.load_saved_model)
        positions = usable_positions(load_model_config(str(model_dir)))
        tags = {
            "max_seq_length": str(decoding["max_seq_length"]),
            "usable_positions": str(positions) if positions is not None else "unlimited",
            "test_f1": _tag(f1),
            "test_em": _tag(em),
            "test_n": str(len(rows)),
            "test_md5": test_md5,
            "content_hash": content_hash,
            "backend": config.get("backend", ""),
            "base_model": config.get("base_model", ""),
            "run_id": run_id,
            "best_baseline_f1": _tag(metrics["baselines_f1"][best]),
            # test F1 was measured at this precision, and predict/serve run the version at it
            "precision": decoding.get("precision", "fp32"),
        } | lineage_tags(client, run_id, tracking_uri)
        for k, v in tags.items():
            client.set_model_version_tag(params.model_name, version, k, v)
        client.update_model_version(
            params.model_name,
            version,
            description=(
                "Extractive QA for AMD clinical text (research use, not medical advice). "
                f"Test F1 {figure(f1)}, EM {figure(em)} on {len(rows)} questions; best baseline {best} F1 "
                f"{figure(metrics['baselines_f1'][best])}. Run {run_id}."
            ),
        )
        client.set_registered_model_alias(params.model_name, "candidate", version)
    decision = gate(
        client, params.model_name, version, f1, rows, test_md5, params.min_f1, batch_size
    )
    if reused:
        decision["reason"] = (
            f"already registered as v{version} (same checkpoint); gate re-decided: {decision['reason']}"
        )
    for k, v in (
        ("gate_promoted", str(decision["promoted"]).lower()),
        ("gate_reason", decision["reason"]),
    ):
        client.set_model_version_tag(params.model_name, version, k, v)
    record = {
        "model_name": params.model_name,
        "version": version,
        "new_version": not reused,
        "test_f1": f1,
        "test_n": len(rows),
        "test_md5": test_md5,
        "min_f1": params.min_f1,
        "run_id": run_id,
        "content_hash": content_hash,
        "model_uri": f"models:/{params.model_name}/{version}",
        **decision,
    }
    try:
        client.log_dict(run_id, strict_json(record), "registration.json")  # the run stays closed
        client.set_tag(run_id, "registered_version", version)
    except MlflowException:
        pass  # a reused version whose training run was removed: the registry already holds the record
    write_json_atomic(out_path, record)
    return record
