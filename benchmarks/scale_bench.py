"""The scale benchmark (``make bench-scale``): the stages on synthetic data of growing size, each
stage a ``medqa`` subprocess timed and watched for memory, and the growth between sizes.

``python -m benchmarks.scale_bench --sizes 10000 100000 [1000000] [--stages ...]`` generates each
size with ``benchmarks.scale_data`` and runs the stages asked for (default: validate and tokenize):
``medqa validate``; ``medqa tokenize`` on every core (and on one, at the size ``--one-core-at``
names: by default the largest up to PARALLEL_MAX_QUESTIONS, else the smallest); the evaluate
stage on the tokenized dev and test splits, each cut to its first ``--eval-cap`` questions;
``medqa predict --input`` of the validated test split. ``long`` adds three articles of ~20,000
tokens (``scale_data.write_long``) through all four. It writes
``reports/bench_scale.md`` with ``make bench``'s report writer: wall time, questions/s and peak RSS
per stage and size, growth exponents between sizes (log time ratio / log size ratio; 1 is linear)
and the speedup of tokenize on all cores over one.

Evaluate and predict run a tiny BERT with random weights (``scale_data.write_tiny_model``): what is
measured is the pipeline around the model.

Peak RSS is given two ways: of the largest single process (``ru_maxrss`` of the stage's process
tree, what ``/usr/bin/time`` reports) and of all its processes together (polled every
POLL_SECONDS; tokenize's workers share the parent's pages after fork, so this sum overstates).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.report import Row, render_report
from benchmarks.scale_data import (
    count_lines,
    eval_inputs,
    write_bench_model,
    write_long,
    write_squad,
)

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.2
PARALLEL_MAX_QUESTIONS = 100_000  # the one-core tokenize rerun: at the largest size up to this
# issue 28: validate and tokenize within 3 GB at 1M questions; evaluate and predict at any size
RSS_TARGET_MIB = 3 * 1024
STAGES = ("validate", "tokenize", "evaluate", "predict")  # the stages compared between sizes
STREAMED = ("evaluate", "predict")  # their peak RSS target holds at any size
PER_QUESTION_TARGET = ("validate", "tokenize")  # time per question within ±30% across sizes
DEFAULT_STAGES = ("validate", "tokenize")
EVAL_CAP = 2_000  # questions of dev and of test that evaluate scores (0: all)
MEDQA = (sys.executable, "-m", "medqa", "-q")
LONG = "20k-token contexts"  # the suffix of the long-context row's stages
PEAK = "peak RSS MiB,"


@dataclass(frozen=True)
class Measured:
    """One stage run: its size, the cores it had, wall seconds and peak RSS (MiB) two ways."""

    stage: str
    questions: int
    cores: int
    seconds: float
    peak_process_mib: float  # the largest single process (ru_maxrss)
    peak_tree_mib: float  # all its processes together, polled
    scored: int = 0  # the questions the stage reads when not all (evaluate, predict); 0: all

    @property
    def read(self) -> int:
        """The questions the stage went through."""
        return self.scored or self.questions

    @property
    def per_second(self) -> float:
        return self.read / self.seconds

    @property
    def label(self) -> str:
        scored = f" ({self.scored:,} read)" if self.scored else ""
        return f"{self.stage}, {self.questions:,} q{scored}"


def _tree_rss(process: psutil.Process) -> int:
    """Bytes resident in ``process`` and its descendants now (those that vanish mid-count: 0)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that ended mid-count
            total += p.memory_info().rss
    return total


def run_measured(
    cmd: list[str], cores: set[int] | None, log: Path, cwd: Path = ROOT
) -> tuple[float, float, float]:
    """Run ``cmd`` in ``cwd`` (on ``cores`` only, if given), output appended to ``log``; its wall
    seconds and peak RSS (MiB) of its largest process and of all of them. A failure raises."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log, "a") as out:
        child = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        watched, peak = psutil.Process(child.pid), 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(watched))
            time.sleep(POLL_SECONDS)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    seconds = time.perf_counter() - start
    if child.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {child.returncode}; see {log}")
    return seconds, usage.ru_maxrss / 1024, max(peak, usage.ru_maxrss * 1024) / 2**20


@dataclass(frozen=True)
class Setup:
    """What every size shares: the stages, the tiny model and its params file, evaluate's cap."""

    stages: frozenset[str]
    model: Path | None
    eval_params: Path | None
    eval_cap: int
    log: Path


