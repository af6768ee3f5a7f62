"""The train stage: fine-tune a BERT-family model for extractive QA with the transformers Trainer.

Batches are padded only as far as their longest window (dynamic padding) and grouped by length,
which on CPU is most of the speed. After each epoch the dev F1 is measured with the default
decoding settings (a monitor only: the evaluate stage computes the reported figures). The last
epoch's dev figures are left to the evaluate stage, which scores the final model on dev anyway (to
tune the abstention threshold) and completes the curve: one dev pass fewer per pipeline run.

Training state (weights, optimizer, scheduler, RNG, curve so far) is checkpointed every epoch and
every ``train.save_steps`` steps into ``models/train_state``. A rerun after a crash or a kill resumes
from the last complete checkpoint and reaches the same final weights as an uninterrupted run. Only
provably the same training is resumed: the fingerprint covers everything that changes the weights
(every source file the stage runs, its params, the base model's weights, the features, the data,
library versions, world size, device and precision); state of any other training is discarded.
A checkpoint the Trainer was still writing when the process died is ignored and removed. A finished
training deletes its state, so a completed state never stands in for training (``dvc repro -f
train`` trains from scratch). One trainer per state folder: a lock beside it refuses a second one,
and a trainer dies with the process that started it (a killed ``dvc`` leaves no orphan training).

Under ``torchrun --nproc_per_node N`` the same code trains with DDP (RCCL on ROCm, NCCL on CUDA,
gloo on CPU); ``train.batch_size`` stays the global batch, and only rank 0 writes files and logs.
After a resume, the loss logged for the interrupted epoch averages only the steps run after it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import transformers
from datasets import load_from_disk
from mlflow.exceptions import MlflowException
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from medqa.atomic import atomic_dir, read_jsonl, write_json_atomic
from medqa.config import DecodeParams, Params, as_dict
from medqa.device import DeviceInfo, detect_device, explain_precision, keep_freed_memory
from medqa.modelsource import load_qa_model, load_tokenizer
from medqa.optim import build_optimizer
from medqa.process import exclusive_state
from medqa.provenance import sources_digest, stage_sources
from medqa.scoring import score_split
from medqa.tracking import configure_tracking, file_md5, folder_digest, git_commit

INFERENCE_CONFIG = (
    "medqa.json"  # written beside the weights: what prediction needs to match training
)
STATE_FILE = (
    "state.json"  # in the train-state folder: whose checkpoints these are, and their MLflow run
)
CURVE_FILE = "curve.json"  # in the train-state folder: the per-epoch records so far
MODEL_CURVE = "train_curve.json"  # beside the weights: the finished curve, completed by evaluate


@dataclass
class EpochRecord:
    """One point of the training curve."""

    epoch: int
    train_loss: float
    dev_f1: float | None  # None for the last epoch: the evaluate stage fills it in
    dev_em: float | None


class DevF1Monitor(TrainerCallback):
    """Logs each epoch's training loss and dev EM/F1 to MLflow and keeps the curve on disk.

    The Trainer calls on_epoch_end before it logs the epoch's loss, so the dev scores wait in
    ``_pending`` until the loss arrives in on_log. The curve is written to ``curve_path`` after each
    epoch, so a resumed run continues it instead of starting a new one.
    """

    def __init__(
        self,
        dev_features: Any,
        dev_rows: list[dict[str, Any]],
        batch_size: int,
        pad_id: int,
        final_epoch: int,
        curve_path: Path | None = None,
        history: list[EpochRecord] | None = None,
    ):
        self.dev_features, self.dev_rows, self.final_epoch = dev_features, dev_rows, final_epoch
        self.batch_size, self.pad_id = batch_size, pad_id
        self.curve_path = curve_path
        self.history: list[EpochRecord] = list(history or [])
        self._pending: EpochRecord | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer signature
        if not state.is_world_process_zero:
            return
        epoch = round(state.epoch or 0)
        if epoch >= self.final_epoch:  # the evaluate stage scores the final model on dev
            self._pending = EpochRecord(epoch, float("nan"), None, None)
            return
        scores = score_split(
            model, self.dev_features, self.dev_rows, DecodeParams(), self.batch_size, self.pad_id
        )
        model.train()
        self._pending = EpochRecord(epoch, float("nan"), scores["f1"], scores["exact"])

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self._pending is not None and logs and "loss" in logs:
            self._pending.train_loss = float(logs["loss"])
            self._flush()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self._pending is not None:
            self._flush()

    def _flush(self) -> None:
        rec, self._pending = self._pending, None
        self.history.append(rec)
        dev = {"dev_f1": rec.dev_f1, "dev_em": rec.dev_em} if rec.dev_f1 is not None else {}
        mlflow.log_metrics({"train_loss": rec.train_loss} | dev, step=rec.epoch)
        if self.curve_path is not None:
            write_json_atomic(self.curve_path, [asdict(r) for r in self.history])
        scores = (
            f"  dev F1 {rec.dev_f1:.4f}  dev EM {rec.dev_em:.4f}"
            if dev
            else "  (dev: scored by evaluate)"
        )
        print(f"\nepoch {rec.epoch}: train loss {rec.train_loss:.4f}{scores}")


class SaveEverySteps(TrainerCallback):
    """Adds a checkpoint every ``steps`` optimizer steps to the Trainer's per-epoch ones."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer signature
        if self.steps > 0 and state.global_step % self.steps == 0:
            control.should_save = True


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's initial parameters and buffers (the base model's weights, whatever their
    source: packaged, local folder or hub cache; the new QA head is seeded, so it hashes the same)."""
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
    """Everything that changes the trained weights: a checkpoint resumes only when all of it matches."""
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


def _is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint``: it writes trainer_state.json last, after
    the weights, optimizer, scheduler and RNG state, so a parseable one marks a whole checkpoint."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(checkpoint.glob("*.safetensors")) and (checkpoint / "optimizer.pt").exists()


def last_complete_checkpoint(state_dir: Path) -> str | None:
    """The newest complete checkpoint in ``state_dir``; incomplete ones (a kill mid-save) are removed."""
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
        if _is_complete(ckpt):
            complete.append(ckpt)
        else:
            print(f"removing incomplete checkpoint {ckpt} (the run writing it was interrupted)")
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


def _checkpoint_progress(checkpoint: str | None) -> tuple[float, int]:
    """(epochs done, optimizer steps done) of a Trainer checkpoint; (0, 0) when starting fresh."""
    if checkpoint is None:
        return 0.0, 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return float(state.get("epoch") or 0), int(state["global_step"])


def _start_run(saved: dict[str, Any]) -> tuple[Any, bool]:
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


def _peak_memory_mb(device: str) -> float:
    """Peak device memory of this process: allocator peak on a GPU, peak resident set on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def fine_tune(
    features_dir: Path,
    validated_dir: Path,
    out_dir: Path,
    params: Params,
    state_dir: Path = Path("models/train_state"),
) -> dict[str, Any]:
    """Train (resuming from ``state_dir`` when it holds the same training), save weights + tokenizer +
    inference config + training curve to ``out_dir``, and return a summary.

    Only rank 0 writes, logs and holds the state lock under torchrun.
    """
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:
        return _fine_tune(features_dir, validated_dir, out_dir, params, Path(state_dir), is_main)
    with exclusive_state(Path(state_dir)):
        return _fine_tune(features_dir, validated_dir, out_dir, params, Path(state_dir), is_main)


