"""MLflow set-up: a local SQLite store and artifact folder under ``mlruns/`` unless
``MLFLOW_TRACKING_URI`` says otherwise. One run per training; evaluate and register reopen it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Collection
from pathlib import Path

import mlflow

EXPERIMENT = "medqa"


def configure_tracking(root: Path | None = None) -> str:
    """Point MLflow at ``<root>/mlruns`` (default: the current folder) and return the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    root = Path(root or Path.cwd()).resolve()
    if not uri:
        (root / "mlruns").mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (root / "mlruns" / "artifacts").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def git_commit() -> str:
    """The current git commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_md5(path: Path) -> str:
    """MD5 of a file: the same hash DVC records for a single-file output."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(folder: Path, exclude: Collection[str] = ()) -> str:
    """SHA-256 over every file under ``folder`` (relative name and MD5), skipping files named in
    ``exclude``: equal digests mean equal contents (tokenized features, a checkpoint)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name not in exclude):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_md5(path).encode())
    return h.hexdigest()
