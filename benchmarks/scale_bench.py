"""The scale benchmark (``make bench-scale``): validate and tokenize on synthetic data of growing size,
each stage a ``medqa`` subprocess timed and watched for memory, and the growth between sizes.

``python -m benchmarks.scale_bench --sizes 10000 100000 [1000000]`` generates each size with
``benchmarks.scale_data``, runs ``medqa validate`` then ``medqa tokenize`` on it (on every available
core), tokenizes once more on one core at the largest size up to PARALLEL_MAX_QUESTIONS, and writes
``reports/bench_scale.md`` with the report writer of ``make bench``: wall time, questions/s and peak
RSS per stage and size, the growth exponents between sizes (log time ratio / log size ratio; 1 is
linear) and the speedup of tokenize on all cores over one.

Peak RSS is given two ways: of the largest single process (``ru_maxrss`` of the stage's process
tree, what ``/usr/bin/time`` reports) and of all its processes together (polled every
POLL_SECONDS; tokenize's workers share the parent's pages after fork, so this sum overstates).
"""

from __future__ import annotations

import argparse
import contextlib
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
from benchmarks.scale_data import write_squad

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.2
PARALLEL_MAX_QUESTIONS = 100_000  # the one-core tokenize rerun: at the largest size up to this
RSS_TARGET_MIB = 3 * 1024  # issue 28: validate and tokenize within 3 GB at a million questions
STAGES = ("validate", "tokenize")


@dataclass(frozen=True)
class Measured:
    """One stage run: its size, the cores it had, wall seconds and peak RSS (MiB) two ways."""

    stage: str
    questions: int
    cores: int
    seconds: float
    peak_process_mib: float  # the largest single process (ru_maxrss)
    peak_tree_mib: float  # all its processes together, polled

    @property
    def per_second(self) -> float:
        return self.questions / self.seconds


