"""`medqa serve` and the inference precision policy, on a tiny model registered in a real MLflow
SQLite store: request limits (HTTP 413), the batched path, shutdown on SIGTERM with a long request
running, and the precision a version records and is served at."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from helpers import (
    CALIBRATION,
    DECODING,
    environ_without,
    free_port,
    inside_project,
    one_version_project,
    start_server,
    wait_until_up,
)
from medqa.device import choose_precision, precision_context
from medqa.errors import ConfigError
from medqa.predictor import PredictionStopped, QAPredictor

pytestmark = pytest.mark.slow  # real servers and tiny registered models

NAME = "tiny-serve"
CONTEXT = (
    "Photodynamic therapy with verteporfin was used for classic choroidal neovascularisation before "
    "anti-VEGF injections. Dry AMD has no approved treatment that restores lost vision."
)
# DECODING never abstains: every record gets a span, and the calibrator says 0.5 for each
SETTINGS = DECODING | {"precision": "bf16", "calibration": CALIBRATION}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A project folder whose registry holds one version of the tiny model, evaluated in bf16."""
    proj = tmp_path_factory.mktemp("serve-proj")
    with inside_project(proj):
        row = {"id": "t1", "question": "Which dye?", "context": CONTEXT, "answers": []}
        one_version_project(proj, tiny_model_dir, NAME, SETTINGS, row)
        yield proj


def _record(i: int, context: str = CONTEXT) -> dict[str, str]:
    return {"question": f"What was used before anti-VEGF injections ({i})?", "context": context}


@pytest.fixture()
def client(in_project):
    """The server's app, in this process, on the registered champion with small limits."""
    from starlette.testclient import TestClient

    from medqa.server import ScoringApp, load_served_model

    app = ScoringApp(load_served_model(f"models:/{NAME}@champion"), max_records=8, max_chars=2000)
    with TestClient(app.app) as c:
        yield c, app


def test_auto_precision_follows_the_hardware():
    assert choose_precision("auto", "cpu", False, ("avx512_bf16",))[0] == "bf16"
    assert choose_precision("auto", "cpu", False, ("amx_bf16",))[0] == "bf16"
    precision, why = choose_precision("auto", "cpu", False, ())
    assert precision == "fp32" and "no avx512_bf16" in why
    assert choose_precision("auto", "cuda", True, ())[0] == "bf16"
    assert choose_precision("auto", "cuda", False, ())[0] == "fp16"
    assert choose_precision("fp32", "cpu", False, ("avx512_bf16",), "--precision") == (
        "fp32",
        "set by --precision",
    )
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        choose_precision("fp16", "cpu", False, ("avx512_bf16",))


def test_a_version_records_its_precision_and_is_served_at_it(in_project):
    from mlflow import MlflowClient

    from medqa.server import load_served_model

    assert MlflowClient().get_model_version(NAME, "1").tags["precision"] == "bf16"
    served = load_served_model(f"models:/{NAME}@champion").unwrap_python_model().predictor
    assert served.precision == "bf16" and "measured" in served.precision_reason
    full = load_served_model(f"models:/{NAME}@champion", "fp32").unwrap_python_model().predictor
    assert full.precision == "fp32"  # one setting away
    # loaded again for fp32: its weights were cast for bf16 on load
    assert served.model.qa_outputs.weight.dtype == torch.bfloat16
    assert full.model.qa_outputs.weight.dtype == torch.float32
    records = [_record(i) for i in range(3)]
    answers = [r["answer"] for r in served.predict(records)]
    assert answers == [r["answer"] for r in full.predict(records)]  # same spans on this model


def test_batches_give_the_logits_of_one_pass_and_stop_between_batches(tiny_model_dir, tmp_path):
    from medqa.decoding import predict_logits
    from medqa.features import build_eval_features

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "decoding.json").write_text(json.dumps(SETTINGS | {"precision": "fp32"}))
    predictor = QAPredictor(folder, batch_size=4)
    predictor.tokenize_chunk = 3
    records = [_record(i, CONTEXT * (1 + i % 5)) for i in range(10)]  # 1 to 8 windows each
    features = build_eval_features(predictor.tokenizer, records, predictor.tokenize)
    assert predictor._features(records) == features  # tokenized 3 records at a time
    assert len(features) > 2 * predictor.batch_size
    starts, ends = predictor._logits(features)
    whole_s, whole_e = predict_logits(
        predictor.model, features, 4, predictor.tokenizer.pad_token_id
    )
    assert all((a == b).all() for a, b in zip(starts, whole_s))
    assert all((a == b).all() for a, b in zip(ends, whole_e))
    predictor.stop.set()
    with pytest.raises(PredictionStopped):
        predictor.predict(records)


def test_bf16_autocast_runs_matrix_products_in_bf16(tiny_model_dir):
    import torch
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir).eval()
    x = torch.randn(2, 32)
    with precision_context(model, "bf16"):
        assert model.qa_outputs(x).dtype == torch.bfloat16
    with precision_context(model, "fp32"):
        assert model.qa_outputs(x).dtype == torch.float32