def stage_commands(work: Path, setup: Setup, stage: str) -> list[str]:
    """The ``medqa`` command line of ``stage`` on the data under ``work``."""
    if stage == "validate":
        return [
            *MEDQA,
            "validate",
            *("--raw", str(work / "raw"), "--out", str(work / "validated")),
            *("--rejected", str(work / "rejected.jsonl"), "--repairs", str(work / "repairs.jsonl")),
            *("--report", str(work / "validation.json")),
        ]
    if stage.startswith("tokenize"):  # "tokenize" on all cores, "tokenize-1core" on one
        out = work / ("features" if stage == "tokenize" else "features-1core")
        return [*MEDQA, "tokenize", "--validated", str(work / "validated"), "--out", str(out)]
    return [  # predict
        *(*MEDQA, "predict", "--model", str(setup.model), "--input"),
        *(str(work / "validated" / "test.jsonl"), "--output", str(work / "answers.jsonl")),
    ]


def run_stages(
    work: Path, questions: int, setup: Setup, parallel: bool, suffix: str = ""
) -> list[Measured]:
    """Validate the raw data under ``work``, then the stages of ``setup`` (tokenize for evaluate
    too; with ``parallel`` once more on one core), each measured, ``suffix`` after its name."""
    all_cores, out = os.sched_getaffinity(0), []

    def run(stage: str, cmd: list[str], cores: set[int] | None = None, scored: int = 0) -> None:
        n_cores = len(cores or all_cores)
        print(f"{questions} questions{suffix}: {stage} on {n_cores} core(s) ...", flush=True)
        where = setup.log.parent if stage == "evaluate" else ROOT  # beside its relative checkpoint
        peaks = run_measured(cmd, cores, setup.log, where)
        out.append(Measured(stage + suffix, questions, n_cores, *peaks, scored=scored))

    run("validate", stage_commands(work, setup, "validate"))
    if setup.stages & {"tokenize", "evaluate"}:
        run("tokenize", stage_commands(work, setup, "tokenize"))
        if parallel and len(all_cores) > 1:
            run("tokenize", stage_commands(work, setup, "tokenize-1core"), {min(all_cores)})
    if "evaluate" in setup.stages:
        features, validated, scored = eval_inputs(work, setup.eval_cap)
        evaluate = [
            *(*MEDQA, "--params", str(setup.eval_params), "evaluate", "--features", str(features)),
            *("--validated", str(validated), "--reports", str(work / "eval-reports")),
        ]
        run("evaluate", evaluate, scored=scored)
    if "predict" in setup.stages:
        scored = count_lines(work / "validated" / "test.jsonl")
        run("predict", stage_commands(work, setup, "predict"), scored=scored)
    return out


def measure_size(
    questions: int, scratch: Path, parallel: bool, seed: int, setup: Setup
) -> list[Measured]:
    """Generate ``questions`` questions and run the stages of ``setup`` on them (with ``parallel``
    tokenize once more on one core). Each stage's outputs go under ``scratch``."""
    work = scratch / str(questions)
    write_squad(work / "raw" / "data.json", questions, seed)
    out = run_stages(work, questions, setup, parallel)
    shutil.rmtree(work)  # a million questions fill gigabytes
    return out


def measure_long(scratch: Path, seed: int, setup: Setup) -> list[Measured]:
    """Three articles of ~20,000 tokens, one per split, through every stage."""
    work = scratch / "long"
    questions = write_long(work / "raw", seed)
    every = dataclasses.replace(setup, stages=frozenset(STAGES), eval_cap=0)
    out = run_stages(work, questions, every, False, f" ({LONG})")
    shutil.rmtree(work)
    return out


