"""The agreements between stages, tools and orchestrators, each written once.

A stage writes a file that another stage, a tool (predict, serve, the registry) or an orchestrator
(dvc.yaml, the Prefect flow) reads back; the name, the shape and the error line they agree on live
here. This module imports nothing else from medqa, so every module can use it and editing a stage
never changes what another stage imports.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

# --- reports the stages write under reports/ (dvc.yaml lists the same paths) ----------------------
VALIDATION_REPORT = "validation.json"
REJECTED_ROWS = "rejected.jsonl"
REPAIRS_LOG = "repairs.jsonl"
METRICS_REPORT = "metrics.json"  # every figure of an evaluation
HEADLINE_METRICS = "headline.json"  # its headline figures: what `dvc metrics show` lists
PREDICTIONS_REPORT = "predictions.jsonl"
ERRORS_REPORT = "errors.md"
DECODING_FILE = "decoding.json"  # also beside the weights of a registered model
TRAIN_CURVE = "train_curve.json"  # beside the weights, then completed by evaluate under reports/
REGISTRATION_REPORT = "registration.json"
RELIABILITY_PLOT = "reliability.png"  # calibrated confidence against the share right
RISK_COVERAGE_PLOT = "risk_coverage.png"  # answered F1 against the share of questions answered
MODEL_CARD = "model_card.md"  # with each registered version

# --- beside the weights of a checkpoint -----------------------------------------------------------
# A served request's fields, and what it may set (MLflow's ``params``): min_confidence replaces the
# version's answer policy for that request.
REQUEST_FIELDS = ("question", "context")
REQUEST_PARAMS = ("min_confidence",)
INFERENCE_CONFIG = "medqa.json"  # what prediction needs to match training (windows, base model)

# --- the arithmetic a model runs in ---------------------------------------------------------------
# auto: the device's policy (medqa.device.choose_precision); the others are what a model runs in.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_CHOICES: tuple[str, ...] = get_args(Precision)
PRECISIONS = PRECISION_CHOICES[1:]
# auto: compile where the evaluate stage measured it faster with the same answers (medqa.engine)
Engine = Literal["auto", "eager", "compile"]
ENGINE_CHOICES: tuple[str, ...] = get_args(Engine)
ENGINES = ENGINE_CHOICES[1:]

# --- how a command reports a user's error, and how an orchestrator recognises it -------------------
USER_ERROR_EXIT = 2  # a user error (bad input, config, model): fixing the input fixes the run
_ERROR_LINE = re.compile(r"^medqa \S+: error: .*$", re.MULTILINE)


def error_line(command: str, message: str) -> str:
    """The one line `medqa COMMAND` prints to stderr for a user error before exiting 2."""
    return f"medqa {command}: error: {message}"


def find_error_line(output: str) -> str | None:
    """The last error line in a command's output (the Prefect flow quotes it), or None."""
    found = _ERROR_LINE.findall(output)
    return found[-1] if found else None


def progress_bars_shown() -> bool:
    """Whether progress bars are drawn: they belong to a terminal, so only on a stderr that is one,
    and not under `medqa -q`, which sets the "medqa" logger to warnings. Whatever draws a bar asks
    (predict's batches, the Trainer), and the CLI turns the libraries' own bars off by it."""
    return sys.stderr.isatty() and logging.getLogger("medqa").isEnabledFor(logging.INFO)


@dataclass(frozen=True)
class DecodingSettings:
    """How answers are read off the model: written once by evaluate into ``decoding.json`` (and with
    each registered version), read by predict, serve and the registry's champion check."""

    n_best: int
    max_answer_length: int
    null_threshold: float
    max_seq_length: int
    doc_stride: int
    precision: str | None = None  # None: not recorded (folders from before it was), scored in fp32
    # the dev-fitted confidence calibrator and answer policy (medqa.calibration); None: none
    # recorded (folders from before it was): raw scores, every answer given
    calibration: dict[str, Any] | None = None
    # what ran the test pass (medqa.engine); None: not recorded (folders from before it was), eager
    engine: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecodingSettings:
        """Settings from a parsed ``decoding.json``; KeyError names a missing key, ValueError or
        TypeError a value of the wrong kind (callers turn both into a one-line error)."""
        precision = data.get("precision")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        engine = data.get("engine")
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        return cls(
            n_best=int(data["n_best"]),
            max_answer_length=int(data["max_answer_length"]),
            null_threshold=float(data["null_threshold"]),
            max_seq_length=int(data["max_seq_length"]),
            doc_stride=int(data["doc_stride"]),
            precision=precision,
            calibration=data.get("calibration"),
            engine=engine,
        )