def test_weights_cast_once_give_autocasts_logits_bit_for_bit(tiny_model_dir):
    from transformers import AutoModelForQuestionAnswering

    from medqa.device import cast_for_autocast

    def load():
        return AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir).eval()

    plain, cast = load(), cast_for_autocast(load(), "bf16")
    assert cast.qa_outputs.weight.dtype == torch.bfloat16
    assert cast.bert.embeddings.word_embeddings.weight.dtype == torch.float32  # as autocast
    assert cast.bert.encoder.layer[0].output.LayerNorm.weight.dtype == torch.float32
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    with torch.inference_mode():
        with precision_context(plain, "bf16"):
            a = plain(input_ids=ids, attention_mask=mask)
        with precision_context(cast, "bf16"):
            b = cast(input_ids=ids, attention_mask=mask)
    assert torch.equal(a.start_logits, b.start_logits)
    assert torch.equal(a.end_logits, b.end_logits)
    # weights cast for bf16 are never run as if they were fp32
    with pytest.raises(ValueError, match="cast for bf16 autocast; reload it for fp32"):
        precision_context(cast, "fp32")
    assert cast_for_autocast(load(), "fp32").qa_outputs.weight.dtype == torch.float32


def test_requests_over_the_limits_get_413_naming_the_limit(client):
    c, app = client
    ok = c.post("/invocations", json={"dataframe_records": [_record(1)]})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["answer"]
    many = c.post("/invocations", json={"dataframe_records": [_record(i) for i in range(9)]})
    assert many.status_code == 413 and "request has 9 records; the limit is 8" in many.text
    long = c.post("/invocations", json={"dataframe_records": [_record(1, "x" * 2500)]})
    assert long.status_code == 413 and "the limit is 2000" in long.text
    huge = c.post(
        "/invocations",
        content=b"{" + b" " * (app.max_body_bytes + 1) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and "bytes" in huge.text
    split = {"columns": ["question", "context"], "data": [list(_record(2).values())]}
    assert c.post("/invocations", json={"dataframe_split": split}).status_code == 200
    assert c.post("/invocations", json={"inputs": _record(3)}).status_code == 200
    many = c.post("/invocations", json={"instances": [_record(i) for i in range(9)]})
    assert many.status_code == 413 and "9 records" in many.text
    bad = c.post("/invocations", json={"dataframe_records": [{"question": "q?", "context": ""}]})
    assert bad.status_code == 400 and "record 1: 'context' is empty" in bad.json()["message"]
    assert c.get("/ping").status_code == 200


def test_a_batch_request_is_one_batched_prediction_with_the_single_answers(client):
    c, app = client
    records = [_record(i) for i in range(8)]
    calls = []
    batched = app.predictor._logits
    app.predictor._logits = lambda features: calls.append(len(features)) or batched(features)
    body = c.post("/invocations", json={"dataframe_records": records}).json()["predictions"]
    assert len(calls) == 1 and calls[0] >= len(records)  # all records in one batched pass
    singles = [
        c.post("/invocations", json={"dataframe_records": [r]}).json()["predictions"][0]
        for r in records[:2]
    ]
    assert [(b["answer"], b["start"]) for b in body[:2]] == [
        (s["answer"], s["start"]) for s in singles
    ]


def _group_alive(pgid: int) -> list[str]:
    """Command lines of the processes still in process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return alive


LIMITS_OFF = ("--max-records", "100000", "--max-chars", "100000000")


@pytest.mark.integration
def test_a_request_sets_its_own_answer_policy(client):
    c, _ = client
    records = [_record(i) for i in range(2)]

    def post(params: object) -> tuple[int, dict]:
        r = c.post("/invocations", json={"dataframe_records": records, "params": params})
        return r.status_code, r.json()

    status, body = post(None)  # the version's policy (0 here): every answer
    assert status == 200 and not any(p["abstained"] for p in body["predictions"])
    assert [p["confidence"] for p in body["predictions"]] == [0.5, 0.5]
    status, body = post({"min_confidence": 0.6})
    assert status == 200 and all(p["abstained"] for p in body["predictions"])
    assert all("below the answer policy's 0.600" in p["reason"] for p in body["predictions"])
    for params, message in [
        ({"min_confidence": 1.5}, "params.min_confidence must be a number from 0 to 1"),
        ({"min_confidence": "high"}, "params.min_confidence must be a number"),
        ({"threshold": 0}, "unknown params ['threshold']"),
        ([0.5], "params must be an object"),
    ]:
        status, body = post(params)
        assert status == 400 and body["message"].startswith(message), body


def test_sigterm_during_a_long_request_stops_every_process_of_the_server(in_project):
    proj, port = in_project, free_port()
    log = proj / "serve.log"
    cmd = [sys.executable, "-m", "medqa", "serve", "--port", str(port), *LIMITS_OFF]
    server = start_server(cmd, log, environ_without("MLFLOW_"), cwd=proj)
    try:
        started = time.monotonic()
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log, interval=0.2)
        cold_start = time.monotonic() - started
        # thousands of windows: far more work than the few seconds before the signal
        body = json.dumps({"dataframe_records": [_record(i, CONTEXT * 12) for i in range(1500)]})
        outcome: dict[str, object] = {}

        def long_request() -> None:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=300) as resp:
                    outcome["status"] = resp.status
            except urllib.error.HTTPError as e:
                outcome["status"], outcome["body"] = e.code, e.read().decode()
            except OSError as e:
                outcome["status"] = repr(e)

        client = threading.Thread(target=long_request)
        client.start()
        time.sleep(2.0)
        assert "status" not in outcome, "the request ended before the signal: make it longer"
        signalled = time.monotonic()
        os.killpg(server.pid, signal.SIGTERM)
        while _group_alive(server.pid) and time.monotonic() - signalled < 15:
            time.sleep(0.1)
        assert not _group_alive(server.pid), (_group_alive(server.pid), log.read_text()[-2000:])
        client.join(timeout=10)
        assert outcome.get("status") == 503, (outcome, log.read_text()[-2000:])
        assert "shutting down" in str(outcome.get("body"))
        print(
            f"cold start {cold_start:.1f} s; stopped {time.monotonic() - signalled:.1f} s after SIGTERM"
        )
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
