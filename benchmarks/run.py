"""Run every benchmark section and write the report: ``python -m benchmarks.run --preset small``.

Sections (each compares medqa's path with a plain Hugging Face one, measured in this same run):

1. training throughput and the dev F1 it reaches: medqa.training.fine_tune vs a run_qa-style Trainer;
2. inference: medqa's QAPredictor vs transformers 4.x pipeline("question-answering") in .venv-bench;
3. tokenization throughput: medqa.features vs the run_qa-style preprocessing;
4. orchestration overhead: a no-op `dvc repro` and a fully cached Prefect flow run;
5. scaling of medqa's training: seconds per step and peak memory against data size and window length;
6. serving: `medqa serve` over loopback (cold start, latency and throughput at concurrency 1/4/8, one
   32-record call) against the raw forward+decode of the same questions.

A section that fails is reported as failed and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.bench import ROOT, Bench, load_rows
from benchmarks.measure import describe_machine
from benchmarks.presets import PRESETS, Preset
from benchmarks.report import Row, render_report, render_table
from benchmarks.sections import SECTIONS


def main(argv: list[str] | None = None) -> int:
    """Measure every section under the chosen preset, write the report; 1 when a section failed."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    threads = args.threads or len(os.sched_getaffinity(0))
    # before torch loads, here and in every child process
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    preset = PRESETS[args.preset]
    b, load_start = _prepare(preset)
    rows, failed = _run_sections(b, started)

    wall = time.perf_counter() - started
    b.notes.append(
        f"Wall time {wall / 60:.1f} min; load average {load_start:.2f} at the start and "
        f"{os.getloadavg()[0]:.2f} at the end (other work on the machine slows both sides alike)."
    )
    title = f"medqa benchmarks: ours vs plain Hugging Face (preset {preset.name})"
    text = render_report(title, b.machine.header(), rows, b.notes)
    from medqa.fileio import write_text_atomic

    write_text_atomic(args.output, text)
    print("\n" + text + f"\nwritten to {args.output}")
    if failed and not args.keep_scratch:
        print(
            f"sections failed: {', '.join(failed)}; scratch folder kept for its log: {b.scratch}",
            file=sys.stderr,
        )
    elif not args.keep_scratch:
        shutil.rmtree(b.scratch, ignore_errors=True)
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    """The command line; its help is this module's docstring, which lists the sections."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="Presets: small (about 7 minutes on an idle 2-core CPU: 6 training steps per path, 48 "
        "inference questions) and full (the whole train split for the recipe's epochs and the whole dev "
        "split: hours on a 2-core CPU, minutes on a GPU).",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="how much to measure (default small)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in every measured process (default: one per available core)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "reports" / "benchmarks.md",
        help="where the report is written (default reports/benchmarks.md)",
    )
    parser.add_argument(
        "--keep-scratch", action="store_true", help="keep the temporary folder and its log"
    )
    return parser


def _prepare(preset: Preset) -> tuple[Bench, float]:
    """The run's shared state in a fresh scratch folder, and the load average before any measuring
    (the report gives it, since other work on the machine slows every figure)."""
    scratch = Path(tempfile.mkdtemp(prefix="medqa-bench-"))
    from medqa.config import load_params

    params = load_params(ROOT / "params.yaml")
    machine = describe_machine()
    load_start = os.getloadavg()[0]
    train_rows, dev_rows = load_rows(scratch, params)
    b = Bench(preset, machine, scratch, scratch / "bench.log", params, train_rows, dev_rows)
    print(f"benchmarks ({preset.name}): {machine.header()}\nlog: {b.log}", flush=True)
    return b, load_start


def _run_sections(b: Bench, started: float) -> tuple[list[Row], list[str]]:
    """Every section in order, printing each one's rows as it ends; a section that raises becomes a
    "failed" row and the next one still runs. Also the names of the sections that failed."""
    rows: list[Row] = []
    failed = []
    for name, section in SECTIONS:
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - started:6.0f} s] section {name} ...", flush=True)
        try:
            new = section(b)
        except Exception as e:  # noqa: BLE001 - one failed section must not cost the others
            failed.append(name)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            new = [Row(name, "failed", reason)]
            print(traceback.format_exc(), file=sys.stderr)
        rows += new
        print(render_table(new).split("\n", 2)[2], flush=True)
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows, failed


if __name__ == "__main__":
    raise SystemExit(main())
