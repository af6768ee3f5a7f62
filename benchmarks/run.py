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
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Machine, describe_machine, median, percentile, run_isolated
from benchmarks.report import Row, ratio, render_report, render_table, speed_at_equal_f1

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SPEEDUP_TARGET = 1.3
PRECISION_SPEEDUP_TARGET = 1.7  # training at the auto precision vs fp32, where auto is not fp32
PRECISION_F1_TOLERANCE = 0.01
INFERENCE_SPEEDUP_TARGET = 2.0
NOOP_REPRO_TARGET_S = 3.0
SERVE_BATCH = 32  # records in section 6's one batch request
F1_TOLERANCE = 0.02  # "equal F1": ours at most this much below the reference
SEED = 0  # which questions the subsets take


@dataclass(frozen=True)
class Preset:
    """How much data each section uses and how many repeats each median is over."""

    name: str
    train_questions: int | None  # section 1's training pool; None: the whole train split
    epochs: float | None  # the schedule's length; None: the recipe's (params.yaml)
    train_steps: (
        int | None
    )  # timed steps per run of section 1 (then it stops); None: every step of the schedule
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
        return run_isolated(self.log, fn, *args)

    @property
    def stride(self) -> int:
        return self.params.tokenize.doc_stride

    @property
    def max_len(self) -> int:
        return self.params.tokenize.max_seq_length


