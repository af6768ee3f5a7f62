"""Section 2: inference, medqa's QAPredictor at every precision this machine runs against transformers
4.x ``pipeline("question-answering")`` in .venv-bench, on one copy of the weights.

The timed calls are benchmarks.inference_bench's (ours each in a fresh process, the pipeline in its
own venv); this module picks the model, runs them and scores their answers into rows and notes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.bench import F1_TOLERANCE, ROOT, Bench, subset
from benchmarks.measure import median, percentile
from benchmarks.report import Row, ratio, speed_at_equal_f1

if TYPE_CHECKING:  # not at run time: keep the parent process free of medqa's heavy imports
    from benchmarks.inference_bench import InferenceRun

SECTION = "2 inference"
INFERENCE_SPEEDUP_TARGET = 2.0
NOT_RUN = "not run (see notes)"  # the reference's cells when the pipeline could not run


@dataclass(frozen=True)
class Scores:
    """F1 and throughput of a run over the section's questions, the same way for every run."""

    rows: list[dict[str, Any]]

    def f1(self, answers: list[str]) -> float:
        """Mean F1 of ``answers`` against the gold answers, scored by medqa's metric for both sides."""
        from medqa.metrics import score_question
        from medqa.scoring import gold_texts

        f1s = [score_question(a, gold_texts(r))[1] for a, r in zip(answers, self.rows)]
        return sum(f1s) / len(self.rows)

    def qps(self, run: InferenceRun) -> float:
        return len(self.rows) / median(run.batch_seconds)


def section(b: Bench) -> list[Row]:
    """2. QAPredictor at every precision vs pipeline("question-answering") on one copy of the weights."""
    from benchmarks.inference_bench import prepare_model, run_ours

    p = b.preset
    source, what = _source(b)
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
    timed = (model_dir, records, batch, p.infer_repeats, p.latency_samples)
    runs = {precision: b.isolated(run_ours, *timed, precision) for precision in precisions}
    # the compiled engine at the auto precision: where that is fp32 (a CPU without bf16) it is the
    # faster path the evaluate stage may record for serving (medqa.engine)
    compiled = f"{precisions[0]}, compile"
    runs[compiled] = b.isolated(run_ours, *timed, precisions[0], "compile")
    b.notes.append(_note(b, what, len(records), batch, precisions, why))
    ref = _reference(b, model_dir, records_file)
    scores, auto = Scores(rows), precisions[0]
    out = _speed_rows(p.infer_repeats, scores, runs, auto, ref)
    if "fp32" in runs and auto != "fp32":
        out += _precision_rows(p.infer_repeats, scores, runs[auto], runs["fp32"], auto)
    out += _precision_rows(p.infer_repeats, scores, runs[compiled], runs[auto], compiled, auto)
    out += _latency_rows(runs[auto], ref, auto)
    if ref:
        b.notes.append(
            f'Inference reference: pipeline("question-answering") in .venv-bench ({ref.software}).'
        )
        same = sum(a.strip() == r.strip() for a, r in zip(runs[auto].answers, ref.answers))
        label = f"answers of {auto} identical to the pipeline's"
        out.append(Row(SECTION, label, same / len(rows), None, f"{len(rows)} q"))
    return out


def _source(b: Bench) -> tuple[Path | str, str]:
    """The weights to time and how the notes name them: the pipeline's fine-tuned model, else section
    1's, else the untrained base model (its answers are noise, its speed is still the speed)."""
    checkpoint = ROOT / "models" / "checkpoint"
    if (checkpoint / "config.json").exists():
        return checkpoint, "models/checkpoint (the pipeline's fine-tuned model)"
    if b.ours_model is not None and (b.ours_model / "config.json").exists():
        return (
            b.ours_model,
            "the model section 1 fine-tuned with medqa's path (no models/checkpoint)",
        )
    return b.params.base_model, f"the untrained base model {b.params.base_model}"


