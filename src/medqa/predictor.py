"""Answer questions with a saved model exactly as the evaluate stage does: the same windows, the
same decoding, the same abstention threshold (read from the model folder's decoding.json).

The CLI, batch files and the MLflow pyfunc (hence ``mlflow models serve``) all go through
``QAPredictor``, so every entry point gives the same answers and refuses the same bad records.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from medqa.calibration import Calibrator, abstention, decide
from medqa.config import DecodeParams, TokenizeParams
from medqa.contracts import DECODING_FILE, ENGINE_CHOICES, ENGINES, DecodingSettings
from medqa.decoding import SpanDecision, decode_best_spans, predict_logits
from medqa.device import (
    cast_for_autocast,
    precision_context,
    resolve_precision,
    to_inference_device,
)
from medqa.engine import for_engine
from medqa.errors import ConfigError, DataError, ModelError
from medqa.features import build_eval_features, check_window_fits, max_question_tokens
from medqa.modelsource import load_model_config, load_qa_model, load_tokenizer, pad_id
from medqa.scoring import span_decisions_timed

# Longest context accepted, in characters: the validate stage's default max_context_chars. Longer
# texts are split into sliding windows like any other, but one request must stay bounded in time.
MAX_CONTEXT_CHARS = 200_000


@dataclass(frozen=True)
class SavedModel:
    """A saved model with the settings recorded beside it, so it is scored exactly as it is served."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokenize: TokenizeParams
    decode: DecodeParams
    threshold: float
    settings_file: Path
    precision: str = "fp32"
    precision_reason: str = ""
    calibrator: Calibrator | None = None  # None: a folder from before calibration was recorded
    engine: str = (
        "eager"  # what ran its test pass (medqa.engine); QAPredictor.use_engine applies it
    )


def _served_precision(
    requested: str | None, recorded: str | None, settings_file: Path, device: torch.device
) -> tuple[str, str]:
    """(precision, why): ``requested`` when given, else the one the model was scored at."""
    if requested is not None:
        return resolve_precision(requested, device, "--precision")
    if recorded is None:
        return "fp32", f"none recorded in {settings_file}: scored in fp32"
    if recorded == "fp16" and device.type == "cpu":
        precision, why = resolve_precision("auto", device, "--precision")
        return precision, f"scored in fp16 on a GPU, which a CPU cannot run; auto: {why}"
    return recorded, f"the precision its test F1 was measured at ({settings_file})"