def section_training(b: Bench) -> list[Row]:
    """1. medqa's fine_tune vs the run_qa-style Trainer: same rows, recipe, seed, model, device."""
    from benchmarks.training_bench import combine, train_ours, train_reference, training_precision

    p, tp = b.preset, b.params.train
    rows, dev = subset(b.train_rows, p.train_questions), subset(b.dev_rows, p.dev_questions)
    epochs = p.epochs or tp.epochs
    max_steps = p.warmup_steps + p.train_steps if p.train_steps else None
    uri = f"sqlite:///{b.scratch / 'mlflow.db'}"
    # "fp32": ours again with train.precision fp32, when auto chose something else (bf16 on a CPU
    # with native bf16): the speed-up of the precision policy alone, everything else equal
    runs: dict[str, list[Any]] = {"ours": [], "ref": [], "fp32": []}
    paths = ["ours", "ref"] + (["fp32"] if b.isolated(training_precision) != "fp32" else [])
    for r in range(p.rounds):  # alternating, so a burst of other work hits every path alike
        for path in paths if r % 2 == 0 else paths[::-1]:
            scored = dev if not runs[path] else None  # the same seeded training again: score once
            work = b.scratch / f"train-{path}-{r}"
            if path in ("ours", "fp32"):
                runs[path].append(
                    b.isolated(
                        train_ours,
                        work,
                        rows,
                        scored,
                        b.max_len,
                        b.stride,
                        epochs,
                        p.warmup_steps,
                        max_steps,
                        uri,
                        None if path == "ours" else "fp32",
                    )
                )
                if path == "ours":
                    b.ours_model = work / "model"
            else:
                runs[path].append(
                    b.isolated(
                        train_reference,
                        work,
                        rows,
                        scored,
                        b.max_len,
                        b.stride,
                        epochs,
                        p.warmup_steps,
                        max_steps,
                        runs["ours"][0].precision,
                    )
                )
    ours, ref = combine(runs["ours"]), combine(runs["ref"])
    b.ours_run, b.ours_run_questions = ours, len(rows)
    speed = ratio(ours.examples_per_s(), ref.examples_per_s())
    met = speed_at_equal_f1(speed, ours.dev_f1, ref.dev_f1, TRAIN_SPEEDUP_TARGET, F1_TOLERANCE)
    n = len(ours.steps), len(ref.steps)
    steps = f"{n[0]}/{n[1]} steps" if n[0] != n[1] else f"{n[0]} steps"
    peak, threads = b.machine.peak_flops, b.machine.threads
    n_epochs = f"{epochs:g} epoch{'' if epochs == 1 else 's'}"
    schedule_of = f"{epochs:g}-epoch"
    trained = f"{max_steps} steps" if max_steps else n_epochs
    warmup = f"{p.warmup_steps} warm-up step{'' if p.warmup_steps == 1 else 's'}"
    schedule = (
        (
            f"the first {max_steps} optimizer steps of a {schedule_of} schedule over a pool of "
            f"{len(rows)} train questions (a large pool, because the Trainer's length grouping "
            "sorts mega-batches of at most a quarter of the data: below 8 batches it groups nothing)"
        )
        if max_steps
        else f"{n_epochs} over {len(rows)} train questions"
    )
    rounds = (
        f"; each path run {p.rounds} times, alternating (ours, ref, ref, ours...), steps pooled"
        if p.rounds > 1
        else ""
    )
    b.notes.append(
        f"Training: {schedule}{rounds}; batch {tp.batch_size}, seed {tp.seed}, {ours.precision}, encoder lr "
        f"{tp.learning_rate:g} (ours: QA head lr {tp.head_learning_rate:g}; reference: one lr for all), "
        f"windows of {b.max_len} tokens with stride {b.stride}. Figures are medians over the optimizer "
        f"steps after {warmup}, each timed from the previous step's end (collation, forward, backward, "
        f"optimizer); examples are training windows. Dev F1: {len(dev)} dev questions, both models "
        "scored by medqa.scoring.score_split."
    )
    b.notes.append(
        "FLOP/s counts useful work only, real tokens x (6 x non-embedding parameters + 12 x layers x "
        "hidden x mean real length for attention); the reference also computes its padding, which is "
        "not counted."
    )
    rows_out = [
        Row(
            "1 training",
            "examples/s",
            ours.examples_per_s(),
            ref.examples_per_s(),
            steps,
            f"≥ {TRAIN_SPEEDUP_TARGET}× at equal dev F1 (−{F1_TOLERANCE})",
            met,
        ),
        Row(
            "1 training",
            "examples per CPU-second (all threads)",
            ours.examples_per_cpu_s(),
            ref.examples_per_cpu_s(),
            steps,
        ),
        Row(
            "1 training",
            "CPU busy share (< 1: cores shared with other work)",
            ours.cpu_busy_share(threads),
            ref.cpu_busy_share(threads),
            steps,
        ),
        Row("1 training", "real tokens/s", ours.tokens_per_s(), ref.tokens_per_s(), steps),
        Row("1 training", "s/step", ours.seconds_per_step(), ref.seconds_per_step(), steps),
        Row(
            "1 training",
            "padding share of computed tokens",
            ours.padding_share(),
            ref.padding_share(),
            steps,
        ),
        Row("1 training", f"dev F1 after {trained}", ours.dev_f1, ref.dev_f1, f"{len(dev)} q"),
        Row(
            "1 training",
            f"peak {ours.memory_kind} MiB",
            ours.peak_memory_mib,
            ref.peak_memory_mib,
            1,
        ),
        Row(
            "1 training", "useful GFLOP/s", ours.flops_per_s() / 1e9, ref.flops_per_s() / 1e9, steps
        ),
    ]
    if runs["fp32"]:
        b.notes.append(
            f"Ours at fp32: the same path and params with train.precision fp32 instead of auto "
            f"({ours.precision} here), run as often as ours and interleaved with it. After "
            f"{trained} dev F1 only shows that the two did not diverge; test F1 at both "
            "precisions over the whole schedule is in docs/results.md."
        )
        fp32 = combine(runs["fp32"])
        precision_speed = ratio(ours.examples_per_s(), fp32.examples_per_s())
        rows_out[1:1] = [
            Row(
                "1 training",
                f"examples/s, ours at {ours.precision} (auto) vs ours at fp32",
                ours.examples_per_s(),
                fp32.examples_per_s(),
                f"{n[0]}/{len(fp32.steps)} steps",
                f"≥ {PRECISION_SPEEDUP_TARGET}× at equal dev F1 (−{PRECISION_F1_TOLERANCE})",
                speed_at_equal_f1(
                    precision_speed,
                    ours.dev_f1,
                    fp32.dev_f1,
                    PRECISION_SPEEDUP_TARGET,
                    PRECISION_F1_TOLERANCE,
                ),
            ),
            Row("1 training", "dev F1, ours at fp32", fp32.dev_f1, None, f"{len(dev)} q"),
        ]
    if peak:
        rows_out.append(
            Row(
                "1 training",
                "share of nominal CPU peak",
                ours.flops_per_s() / peak,
                ref.flops_per_s() / peak,
                steps,
            )
        )
    return rows_out


