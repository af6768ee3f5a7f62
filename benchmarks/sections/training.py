"""Section 1: training throughput and the dev F1 it reaches, medqa.training.fine_tune against a
run_qa-style Trainer on the same rows, recipe, seed, model and device.

The training runs themselves are benchmarks.training_bench's, each in a fresh process; this module
plans them, interleaves the paths and turns their steps into the report's rows and notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.bench import F1_TOLERANCE, Bench, subset
from benchmarks.report import Row, ratio, speed_at_equal_f1

if TYPE_CHECKING:  # not at run time: it imports transformers, which must wait for OMP_NUM_THREADS
    from benchmarks.training_bench import TrainRun

SECTION = "1 training"
TRAIN_SPEEDUP_TARGET = 1.3
PRECISION_SPEEDUP_TARGET = 1.7  # training at the auto precision vs fp32, where auto is not fp32
PRECISION_F1_TOLERANCE = 0.01


@dataclass(frozen=True)
class Plan:
    """What every training run of the section sees, so that the paths differ only in their code."""

    rows: list[dict[str, Any]]  # the training pool
    dev: list[dict[str, Any]]  # the questions dev F1 is scored on
    epochs: float  # the schedule's length
    max_steps: int | None  # the run stops after this many optimizer steps; None: whole schedule

    @property
    def n_epochs(self) -> str:
        return f"{self.epochs:g} epoch{'' if self.epochs == 1 else 's'}"

    @property
    def trained(self) -> str:
        """How much training the dev F1 is after, as the rows and notes name it."""
        return f"{self.max_steps} steps" if self.max_steps else self.n_epochs


def section(b: Bench) -> list[Row]:
    """1. medqa's fine_tune vs the run_qa-style Trainer: same rows, recipe, seed, model, device."""
    from benchmarks.training_bench import combine

    p = b.preset
    plan = Plan(
        subset(b.train_rows, p.train_questions),
        subset(b.dev_rows, p.dev_questions),
        p.epochs or b.params.train.epochs,
        p.warmup_steps + p.train_steps if p.train_steps else None,
    )
    runs = _train(b, plan)
    ours, ref = combine(runs["ours"]), combine(runs["ref"])
    b.ours_run, b.ours_run_questions = ours, len(plan.rows)
    b.notes += _notes(b, plan, ours.precision)
    out = _rows(plan, ours, ref, b.machine.threads)
    if runs["fp32"]:
        b.notes.append(
            f"Ours at fp32: the same path and params with train.precision fp32 instead of auto "
            f"({ours.precision} here), run as often as ours and interleaved with it. After "
            f"{plan.trained} dev F1 only shows that the two did not diverge; test F1 at both "
            "precisions over the whole schedule is in docs/results.md."
        )
        out[1:1] = _precision_rows(plan, ours, combine(runs["fp32"]))
    peak = b.machine.peak_flops
    if peak:
        out.append(
            Row(
                SECTION,
                "share of nominal CPU peak",
                ours.flops_per_s() / peak,
                ref.flops_per_s() / peak,
                _steps(ours, ref),
            )
        )
    return out


