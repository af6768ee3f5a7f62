"""Which engine runs a model's forward pass at inference: eager torch, or torch.compile (inductor).

On CPUs without native bf16 the forward pass runs in fp32, and there torch.compile's fused
kernels were measured 1.11-1.24x faster than eager with every answer the same (docs/benchmarks.md,
issue "Fast answers on every CPU"); post-training int8 was faster still but changed about one answer
in five, so it is not offered. Compiling costs tens of seconds to minutes once per process (a C++
compiler builds the kernels), so it pays back only in a long run: the evaluate stage measures it
against eager on the test split and records the engine with the version only where it measured
faster with the same answers; ``medqa serve`` then compiles once at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medqa.config import DecodeParams
from medqa.contracts import ENGINE_CHOICES
from medqa.decoding import SpanDecision, predict_logits
from medqa.errors import ConfigError
from medqa.scoring import (
    f1_of,
    first_questions,
    gold_texts,
    sample_questions,
    span_decisions_timed,
)

log = logging.getLogger(__name__)

# auto picks compile only when the compiled test pass was at least this much faster than eager...
MIN_SPEEDUP = 1.05
# ...gave the same answer on at least this share of test questions...
MIN_SAME_ANSWERS = 0.99
# ...and test F1 moved by at most this much (the bar for an engine at "the same F1").
MAX_F1_CHANGE = 0.005
# auto times compile only on a test split at least this large: fewer questions are over in seconds,
# too short to time against a compile of a minute or more (and the test suite's tiny splits stay
# eager, fast).
MIN_TRIAL_QUESTIONS = 200
# a larger test split is judged on this many of its questions first (drawn by TRIAL_SEED), so a
# compile that is not faster costs a sample's two passes, not a second pass over all of test: at
# 100k questions that is 15,000 (~28 min with MiniLM on 2 cores) against 1,000 twice (~4 min)
TRIAL_SAMPLE_QUESTIONS = 1000
TRIAL_SEED = 0


def engine_candidate(
    requested: str, device_type: str, precision: str, setting: str = "engine"
) -> tuple[str, str]:
    """(engine, why) before any measurement: what ``requested`` asks for on this device.

    auto proposes compile only on a CPU at fp32, the one place it was measured (a CPU with native
    bf16 runs bf16 autocast, already ~2x fp32; a GPU has not been measured). The evaluate stage
    then keeps it only if it measures faster there (:func:`judge_trial`).
    """
    if requested not in ENGINE_CHOICES:
        raise ConfigError(f"{setting} {requested!r} is not one of {', '.join(ENGINE_CHOICES)}")
    if requested != "auto":
        return requested, f"set by {setting}"
    if device_type == "cpu" and precision == "fp32":
        return "compile", "CPU at fp32: torch.compile, if it measures faster with the same answers"
    return "eager", f"{device_type} at {precision}: torch.compile is measured only on a CPU at fp32"


@dataclass(frozen=True)
class EngineTrial:
    """The compiled engine against eager on the same questions, as the evaluate stage measured it."""

    questions: int
    eager_seconds: float  # the batched forward over the questions' windows
    compiled_seconds: float  # the same, compiled, after compiling
    compile_seconds: float  # compiling (and the warm-up batch that triggers it)
    same_answers: float  # share of questions with the same decision (answer or abstention)
    eager_f1: float
    compiled_f1: float

    @property
    def speedup(self) -> float:
        return self.eager_seconds / self.compiled_seconds if self.compiled_seconds else 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "questions": self.questions,
            "eager_seconds": self.eager_seconds,
            "compiled_seconds": self.compiled_seconds,
            "compile_seconds": self.compile_seconds,
            "speedup": self.speedup,
            "same_answers": self.same_answers,
            "eager_f1": self.eager_f1,
            "compiled_f1": self.compiled_f1,
        }


def judge_trial(requested: str, trial: EngineTrial) -> tuple[str, str]:
    """(engine, why) after the trial: compile when asked for, or under auto when it was faster by
    MIN_SPEEDUP with the same answers (MIN_SAME_ANSWERS) and F1 (MAX_F1_CHANGE); else eager."""
    figures = (
        f"{trial.speedup:.2f}x eager, {trial.same_answers:.1%} same answers, test F1 "
        f"{trial.compiled_f1:.4f} vs {trial.eager_f1:.4f} on {trial.questions} questions"
    )
    if requested == "compile":
        return "compile", f"set by evaluate.engine ({figures})"
    if trial.speedup < MIN_SPEEDUP:
        return "eager", f"auto: torch.compile was not faster ({figures})"
    if (
        trial.same_answers < MIN_SAME_ANSWERS
        or abs(trial.compiled_f1 - trial.eager_f1) > MAX_F1_CHANGE
    ):
        return "eager", f"auto: torch.compile changed answers ({figures})"
    return "compile", f"auto: torch.compile measured faster with the same answers ({figures})"


class CompiledQA(torch.nn.Module):
    """A QA model whose forward runs through ``torch.compile`` (dynamic shapes: windows of any
    length share one graph), falling back to eager for good if compiling fails (no C++ compiler,
    an unsupported operator): the answers are the same either way, only slower.

    Attribute reads the wrapper lacks (``device``, ``config``, the precision cast mark) go to the
    model, so it stands in for it wherever a model is scored.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self._compiled: Any = torch.compile(model, dynamic=True)
        self.failed: str | None = None  # why compiling failed, once it has

    def forward(self, **batch: Any) -> Any:
        if self.failed is None:
            try:
                return self._compiled(**batch)
            except torch._dynamo.exc.TorchDynamoException as e:  # what compiling raises
                self.failed = (str(e).strip() or repr(e)).splitlines()[0][:300]
                log.warning("torch.compile failed, running eager instead: %s", self.failed)
        return self.model(**batch)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def run_trial(
    model: Any,
    test: tuple[Any, Sequence[dict[str, Any]]],
    eager: Sequence[SpanDecision],
    eager_seconds: float,
    threshold: float,
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
    requested: str = "auto",
) -> tuple[CompiledQA, EngineTrial, list[SpanDecision], float]:
    """The compiled model, its trial against the eager pass (``eager``, ``eager_seconds``) on the
    test split ``test`` (windows, rows), and its own test decisions and forward seconds.

    A warm-up compiles first (a full batch, then a batch of one window: size 1 is a shape of its
    own), so the timed pass is of compiled kernels, as a server runs them after start-up. Under
    auto, a test split of more than TRIAL_SAMPLE_QUESTIONS is judged on a sample of them first,
    eager and compiled timed on the same windows: when the sample already rules compile out, the
    whole split is not run again (the decisions and seconds returned are then eager's own).
    """
    compiled = CompiledQA(model)
    start = time.perf_counter()
    windows = [w for q in first_questions(test[0], batch_size) for w in q][:batch_size]
    predict_logits(compiled, windows, batch_size, pad_id)
    predict_logits(compiled, windows[:1], batch_size, pad_id)
    compile_seconds = time.perf_counter() - start
    if requested == "auto" and len(test[1]) > TRIAL_SAMPLE_QUESTIONS:
        sample = sample_questions(test[0], test[1], TRIAL_SAMPLE_QUESTIONS, TRIAL_SEED)
        timed = span_decisions_timed(model, *sample, decode, batch_size, pad_id)
        trial, _, _ = _compiled_pass(
            compiled, sample, timed, compile_seconds, threshold, decode, batch_size, pad_id
        )
        if judge_trial(requested, trial)[0] == "eager" or compiled.failed is not None:
            return compiled, trial, list(eager), eager_seconds
    trial, decisions, seconds = _compiled_pass(
        compiled,
        test,
        (eager, eager_seconds),
        compile_seconds,
        threshold,
        decode,
        batch_size,
        pad_id,
    )
    return compiled, trial, decisions, seconds


