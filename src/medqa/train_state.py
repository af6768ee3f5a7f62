"""Resumable training state: which checkpoints in ``models/train_state`` may be resumed, and the
fingerprint that proves they belong to the very same training.

The fingerprint covers everything that changes the weights (every source file the stage runs, its
params, the base model's weights, the features, the data, library versions, world size, device and
precision); state of any other training is discarded. A checkpoint the Trainer was still writing
when the process died is ignored and removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import transformers
from mlflow.exceptions import MlflowException
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from medqa.config import Params, as_dict
from medqa.device import (
    DeviceInfo,
)
from medqa.provenance import sources_digest, stage_sources

log = logging.getLogger(__name__)


STATE_FILE = (
    "state.json"  # in the train-state folder: whose checkpoints these are, and their MLflow run
)


CURVE_FILE = "curve.json"  # in the train-state folder: the per-epoch records so far


@dataclass
class EpochRecord:
    """One point of the training curve."""

    epoch: int
    train_loss: float
    dev_f1: float | None  # None for the last epoch: the evaluate stage fills it in
    dev_em: float | None


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's initial parameters and buffers (the base model's weights, whatever their
    source: packaged, local folder or hub cache; the new QA head is seeded, so it hashes the
    same)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0" + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def training_fingerprint(
    params: Params,
    features_md5: str,
    data_md5: dict[str, str],
    base_weights: str,
    device: DeviceInfo,
    precision: str,
) -> str:
    """Everything that changes the trained weights: a checkpoint resumes only on a match."""
    parts = {
        "train": as_dict(params.train),
        "tokenize": as_dict(params.tokenize),
        "base_model": params.base_model,
        "base_weights": base_weights,
        "features": features_md5,
        **data_md5,
        "code": sources_digest(stage_sources("train")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "device": [device.backend, device.name, device.arch],
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint``: it writes trainer_state.json last, after
    the weights, optimizer, scheduler and RNG state, so a parseable one marks a whole checkpoint."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(checkpoint.glob("*.safetensors")) and (checkpoint / "optimizer.pt").exists()


def last_complete_checkpoint(state_dir: Path) -> str | None:
    """The newest complete checkpoint in ``state_dir``; incomplete ones (killed mid-save) go."""
    found = sorted(
        (
            p
            for p in Path(state_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()
        ),
        key=lambda p: int(p.name.rsplit("-", 1)[-1]),
    )
    complete = []
    for ckpt in found:
        if is_complete(ckpt):
            complete.append(ckpt)
        else:
            log.warning(
                "removing incomplete checkpoint %s (the run writing it was interrupted)", ckpt
            )
            shutil.rmtree(ckpt, ignore_errors=True)
    return str(complete[-1]) if complete else None


def resumable_checkpoint(state_dir: Path, fingerprint: str) -> tuple[str | None, dict[str, Any]]:
    """The last complete checkpoint in ``state_dir`` if it was written by the same training.

    Returns (checkpoint path or None, the saved state record). A folder left by another
    configuration is emptied, so its checkpoints can never be mixed into this run.
    """
    state_file = state_dir / STATE_FILE
    try:
        saved = json.loads(state_file.read_text()) if state_file.exists() else {}
    except ValueError:
        saved = {}
    if saved.get("fingerprint") == fingerprint:
        return last_complete_checkpoint(state_dir), saved
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return None, {}


def checkpoint_progress(checkpoint: str | None) -> tuple[float, int]:
    """(epochs done, optimizer steps done) of a Trainer checkpoint; (0, 0) when starting fresh."""
    if checkpoint is None:
        return 0.0, 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return float(state.get("epoch") or 0), int(state["global_step"])


def curve_so_far(state_dir: Path, resume_from: str | None) -> list[EpochRecord]:
    """The curve of the run being resumed, up to its checkpoint and not past it; [] when fresh."""
    curve = state_dir / CURVE_FILE
    if not resume_from or not curve.exists():
        return []
    epochs_before, _ = checkpoint_progress(resume_from)
    return [EpochRecord(**r) for r in json.loads(curve.read_text()) if r["epoch"] <= epochs_before]


def start_or_resume_run(saved: dict[str, Any]) -> tuple[Any, bool]:
    """Continue the interrupted run's MLflow run when it still exists, else start a new one.

    Returns (run, whether it is new): a new run gets the params, even when training resumes (the
    store may have been removed since the interruption).
    """
    run_id = saved.get("mlflow_run_id")
    if run_id:
        try:
            return mlflow.start_run(run_id=run_id), False
        except MlflowException:
            pass
    return mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}"), True
