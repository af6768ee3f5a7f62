"""The scale benchmark without the long runs: the synthetic data (passages and long articles) is what it
says and validates whole, the tiny model is a checkpoint evaluate and predict read, evaluate's cut
keeps whole questions, the report's rates, growth exponents and parallel speedup on made-up
measurements, and end-to-end runs on tiny sizes (slow: stage subprocesses)."""

from __future__ import annotations

import json
import math
import os

import pytest
from benchmarks.scale_bench import LONG, Measured, growth, main, render_scale_report
from benchmarks.scale_data import (
    LONG_ANSWER_AT,
    QUESTIONS_PER_PASSAGE,
    eval_inputs,
    write_bench_model,
    write_long,
    write_squad,
)

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


def test_one_core_rerun_at_a_size_not_measured_is_refused_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="--one-core-at 50: not one of --sizes"):
        main(["--sizes", "100", "--one-core-at", "50", "--output", str(tmp_path / "r.md")])
    assert not (tmp_path / "r.md").exists()


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


def test_long_articles_are_named_splits_answered_early_midway_and_late(tmp_path):
    raw = tmp_path / "raw"
    assert write_long(raw, seed=1, words=2_000) == 3 * (len(LONG_ANSWER_AT) + 1)
    again = tmp_path / "again"
    write_long(again, seed=1, words=2_000)
    for split in ("train", "dev", "test"):
        assert (raw / f"{split}.json").read_bytes() == (again / f"{split}.json").read_bytes()
        (article,) = json.loads((raw / f"{split}.json").read_text())["data"]
        (p,) = article["paragraphs"]
        words = p["context"].split(" ")
        assert 2_000 <= len(words) < 2_020
        answered = [qa["answers"][0] for qa in p["qas"] if qa["answers"]]
        assert len(answered) == len(LONG_ANSWER_AT) and p["qas"][-1]["is_impossible"]
        for answer, share in zip(answered, LONG_ANSWER_AT):
            at = answer["answer_start"]
            assert p["context"][at : at + len(answer["text"])] == answer["text"]
            assert abs(len(p["context"][:at].split(" ")) - 1 - share * len(words)) <= 3
    s = validate_records(
        raw, tmp_path / "v", tmp_path / "rej.jsonl", tmp_path / "rep.json", ValidateParams()
    )
    assert s.rejected == 0 and s.written == {"train": 4, "dev": 4, "test": 4}


def test_evaluate_reads_the_first_questions_of_dev_and_test_and_their_windows(tmp_path):
    from datasets import Dataset

    work = tmp_path / "work"
    for split, n in (("dev", 5), ("test", 3)):
        (work / "validated").mkdir(parents=True, exist_ok=True)
        rows = [json.dumps({"id": f"{split}{i}"}) for i in range(n)]
        (work / "validated" / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        windows = [{"example_index": i, "w": k} for i in range(n) for k in range(i % 3 + 1)]
        Dataset.from_list(windows).save_to_disk(str(work / "features" / split))
    assert eval_inputs(work, 0) == (work / "features", work / "validated", 8)
    assert eval_inputs(work, 5) == (work / "features", work / "validated", 8)
    features, validated, read = eval_inputs(work, 2)
    assert read == 4 and features != work / "features"
    from datasets import load_from_disk

    for split in ("dev", "test"):
        lines = (validated / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(x)["id"] for x in lines] == [f"{split}0", f"{split}1"]
        kept = load_from_disk(str(features / split)).to_list()
        assert kept == [{"example_index": i, "w": k} for i, k in ((0, 0), (1, 0), (1, 1))]


def test_the_bench_model_is_a_checkpoint_the_evaluate_stage_and_predict_read(tmp_path):
    from benchmarks.scale_bench import ROOT

    from medqa.config import load_params
    from medqa.contracts import DecodingSettings
    from medqa.modelsource import load_qa_model

    model, params_file = write_bench_model(tmp_path, ROOT / "params.yaml")
    params = load_params(params_file)  # refuses an absolute paths.checkpoint
    assert tmp_path / params.paths.checkpoint == model and params.base_model == str(model)
    trained = json.loads((model / "medqa.json").read_text())
    decoding = DecodingSettings.from_json(json.loads((model / "decoding.json").read_text()))
    assert trained["max_seq_length"] == decoding.max_seq_length == params.tokenize.max_seq_length
    assert load_qa_model(str(model)).config.hidden_size == 32  # tiny, random


def _streamed_runs() -> list[Measured]:
    """Evaluate capped at 2,000 + 2,000 questions at both sizes; predict reads every test row."""
    return [
        Measured("evaluate", 10_000, 2, 30.0, 700.0, 700.0, scored=3_000),
        Measured("evaluate", 100_000, 2, 40.0, 720.0, 720.0, scored=4_000),
        Measured("evaluate", 1_000_000, 2, 40.0, 4_000.0, 4_000.0, scored=4_000),
        Measured("predict", 10_000, 2, 10.0, 600.0, 600.0, scored=1_500),
        Measured("predict", 100_000, 2, 100.0, 600.0, 600.0, scored=15_000),
        Measured(f"tokenize ({LONG})", 12, 2, 12.0, 500.0, 1300.0),
    ]


def test_report_rates_evaluate_and_predict_by_the_questions_they_read():
    text = render_scale_report(_streamed_runs(), "m", [])
    lines = text.splitlines()
    assert "| predict, 100,000 q (15,000 read) | wall s | 100 |" in text
    assert (
        "|  | questions/s | 150 |"
        in lines[lines.index(next(x for x in lines if "15,000 read" in x)) + 1]
    )
    # the RSS target of evaluate and predict holds at every size, the long row's too
    rss = [x for x in lines if "peak RSS MiB, largest process" in x]
    assert len(rss) == 6 and all("≤ 3,072" in x for x in rss)
    assert sum("**miss**" in x for x in rss) == 1  # evaluate at 1M: 4,000 MiB
    predict = next(x for x in lines if x.startswith("| predict, 10,000 → 100,000 q |"))
    assert "time exponent (1 = linear) | 1.00 |" in predict
    # evaluate capped at both of the larger sizes: compared 10k → 100k only, and never targeted
    assert "evaluate, 10,000 → 100,000 q" in text and "evaluate, 100,000 → 1,000,000" not in text
    assert not any("s/question" in x and "0.7–1.3×" in x for x in lines if "evaluate" in x)
    assert text.startswith("# medqa at corpus scale: tokenize, evaluate, predict on synthetic data")


@pytest.mark.slow
def test_bench_scale_measures_evaluate_predict_and_long_contexts_end_to_end(tmp_path):
    out = tmp_path / "bench_scale.md"
    stages = ["--stages", "evaluate", "predict", "long"]
    assert main(["--sizes", "200", *stages, "--one-core-at", "0", "--output", str(out)]) == 0
    text = out.read_text()
    assert "cores vs 1" not in text  # no one-core rerun asked for
    for stage in ("validate", "tokenize", "evaluate", "predict"):
        assert f"| {stage}, 200 q" in text and f"| {stage} ({LONG}), 12 q" in text
    assert "tiny random model" in text
