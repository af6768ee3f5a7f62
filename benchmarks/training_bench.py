"""Sections 1 and 5: medqa's training path against the run_qa-style reference, and how medqa's step
time and memory scale with data size and window length.

Ours is medqa.training.fine_tune itself, fed by medqa.features.tokenize_splits; the only thing added
is instrumentation: its Trainer class is swapped for a subclass that records each batch's shape and
the time between optimizer steps. The reference runs the same recipe, seed, base model, data and
device through the code of benchmarks.reference. Each run is a fresh process (see measure.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from transformers import Trainer, TrainerCallback

from benchmarks.measure import median, peak_memory_mib

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    """One timed optimizer step: wall and CPU seconds (all threads) from the previous step's end to its
    own (collation, forward, backward, optimizer), and the shape of its batch. CPU time is the figure
    that other work on a shared machine disturbs least."""

    seconds: float
    cpu_seconds: float
    examples: int
    real_tokens: int
    padded_tokens: int


@dataclass(frozen=True)
class TrainRun:
    """What one training run measured; ``steps`` excludes the warm-up steps."""

    steps: list[Step]
    peak_memory_mib: float
    memory_kind: str
    dev_f1: float | None
    flops_per_token: float  # training FLOPs per real token: 6 x non-embedding params + attention
    precision: str  # what the run trained in (medqa picks it; the reference is given the same)

    def examples_per_s(self) -> float:
        return median([s.examples / s.seconds for s in self.steps])

    def examples_per_cpu_s(self) -> float:
        return median([s.examples / s.cpu_seconds for s in self.steps])

    def cpu_busy_share(self, threads: int) -> float:
        """CPU seconds per wall second per thread: near 1 when the run had its cores to itself, lower
        when other processes took them (then its wall-clock figures are slowed by them)."""
        return median([s.cpu_seconds / (s.seconds * threads) for s in self.steps])

    def tokens_per_s(self) -> float:
        """Real (non-padding) tokens per second."""
        return median([s.real_tokens / s.seconds for s in self.steps])

    def seconds_per_step(self) -> float:
        return median([s.seconds for s in self.steps])

    def padding_share(self) -> float:
        """The share of computed positions that were padding."""
        padded = sum(s.padded_tokens for s in self.steps)
        return 1 - sum(s.real_tokens for s in self.steps) / padded if padded else float("nan")

    def flops_per_s(self) -> float:
        """Useful training FLOP/s: FLOPs of the real tokens only (padding is not counted as work)."""
        return self.flops_per_token * self.tokens_per_s()


def combine(runs: list[TrainRun]) -> TrainRun:
    """Several runs of one set-up as one: their timed steps pooled, the highest peak memory, and the
    first run's dev F1 (the runs are the same seeded training, so only the first is scored)."""
    first = runs[0]
    return dataclasses.replace(
        first,
        steps=[s for run in runs for s in run.steps],
        peak_memory_mib=max(run.peak_memory_mib for run in runs),
    )


class StepClock(TrainerCallback):
    """Marks the end of every optimizer step, records batch shapes, and can stop after ``max_steps``."""

    def __init__(self, max_steps: int | None = None):
        self.max_steps = max_steps
        self.marks: list[tuple[float, float]] = []
        self.batches: list[tuple[int, int, int]] = []

    def record_batch(self, inputs: dict[str, Any]) -> None:
        mask = inputs["attention_mask"]
        self.batches.append((int(mask.shape[0]), int(mask.sum()), int(mask.numel())))

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), time.process_time()))
        if self.max_steps is not None and state.global_step >= self.max_steps:
            control.should_training_stop = True

    def steps(self, warmup: int) -> list[Step]:
        """The steps after the first ``warmup`` (one batch per step: no gradient accumulation)."""
        spans = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:])]
        return [Step(*span, *batch) for span, batch in list(zip(spans, self.batches))[warmup:]]


