"""The inference engine (issue "Fast answers on every CPU"): the policy that proposes torch.compile,
the judgement of its trial against eager, and the compiled model itself on a tiny BERT: the same
logits as eager, recorded by the evaluate stage, applied by predict and serve, and eager again when
compiling fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import scored_checkpoint_project
from medqa.config import EvaluateParams, TokenizeParams
from medqa.decoding import predict_logits
from medqa.engine import (
    MIN_TRIAL_QUESTIONS,
    CompiledQA,
    EngineTrial,
    engine_candidate,
    judge_trial,
)
from medqa.errors import ConfigError
from medqa.evaluation import evaluate_checkpoint
from medqa.predictor import QAPredictor

WINDOWS = TokenizeParams(max_seq_length=128, doc_stride=48)


@pytest.mark.parametrize(
    ("requested", "device", "precision", "engine"),
    [
        ("auto", "cpu", "fp32", "compile"),  # the one place compile was measured faster
        ("auto", "cpu", "bf16", "eager"),  # bf16 autocast is the fast path there
        ("auto", "cuda", "bf16", "eager"),  # not measured on a GPU
        ("eager", "cpu", "fp32", "eager"),
        ("compile", "cuda", "fp16", "compile"),  # asked for: no second guessing
    ],
)
def test_auto_proposes_compile_only_on_a_cpu_at_fp32(requested, device, precision, engine):
    assert engine_candidate(requested, device, precision)[0] == engine


def test_an_unknown_engine_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match=r"evaluate.engine 'onnx' is not one of auto, eager"):
        engine_candidate("onnx", "cpu", "fp32", "evaluate.engine")


def _trial(speedup: float = 1.2, same: float = 1.0, f1_change: float = 0.0) -> EngineTrial:
    return EngineTrial(
        questions=267,
        eager_seconds=12.0,
        compiled_seconds=12.0 / speedup,
        compile_seconds=60.0,
        same_answers=same,
        eager_f1=0.4877,
        compiled_f1=0.4877 + f1_change,
    )


@pytest.mark.parametrize(
    ("trial", "engine", "why"),
    [
        (_trial(), "compile", "measured faster with the same answers (1.20x eager"),
        (_trial(speedup=1.02), "eager", "was not faster (1.02x eager"),
        (_trial(same=0.95), "eager", "changed answers"),
        (_trial(f1_change=-0.01), "eager", "changed answers"),
        (_trial(f1_change=0.004, same=0.996), "compile", "same answers"),
    ],
)
def test_auto_keeps_compile_only_when_faster_with_the_same_answers(trial, engine, why):
    chosen, reason = judge_trial("auto", trial)
    assert (chosen, why in reason) == (engine, True), reason


def test_compile_asked_for_is_kept_even_when_slower_and_says_so():
    engine, why = judge_trial("compile", _trial(speedup=0.8))
    assert engine == "compile"
    assert "set by evaluate.engine (0.80x eager" in why


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """Validated and tokenized splits of a few real passages, and a checkpoint with its medqa.json."""
    return scored_checkpoint_project(
        tmp_path_factory.mktemp("engine-proj"), tiny_model_dir, WINDOWS
    )


def _evaluate(proj: Path, engine: str) -> dict:
    return evaluate_checkpoint(
        proj / "checkpoint",
        proj / "features",
        proj / "validated",
        proj / f"reports-{engine}",
        str(proj / "checkpoint"),
        EvaluateParams(bootstrap_samples=20, engine=engine, precision="fp32"),
    )


@pytest.mark.slow
def test_evaluate_records_the_compiled_engine_and_predict_serves_on_it(project):
    report = _evaluate(project, "compile")
    trial = report["engine_trial"]
    assert report["engine"] == "compile", report["engine_reason"]
    assert trial["same_answers"] == 1.0
    assert trial["compiled_f1"] == pytest.approx(trial["eager_f1"])
    rows = [json.loads(line) for line in (project / "validated" / "test.jsonl").open()]
    assert trial["questions"] == len(rows)
    decoding = project / "reports-compile" / "decoding.json"
    assert json.loads(decoding.read_text())["engine"] == "compile"

    predictor = QAPredictor(project / "checkpoint", decoding_file=decoding)
    assert predictor.engine == "eager"  # a pyfunc (mlflow models serve) stays eager until asked
    records = [{"question": r["question"], "context": r["context"]} for r in rows]
    eager = predictor.predict(records)
    predictor.use_engine("auto")
    assert (predictor.engine, predictor.engine_reason) == (
        "compile",
        "the engine its test F1 was measured on",
    )
    assert predictor.warm_up() > 0
    compiled = predictor.predict(records)
    assert [r["answer"] for r in compiled] == [r["answer"] for r in eager]
    for a, b in zip(compiled, eager):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("min_speedup", "engine"), [(1e9, "eager"), (0.0, "compile")])
def test_auto_judges_a_large_test_split_on_a_sample_first(
    project, monkeypatch, min_speedup, engine
):
    import medqa.engine
    import medqa.evaluation

    rows = (project / "validated" / "test.jsonl").read_text().splitlines()
    monkeypatch.setattr(medqa.evaluation, "MIN_TRIAL_QUESTIONS", 1)
    monkeypatch.setattr(medqa.engine, "TRIAL_SAMPLE_QUESTIONS", len(rows) - 1)
    monkeypatch.setattr(medqa.engine, "MIN_SPEEDUP", min_speedup)  # the sample rules out, or in
    report = _evaluate(project, "auto")
    assert report["engine"] == engine, report["engine_reason"]
    # ruled out on the sample, the whole split is not run compiled; ruled in, it is, and judged
    assert report["engine_trial"]["questions"] == (
        len(rows) - 1 if engine == "eager" else len(rows)
    )
    assert f"on {report['engine_trial']['questions']} questions" in report["engine_reason"]


@pytest.mark.slow
def test_auto_stays_eager_on_a_test_split_too_small_to_time(project):
    report = _evaluate(project, "auto")
    assert report["engine"] == "eager"
    assert (
        f"too few to time torch.compile against eager (it takes {MIN_TRIAL_QUESTIONS})"
        in (report["engine_reason"])
    )
    assert report["engine_trial"] is None
    decoding = json.loads((project / "reports-auto" / "decoding.json").read_text())
    assert decoding["engine"] == "eager"


@pytest.mark.slow
def test_a_failed_compile_falls_back_to_eager_with_the_same_logits(project, monkeypatch):
    import torch._inductor.config as inductor
    from datasets import load_from_disk

    from medqa.modelsource import load_qa_model

    torch._dynamo.reset()
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/c++",))  # a machine without a compiler
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # so nothing compiled before is reused
    model = load_qa_model(str(project / "checkpoint")).eval()
    windows = load_from_disk(str(project / "features" / "test")).to_list()[:4]
    compiled = CompiledQA(model)
    starts, _ = predict_logits(compiled, windows, 4)
    assert compiled.failed is not None and "compiler" in compiled.failed.lower()
    expected, _ = predict_logits(model, windows, 4)
    assert all((a == b).all() for a, b in zip(starts, expected))
    torch._dynamo.reset()


def test_a_decoding_file_with_an_unknown_engine_is_refused(project, tmp_path):
    from medqa.errors import ModelError

    decoding = {"n_best": 5, "max_answer_length": 30, "null_threshold": 0.0}
    decoding |= {"max_seq_length": 128, "doc_stride": 48, "engine": "tensorrt"}
    path = tmp_path / "decoding.json"
    path.write_text(json.dumps(decoding))
    with pytest.raises(ModelError, match=r"engine 'tensorrt' is not one of eager, compile"):
        QAPredictor(project / "checkpoint", decoding_file=path)


@pytest.mark.slow
def test_serve_compiles_before_it_listens_and_answers_as_eager(project, tmp_path):
    """`medqa serve --engine compile` of a pyfunc: it says it compiled, then serves the eager
    model's answers from uvicorn's worker thread (compiled in the main one)."""
    import sys
    import urllib.request

    from benchmarks.serving_bench import save_served_model

    from helpers import environ_without, free_port, start_server, stop_group, wait_until_up

    folder = tmp_path / "model"
    shutil.copytree(project / "checkpoint", folder)
    _evaluate(project, "eager")  # a decoding.json for the folder
    shutil.copy(project / "reports-eager" / "decoding.json", folder / "decoding.json")
    pyfunc = save_served_model(folder, tmp_path / "pyfunc")
    port, log = free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "medqa", "serve", "--model", str(pyfunc), "--engine", "compile"]
    env = environ_without("MLFLOW_") | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = start_server([*cmd, "--port", str(port)], log, env, cwd=tmp_path)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log, seconds=300)
        rows = [json.loads(line) for line in (project / "validated" / "test.jsonl").open()]
        records = [{"question": r["question"], "context": r["context"]} for r in rows]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps({"dataframe_records": records}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            served = json.loads(resp.read())["predictions"]
    finally:
        stop_group(proc)
    text = log.read_text()
    assert "engine compile (set by --engine)" in text and "compiled in " in text, text[-2000:]
    eager = QAPredictor(folder).predict(records)
    assert [r["answer"] for r in served] == [r["answer"] for r in eager]