def _train(b: Bench, plan: Plan) -> dict[str, list[TrainRun]]:
    """Every path's TrainRuns: ours, the reference, and "fp32" (ours again with train.precision fp32)
    when auto chose something else (bf16 on a CPU with native bf16), which isolates the speed-up of
    the precision policy. The paths alternate, so a burst of other work hits every path alike."""
    from benchmarks.training_bench import train_ours, train_reference, training_precision

    p = b.preset
    uri = f"sqlite:///{b.scratch / 'mlflow.db'}"
    runs: dict[str, list[TrainRun]] = {"ours": [], "ref": [], "fp32": []}
    paths = ["ours", "ref"] + (["fp32"] if b.isolated(training_precision) != "fp32" else [])
    for r in range(p.rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            # a path's later runs are the same seeded training again: only its first is scored
            scored = plan.dev if not runs[path] else None
            work = b.scratch / f"train-{path}-{r}"
            shared = (work, plan.rows, scored, b.max_len, b.stride, plan.epochs, p.warmup_steps)
            if path == "ref":
                precision = runs["ours"][0].precision  # the one medqa's run chose
                runs[path].append(b.isolated(train_reference, *shared, plan.max_steps, precision))
                continue
            precision = None if path == "ours" else "fp32"
            runs[path].append(b.isolated(train_ours, *shared, plan.max_steps, uri, precision))
            if path == "ours":
                b.ours_model = work / "model"
    return runs


def _notes(b: Bench, plan: Plan, precision: str) -> list[str]:
    """The notes that say what was trained and how it was timed and counted."""
    p, tp = b.preset, b.params.train
    warmup = f"{p.warmup_steps} warm-up step{'' if p.warmup_steps == 1 else 's'}"
    schedule = (
        (
            f"the first {plan.max_steps} optimizer steps of a {plan.epochs:g}-epoch schedule over a "
            f"pool of {len(plan.rows)} train questions (a large pool, because the Trainer's length "
            "grouping sorts mega-batches of at most a quarter of the data: below 8 batches it groups "
            "nothing)"
        )
        if plan.max_steps
        else f"{plan.n_epochs} over {len(plan.rows)} train questions"
    )
    rounds = (
        f"; each path run {p.rounds} times, alternating (ours, ref, ref, ours...), steps pooled"
        if p.rounds > 1
        else ""
    )
    return [
        f"Training: {schedule}{rounds}; batch {tp.batch_size}, seed {tp.seed}, {precision}, encoder lr "
        f"{tp.learning_rate:g} (ours: QA head lr {tp.head_learning_rate:g}; reference: one lr for all), "
        f"windows of {b.max_len} tokens with stride {b.stride}. Figures are medians over the optimizer "
        f"steps after {warmup}, each timed from the previous step's end (collation, forward, backward, "
        f"optimizer); examples are training windows. Dev F1: {len(plan.dev)} dev questions, both models "
        "scored by medqa.scoring.score_split.",
        "FLOP/s counts useful work only, real tokens x (6 x non-embedding parameters + 12 x layers x "
        "hidden x mean real length for attention); the reference also computes its padding, which is "
        "not counted.",
    ]


def _steps(ours: TrainRun, ref: TrainRun) -> str:
    """The n column of a per-step row: the timed steps of each path, once where they are equal."""
    n = len(ours.steps), len(ref.steps)
    return f"{n[0]}/{n[1]} steps" if n[0] != n[1] else f"{n[0]} steps"


def _rows(plan: Plan, ours: TrainRun, ref: TrainRun, threads: int) -> list[Row]:
    """Ours against the reference: speed, CPU use, padding, dev F1, memory and useful FLOP/s."""
    steps = _steps(ours, ref)
    met = speed_at_equal_f1(
        ratio(ours.examples_per_s(), ref.examples_per_s()),
        ours.dev_f1,
        ref.dev_f1,
        TRAIN_SPEEDUP_TARGET,
        F1_TOLERANCE,
    )
    return [
        Row(
            SECTION,
            "examples/s",
            ours.examples_per_s(),
            ref.examples_per_s(),
            steps,
            f"≥ {TRAIN_SPEEDUP_TARGET}× at equal dev F1 (−{F1_TOLERANCE})",
            met,
        ),
        Row(
            SECTION,
            "examples per CPU-second (all threads)",
            ours.examples_per_cpu_s(),
            ref.examples_per_cpu_s(),
            steps,
        ),
        Row(
            SECTION,
            "CPU busy share (< 1: cores shared with other work)",
            ours.cpu_busy_share(threads),
            ref.cpu_busy_share(threads),
            steps,
        ),
        Row(SECTION, "real tokens/s", ours.tokens_per_s(), ref.tokens_per_s(), steps),
        Row(SECTION, "s/step", ours.seconds_per_step(), ref.seconds_per_step(), steps),
        Row(
            SECTION,
            "padding share of computed tokens",
            ours.padding_share(),
            ref.padding_share(),
            steps,
        ),
        Row(SECTION, f"dev F1 after {plan.trained}", ours.dev_f1, ref.dev_f1, f"{len(plan.dev)} q"),
        Row(SECTION, f"peak {ours.memory_kind} MiB", ours.peak_memory_mib, ref.peak_memory_mib, 1),
        Row(SECTION, "useful GFLOP/s", ours.flops_per_s() / 1e9, ref.flops_per_s() / 1e9, steps),
    ]


def _precision_rows(plan: Plan, ours: TrainRun, fp32: TrainRun) -> list[Row]:
    """Ours at the auto precision against ours at fp32: the gain of the precision policy alone."""
    speed = ratio(ours.examples_per_s(), fp32.examples_per_s())
    return [
        Row(
            SECTION,
            f"examples/s, ours at {ours.precision} (auto) vs ours at fp32",
            ours.examples_per_s(),
            fp32.examples_per_s(),
            f"{len(ours.steps)}/{len(fp32.steps)} steps",
            f"≥ {PRECISION_SPEEDUP_TARGET}× at equal dev F1 (−{PRECISION_F1_TOLERANCE})",
            speed_at_equal_f1(
                speed, ours.dev_f1, fp32.dev_f1, PRECISION_SPEEDUP_TARGET, PRECISION_F1_TOLERANCE
            ),
        ),
        Row(SECTION, "dev F1, ours at fp32", fp32.dev_f1, None, f"{len(plan.dev)} q"),
    ]
