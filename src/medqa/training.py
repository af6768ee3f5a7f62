"""The train stage: fine-tune a BERT-family model for extractive QA with the transformers Trainer.

Batches are padded only as far as their longest window (dynamic padding) and grouped by length,
which on CPU is most of the speed. After each epoch the dev F1 is measured with the default
decoding settings (a monitor only: the evaluate stage computes the reported figures).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from datasets import load_from_disk
from transformers import (DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments,
                          set_seed)

from medqa.atomic import atomic_dir, read_jsonl, write_json_atomic
from medqa.config import DecodeParams, Params, TrainParams, as_dict
from medqa.device import choose_precision, detect_device, keep_freed_memory
from medqa.evaluation import score_split
from medqa.modelsource import load_qa_model, load_tokenizer
from medqa.tracking import configure_tracking, file_md5, git_commit

INFERENCE_CONFIG = "medqa.json"  # written beside the weights: what prediction needs to match training


@dataclass
class EpochRecord:
    """One point of the training curve."""

    epoch: int
    train_loss: float
    dev_f1: float
    dev_em: float


class DevF1Monitor(TrainerCallback):
    """Logs each epoch's training loss and dev EM/F1 to MLflow.

    The Trainer calls on_epoch_end before it logs the epoch's loss, so the dev scores wait in
    ``_pending`` until the loss arrives in on_log.
    """

    def __init__(self, dev_features: Any, dev_rows: list[dict[str, Any]], batch_size: int, pad_id: int):
        self.dev_features, self.dev_rows = dev_features, dev_rows
        self.batch_size, self.pad_id = batch_size, pad_id
        self.history: list[EpochRecord] = []
        self._pending: EpochRecord | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer signature
        if not state.is_world_process_zero:
            return
        scores = score_split(model, self.dev_features, self.dev_rows, DecodeParams(), self.batch_size, self.pad_id)
        model.train()
        self._pending = EpochRecord(round(state.epoch or 0), float("nan"), scores["f1"], scores["exact"])

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
        mlflow.log_metrics({"train_loss": rec.train_loss, "dev_f1": rec.dev_f1, "dev_em": rec.dev_em}, step=rec.epoch)
        print(f"\nepoch {rec.epoch}: train loss {rec.train_loss:.4f}  dev F1 {rec.dev_f1:.4f}  dev EM {rec.dev_em:.4f}")


def build_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW with two learning rates: the pretrained encoder's and the new QA head's.

    The head starts from random weights of scale ~0.02; at an encoder-sized rate it barely moves in a
    few hundred steps, so it gets its own (usually larger) rate. No decay on biases and LayerNorm.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_head, no_decay = name.startswith("qa_outputs."), p.ndim < 2
            groups.setdefault((is_head, no_decay), []).append(p)
    return torch.optim.AdamW([
        {"params": ps, "lr": params.head_learning_rate if head else params.learning_rate,
         "weight_decay": 0.0 if no_decay else params.weight_decay}
        for (head, no_decay), ps in sorted(groups.items())
    ])


def fine_tune(features_dir: Path, validated_dir: Path, out_dir: Path, curve_path: Path,
              params: Params) -> dict[str, Any]:
    """Train, save weights + tokenizer + inference config to ``out_dir``, return a summary."""
    tp = params.train
    set_seed(tp.seed)
    info = detect_device(tp.device)
    precision = choose_precision(tp.precision, info)
    print(f"device: {info.backend} ({info.name}, {info.arch}); precision: {precision}")
    if info.backend == "cpu":
        keep_freed_memory()
    tokenizer = load_tokenizer(params.base_model)
    model = load_qa_model(params.base_model)
    train_ds = load_from_disk(str(Path(features_dir) / "train"))
    dev_path = Path(features_dir) / "dev"
    dev_features = load_from_disk(str(dev_path)).to_list() if dev_path.exists() else []
    dev_rows = read_jsonl(Path(validated_dir) / "dev.jsonl")
    tok_summary = json.loads((Path(features_dir) / "summary.json").read_text())

    configure_tracking()
    run = mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    mlflow.log_params(as_dict(params.train) | {"base_model": params.base_model} |
                      {f"tokenize.{k}": v for k, v in as_dict(params.tokenize).items()})
    mlflow.set_tags({"git_commit": git_commit(), "backend": info.backend, "device_name": info.name,
                     "device_arch": info.arch, "precision": precision,
                     "data_md5_train": file_md5(Path(validated_dir) / "train.jsonl"),
                     "data_md5_dev": file_md5(Path(validated_dir) / "dev.jsonl")})
    monitor = DevF1Monitor(dev_features, dev_rows, 64, tokenizer.pad_token_id or 0)
    with atomic_dir(out_dir) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "trainer"), per_device_train_batch_size=tp.batch_size,
            learning_rate=tp.learning_rate, num_train_epochs=tp.epochs, weight_decay=tp.weight_decay,
            warmup_steps=tp.warmup_ratio, lr_scheduler_type="linear", seed=tp.seed, data_seed=tp.seed,
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=info.backend == "cpu",
            train_sampling_strategy="group_by_length", logging_strategy="epoch", save_strategy="no",
            eval_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[monitor],
                          optimizers=(build_optimizer(model, tp), None))
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        trainer.save_model(str(tmp))  # safetensors weights + config + tokenizer
        shutil.rmtree(tmp / "trainer", ignore_errors=True)  # no intermediate checkpoints kept
        samples_per_s = len(train_ds) * tp.epochs / seconds
        summary = {
            "run_id": run.info.run_id, "base_model": params.base_model, "backend": info.backend,
            "device": asdict(info), "precision": precision, "train_windows": len(train_ds),
            "train_seconds": round(seconds, 2), "samples_per_s": round(samples_per_s, 3),
            "final_train_loss": float(result.training_loss),
            "max_seq_length": tok_summary["max_seq_length"], "doc_stride": tok_summary["doc_stride"],
        }
        write_json_atomic(tmp / INFERENCE_CONFIG, summary)
    peak = torch.cuda.max_memory_allocated() / 2**20 if info.device == "cuda" else None
    mlflow.log_metrics({"train_seconds": seconds, "train_samples_per_s": samples_per_s,
                        "final_train_loss": float(result.training_loss)} |
                       ({"peak_device_memory_mb": peak} if peak is not None else {}))
    write_json_atomic(curve_path, [asdict(r) for r in monitor.history])
    mlflow.end_run()
    return summary