def _fine_tune(
    features_dir: Path,
    validated_dir: Path,
    out_dir: Path,
    params: Params,
    state_dir: Path,
    is_main: bool,
) -> dict[str, Any]:
    tp, out_dir = params.train, Path(out_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    set_seed(tp.seed)
    info = detect_device(tp.device)
    precision, precision_reason = explain_precision(tp.precision, info)
    if info.backend == "cpu":
        keep_freed_memory()
    if is_main:  # folders a killed run left half-written (see atomic_dir) are never reused
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tokenizer = load_tokenizer(params.base_model)
    model = load_qa_model(params.base_model)
    train_ds = load_from_disk(str(Path(features_dir) / "train"))
    dev_path = Path(features_dir) / "dev"
    dev_features = load_from_disk(str(dev_path)).to_list() if dev_path.exists() else []
    dev_rows = read_jsonl(Path(validated_dir) / "dev.jsonl")
    tok_summary = json.loads((Path(features_dir) / "summary.json").read_text())
    per_device_batch = max(1, tp.batch_size // world_size)

    resume_from, saved = None, {}
    if is_main:  # only rank 0 decides whether to resume, so only it hashes what the decision needs
        base_weights = weights_digest(model)
        data_md5 = {
            f"data_md5_{split}": file_md5(Path(validated_dir) / f"{split}.jsonl")
            for split in ("train", "dev")
        }
        fingerprint = training_fingerprint(
            params, folder_digest(Path(features_dir)), data_md5, base_weights, info, precision
        )
        resume_from, saved = resumable_checkpoint(state_dir, fingerprint)
        configure_tracking()
        run, new_run = _start_run(saved if resume_from else {})
        state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            state_dir / STATE_FILE, {"fingerprint": fingerprint, "mlflow_run_id": run.info.run_id}
        )
        if new_run:
            mlflow.log_params(
                as_dict(params.train)
                | {
                    "base_model": params.base_model,
                    "world_size": world_size,
                    "per_device_batch_size": per_device_batch,
                }
                | {f"tokenize.{k}": v for k, v in as_dict(params.tokenize).items()}
            )
        mlflow.set_tags(
            {
                "git_commit": git_commit(),
                "backend": info.backend,
                "device_name": info.name,
                "device_arch": info.arch,
                "precision": precision,
                "precision_reason": precision_reason,
                "world_size": str(world_size),
                "train_fingerprint": fingerprint,
                "attn_implementation": str(
                    getattr(model.config, "_attn_implementation", "unknown")
                ),
                "base_weights_sha256": base_weights,
                **data_md5,
            }
        )
        where = f"resuming from {resume_from}" if resume_from else "starting fresh"
        print(
            f"device: {info.backend} ({info.name}, {info.arch}); precision: {precision} ({precision_reason}); "
            f"world size {world_size}; {where}"
        )
    if world_size > 1:
        # every rank must agree on where to resume; rank 0 decided (and may have cleared the folder)
        torch.distributed.init_process_group("gloo" if info.backend == "cpu" else "nccl")
        box = [resume_from]
        torch.distributed.broadcast_object_list(box, src=0)
        resume_from = box[0]
    epochs_before, steps_before = _checkpoint_progress(resume_from)
    history: list[EpochRecord] = []
    curve = state_dir / CURVE_FILE
    if is_main and resume_from and curve.exists():  # the curve up to the checkpoint, not past it
        history = [
            EpochRecord(**r) for r in json.loads(curve.read_text()) if r["epoch"] <= epochs_before
        ]

    monitor = DevF1Monitor(
        dev_features,
        dev_rows,
        64,
        tokenizer.pad_token_id or 0,
        math.ceil(tp.epochs),
        state_dir / CURVE_FILE if is_main else None,
        history,
    )
    args = TrainingArguments(
        output_dir=str(state_dir),
        per_device_train_batch_size=per_device_batch,
        learning_rate=tp.learning_rate,
        num_train_epochs=tp.epochs,
        weight_decay=tp.weight_decay,
        warmup_steps=tp.warmup_ratio,
        lr_scheduler_type="linear",
        seed=tp.seed,
        data_seed=tp.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=info.backend == "cpu",
        train_sampling_strategy="group_by_length",
        logging_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=not is_main,
        ddp_backend="gloo" if info.backend == "cpu" and world_size > 1 else None,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[monitor, SaveEverySteps(tp.save_steps)],
        optimizers=(build_optimizer(model, tp), None),
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    if not is_main:
        return {}

    # throughput of the steps this process ran (a resumed run ran only the rest)
    steps_total = max(trainer.state.max_steps, 1)
    share = (trainer.state.global_step - steps_before) / steps_total
    real_tokens = sum(sum(m) for m in train_ds["attention_mask"])
    samples_per_s = len(train_ds) * tp.epochs * share / seconds if seconds else 0.0
    tokens_per_s = real_tokens * tp.epochs * share / seconds if seconds else 0.0
    peak_mb = _peak_memory_mb(info.device)
    summary = {
        "run_id": mlflow.active_run().info.run_id,
        "base_model": params.base_model,
        "backend": info.backend,
        "device": asdict(info),
        "precision": precision,
        "world_size": world_size,
        "train_windows": len(train_ds),
        "train_seconds": round(seconds, 2),
        "samples_per_s": round(samples_per_s, 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_memory_mb": round(peak_mb, 1),
        "resumed_from_step": steps_before,
        "final_train_loss": float(result.training_loss),
        "max_seq_length": tok_summary["max_seq_length"],
        "doc_stride": tok_summary["doc_stride"],
    }
    with atomic_dir(out_dir) as tmp:
        trainer.save_model(str(tmp))  # safetensors weights + config + tokenizer
        write_json_atomic(tmp / INFERENCE_CONFIG, summary)
        write_json_atomic(tmp / MODEL_CURVE, [asdict(r) for r in monitor.history])
    mlflow.log_metrics(
        {
            "train_seconds": seconds,
            "train_samples_per_s": samples_per_s,
            "train_tokens_per_s": tokens_per_s,
            "peak_memory_mb": peak_mb,
            "final_train_loss": float(result.training_loss),
        }
    )
    mlflow.end_run()
    shutil.rmtree(
        state_dir, ignore_errors=True
    )  # finished: the next run trains, it does not resume
    return summary