def _tree_rss(process: psutil.Process) -> int:
    """Bytes resident in ``process`` and its descendants now (those that vanish mid-count: 0)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that ended mid-count
            total += p.memory_info().rss
    return total


def run_measured(cmd: list[str], cores: set[int] | None, log: Path) -> tuple[float, float, float]:
    """Run ``cmd`` (on ``cores`` only, when given) with its output appended to ``log``; its wall
    seconds, the peak RSS of its largest process and of all its processes (MiB). A failure raises,
    naming the log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log, "a") as out:
        child = subprocess.Popen(
            cmd,
            cwd=ROOT,
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


def measure_size(questions: int, scratch: Path, parallel: bool, seed: int) -> list[Measured]:
    """Generate ``questions`` questions, validate and tokenize them; with ``parallel`` tokenize once
    more on one core. Each stage's outputs go under ``scratch``."""
    work, log = scratch / str(questions), scratch / "stages.log"
    write_squad(work / "raw" / "data.json", questions, seed)
    medqa = [sys.executable, "-m", "medqa", "-q"]
    validate = [
        *medqa,
        "validate",
        *("--raw", str(work / "raw"), "--out", str(work / "validated")),
        *("--rejected", str(work / "rejected.jsonl"), "--repairs", str(work / "repairs.jsonl")),
        *("--report", str(work / "validation.json")),
    ]
    tokenize = [*medqa, "tokenize", "--validated", str(work / "validated"), "--out"]
    all_cores = os.sched_getaffinity(0)
    runs: list[tuple[str, list[str], set[int] | None, int]] = [
        ("validate", validate, None, len(all_cores)),
        ("tokenize", [*tokenize, str(work / "features")], None, len(all_cores)),
    ]
    if parallel and len(all_cores) > 1:
        one_core = {min(all_cores)}
        runs.append(("tokenize", [*tokenize, str(work / "features-1core")], one_core, 1))
    out = []
    for stage, cmd, cores, n_cores in runs:
        print(f"{questions} questions: {stage} on {n_cores} core(s) ...", flush=True)
        seconds, peak_process, peak_tree = run_measured(cmd, cores, log)
        out.append(Measured(stage, questions, n_cores, seconds, peak_process, peak_tree))
    shutil.rmtree(work)  # a million questions fill gigabytes
    return out


def growth(small: Measured, large: Measured) -> tuple[float, float]:
    """Growth exponents of time and of peak RSS (largest process) from ``small`` to ``large``:
    log ratio of the measure over log ratio of the sizes (1: linear, 0: flat)."""
    sizes = math.log(large.questions / small.questions)
    return (
        math.log(large.seconds / small.seconds) / sizes,
        math.log(large.peak_process_mib / small.peak_process_mib) / sizes,
    )


def stage_rows(runs: list[Measured]) -> list[Row]:
    """Per stage and size on all cores: wall time, questions/s and peak RSS both ways, the RSS
    target marked at a million questions and more."""
    rows = []
    for m in runs:
        label = f"{m.stage}, {m.questions:,} q"
        at_scale = m.questions >= 1_000_000
        rows += [
            Row(label, "wall s", m.seconds),
            Row(label, "questions/s", m.per_second),
            Row(
                label,
                "peak RSS MiB, largest process",
                m.peak_process_mib,
                target=f"≤ {RSS_TARGET_MIB:,} at 1M" if at_scale else "",
                passed=m.peak_process_mib <= RSS_TARGET_MIB if at_scale else None,
            ),
            Row(label, "peak RSS MiB, all processes", m.peak_tree_mib),
        ]
    return rows


def growth_rows(runs: list[Measured]) -> list[Row]:
    """Between consecutive sizes of each stage: the growth exponents, and time per question at the
    larger size over the smallest size's (the ±30% target)."""
    rows = []
    for stage in STAGES:
        sized = sorted((m for m in runs if m.stage == stage), key=lambda m: m.questions)
        for small, large in itertools.pairwise(sized):
            label = f"{stage}, {small.questions:,} → {large.questions:,} q"
            time_exp, rss_exp = growth(small, large)
            per_q = (large.seconds / large.questions) / (sized[0].seconds / sized[0].questions)
            rows += [
                Row(label, "time exponent (1 = linear)", time_exp),
                Row(label, "peak RSS exponent (0 = flat)", rss_exp),
                Row(
                    label,
                    f"s/question vs {sized[0].questions:,} q",
                    per_q,
                    target="0.7–1.3×",
                    passed=0.7 <= per_q <= 1.3,
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
    title = "medqa at corpus scale: validate and tokenize on synthetic data"
    return render_report(title, machine, rows, notes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000], help="questions per run"
    )
    parser.add_argument("--seed", type=int, default=0, help="the synthetic data's seed")
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "bench_scale.md")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the log folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure every size, write the report and print it."""
    from medqa.fileio import write_text_atomic

    args = _parser().parse_args(argv)
    sizes = sorted(set(args.sizes))
    parallel_at = max((n for n in sizes if n <= PARALLEL_MAX_QUESTIONS), default=sizes[0])
    scratch = Path(tempfile.mkdtemp(prefix="medqa-scale-"))
    load_start, started = os.getloadavg()[0], time.perf_counter()
    runs = [m for n in sizes for m in measure_size(n, scratch, n == parallel_at, args.seed)]
    cores = len(os.sched_getaffinity(0))
    notes = [
        f"{cores} cores; wall {(time.perf_counter() - started) / 60:.1f} min; load average "
        f"{load_start:.2f} at the start and {os.getloadavg()[0]:.2f} at the end (other work on "
        "the machine slows every figure).",
        "Data: benchmarks/scale_data.py, ~250-word passages of clinical words, 8 questions a "
        f"passage, 10% unanswerable, seed {args.seed}; splits by a hash of the context (70/15/15).",
        "Each stage is one `medqa` subprocess; questions/s counts the questions read.",
    ]
    text = render_scale_report(runs, f"{sys.platform}, {cores} cores", notes)
    write_text_atomic(args.output, text)
    print("\n" + text + f"\nwritten to {args.output}")
    if not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