def growth(small: Measured, large: Measured) -> tuple[float, float]:
    """Growth exponents of time and of peak RSS (largest process) from ``small`` to ``large``:
    log ratio of the measure over log ratio of the questions read (1: linear, 0: flat)."""
    sizes = math.log(large.read / small.read)
    return (
        math.log(large.seconds / small.seconds) / sizes,
        math.log(large.peak_process_mib / small.peak_process_mib) / sizes,
    )


def _rss_target(m: Measured) -> tuple[str, bool | None]:
    """Issue 28's peak RSS target: validate and tokenize at 1M questions, the others always."""
    if m.stage.split(" ")[0] in STREAMED or m.stage.endswith(f"({LONG})"):
        return f"≤ {RSS_TARGET_MIB:,}", m.peak_process_mib <= RSS_TARGET_MIB
    if m.questions >= 1_000_000:
        return f"≤ {RSS_TARGET_MIB:,} at 1M", m.peak_process_mib <= RSS_TARGET_MIB
    return "", None


def stage_rows(runs: list[Measured]) -> list[Row]:
    """Per stage and size on all cores: wall time, questions/s and peak RSS both ways, with the
    RSS target where it applies."""
    rows = []
    for m in runs:
        target, passed = _rss_target(m)
        rows += [
            Row(m.label, "wall s", m.seconds),
            Row(m.label, "questions/s", m.per_second),
            Row(
                m.label, f"{PEAK} largest process", m.peak_process_mib, target=target, passed=passed
            ),
            Row(m.label, f"{PEAK} all processes", m.peak_tree_mib),
        ]
    return rows


def growth_rows(runs: list[Measured]) -> list[Row]:
    """Between consecutive sizes of each stage: the growth exponents, and time per question at
    the larger size over the smallest size's (the ±30% target of validate and tokenize)."""
    rows = []
    for stage in STAGES:
        sized = sorted((m for m in runs if m.stage == stage), key=lambda m: m.questions)
        for small, large in itertools.pairwise(sized):
            if small.read == large.read:  # evaluate capped at both sizes: nothing to compare
                continue
            first = sized[0]
            label = f"{stage}, {small.questions:,} → {large.questions:,} q"
            time_exp, rss_exp = growth(small, large)
            per_q = (large.seconds / large.read) / (first.seconds / first.read)
            target, passed = (
                ("0.7–1.3×", 0.7 <= per_q <= 1.3) if stage in PER_QUESTION_TARGET else ("", None)
            )
            rows += [
                Row(label, "time exponent (1 = linear)", time_exp),
                Row(label, "peak RSS exponent (0 = flat)", rss_exp),
                Row(
                    label,
                    f"s/question vs {first.questions:,} q",
                    per_q,
                    target=target,
                    passed=passed,
                ),
            ]
    return rows


def parallel_rows(runs: list[Measured], one_core: list[Measured]) -> list[Row]:
    """Tokenize on all cores (ours) against one core (reference), at the sizes measured both ways."""
    rows = []
    for single in one_core:
        full = next(m for m in runs if m.stage == "tokenize" and m.questions == single.questions)
        speedup = full.per_second / single.per_second
        rows.append(
            Row(
                f"tokenize, {single.questions:,} q",
                f"questions/s, {full.cores} cores vs 1",
                full.per_second,
                single.per_second,
                target="≥ 1.7×",
                passed=speedup >= 1.7,
            )
        )
    return rows


