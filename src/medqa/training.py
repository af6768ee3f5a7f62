"""The train stage: fine-tune a BERT-family model for extractive QA with the transformers Trainer.

Batches are padded only as far as their longest window (dynamic padding) and grouped by length,
which on CPU is most of the speed. After each epoch the dev F1 is measured with the default
decoding settings (a monitor only: the evaluate stage computes the reported figures). The last
epoch's dev figures are left to the evaluate stage, which scores the final model on dev anyway (to
tune the abstention threshold) and completes the curve: one dev pass fewer per pipeline run.

Training state (weights, optimizer, scheduler, RNG, curve so far) is checkpointed every epoch and
every ``train.save_steps`` steps into ``models/train_state``. A rerun after a crash or a kill
resumes from the last complete checkpoint and reaches the same final weights as an uninterrupted
run. Only provably the same training is resumed (:mod:`medqa.train_state`). A finished
training deletes its state, so a completed state never stands in for training (``dvc repro -f
train`` trains from scratch). One trainer per state folder: a lock beside it refuses a second one,
and a trainer dies with the process that started it (a killed ``dvc`` leaves no orphan training).

Under ``torchrun --nproc_per_node N`` the same code trains with DDP (RCCL on ROCm, NCCL on CUDA,
gloo on CPU); ``train.batch_size`` stays the global batch, and only rank 0 writes files and logs.
After a resume, the loss logged for the interrupted epoch averages only the steps run after it.
"""

from __future__ import annotations

import json
import logging
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
from datasets import load_from_disk
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from medqa.config import Params, as_dict
from medqa.contracts import INFERENCE_CONFIG, TRAIN_CURVE, progress_bars_shown
from medqa.device import (
    DeviceInfo,
    detect_device,
    explain_precision,
    keep_freed_memory,
)
from medqa.envlock import lock_digest
from medqa.fileio import atomic_dir, read_jsonl, write_json_atomic
from medqa.modelsource import load_qa_model, load_tokenizer, pad_id
from medqa.optim import build_optimizer
from medqa.process import exclusive_state
from medqa.scoring import sample_questions
from medqa.tracking import (
    configure_tracking,
    experiment_tags,
    file_md5,
    folder_digest,
    git_commit,
)
from medqa.train_callbacks import DevF1Monitor, SaveEverySteps, keep_progress_off_stdout
from medqa.train_state import (
    CURVE_FILE,
    STATE_FILE,
    EpochRecord,
    checkpoint_progress,
    curve_so_far,
    resumable_checkpoint,
    start_or_resume_run,
    training_fingerprint,
    weights_digest,
)

log = logging.getLogger(__name__)


def _peak_memory_mb(device: str) -> float:
    """Peak device memory of this process: allocator peak on a GPU, peak resident set on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class TrainInputs:
    """What one training reads: the base model and its tokenizer, the training features, and the dev
    split (windows and answers) the epoch-end monitor scores."""

    tokenizer: Any
    model: PreTrainedModel
    train_ds: Any
    dev_features: Any  # a Dataset of the dev windows, a list of a sample of them, or [] without dev
    dev_rows: list[dict[str, Any]]
    tokenize_summary: dict[str, Any]


def _world() -> tuple[int, bool]:
    """(world size, whether this process is rank 0): torchrun sets WORLD_SIZE and RANK."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


