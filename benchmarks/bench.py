"""What every section is given: the preset, the machine, the data and a scratch folder, plus the notes
the sections write for the report and what one section hands on to a later one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Machine, run_isolated
from benchmarks.presets import Preset

ROOT = Path(__file__).resolve().parents[1]
F1_TOLERANCE = 0.02  # "equal F1": ours at most this much below the reference
SEED = 0  # which questions the subsets take


def subset(rows: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The first ``n`` rows (all for None); rows are shuffled once on load, so this is a fair sample."""
    return rows if n is None else rows[:n]


@dataclass
class Bench:
    """State shared by the sections of one run."""

    preset: Preset
    machine: Machine
    scratch: Path
    log: Path
    params: Any
    train_rows: list[dict[str, Any]]  # the whole train split, in a fixed shuffled order
    dev_rows: list[dict[str, Any]]  # the whole dev split, in a fixed shuffled order
    notes: list[str] = field(default_factory=list)
    # section 1's TrainRun of medqa's path, reused by section 5 where the set-up is the same
    ours_run: Any = None
    ours_run_questions: int = 0  # how many train questions that run drew its batches from
    ours_model: Path | None = None  # the model section 1 trained with medqa's path
    infer_model: Path | None = None  # the model folder section 2 timed, which section 6 serves

    def isolated(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a fresh process that logs to the run's log (measure.run_isolated says why)."""
        return run_isolated(self.log, fn, *args)

    @property
    def stride(self) -> int:
        return self.params.tokenize.doc_stride

    @property
    def max_len(self) -> int:
        return self.params.tokenize.max_seq_length


def load_rows(scratch: Path, params: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and dev rows from data/validated, or validated afresh from the raw data into ``scratch``;
    shuffled with a fixed seed so a subset of the first N questions is a fair sample."""
    from medqa.fileio import read_jsonl

    validated = ROOT / "data" / "validated"
    if not (validated / "train.jsonl").exists():
        from medqa.validate import validate_records

        validated = scratch / "validated"
        validate_records(
            ROOT / params.validate.raw_path,
            validated,
            scratch / "rejected.jsonl",
            scratch / "validation.json",
            params.validate,
        )
    splits = []
    for split in ("train", "dev"):
        rows = read_jsonl(validated / f"{split}.jsonl")
        random.Random(SEED).shuffle(rows)
        splits.append(rows)
    return splits[0], splits[1]