def _compiled_pass(
    compiled: CompiledQA,
    split: tuple[Any, Sequence[dict[str, Any]]],
    eager: tuple[Sequence[SpanDecision], float],
    compile_seconds: float,
    threshold: float,
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> tuple[EngineTrial, list[SpanDecision], float]:
    """The compiled model's pass over ``split`` (windows, rows) against eager's (decisions,
    seconds) on the same questions: the trial, and the compiled decisions and seconds."""
    decisions, seconds = span_decisions_timed(
        compiled, split[0], split[1], decode, batch_size, pad_id
    )
    golds = [gold_texts(r) for r in split[1]]
    before = [d.answer(threshold) for d in eager[0]]
    after = [d.answer(threshold) for d in decisions]
    same = sum(a == b for a, b in zip(before, after)) / max(len(after), 1)
    trial = EngineTrial(
        questions=len(after),
        eager_seconds=eager[1],
        compiled_seconds=seconds,
        compile_seconds=compile_seconds,
        same_answers=same,
        eager_f1=_mean_f1(before, golds),
        compiled_f1=_mean_f1(after, golds),
    )
    return trial, decisions, seconds


def _mean_f1(answers: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    return sum(map(f1_of, answers, golds)) / max(len(answers), 1)


def for_engine(model: Any, engine: str) -> Any:
    """``model`` ready to run on ``engine`` (eager: itself)."""
    return CompiledQA(model) if engine == "compile" else model
