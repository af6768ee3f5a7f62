"""Answer questions with a saved model exactly as the evaluate stage does: the same windows, the
same decoding, the same abstention threshold (read from the model folder's decoding.json).

The CLI, batch files and the MLflow pyfunc (hence ``mlflow models serve``) all go through
``QAPredictor``, so every entry point gives the same answers and refuses the same bad records.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from medqa.config import DecodeParams, TokenizeParams
from medqa.decoding import SpanDecision, decode_best_spans, predict_logits
from medqa.device import to_inference_device
from medqa.errors import DataError, ModelError
from medqa.features import build_eval_features
from medqa.modelsource import load_qa_model, load_tokenizer
from medqa.scoring import decide_timed

DECODING_FILE = "decoding.json"
# Longest context accepted, in characters: the validate stage's default max_context_chars. Longer
# texts are split into sliding windows like any other, but one request must stay bounded in time.
MAX_CONTEXT_CHARS = 200_000


def max_question_tokens(tokenizer: PreTrainedTokenizerBase, tokenize: TokenizeParams) -> int:
    """The longest question, in tokens, that windows of ``tokenize`` can take beside a context.

    The tokenizer needs room for more than doc_stride context tokens beside the question, or it
    panics (a Rust panic, not an exception); keeping half a stride more bounds the number of windows
    of a long context.
    """
    return (
        tokenize.max_seq_length
        - tokenizer.num_special_tokens_to_add(pair=True)
        - tokenize.doc_stride
        - tokenize.doc_stride // 2
    )


@dataclass(frozen=True)
class SavedModel:
    """A saved model with the settings recorded beside it, so it is scored exactly as it is served."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokenize: TokenizeParams
    decode: DecodeParams
    threshold: float
    settings_file: Path


def load_saved_model(
    folder: Path, decoding_file: Path | None = None, device: str = "auto"
) -> SavedModel:
    """Weights (safetensors only), tokenizer and recorded decoding settings of a model folder.

    The settings (windows, n-best, answer length, abstention threshold) come from ``decoding_file``,
    by default the folder's own decoding.json, which the register stage bundles with every version.
    A checkpoint straight from training has none: its threshold is in the evaluate stage's
    reports/decoding.json.
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
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
        tokenize = TokenizeParams(int(settings["max_seq_length"]), int(settings["doc_stride"]))
        decode = DecodeParams(int(settings["n_best"]), int(settings["max_answer_length"]))
        threshold = float(settings["null_threshold"])
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(
            f"{settings_file}: cannot read decoding settings ({str(e).splitlines()[0]})"
        ) from None
    except KeyError as e:
        raise ModelError(f"{settings_file}: missing key {e.args[0]!r}") from None
    model = to_inference_device(load_qa_model(str(folder)), device)
    return SavedModel(
        model, load_tokenizer(str(folder)), tokenize, decode, threshold, settings_file
    )


def score_saved_model(
    saved: SavedModel, rows: Sequence[dict[str, Any]], labels: Sequence[str], batch_size: int
) -> tuple[list[SpanDecision], list[dict[str, Any]], float]:
    """Decisions on ``rows`` tokenized with the model's own tokenizer and windows; also the windows
    and the seconds of the batched forward pass. ``labels`` name the rows in errors.

    A question too long for the model's windows is refused up front: the tokenizer would abort the
    whole process with a Rust panic instead of raising.
    """
    limit = max_question_tokens(saved.tokenizer, saved.tokenize)
    lengths = (
        [
            len(ids)
            for ids in saved.tokenizer(
                [r["question"].lstrip() for r in rows], add_special_tokens=False
            )["input_ids"]
        ]
        if rows
        else []
    )
    for label, n in zip(labels, lengths):
        if n > limit:
            raise DataError(f"{label}: question has {n} tokens; this model takes at most {limit}")
    features = build_eval_features(saved.tokenizer, list(rows), saved.tokenize) if rows else []
    decisions, seconds = decide_timed(
        saved.model, features, rows, saved.decode, batch_size, saved.tokenizer.pad_token_id or 0
    )
    return decisions, features, seconds


class QAPredictor:
    """A loaded model plus its decoding settings; ``predict`` takes question/context records."""

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "auto",
        batch_size: int = 32,
        decoding_file: Path | None = None,
    ):
        saved = load_saved_model(Path(model_dir), decoding_file, device=device)
        self.model, self.tokenizer, self.threshold = saved.model, saved.tokenizer, saved.threshold
        self.tokenize, self.decode = saved.tokenize, saved.decode
        self.batch_size = batch_size
        self.max_question_tokens = max_question_tokens(self.tokenizer, self.tokenize)

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
        n_question = len(
            self.tokenizer(record["question"].lstrip(), add_special_tokens=False)["input_ids"]
        )
        if n_question > self.max_question_tokens:
            return f"question has {n_question} tokens; this model takes at most {self.max_question_tokens}"
        return None

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per record: answer ("" when the model abstains), score, start, end."""
        for i, r in enumerate(records):
            if (why := self.problem(r)) is not None:
                raise DataError(f"record {i + 1}: {why}")
        if not records:
            return []
        features = build_eval_features(self.tokenizer, records, self.tokenize)
        starts, ends = predict_logits(
            self.model, features, self.batch_size, self.tokenizer.pad_token_id or 0
        )
        decisions = decode_best_spans(
            features, starts, ends, [r["context"] for r in records], self.decode
        )
        results = []
        for d in decisions:
            answer = d.answer(self.threshold)
            results.append(
                {
                    "answer": answer,
                    "score": float(d.answer_prob if answer else 1 - d.answer_prob),
                    "start": int(d.start) if answer else -1,
                    "end": int(d.end) if answer else -1,
                    "abstained": not answer,
                }
            )
        return results


def read_records(stream: IO[str], fmt: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) pairs from a JSONL or CSV stream, one at a time (files of any size).

    JSONL: one JSON object per line, blank lines skipped. CSV: a header row naming the columns;
    the line number is the record's last line (a quoted field may span several).
    """
    if fmt == "csv":
        reader = csv.DictReader(stream)
        if reader.fieldnames is None:
            return
        for row in reader:
            yield reader.line_num, row
        return
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line {n}: invalid JSON ({e.msg} at column {e.colno})") from None


def predict_stream(
    predictor: QAPredictor,
    records: Iterable[tuple[int, Any]],
    write: Callable[[dict[str, Any]], None],
    batch_size: int,
    on_batch: Callable[[int], None] = lambda n: None,
) -> int:
    """Answer ``records`` in batches of ``batch_size``, calling ``write`` per result; return the count.

    Each record is checked as it is read, so a bad one stops the run with its line number before
    its batch is predicted. A result's ``id`` is the record's ``id`` or, without one, its line number.
    """
    batch: list[tuple[int, dict[str, Any]]] = []
    total = 0

    def flush() -> None:
        nonlocal total
        for (line, rec), res in zip(
            batch,
            predictor.predict(
                [{"question": r["question"], "context": r["context"]} for _, r in batch]
            ),
        ):
            rid = rec.get("id")
            write({"id": line if rid in (None, "") else rid, **res})
        total += len(batch)
        on_batch(len(batch))
        batch.clear()

    for line, rec in records:
        if (why := predictor.problem(rec)) is not None:
            raise DataError(f"line {line}: {why}")
        batch.append((line, rec))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return total