def section_inference(b: Bench) -> list[Row]:
    """2. QAPredictor at every precision vs pipeline("question-answering") on one copy of the weights."""
    from benchmarks.inference_bench import prepare_model, run_ours, run_reference
    from medqa.metrics import score_question
    from medqa.scoring import gold_texts

    p = b.preset
    checkpoint = ROOT / "models" / "checkpoint"
    if (checkpoint / "config.json").exists():
        source, what = checkpoint, "models/checkpoint (the pipeline's fine-tuned model)"
    elif b.ours_model is not None and (b.ours_model / "config.json").exists():
        source, what = (
            b.ours_model,
            "the model section 1 fine-tuned with medqa's path (no models/checkpoint)",
        )
    else:
        source, what = b.params.base_model, f"the untrained base model {b.params.base_model}"
    model_dir, precisions, why = b.isolated(
        prepare_model,
        str(source),
        b.scratch / "infer-model",
        b.max_len,
        b.stride,
        b.params.evaluate.decode,
    )
    b.infer_model = model_dir
    rows = subset(b.dev_rows, p.infer_questions)
    records = [{"question": r["question"], "context": r["context"]} for r in rows]
    records_file = b.scratch / "infer-records.json"
    records_file.write_text(json.dumps(records))
    batch = b.params.evaluate.batch_size
    runs = {
        precision: b.isolated(
            run_ours, model_dir, records, batch, p.infer_repeats, p.latency_samples, precision
        )
        for precision in precisions
    }
    auto = precisions[0]
    ours = runs[auto]
    b.notes.append(
        f"Inference: {len(records)} dev questions, weights of {what} saved once as safetensors and "
        f"loaded by both; batch size {batch}; abstention threshold 0 for both (answer when the best span "
        "beats [CLS]: the pipeline's handle_impossible_answer rule). Batched figures are medians of "
        f"{p.infer_repeats} passes over all questions after a warm-up; latency is one question per call. "
        f"Ours at each precision in its own process ({', '.join(precisions)}); `auto` picks {auto} here "
        f"({why}), the precision the evaluate stage measures test F1 at and serve uses; the reference "
        "runs in fp32, its default."
    )
    try:
        ref = run_reference(
            model_dir,
            records_file,
            batch,
            p.infer_repeats,
            p.latency_samples,
            b.max_len,
            b.stride,
            b.params.evaluate.decode.max_answer_length,
            b.log,
            timeout_s=1800,
        )
    except (RuntimeError, OSError, ValueError) as e:
        ref = None
        b.notes.append(f"Inference reference not measured: {e}.")

    def f1(answers: list[str]) -> float:
        return sum(score_question(a, gold_texts(r))[1] for a, r in zip(answers, rows)) / len(rows)

    def qps(run: Any) -> float:
        return len(records) / median(run.batch_seconds)

    ref_qps: Any = qps(ref) if ref else "not run (see notes)"
    ref_f1: Any = f1(ref.answers) if ref else "not run (see notes)"
    out = []
    for precision, run in runs.items():
        label = f"{precision}{' (auto)' if precision == auto else ''}"
        target, met = "", None
        if precision == auto:
            target = f"≥ {INFERENCE_SPEEDUP_TARGET}× at equal F1 (−{F1_TOLERANCE})"
            met = bool(ref) and speed_at_equal_f1(
                ratio(qps(run), ref_qps),
                f1(run.answers),
                ref_f1,
                INFERENCE_SPEEDUP_TARGET,
                F1_TOLERANCE,
            )
        out.append(
            Row(
                "2 inference",
                f"questions/s, batched, {label}",
                qps(run),
                ref_qps,
                p.infer_repeats,
                target,
                met,
            )
        )
        out.append(Row("2 inference", f"F1, {label}", f1(run.answers), ref_f1, f"{len(rows)} q"))
    if "fp32" in runs and auto != "fp32":
        fp32 = runs["fp32"]
        same = sum(a == c for a, c in zip(ours.answers, fp32.answers)) / len(rows)
        out += [
            Row(
                "2 inference",
                f"{auto} speed-up over ours in fp32",
                qps(ours) / qps(fp32),
                None,
                p.infer_repeats,
            ),
            Row(
                "2 inference",
                f"F1 {auto} − F1 fp32 (ours)",
                f1(ours.answers) - f1(fp32.answers),
                None,
                f"{len(rows)} q",
                "≥ −0.005",
                f1(ours.answers) - f1(fp32.answers) >= -0.005,
            ),
            Row(
                "2 inference",
                f"answers of {auto} identical to fp32's",
                same,
                None,
                f"{len(rows)} q",
            ),
        ]
    ref_single = (lambda q: q(ref.single_ms)) if ref else (lambda q: "not run (see notes)")
    out += [
        Row(
            "2 inference",
            f"latency p50 ms, 1 question, {auto}",
            median(ours.single_ms),
            ref_single(median),
            len(ours.single_ms),
        ),
        Row(
            "2 inference",
            f"latency p95 ms, 1 question, {auto}",
            percentile(ours.single_ms, 95),
            ref_single(lambda v: percentile(v, 95)),
            len(ours.single_ms),
        ),
    ]
    if ref:
        b.notes.append(
            f'Inference reference: pipeline("question-answering") in .venv-bench ({ref.software}).'
        )
        same = sum(a.strip() == r.strip() for a, r in zip(ours.answers, ref.answers)) / len(rows)
        out.append(
            Row(
                "2 inference",
                f"answers of {auto} identical to the pipeline's",
                same,
                None,
                f"{len(rows)} q",
            )
        )
    return out