def instrumented(clock: StepClock) -> type[Trainer]:
    """A Trainer that reports to ``clock``: each training batch's shape, and its step ends."""

    class InstrumentedTrainer(Trainer):
        def __init__(
            self, *args: Any, callbacks: list[TrainerCallback] | None = None, **kwargs: Any
        ):
            super().__init__(*args, callbacks=[*(callbacks or []), clock], **kwargs)

        def training_step(
            self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any
        ) -> Any:
            clock.record_batch(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

    return InstrumentedTrainer


def training_flops_per_token(model: Any, mean_length: float) -> float:
    """6 x non-embedding parameters (forward + backward matmuls) plus attention's score and mixing
    matmuls, 12 x layers x hidden x length (forward + backward), per token at the mean real length."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    cfg = model.config
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_length


def _dev_f1(model: Any, tokenizer: Any, rows: list[dict[str, Any]], params: Any) -> float:
    """Dev F1 with medqa's own windows, decoding and threshold tuning, identical for both models."""
    from medqa.features import build_eval_features
    from medqa.scoring import score_split

    features = build_eval_features(tokenizer, rows, params.tokenize)
    return score_split(
        model,
        features,
        rows,
        params.evaluate.decode,
        params.evaluate.batch_size,
        tokenizer.pad_token_id or 0,
    )["f1"]


def _finish(
    clock: StepClock,
    warmup: int,
    model: Any,
    device: str,
    dev_rows: list[dict[str, Any]] | None,
    tokenizer: Any,
    params: Any,
    precision: str,
) -> TrainRun:
    steps = clock.steps(warmup)
    peak, kind = peak_memory_mib(device)  # before dev scoring, so it is the training peak
    mean_length = sum(s.real_tokens for s in steps) / max(1, sum(s.examples for s in steps))
    f1 = _dev_f1(model, tokenizer, dev_rows, params) if dev_rows else None
    return TrainRun(steps, peak, kind, f1, training_flops_per_token(model, mean_length), precision)


def _params(max_seq_length: int, doc_stride: int, epochs: float) -> Any:
    """params.yaml's recipe with ``epochs``; windows as given, every other tokenize knob at its default
    (e.g. the whole of the given rows is trained on, whatever params.yaml's train_fraction says)."""
    from medqa.config import TokenizeParams, load_params

    params = load_params(ROOT / "params.yaml")
    return dataclasses.replace(
        params,
        tokenize=TokenizeParams(max_seq_length=max_seq_length, doc_stride=doc_stride),
        train=dataclasses.replace(params.train, epochs=epochs),
    )


def training_precision() -> str:
    """The precision fine_tune picks with params.yaml's train settings on this machine."""
    from medqa.device import detect_device, explain_precision

    tp = _params(384, 128, 1).train
    return explain_precision(tp.precision, detect_device(tp.device))[0]


def train_ours(
    work: Path,
    train_rows: list[dict[str, Any]],
    dev_rows: list[dict[str, Any]] | None,
    max_seq_length: int,
    doc_stride: int,
    epochs: float,
    warmup: int,
    max_steps: int | None,
    mlflow_uri: str,
    precision: str | None = None,
) -> TrainRun:
    """medqa's tokenize stage and fine_tune on ``train_rows``, in the scratch folder ``work``, at
    ``precision`` (None: params.yaml's, normally auto).

    Runs in its own process: it changes into ``work`` so that fine_tune's relative defaults (mlruns/,
    models/train_state) land there, never in the project. Dev scoring is done afterwards rather than by
    fine_tune's epoch-end monitor, so both paths are scored by the same call.
    """
    import medqa.training
    from medqa.features import tokenize_splits
    from medqa.fileio import write_jsonl_atomic
    from medqa.modelsource import load_qa_model, load_tokenizer

    work.mkdir(parents=True)
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    params = _params(max_seq_length, doc_stride, epochs)
    if precision is not None:
        params = dataclasses.replace(
            params, train=dataclasses.replace(params.train, precision=precision)
        )
    validated = work / "validated"
    for split, rows in (("train", train_rows), ("dev", []), ("test", [])):
        write_jsonl_atomic(validated / f"{split}.jsonl", rows)
    tokenize_splits(validated, work / "features", params.base_model, params.tokenize)
    clock = StepClock(max_steps)
    with mock.patch.object(medqa.training, "Trainer", instrumented(clock)):
        summary = medqa.training.fine_tune(
            work / "features", validated, work / "model", params, work / "train_state"
        )
    device = summary["device"]["device"]
    model = load_qa_model(str(work / "model"))
    return _finish(
        clock,
        warmup,
        model.to(device),
        device,
        dev_rows,
        load_tokenizer(str(work / "model")),
        params,
        summary["precision"],
    )


def train_reference(
    work: Path,
    train_rows: list[dict[str, Any]],
    dev_rows: list[dict[str, Any]] | None,
    max_seq_length: int,
    doc_stride: int,
    epochs: float,
    warmup: int,
    max_steps: int | None,
    precision: str,
) -> TrainRun:
    """The run_qa-style reference on the same rows, recipe, seed, base model, device and ``precision``
    (the one medqa's run chose)."""
    from datasets import Dataset
    from transformers import default_data_collator, set_seed

    from benchmarks.reference import reference_train_features, reference_training_args
    from medqa.device import detect_device
    from medqa.modelsource import load_qa_model, load_tokenizer

    params = _params(max_seq_length, doc_stride, epochs)
    tp = params.train
    set_seed(
        tp.seed
    )  # before loading, as fine_tune does: both QA heads start from the same weights
    info = detect_device(tp.device)
    tokenizer = load_tokenizer(params.base_model)
    model = load_qa_model(params.base_model)
    dataset = Dataset.from_dict(
        reference_train_features(tokenizer, train_rows, max_seq_length, doc_stride)
    )
    args = reference_training_args(
        str(work),
        tp.batch_size,
        tp.learning_rate,
        epochs,
        tp.weight_decay,
        tp.warmup_ratio,
        tp.seed,
        precision,
        info.backend == "cpu",
    )
    clock = StepClock(max_steps)
    trainer = instrumented(clock)(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    trainer.train()
    return _finish(
        clock, warmup, trainer.model, info.device, dev_rows, tokenizer, params, precision
    )
