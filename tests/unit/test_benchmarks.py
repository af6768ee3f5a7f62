"""The benchmark harness without the long measurements: the report's table, ratios and targets on
synthetic numbers, step bookkeeping, and the tokenization section on 8 examples."""

from __future__ import annotations

import math

import pytest
from benchmarks.measure import cpu_peak_flops, median, percentile
from benchmarks.report import Row, fmt, ratio, render_report, render_table, speed_at_equal_f1

pytestmark = pytest.mark.slow  # benchmark sections on tiny models


def test_ratio_is_ours_over_reference_and_none_when_not_comparable():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert ratio(1.0, "not run") is None
    assert ratio(float("nan"), 2.0) is None


def test_fmt_keeps_three_significant_figures():
    assert fmt(12345.6) == "12,346" and fmt(123.4) == "123"
    assert fmt(0.12345) == "0.123" and fmt(13.0) == "13.0" and fmt(0.3) == "0.300"
    assert fmt(None) == "—" and fmt("failed") == "failed" and fmt(float("nan")) == "n/a"


def test_speed_target_needs_both_the_speedup_and_an_equal_f1():
    assert speed_at_equal_f1(1.4, 0.30, 0.31, minimum=1.3, f1_tolerance=0.02)
    assert not speed_at_equal_f1(
        1.4, 0.25, 0.31, minimum=1.3, f1_tolerance=0.02
    )  # bought with accuracy
    assert not speed_at_equal_f1(1.2, 0.40, 0.31, minimum=1.3, f1_tolerance=0.02)
    assert not speed_at_equal_f1(None, 0.40, 0.31, minimum=1.3, f1_tolerance=0.02)


def test_table_has_ratio_repeats_and_pass_or_miss():
    rows = [
        Row("1 training", "examples/s", 13.0, 10.0, 5, "≥ 1.3×", True),
        Row("1 training", "dev F1", 0.31, 0.30, "64 q"),
        Row("2 inference", "questions/s", 15.0, 10.0, 3, "≥ 2×", False),
        Row("4 orchestration", "no-op dvc repro, s", 2.1, None, 3, "< 3 s", True),
    ]
    lines = render_table(rows).splitlines()
    assert lines[0].startswith("| section | metric | ours | reference | ours/ref | n |")
    assert lines[2] == "| 1 training | examples/s | 13.0 | 10.0 | 1.30× | 5 | ≥ 1.3× | pass |"
    assert lines[3].startswith("|  | dev F1 | 0.310 | 0.300 | 1.03× | 64 q |")  # section named once
    assert lines[4].endswith("| 1.50× | 3 | ≥ 2× | **miss** |")
    assert "| 2.10 | — | — | 3 | < 3 s | pass |" in lines[5]


def test_report_names_the_machine_and_keeps_the_notes():
    text = render_report(
        "bench", "Xeon, 2 cores; torch 2.13 (2 threads)", [Row("s", "m", 1.0)], ["a note"]
    )
    assert "Machine: Xeon, 2 cores; torch 2.13 (2 threads)" in text and "- a note" in text


def test_median_percentile_and_nominal_cpu_peak():
    assert median([3.0, 1.0, 2.0]) == 2.0 and math.isnan(median([]))
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    peak, basis = cpu_peak_flops({"avx512f", "avx2", "fma"}, 2000.0, 2)
    assert peak == 2 * 2e9 * 64 and "AVX-512" in basis
    assert cpu_peak_flops({"avx2", "fma"}, 2000.0, 1)[0] == 2e9 * 32
    assert cpu_peak_flops(set(), 0.0, 2)[0] is None


def test_step_clock_drops_warmup_and_medians_per_step_rates():
    from benchmarks.training_bench import StepClock, TrainRun, combine

    clock = StepClock()
    clock.marks = [(0.0, 0.0), (10.0, 20.0), (12.0, 24.0), (16.0, 32.0), (18.0, 36.0)]
    clock.batches = [(32, 9000, 12288), (32, 6000, 8000), (32, 6000, 8000), (32, 6000, 8000)]
    steps = clock.steps(warmup=1)
    assert [s.seconds for s in steps] == [2.0, 4.0, 2.0]
    run = TrainRun(
        steps,
        peak_memory_mib=100.0,
        memory_kind="RSS",
        dev_f1=0.3,
        flops_per_token=10.0,
        precision="fp32",
    )
    assert (
        run.examples_per_s() == 16.0
        and run.tokens_per_s() == 3000.0
        and run.seconds_per_step() == 2.0
    )
    assert run.examples_per_cpu_s() == 8.0
    assert run.padding_share() == pytest.approx(0.25)
    assert run.flops_per_s() == 30000.0
    assert run.cpu_busy_share(threads=2) == 1.0

    again = TrainRun(
        steps[:1],
        peak_memory_mib=120.0,
        memory_kind="RSS",
        dev_f1=None,
        flops_per_token=10.0,
        precision="fp32",
    )
    both = combine([run, again])
    assert len(both.steps) == 4 and both.peak_memory_mib == 120.0 and both.dev_f1 == 0.3


