"""How much each preset measures: the data each section uses and how many repeats each median is over.

``small`` keeps ``make bench`` to minutes on a 2-core CPU; ``full`` measures the whole recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVE_BATCH = 32  # records in section 6's one batch request


@dataclass(frozen=True)
class Preset:
    """How much data each section uses and how many repeats each median is over."""

    name: str
    train_questions: int | None  # section 1's training pool; None: the whole train split
    epochs: float | None  # the schedule's length; None: the recipe's (params.yaml)
    # timed steps per run of section 1 (then it stops); None: every step of the schedule
    train_steps: int | None
    rounds: int  # section 1 runs each path this often, in the order ours, ref, ref, ours, ...
    warmup_steps: int  # optimizer steps left out of the timing
    dev_questions: int | None  # dev F1 of section 1
    infer_questions: int | None  # section 2's questions (dev split)
    infer_repeats: int
    latency_samples: int
    tokenize_repeats: int
    orchestration_repeats: int
    prefect: bool
    scaling_questions: int  # data size x1 of section 5
    scaling_steps: int  # timed steps per scaling point
    serve_questions: int  # section 6's dev questions (at least SERVE_BATCH)
    serve_requests: dict[int, int]  # concurrent clients -> one-question requests they send in all
    seq_lengths: tuple[int, ...] = (256, 384, 512)
    data_multiples: tuple[int, ...] = (1, 2, 4)


PRESETS = {
    "small": Preset(
        "small",
        train_questions=768,
        epochs=1,
        train_steps=3,
        rounds=2,
        warmup_steps=1,
        dev_questions=64,
        infer_questions=48,
        infer_repeats=3,
        latency_samples=16,
        tokenize_repeats=5,
        orchestration_repeats=3,
        prefect=True,
        scaling_questions=192,
        scaling_steps=3,
        serve_questions=32,
        serve_requests={1: 24, 4: 32, 8: 48},
    ),
    "full": Preset(
        "full",
        train_questions=None,
        epochs=None,
        train_steps=None,
        rounds=1,
        warmup_steps=2,
        dev_questions=None,
        infer_questions=None,
        infer_repeats=5,
        latency_samples=50,
        tokenize_repeats=10,
        orchestration_repeats=5,
        prefect=True,
        scaling_questions=312,
        scaling_steps=5,
        serve_questions=128,
        serve_requests={1: 100, 4: 200, 8: 400},
    ),
}