def render_scale_report(runs: list[Measured], machine: str, notes: list[str]) -> str:
    """The markdown report of every measurement: stages, growth, parallel speedup."""
    all_cores = [m for m in runs if m.cores > 1 or m.stage == "validate"]
    one_core = [m for m in runs if m.cores == 1 and m.stage == "tokenize"]
    if not any(m.cores > 1 for m in runs):  # a one-core machine: every run is "all cores"
        all_cores, one_core = runs, []
    rows = stage_rows(all_cores) + growth_rows(all_cores) + parallel_rows(all_cores, one_core)
    stages = [name for name in STAGES if any(m.stage.startswith(name) for m in runs)]
    title = f"medqa at corpus scale: {', '.join(stages)} on synthetic data"
    return render_report(title, machine, rows, notes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000], help="questions per run"
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=[*STAGES, "long"],
        default=list(DEFAULT_STAGES),
        help="stages to measure at each size (validate always runs; evaluate needs tokenize, "
        "which then runs too); long: the 20k-token-context row (default: validate tokenize)",
    )
    parser.add_argument(
        "--eval-cap",
        type=int,
        default=EVAL_CAP,
        help="evaluate scores the first N questions of dev and of test (0: all; default 2,000)",
    )
    parser.add_argument(
        "--one-core-at",
        type=int,
        help="the size at which tokenize also runs on one core, for the parallel speedup (0: at "
        f"none; default: the largest size up to {PARALLEL_MAX_QUESTIONS:,}, else the smallest)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the synthetic data's seed")
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "bench_scale.md")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the log folder")
    return parser


def _notes(args: argparse.Namespace, setup: Setup, started: float, load_start: float) -> list[str]:
    notes = [
        f"{len(os.sched_getaffinity(0))} cores; wall {(time.perf_counter() - started) / 60:.1f} "
        f"min; load average {load_start:.2f} at the start and {os.getloadavg()[0]:.2f} at the end "
        "(other work on the machine slows every figure).",
        "Data: benchmarks/scale_data.py, ~250-word passages of clinical words, 8 questions a "
        f"passage, 10% unanswerable, seed {args.seed}; splits by a hash of the context (70/15/15).",
        "Each stage is one `medqa` subprocess; questions/s counts the questions read.",
    ]
    cap = f"its first {setup.eval_cap:,} questions" if setup.eval_cap else "all of it"
    return notes + [
        note
        for when, note in (
            (
                setup.model is not None,
                "**Evaluate and predict run a tiny random model** (BERT, 2 layers, 32 wide, random "
                "weights, the packaged MiniLM tokenizer): their rows measure the pipeline around "
                "the model (reading, windows, decoding, threshold tuning, calibration, writing), "
                "not a real model's speed; its answers are noise.",
            ),
            (
                "evaluate" in setup.stages,
                f"Evaluate: the evaluate stage on dev and test, each cut to {cap}, streamed from "
                "Arrow in chunks of whole questions; `read` counts dev + test.",
            ),
            ("predict" in setup.stages, "Predict: `medqa predict --input` of test.jsonl."),
            (
                "long" in setup.stages,
                f"{LONG}: one article of ~9,200 words (~20,000 tokens) per split, answers 2%, 50% "
                "and 97% through it, 1 unanswerable (scale_data.write_long); evaluate reads all.",
            ),
        )
        if when
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure every size (and the long contexts), write the report and print it."""
    from medqa.fileio import write_text_atomic

    args = _parser().parse_args(argv)
    sizes = sorted(set(args.sizes))
    parallel_at = args.one_core_at
    if parallel_at is None:
        parallel_at = max((n for n in sizes if n <= PARALLEL_MAX_QUESTIONS), default=sizes[0])
    elif parallel_at and parallel_at not in sizes:
        raise SystemExit(f"--one-core-at {parallel_at}: not one of --sizes {sizes}")
    scratch = Path(tempfile.mkdtemp(prefix="medqa-scale-"))
    load_start, started = os.getloadavg()[0], time.perf_counter()
    model = params = None
    if {"evaluate", "predict", "long"} & set(args.stages):  # the tiny model, its params file
        model, params = write_bench_model(scratch, ROOT / "params.yaml")
    setup = Setup(frozenset(args.stages), model, params, args.eval_cap, scratch / "stages.log")
    runs = [m for n in sizes for m in measure_size(n, scratch, n == parallel_at, args.seed, setup)]
    if "long" in setup.stages:
        runs += measure_long(scratch, args.seed, setup)
    cores = len(os.sched_getaffinity(0))
    notes = _notes(args, setup, started, load_start)
    text = render_scale_report(runs, f"{sys.platform}, {cores} cores", notes)
    write_text_atomic(args.output, text)
    print("\n" + text + f"\nwritten to {args.output}")
    if not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