def _rows() -> list[dict]:
    """8 questions: short and multi-window contexts, one unanswerable, answers at both ends."""
    base = "Drusen are yellow deposits under the retina. " * 6
    rows = []
    for i in range(8):
        context = (
            f"Patient {i} has intermediate AMD. "
            + base
            + f"Visual acuity was 20/{40 + i} in the left eye."
        )
        answer = f"20/{40 + i}" if i != 3 else None
        rows.append(
            {
                "id": str(i),
                "question": " What was the visual acuity?",
                "context": context,
                "answers": []
                if answer is None
                else [{"text": answer, "answer_start": context.index(answer)}],
            }
        )
    rows[5]["question"], rows[5]["answers"] = (
        "Who is the patient?",
        [{"text": "Patient 5", "answer_start": 0}],
    )
    return rows


def test_tokenization_section_and_reference_labels_agree_with_ours(packaged_tokenizer):
    from benchmarks.reference import reference_train_features
    from benchmarks.tokenization_bench import time_tokenization

    from medqa.config import TokenizeParams
    from medqa.features import build_train_features

    rows = _rows()
    timing = time_tokenization(packaged_tokenizer, rows, 64, 16, repeats=2)
    assert len(timing.ours_seconds) == len(timing.reference_seconds) == 2
    assert (
        timing.ours_windows == timing.reference_windows > len(rows)
    )  # long contexts made several windows

    ours = build_train_features(packaged_tokenizer, rows, TokenizeParams(64, 16))
    ref = reference_train_features(packaged_tokenizer, rows, 64, 16)
    assert {len(ids) for ids in ref["input_ids"]} == {64}  # padded to max_length
    assert [(f["start_positions"], f["end_positions"]) for f in ours] == list(
        zip(ref["start_positions"], ref["end_positions"])
    )
    assert any(s > 0 for s in ref["start_positions"])  # some window does hold an answer


def test_presets_bound_the_serving_section():
    from benchmarks.presets import PRESETS, SERVE_BATCH

    for preset in PRESETS.values():
        assert preset.serve_questions >= SERVE_BATCH  # the batch call takes distinct questions
        assert set(preset.serve_requests) == {1, 4, 8}
    assert sum(PRESETS["small"].serve_requests.values()) <= 120  # keeps PRESET=small fast


def test_inference_model_records_the_precision_auto_picks(tiny_model_dir, tmp_path):
    import json

    import torch
    from benchmarks.inference_bench import prepare_model, run_ours

    from medqa.config import DecodeParams
    from medqa.device import resolve_precision

    folder, precisions, why = prepare_model(
        str(tiny_model_dir), tmp_path / "m", 128, 48, DecodeParams()
    )
    auto = resolve_precision("auto", torch.device("cpu"), "precision")
    assert precisions[0] == auto[0] and why == auto[1]
    assert sorted(precisions) == ["bf16", "fp32"]  # fp16 needs a GPU
    assert json.loads((folder / "decoding.json").read_text())["precision"] == auto[0]
    record = {"question": "What was measured?", "context": "Visual acuity was 20/40."}
    run = run_ours(folder, [record] * 3, 2, repeats=1, singles=1, precision="fp32")
    assert run.precision == "fp32" and len(run.answers) == 3 and len(run.single_ms) == 1


@pytest.mark.integration
def test_serving_section_times_a_real_server_and_its_raw_path(tiny_model_dir, tmp_path):
    from benchmarks.inference_bench import prepare_model
    from benchmarks.serving_bench import save_served_model, time_raw, time_server

    from medqa.config import DecodeParams

    folder, _, _ = prepare_model(str(tiny_model_dir), tmp_path / "m", 128, 48, DecodeParams())
    records = [
        {"question": f"What was measured in eye {i}?", "context": "Visual acuity was 20/40."}
        for i in range(4)
    ]
    raw = time_raw(folder, records, batch=3, repeats=2)
    assert len(raw.single_ms) == 4 and len(raw.batch_seconds) == 2
    served = save_served_model(folder, tmp_path / "served")
    timing = time_server(served, records, {1: 3, 4: 5}, 3, 2, tmp_path / "serve.log")
    assert timing.cold_start_s > 0 and len(timing.batch_seconds) == 2
    assert [len(timing.latency_ms[c]) for c in (1, 4)] == [3, 5] and timing.wall_s[4] > 0
    assert timing.shutdown_s < 30  # SIGTERM ends it; nothing waits on a second signal