def section_serving(b: Bench) -> list[Row]:
    """6. `medqa serve` over loopback vs the raw forward+decode of the same questions."""
    from benchmarks.serving_bench import save_served_model, time_raw, time_server

    p = b.preset
    if b.infer_model is None:
        raise RuntimeError("section 2 prepared no model to serve")
    rows = subset(b.dev_rows, p.serve_questions)
    records = [{"question": r["question"], "context": r["context"]} for r in rows]
    served = b.isolated(save_served_model, b.infer_model, b.scratch / "served-model")
    raw = b.isolated(time_raw, b.infer_model, records, SERVE_BATCH, p.infer_repeats)
    srv = time_server(served, records, p.serve_requests, SERVE_BATCH, p.infer_repeats, b.log)
    raw_p50, one = median(raw.single_ms), srv.latency_ms[1]
    raw_batch_qps = SERVE_BATCH / median(raw.batch_seconds)
    served_batch_qps = SERVE_BATCH / median(srv.batch_seconds)
    b.notes.append(
        f"Serving: section 2's model saved as the registered pyfunc and served by `medqa serve` "
        f"({raw.precision}, the precision recorded with it) on 127.0.0.1; cold start is process start "
        "to the first healthy /ping. Each level sends one question per request from that many client "
        f"threads ({', '.join(f'{n} requests at {c}' for c, n in p.serve_requests.items())}), cycling "
        f"through {len(records)} dev questions; latency includes the wait for the model, which serves "
        f"one request at a time. The {SERVE_BATCH}-record call and the raw figures (QAPredictor.predict "
        "in a process of its own, same questions) are medians of "
        f"{p.infer_repeats}. The evaluate-pass reference for the {SERVE_BATCH}-record call is the raw "
        "batched rate of the same records."
    )
    out = [
        Row("6 serving", "cold start to healthy /ping, s", srv.cold_start_s, None, 1),
        Row("6 serving", "exit after SIGTERM, s", srv.shutdown_s, None, 1),
        Row(
            "6 serving",
            "p50 ms, 1 question, concurrency 1 (ref: raw forward+decode)",
            median(one),
            raw_p50,
            len(one),
            "≤ 1.5× raw",
            median(one) <= 1.5 * raw_p50,
        ),
    ]
    for clients, lat in srv.latency_ms.items():
        if clients != 1:  # concurrency 1's p50 is the target row above
            out.append(
                Row("6 serving", f"p50 ms, concurrency {clients}", median(lat), None, len(lat))
            )
        out += [
            Row("6 serving", f"p95 ms, concurrency {clients}", percentile(lat, 95), None, len(lat)),
            Row("6 serving", f"p99 ms, concurrency {clients}", percentile(lat, 99), None, len(lat)),
            Row(
                "6 serving",
                f"requests/s, concurrency {clients}",
                len(lat) / srv.wall_s[clients],
                1000 / raw_p50,
                len(lat),
            ),
        ]
    out.append(
        Row(
            "6 serving",
            f"questions/s, one {SERVE_BATCH}-record call (ref: raw batched)",
            served_batch_qps,
            raw_batch_qps,
            p.infer_repeats,
            "≥ 0.9× raw",
            served_batch_qps >= 0.9 * raw_batch_qps,
        )
    )
    return out