def _note(b: Bench, what: str, questions: int, batch: int, precisions: list[str], why: str) -> str:
    """What both sides ran on and how each figure was timed."""
    repeats, auto = b.preset.infer_repeats, precisions[0]
    return (
        f"Inference: {questions} dev questions, weights of {what} saved once as safetensors and "
        f"loaded by both; batch size {batch}; abstention threshold 0 for both (answer when the best span "
        "beats [CLS]: the pipeline's handle_impossible_answer rule). Batched figures are medians of "
        f"{repeats} passes over all questions after a warm-up; latency is one question per call. "
        f"Ours at each precision in its own process ({', '.join(precisions)}); `auto` picks {auto} here "
        f"({why}), the precision the evaluate stage measures test F1 at and serve uses; `{auto}, "
        "compile` is the torch.compile engine at that precision, timed after compiling and one "
        "untimed pass (as `medqa serve` runs it); the reference runs in fp32, its default."
    )


def _reference(b: Bench, model_dir: Path, records_file: Path) -> InferenceRun | None:
    """The pipeline's run, or None with a note saying why it could not run (e.g. no .venv-bench)."""
    from benchmarks.inference_bench import run_reference

    p = b.preset
    try:
        return run_reference(
            model_dir,
            records_file,
            b.params.evaluate.batch_size,
            p.infer_repeats,
            p.latency_samples,
            b.max_len,
            b.stride,
            b.params.evaluate.decode.max_answer_length,
            b.log,
            timeout_s=1800,
        )
    except (RuntimeError, OSError, ValueError) as e:
        b.notes.append(f"Inference reference not measured: {e}.")
        return None


def _speed_rows(
    repeats: int,
    scores: Scores,
    runs: dict[str, InferenceRun],
    auto: str,
    ref: InferenceRun | None,
) -> list[Row]:
    """Batched questions/s and F1 of ours at each precision against the pipeline's; the target is
    on ``auto``, the precision medqa's evaluate stage and `medqa serve` use."""
    ref_qps: Any = scores.qps(ref) if ref else NOT_RUN
    ref_f1: Any = scores.f1(ref.answers) if ref else NOT_RUN
    n = f"{len(scores.rows)} q"
    out = []
    for precision, run in runs.items():
        label = f"{precision}{' (auto)' if precision == auto else ''}"
        qps, target, met = scores.qps(run), "", None
        if precision in (auto, f"{auto}, compile"):
            target = f"≥ {INFERENCE_SPEEDUP_TARGET}× at equal F1 (−{F1_TOLERANCE})"
            met = bool(ref) and speed_at_equal_f1(
                ratio(qps, ref_qps),
                scores.f1(run.answers),
                ref_f1,
                INFERENCE_SPEEDUP_TARGET,
                F1_TOLERANCE,
            )
        out.append(
            Row(SECTION, f"questions/s, batched, {label}", qps, ref_qps, repeats, target, met)
        )
        out.append(Row(SECTION, f"F1, {label}", scores.f1(run.answers), ref_f1, n))
    return out


def _precision_rows(
    repeats: int,
    scores: Scores,
    ours: InferenceRun,
    fp32: InferenceRun,
    auto: str,
    base: str = "fp32",
) -> list[Row]:
    """Ours at ``auto`` against ours at ``base`` (fp32; or the auto precision, eager, for the
    compiled engine): what the faster path gains and what it costs."""
    n = f"{len(scores.rows)} q"
    same = sum(a == c for a, c in zip(ours.answers, fp32.answers)) / len(scores.rows)
    f1_change = scores.f1(ours.answers) - scores.f1(fp32.answers)
    speed_up = scores.qps(ours) / scores.qps(fp32)
    return [
        Row(SECTION, f"{auto} speed-up over ours in {base}", speed_up, None, repeats),
        Row(
            SECTION,
            f"F1 {auto} − F1 {base} (ours)",
            f1_change,
            None,
            n,
            "≥ −0.005",
            f1_change >= -0.005,
        ),
        Row(SECTION, f"answers of {auto} identical to {base}'s", same, None, n),
    ]


def _latency_rows(ours: InferenceRun, ref: InferenceRun | None, auto: str) -> list[Row]:
    """One-question latency, p50 and p95, of ours at ``auto`` and of the pipeline."""
    samples = len(ours.single_ms)
    return [
        Row(
            SECTION,
            f"latency p50 ms, 1 question, {auto}",
            median(ours.single_ms),
            median(ref.single_ms) if ref else NOT_RUN,
            samples,
        ),
        Row(
            SECTION,
            f"latency p95 ms, 1 question, {auto}",
            percentile(ours.single_ms, 95),
            percentile(ref.single_ms, 95) if ref else NOT_RUN,
            samples,
        ),
    ]