def load_saved_model(
    folder: Path,
    decoding_file: Path | None = None,
    device: str = "auto",
    precision: str | None = None,
) -> SavedModel:
    """Weights (safetensors only), tokenizer and recorded decoding settings of a model folder.

    The settings (windows, n-best, answer length, abstention threshold, precision) come from
    ``decoding_file``, by default the folder's own decoding.json, which the register stage bundles
    with every version. A checkpoint straight from training has none: its threshold is in the
    evaluate stage's reports/decoding.json. ``precision`` (auto, fp32, bf16, fp16) overrides the
    recorded one, e.g. fp32 on a machine whose bf16 is slow.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder")
    if not (folder / "config.json").exists():
        raise ModelError(f"{folder}: not a saved model folder (no config.json)")
    settings_file = Path(decoding_file) if decoding_file else folder / DECODING_FILE
    if not settings_file.exists():
        raise ModelError(
            f"{settings_file}: missing, so no recorded abstention threshold (a training checkpoint's "
            "is in reports/decoding.json after the evaluate stage; pass it with --decoding)"
        )
    try:
        settings = DecodingSettings.from_json(json.loads(settings_file.read_text(encoding="utf-8")))
        calibrator = Calibrator.from_json(settings.calibration) if settings.calibration else None
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(
            f"{settings_file}: cannot read decoding settings ({str(e).splitlines()[0]})"
        ) from None
    except KeyError as e:
        raise ModelError(f"{settings_file}: missing key {e.args[0]!r}") from None
    tokenize = TokenizeParams(settings.max_seq_length, settings.doc_stride)
    decode = DecodeParams(settings.n_best, settings.max_answer_length)
    # refused here, not by an index error on the first context long enough to fill a window
    check_window_fits(
        load_model_config(str(folder)),
        tokenize.max_seq_length,
        str(folder),
        setting=f"{settings_file}: max_seq_length",
    )
    model = to_inference_device(load_qa_model(str(folder)), device)
    chosen, why = _served_precision(precision, settings.precision, settings_file, model.device)
    cast_for_autocast(model, chosen)
    return SavedModel(
        model,
        load_tokenizer(str(folder)),
        tokenize,
        decode,
        settings.null_threshold,
        settings_file,
        chosen,
        why,
        calibrator,
        settings.engine or "eager",
    )


# Questions tokenized into windows at a time by an ad-hoc scoring pass: bounds its memory whatever
# the file's size (each chunk's windows are scored and dropped before the next is made).
WINDOW_CHUNK_QUESTIONS = 1024


@dataclass(frozen=True)
class SavedModelWindows:
    """The windows of ``rows`` under the model's own tokenizer and window settings, made
    WINDOW_CHUNK_QUESTIONS questions at a time and numbered across the whole of ``rows``. Each
    iteration tokenizes afresh, so a second reader (the latency probe reads the first questions
    again) needs no copy of the windows."""

    saved: SavedModel
    rows: Sequence[dict[str, Any]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self.rows), WINDOW_CHUNK_QUESTIONS):
            chunk = list(self.rows[start : start + WINDOW_CHUNK_QUESTIONS])
            for window in build_eval_features(self.saved.tokenizer, chunk, self.saved.tokenize):
                yield window | {"example_index": int(window["example_index"]) + start}


def score_saved_model(
    saved: SavedModel, rows: Sequence[dict[str, Any]], labels: Sequence[str], batch_size: int
) -> tuple[list[SpanDecision], float]:
    """Decisions on ``rows`` with the model's own tokenizer and windows, and the seconds of the
    batched forward pass; the windows stream (``SavedModelWindows``). ``labels`` name the rows in
    errors.

    A question too long for the model's windows is refused up front, before any is scored: the
    tokenizer would abort the whole process with a Rust panic instead of raising.
    """
    limit = max_question_tokens(saved.tokenizer, saved.tokenize)
    for start in range(0, len(rows), WINDOW_CHUNK_QUESTIONS):
        end = start + WINDOW_CHUNK_QUESTIONS
        questions = [r["question"].lstrip() for r in rows[start:end]]
        ids = saved.tokenizer(questions, add_special_tokens=False)["input_ids"]
        for label, n in zip(labels[start:end], map(len, ids)):
            if n > limit:
                raise DataError(
                    f"{label}: question has {n} tokens; this model takes at most {limit}"
                )
    with precision_context(saved.model, saved.precision):
        return span_decisions_timed(
            saved.model,
            SavedModelWindows(saved, rows),
            rows,
            saved.decode,
            batch_size,
            pad_id(saved.tokenizer),
        )


class PredictionStopped(Exception):
    """``QAPredictor.stop`` was set while a prediction ran: it stopped between two batches."""


class QAPredictor:
    """A loaded model plus its decoding settings; ``predict`` takes question/context records.

    ``stop``, once set (a server shutting down), makes a running ``predict`` raise
    PredictionStopped after its current step (``tokenize_chunk`` records tokenized, or one batch of
    windows through the model), so a long request never outlives the server.
    """

    tokenize_chunk = 64

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "auto",
        batch_size: int = 32,
        decoding_file: Path | None = None,
        precision: str | None = None,
    ) -> None:
        self._source = (Path(model_dir), decoding_file, device)  # for use_precision's reload
        saved = load_saved_model(Path(model_dir), decoding_file, device=device, precision=precision)
        self.model, self.tokenizer, self.threshold = saved.model, saved.tokenizer, saved.threshold
        self.calibrator = saved.calibrator
        self.min_confidence: float | None = None  # None: the model's own answer policy
        self.tokenize, self.decode = saved.tokenize, saved.decode
        self.precision, self.precision_reason = saved.precision, saved.precision_reason
        self.eager_model, self.recorded_engine = saved.model, saved.engine
        self.engine, self.engine_reason = "eager", "eager until use_engine asks for another"
        self.batch_size = batch_size
        self.max_question_tokens = max_question_tokens(self.tokenizer, self.tokenize)
        self.stop = threading.Event()

    def use_precision(self, requested: str) -> None:
        """Run from now on at ``requested`` (auto, fp32, bf16, fp16) instead of the recorded one.

        The weights were cast for the recorded precision on load, so another one loads them again.
        """
        chosen, why = resolve_precision(requested, self.model.device, "--precision")
        if chosen != self.precision:
            folder, decoding_file, device = self._source
            self.eager_model = load_saved_model(folder, decoding_file, device, chosen).model
            self.model = for_engine(self.eager_model, self.engine)
        self.precision, self.precision_reason = chosen, f"{why} (was {self.precision_reason})"

    def use_engine(self, requested: str) -> None:
        """Run the forward pass on ``requested`` (eager, compile; auto: the engine recorded with the
        model, that its test F1 was measured on). Compiling happens on the first batch of each new
        shape: call ``warm_up`` before taking requests."""
        if requested == "auto":
            chosen, why = self.recorded_engine, "the engine its test F1 was measured on"
        else:
            chosen, why = requested, "set by --engine"
        if chosen not in ENGINES:
            raise ConfigError(f"--engine {requested!r} is not one of {', '.join(ENGINE_CHOICES)}")
        self.model = for_engine(self.eager_model, chosen)
        self.engine, self.engine_reason = chosen, why

    def warm_up(self) -> float:
        """Seconds spent compiling: one request of several windows and one of a single window (a
        batch of one is a shape of its own), so no real request pays for it. Nothing for eager."""
        if self.engine == "eager":
            return 0.0
        start = time.perf_counter()
        long_context = " ".join(["The macula is the centre of the retina."] * 120)
        self.predict([{"question": "What is the macula?", "context": long_context}])
        self.predict([{"question": "What is the macula?", "context": "The macula is central."}])
        return time.perf_counter() - start

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise PredictionStopped("stopped: the server is shutting down")

    def _features(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``build_eval_features`` of ``records``, ``tokenize_chunk`` records at a time so ``stop``
        is honoured; windows are not padded, so they are those of one call over all records."""
        features = []
        for start in range(0, len(records), self.tokenize_chunk):
            self._check_stop()
            chunk = records[start : start + self.tokenize_chunk]
            for f in build_eval_features(self.tokenizer, chunk, self.tokenize):
                features.append(f | {"example_index": f["example_index"] + start})
        return features

    def _logits(self, features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """``predict_logits`` over ``features``, one batch at a time so ``stop`` is honoured.

        The windows are sorted by length once and cut into the very batches ``predict_logits``
        would form, so the logits are those of one call over all of them.
        """
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        starts: list[Any] = [None] * len(features)
        ends: list[Any] = [None] * len(features)
        pad = pad_id(self.tokenizer)
        with precision_context(self.model, self.precision):
            for b in range(0, len(order), self.batch_size):
                self._check_stop()
                idx = order[b : b + self.batch_size]
                s, e = predict_logits(self.model, [features[i] for i in idx], self.batch_size, pad)
                for j, i in enumerate(idx):
                    starts[i], ends[i] = s[j], e[j]
        return starts, ends

    def problem(self, record: Any) -> str | None:
        """Why ``record`` cannot be answered, or None; callers add where the record came from."""
        if not isinstance(record, dict):
            return f"expected an object with question and context, got {type(record).__name__}"
        for key in ("question", "context"):
            if key not in record or record[key] is None:
                return f"missing field {key!r}"
            if not isinstance(record[key], str):
                return f"{key!r} must be a string, got {type(record[key]).__name__}"
            if not record[key].strip():
                return f"{key!r} is empty"
        if len(record["context"]) > MAX_CONTEXT_CHARS:
            return (
                f"context has {len(record['context'])} characters; the limit is {MAX_CONTEXT_CHARS}"
            )
        return None

    def _too_long(self, records: list[dict[str, Any]]) -> list[str | None]:
        """Per record, why its question is too long for the model's windows (None: it fits).

        Such a question is answered with an abstention saying so, not a refused request: the
        tokenizer would otherwise abort the whole process with a Rust panic.
        """
        questions = [r["question"].lstrip() for r in records]
        lengths = [
            len(ids) for ids in self.tokenizer(questions, add_special_tokens=False)["input_ids"]
        ]
        limit = self.max_question_tokens
        return [
            f"question too long: {n} tokens; this model takes at most {limit}"
            if n > limit
            else None
            for n in lengths
        ]

    def predict(
        self, records: list[dict[str, Any]], min_confidence: float | None = None
    ) -> list[dict[str, Any]]:
        """One result per record: answer ("" when it abstains), raw score, calibrated confidence,
        start, end, and why it abstained (``calibration.decide``). ``min_confidence`` replaces the
        model's answer policy for these records (0: every answer; 1: none)."""
        for i, r in enumerate(records):
            if (why := self.problem(r)) is not None:
                raise DataError(f"record {i + 1}: {why}")
        floor = self.min_confidence if min_confidence is None else min_confidence
        if floor is not None and not 0.0 <= floor <= 1.0:
            raise DataError(f"min_confidence must be between 0 and 1, got {floor}")
        if floor and self.calibrator is None:
            raise DataError(
                "min_confidence needs a calibrated confidence, and this model was evaluated "
                "without one (rerun its evaluate stage)"
            )
        if not records:
            return []
        too_long = self._too_long(records)
        fits = [r for r, why in zip(records, too_long) if why is None]
        features = self._features(fits)
        starts, ends = self._logits(features)
        decisions = iter(
            decode_best_spans(
                features,
                starts,
                ends,
                [r["context"] for r in fits],
                self.decode,
                [r["question"] for r in fits],
            )
        )
        return [
            decide(next(decisions), self.threshold, self.calibrator, floor)
            if why is None
            else abstention(why)
            for why in too_long
        ]