def section_tokenization(b: Bench) -> list[Row]:
    """3. medqa.features vs the run_qa-style preprocessing, over the whole train split."""
    from benchmarks.tokenization_bench import time_tokenization
    from medqa.modelsource import load_tokenizer

    p = b.preset
    t = time_tokenization(
        load_tokenizer(b.params.base_model), b.train_rows, b.max_len, b.stride, p.tokenize_repeats
    )
    n = len(b.train_rows)
    b.notes.append(
        f"Tokenization: all {n} train questions per repeat, examples = questions; windows: ours "
        f"{t.ours_windows}, reference {t.reference_windows}."
    )
    return [
        Row(
            "3 tokenization",
            "examples/s",
            n / median(t.ours_seconds),
            n / median(t.reference_seconds),
            p.tokenize_repeats,
        )
    ]


def section_orchestration(b: Bench) -> list[Row]:
    """4. A no-op `dvc repro` (the project if dvc.lock is current, else a tiny copy) and a cached
    Prefect flow."""
    from benchmarks.orchestration_bench import (
        build_tiny_project,
        dvc_is_up_to_date,
        project_env,
        time_cached_flow,
        time_noop_repro,
    )

    p, env = b.preset, project_env()
    if dvc_is_up_to_date(ROOT, env):
        project, where = ROOT, "this project (dvc status: up to date)"
    else:
        project = b.isolated(build_tiny_project, b.scratch / "tiny-project", env)
        where = (
            "a tiny copy of the project (tests/conftest.py make_tiny_project: 2-layer model, 8 passages), "
            "reproduced once first, because this project's dvc.lock is not up to date"
        )
    noop = time_noop_repro(project, env, p.orchestration_repeats)
    out = [
        Row(
            "4 orchestration",
            "no-op `dvc repro`, s",
            median(noop),
            None,
            p.orchestration_repeats,
            f"< {NOOP_REPRO_TARGET_S:g} s",
            median(noop) < NOOP_REPRO_TARGET_S,
        )
    ]
    b.notes.append(
        f"Orchestration: measured on {where}; `dvc repro` is the console script, timed as a user "
        "types it (interpreter start-up included)."
    )
    if p.prefect:
        flow = b.isolated(
            time_cached_flow, project, b.scratch / "prefect-home", p.orchestration_repeats
        )
        out.append(
            Row(
                "4 orchestration",
                "fully cached Prefect flow run, s",
                median(flow),
                None,
                p.orchestration_repeats,
            )
        )
        b.notes.append(
            "Prefect: the medqa flow in-process against a temporary Prefect server on 127.0.0.1 "
            '(prefect_test_harness); one untimed run first; every stage reported "cached".'
        )
    else:
        b.notes.append("Prefect flow not timed in this preset.")
    return out


