"""The scale benchmark without the long runs: the synthetic data is what it says and validates whole,
the report's rates, growth exponents and parallel speedup on made-up measurements, and one end-to-end
run on tiny sizes (slow: four stage subprocesses)."""

from __future__ import annotations

import json
import math
import os

import pytest
from benchmarks.scale_bench import Measured, growth, main, render_scale_report
from benchmarks.scale_data import QUESTIONS_PER_PASSAGE, write_squad

from medqa.config import ValidateParams
from medqa.validate import validate_records


def test_generated_data_is_deterministic_and_shaped_as_asked(tmp_path):
    first, again, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert write_squad(first, 200, seed=3) == 200 // QUESTIONS_PER_PASSAGE
    write_squad(again, 200, seed=3)
    write_squad(other, 200, seed=4)
    assert first.read_bytes() == again.read_bytes() != other.read_bytes()
    doc = json.loads(first.read_text())
    paragraphs = [p for article in doc["data"] for p in article["paragraphs"]]
    questions = [qa for p in paragraphs for qa in p["qas"]]
    assert len(questions) == 200 and all(len(p["qas"]) == 8 for p in paragraphs)
    words = [len(p["context"].split()) for p in paragraphs]
    assert min(words) >= 250 and max(words) < 270
    unanswerable = sum(qa["is_impossible"] for qa in questions)
    assert 5 <= unanswerable <= 40  # 10% of 200, give or take chance


def test_generated_data_passes_validate_whole(tmp_path):
    write_squad(tmp_path / "raw" / "data.json", 200)
    s = validate_records(
        tmp_path / "raw",
        tmp_path / "validated",
        tmp_path / "rejected.jsonl",
        tmp_path / "validation.json",
        ValidateParams(),
    )
    assert s.rows_in == 200 and s.rejected == 0 and sum(s.repaired.values()) == 0
    assert sum(s.written.values()) == 200 and all(s.written.values())


def _runs(scale: float) -> list[Measured]:
    """Validate linear in time and flat in memory; tokenize twice as fast on two cores."""
    return [
        Measured("validate", 10_000, 2, 10.0, 500.0, 500.0),
        Measured("validate", 100_000, 2, 100.0 * scale, 500.0, 500.0),
        Measured("tokenize", 10_000, 2, 20.0, 800.0, 1600.0),
        Measured("tokenize", 100_000, 2, 200.0 * scale, 800.0, 1600.0),
        Measured("tokenize", 100_000, 1, 400.0 * scale, 700.0, 700.0),
    ]


def test_growth_exponents_are_log_ratios():
    time_exp, rss_exp = growth(_runs(1.0)[0], _runs(1.0)[1])
    assert time_exp == pytest.approx(1.0) and rss_exp == pytest.approx(0.0)
    time_exp, _ = growth(_runs(2.0)[0], _runs(2.0)[1])
    assert time_exp == pytest.approx(1 + math.log(2) / math.log(10))


def test_report_has_rates_growth_and_the_parallel_speedup():
    text = render_scale_report(_runs(1.0), "test machine", ["a note"])
    lines = text.splitlines()
    assert "Machine: test machine" in text and "- a note" in text
    at = lines.index(next(line for line in lines if line.startswith("| validate, 100,000 q |")))
    assert lines[at + 1].startswith("|  | questions/s | 1,000 |")  # the section named once
    assert any("time exponent (1 = linear) | 1.00 |" in line for line in lines)
    assert any("peak RSS exponent (0 = flat) | 0.00 |" in line for line in lines)
    speedup = next(line for line in lines if "questions/s, 2 cores vs 1" in line)
    assert "| 500 | 250 | 2.00× |" in speedup and speedup.endswith("| ≥ 1.7× | pass |")
    slower = render_scale_report(_runs(2.0), "m", [])
    assert "s/question vs 10,000 q | 2.00 |" in slower and "**miss**" in slower


@pytest.mark.slow
def test_bench_scale_writes_the_table_end_to_end(tmp_path):
    out = tmp_path / "bench_scale.md"
    assert main(["--sizes", "100", "200", "--output", str(out)]) == 0
    text = out.read_text()
    for stage in ("validate", "tokenize"):
        assert f"| {stage}, 200 q | wall s |" in text
        assert f"{stage}, 100 → 200 q | time exponent" in text
    if len(os.sched_getaffinity(0)) > 1:  # the one-core rerun is at the largest size
        assert "| tokenize, 200 q | questions/s, " in text and " cores vs 1 |" in text