def _remove_stale_outputs(out_dir: Path) -> None:
    """Remove the folders a killed run left half-written beside ``out_dir`` (see atomic_dir): they
    are never reused."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _load_inputs(features_dir: Path, validated_dir: Path, params: Params) -> TrainInputs:
    """The base model, its tokenizer, the tokenized splits and the dev answers."""
    dev_path = features_dir / "dev"
    # streamed by the per-epoch monitor (scoring.question_chunks), never a list of the split
    dev_features, dev_rows = sample_questions(
        load_from_disk(str(dev_path)) if dev_path.exists() else [],
        read_jsonl(validated_dir / "dev.jsonl"),
        params.train.monitor_questions,
        params.train.seed,
    )
    return TrainInputs(
        tokenizer=load_tokenizer(params.base_model),
        model=load_qa_model(params.base_model, params.train.attention_dropout),
        train_ds=load_from_disk(str(features_dir / "train")),
        dev_features=dev_features,
        dev_rows=dev_rows,
        tokenize_summary=json.loads((features_dir / "summary.json").read_text()),
    )


def _log_params(params: Params, world_size: int) -> None:
    """The recipe on a new MLflow run: train params, base model, batch split, tokenization."""
    mlflow.log_params(
        as_dict(params.train)
        | {
            "base_model": params.base_model,
            "world_size": world_size,
            "per_device_batch_size": _per_device_batch(params.train.batch_size),
        }
        | {f"tokenize.{k}": v for k, v in as_dict(params.tokenize).items()}
    )


def _open_run(
    params: Params,
    inputs: TrainInputs,
    paths: tuple[Path, Path, Path],
    info: DeviceInfo,
    precision: tuple[str, str],
) -> str | None:
    """Rank 0's set-up: fingerprint the training, decide whether to resume, and open (or reopen) its
    MLflow run with params and tags. Returns the checkpoint to resume from, if any.

    ``paths`` is (features, validated, state); ``precision`` is (precision, why).
    """
    (features_dir, validated_dir, state_dir), (chosen, why) = paths, precision
    world_size, _ = _world()
    base_weights = weights_digest(inputs.model)
    data_md5 = {
        f"data_md5_{split}": file_md5(validated_dir / f"{split}.jsonl")
        for split in ("train", "dev")
    }
    fingerprint = training_fingerprint(
        params, folder_digest(features_dir), data_md5, base_weights, info, chosen
    )
    resume_from, saved = resumable_checkpoint(state_dir, fingerprint)
    configure_tracking()
    run, new_run = start_or_resume_run(saved if resume_from else {})
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        state_dir / STATE_FILE, {"fingerprint": fingerprint, "mlflow_run_id": run.info.run_id}
    )
    if new_run:
        _log_params(params, world_size)
    attn = getattr(inputs.model.config, "_attn_implementation", "unknown")
    mlflow.set_tags(
        {
            "git_commit": git_commit(),
            "env_lock_sha256": lock_digest(),
            "backend": info.backend,
            "device_name": info.name,
            "device_arch": info.arch,
            "precision": chosen,
            "precision_reason": why,
            "world_size": str(world_size),
            "train_fingerprint": fingerprint,
            "attn_implementation": str(attn),
            "base_weights_sha256": base_weights,
            **data_md5,
            **experiment_tags(),
        }
    )
    where = f"resuming from {resume_from}" if resume_from else "starting fresh"
    log.info(
        "device: %s (%s, %s); precision: %s (%s); world size %s; %s",
        *(info.backend, info.name, info.arch, chosen, why, world_size, where),
    )
    return resume_from


def _per_device_batch(batch_size: int) -> int:
    """train.batch_size is the global batch: each of the world's processes takes its share."""
    return max(1, batch_size // _world()[0])


def _agree_on_resume(resume_from: str | None, info: DeviceInfo) -> str | None:
    """Under torchrun, every rank resumes where rank 0 decided (it may have cleared the folder)."""
    if _world()[0] == 1:
        return resume_from
    torch.distributed.init_process_group("gloo" if info.backend == "cpu" else "nccl")
    box = [resume_from]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _training_args(
    tp: Any, info: DeviceInfo, precision: str, state_dir: Path, is_main: bool
) -> TrainingArguments:
    """The Trainer's settings: the recipe, the precision, and checkpoints every epoch in
    ``state_dir`` (the monitor scores dev, so the Trainer itself never evaluates)."""
    world_size, _ = _world()
    return TrainingArguments(
        output_dir=str(state_dir),
        per_device_train_batch_size=_per_device_batch(tp.batch_size),
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
        disable_tqdm=not (is_main and progress_bars_shown()),
        ddp_backend="gloo" if info.backend == "cpu" and world_size > 1 else None,
    )


def _throughput(
    trainer: Trainer, train_ds: Any, epochs: float, seconds: float, steps_before: int
) -> tuple[float, float]:
    """(windows/s, real tokens/s) over the steps this process ran (a resumed run: only the rest)."""
    share = (trainer.state.global_step - steps_before) / max(trainer.state.max_steps, 1)
    if not seconds:
        return 0.0, 0.0
    real_tokens = sum(sum(m) for m in train_ds["attention_mask"])
    return len(train_ds) * epochs * share / seconds, real_tokens * epochs * share / seconds


def fine_tune(
    features_dir: Path,
    validated_dir: Path,
    out_dir: Path,
    params: Params,
    state_dir: Path = Path("models/train_state"),
) -> dict[str, Any]:
    """Train (resuming from ``state_dir`` when it holds the same training), save weights, tokenizer,
    inference config and training curve to ``out_dir``, and return a summary.

    Only rank 0 writes, logs and holds the state lock under torchrun.
    """
    paths = (Path(features_dir), Path(validated_dir), Path(out_dir), Path(state_dir))
    if not _world()[1]:
        return _fine_tune(*paths, params)
    with exclusive_state(Path(state_dir)):
        return _fine_tune(*paths, params)


def _fine_tune(
    features_dir: Path, validated_dir: Path, out_dir: Path, state_dir: Path, params: Params
) -> dict[str, Any]:
    tp, is_main = params.train, _world()[1]
    set_seed(tp.seed)
    info = detect_device(tp.device)  # first: a device that is not there fails before any loading
    precision, precision_reason = explain_precision(tp.precision, info)
    if info.backend == "cpu":
        keep_freed_memory()
    if is_main:
        _remove_stale_outputs(out_dir)
    inputs = _load_inputs(features_dir, validated_dir, params)
    resume_from = None
    if is_main:  # only rank 0 decides whether to resume, so only it hashes what the decision needs
        resume_from = _open_run(
            params,
            inputs,
            (features_dir, validated_dir, state_dir),
            info,
            (precision, precision_reason),
        )
    resume_from = _agree_on_resume(resume_from, info)
    _, steps_before = checkpoint_progress(resume_from)
    monitor = DevF1Monitor(
        inputs.dev_features,
        inputs.dev_rows,
        64,
        pad_id(inputs.tokenizer),
        math.ceil(tp.epochs),
        precision,
        state_dir / CURVE_FILE if is_main else None,
        curve_so_far(state_dir, resume_from) if is_main else [],
    )
    trainer = Trainer(
        model=inputs.model,
        args=_training_args(tp, info, precision, state_dir, is_main),
        train_dataset=inputs.train_ds,
        processing_class=inputs.tokenizer,
        data_collator=DataCollatorWithPadding(inputs.tokenizer),
        callbacks=[monitor, SaveEverySteps(tp.save_steps)],
        optimizers=(build_optimizer(inputs.model, tp), None),
    )
    keep_progress_off_stdout(trainer)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    if not is_main:
        return {}

    summary = _summary(params, info, precision, inputs, trainer, result, seconds, steps_before)
    _publish(trainer, out_dir, summary, monitor.history)
    shutil.rmtree(state_dir, ignore_errors=True)  # finished: the next run trains, not resumes
    return summary


def _summary(
    params: Params,
    info: DeviceInfo,
    precision: str,
    inputs: TrainInputs,
    trainer: Trainer,
    result: Any,
    seconds: float,
    steps_before: int,
) -> dict[str, Any]:
    """What the finished training reports: written beside the weights (prediction reads its window
    settings from it), printed by ``medqa train`` and logged to MLflow."""
    samples_per_s, tokens_per_s = _throughput(
        trainer, inputs.train_ds, params.train.epochs, seconds, steps_before
    )
    return {
        "run_id": _active_run_id(),
        "base_model": params.base_model,
        "backend": info.backend,
        "device": asdict(info),
        "precision": precision,
        "world_size": _world()[0],
        "train_windows": len(inputs.train_ds),
        "train_seconds": round(seconds, 2),
        "samples_per_s": round(samples_per_s, 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_memory_mb": round(_peak_memory_mb(info.device), 1),
        "resumed_from_step": steps_before,
        "final_train_loss": float(result.training_loss),
        "max_seq_length": inputs.tokenize_summary["max_seq_length"],
        "doc_stride": inputs.tokenize_summary["doc_stride"],
    }


def _active_run_id() -> str:
    """The MLflow run _open_run started (rank 0 always has one open by now)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: _open_run starts one before training")
    return run.info.run_id


def _publish(
    trainer: Trainer, out_dir: Path, summary: dict[str, Any], curve: list[EpochRecord]
) -> None:
    """Write weights, tokenizer, inference config and curve to ``out_dir`` in one atomic step, then
    log the run's figures (as written in the summary) and close its MLflow run."""
    with atomic_dir(out_dir) as tmp:
        trainer.save_model(str(tmp))  # safetensors weights + config + tokenizer
        write_json_atomic(tmp / INFERENCE_CONFIG, summary)
        write_json_atomic(tmp / TRAIN_CURVE, [asdict(r) for r in curve])
    mlflow.log_metrics(
        {
            "train_seconds": summary["train_seconds"],
            "train_samples_per_s": summary["samples_per_s"],
            "train_tokens_per_s": summary["tokens_per_s"],
            "peak_memory_mb": summary["peak_memory_mb"],
            "final_train_loss": summary["final_train_loss"],
        }
    )
    mlflow.end_run()