def section_scaling(b: Bench) -> list[Row]:
    """5. medqa's training step time and peak memory against data size and window length."""
    from benchmarks.training_bench import train_ours

    p = b.preset
    base = p.scaling_questions
    uri = f"sqlite:///{b.scratch / 'mlflow.db'}"
    points = [(m, b.max_len) for m in p.data_multiples] + [
        (1, n) for n in p.seq_lengths if n != b.max_len
    ]
    out = []
    for multiple, length in points:
        rows = b.train_rows[: base * multiple]
        reuse = b.ours_run is not None and b.ours_run_questions == len(rows) and length == b.max_len
        if reuse:
            run = b.ours_run
        else:
            run = b.isolated(
                train_ours,
                b.scratch / f"scale-x{multiple}-{length}",
                rows,
                None,
                length,
                length // 3,
                1.0,
                p.warmup_steps,
                p.warmup_steps + p.scaling_steps,
                uri,
            )
        label = f"×{multiple} ({len(rows)} q), max_len {length}"
        n = len(run.steps)
        out += [
            Row("5 scaling (ours)", f"s/step, {label}", run.seconds_per_step(), None, n),
            Row("5 scaling (ours)", f"padding share, {label}", run.padding_share(), None, n),
            Row(
                "5 scaling (ours)",
                f"peak {run.memory_kind} MiB, {label}",
                run.peak_memory_mib,
                None,
                1,
            ),
        ]
    b.notes.append(
        f"Scaling: medqa's training path, batch {b.params.train.batch_size}, {p.scaling_steps} timed steps "
        f"after {p.warmup_steps} warm-up per point (a point with section 1's pool and max_len reuses its "
        "run); doc stride = max_len / 3; each point in a fresh process, so its peak memory is its own. "
        "More data lets the length grouping form tighter batches (less padding); with dynamic padding a "
        "max_len above the longest window changes nothing, a shorter one splits contexts into more windows."
    )
    return out


SECTIONS: list[tuple[str, Callable[[Bench], list[Row]]]] = [
    ("1 training", section_training),
    ("2 inference", section_inference),
    ("3 tokenization", section_tokenization),
    ("4 orchestration", section_orchestration),
    ("5 scaling (ours)", section_scaling),
    ("6 serving", section_serving),
]


def load_rows(scratch: Path, params: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and dev rows from data/validated, or validated afresh from the raw data into ``scratch``;
    shuffled with a fixed seed so a subset of the first N questions is a fair sample."""
    from medqa.fileio import read_jsonl

    validated = ROOT / "data" / "validated"
    if not (validated / "train.jsonl").exists():
        from medqa.data import validate_records

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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    started = time.perf_counter()
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(
        threads
    )  # before torch loads, here and in every child process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    preset = PRESETS[args.preset]
    scratch = Path(tempfile.mkdtemp(prefix="medqa-bench-"))
    from medqa.config import load_params

    params = load_params(ROOT / "params.yaml")
    machine = describe_machine()
    load_start = os.getloadavg()[0]
    train_rows, dev_rows = load_rows(scratch, params)
    b = Bench(preset, machine, scratch, scratch / "bench.log", params, train_rows, dev_rows)
    print(f"benchmarks ({preset.name}): {machine.header()}\nlog: {b.log}", flush=True)

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

    wall = time.perf_counter() - started
    b.notes.append(
        f"Wall time {wall / 60:.1f} min; load average {load_start:.2f} at the start and "
        f"{os.getloadavg()[0]:.2f} at the end (other work on the machine slows both sides alike)."
    )
    title = f"medqa benchmarks: ours vs plain Hugging Face (preset {preset.name})"
    text = render_report(title, machine.header(), rows, b.notes)
    from medqa.fileio import write_text_atomic

    write_text_atomic(args.output, text)
    print("\n" + text + f"\nwritten to {args.output}")
    if failed and not args.keep_scratch:
        print(
            f"sections failed: {', '.join(failed)}; scratch folder kept for its log: {scratch}",
            file=sys.stderr,
        )
    elif not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
