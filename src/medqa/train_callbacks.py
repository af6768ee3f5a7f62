"""Trainer callbacks of the train stage: the per-epoch dev monitor (loss and dev EM/F1 to MLflow,
the curve kept on disk for resuming), checkpoints every ``train.save_steps`` steps, and the
Trainer's progress output kept to a terminal's stderr."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
from transformers import (
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from medqa.config import DecodeParams
from medqa.device import (
    precision_context,
)
from medqa.fileio import write_json_atomic
from medqa.scoring import score_split
from medqa.train_state import EpochRecord

log = logging.getLogger(__name__)


class DevF1Monitor(TrainerCallback):
    """Logs each epoch's training loss and dev EM/F1 to MLflow and keeps the curve on disk.

    The Trainer calls on_epoch_end before it logs the epoch's loss, so the dev scores wait in
    ``_pending`` until the loss arrives in on_log. The curve is written to ``curve_path`` after each
    epoch, so a resumed run continues it instead of starting a new one. Dev is scored at the
    training's precision (bf16 autocast scores it in half the time of fp32 on a CPU that has bf16).
    """

    def __init__(
        self,
        dev_features: Any,
        dev_rows: list[dict[str, Any]],
        batch_size: int,
        pad_id: int,
        final_epoch: int,
        precision: str,
        curve_path: Path | None = None,
        history: list[EpochRecord] | None = None,
    ) -> None:
        self.dev_features, self.dev_rows, self.final_epoch = dev_features, dev_rows, final_epoch
        self.batch_size, self.pad_id, self.precision = batch_size, pad_id, precision
        self.curve_path = curve_path
        self.history: list[EpochRecord] = list(history or [])
        self._pending: EpochRecord | None = None

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        epoch = round(state.epoch or 0)
        if epoch >= self.final_epoch:  # the evaluate stage scores the final model on dev
            self._pending = EpochRecord(epoch, float("nan"), None, None)
            return
        with precision_context(model, self.precision):  # the Trainer's autocast ends with forward
            scores = score_split(
                model,
                self.dev_features,
                self.dev_rows,
                DecodeParams(),
                self.batch_size,
                self.pad_id,
            )
        model.train()
        self._pending = EpochRecord(epoch, float("nan"), scores["f1"], scores["exact"])

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._pending is not None and logs and "loss" in logs:
            self._pending.train_loss = float(logs["loss"])
            self._flush()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._pending is not None:
            self._flush()

    def _flush(self) -> None:
        rec, self._pending = self._pending, None
        if rec is None:
            return
        self.history.append(rec)
        dev: dict[str, float] = {}
        if rec.dev_f1 is not None and rec.dev_em is not None:
            dev = {"dev_f1": rec.dev_f1, "dev_em": rec.dev_em}
        mlflow.log_metrics({"train_loss": rec.train_loss} | dev, step=rec.epoch)
        if self.curve_path is not None:
            write_json_atomic(self.curve_path, [asdict(r) for r in self.history])
        scores = (
            f"  dev F1 {rec.dev_f1:.4f}  dev EM {rec.dev_em:.4f}"
            if dev
            else "  (dev: scored by evaluate)"
        )
        log.info("epoch %s: train loss %.4f%s", rec.epoch, rec.train_loss, scores)


class SaveEverySteps(TrainerCallback):
    """Adds a checkpoint every ``steps`` optimizer steps to the Trainer's per-epoch ones."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.steps > 0 and state.global_step % self.steps == 0:
            control.should_save = True


class _BarsWithoutLogs(ProgressCallback):
    """The Trainer's progress bars without the log dicts it writes beside them to stdout."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        return None


def keep_progress_off_stdout(trainer: Trainer) -> None:
    """Only the command's result goes to stdout, so the Trainer's log dicts do not: its printer
    (the Trainer's choice when its bars are off) goes, and its bars (drawn when
    ``contracts.progress_bars_shown``) stay without them. DevF1Monitor logs each epoch's loss."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_BarsWithoutLogs())
