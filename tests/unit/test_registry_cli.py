"""The registry in use, against a real MLflow SQLite store: lineage tags, promote/rollback/models,
batch prediction from JSONL, CSV and stdin, refusal of pickle weights, and the REST server."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from helpers import (
    DECODING,
    distinct_copy,
    environ_without,
    free_port,
    inside_project,
    register_version,
    start_server,
    stop_group,
    wait_until_up,
)
from medqa.champion import HISTORY_TAG
from medqa.cli import main
from medqa.errors import ModelError
from medqa.predictor import MAX_CONTEXT_CHARS, QAPredictor

pytestmark = pytest.mark.slow  # trains tiny models, a real MLflow store and server

NAME = "tiny-qa"
CONTEXT = (
    "Aflibercept 8 mg can be extended to intervals of up to 16 weeks after three monthly loading doses. "
    "Geographic atrophy is treated with pegcetacoplan or avacincaptad pegol injections."
)
RECORDS = [
    {"id": "q1", "question": "How far can dosing be extended?", "context": CONTEXT},
    {"id": "q2", "question": "What treats geographic atrophy?", "context": CONTEXT},
    {"question": "How many loading doses?", "context": CONTEXT},
]


def _clean_env() -> dict[str, str]:
    """The environment without MLflow settings, so every process finds the registry under ./mlruns."""
    return environ_without("MLFLOW_") | {"HF_HUB_OFFLINE": "1"}


# The gate scores the champion on these rows: a model that never abstains (DECODING: null_threshold -1e9)
# answers "zinc" to both, right on the first and wrong on the unanswerable second: F1 0.5 for any of
# the fixture's checkpoints, so the claimed F1s .5/.6/.4 make v2 champion and leave v3 below it.
GATE_ROWS = [
    {
        "id": "g1",
        "question": "Which mineral?",
        "context": "zinc",
        "answers": [{"text": "zinc", "answer_start": 0}],
    },
    {"id": "g2", "question": "What dose?", "context": "zinc", "answers": []},
]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A project folder whose registry holds v1 (F1 .5), v2 (.6) and v3 (.4); the gate made v2 champion."""
    from medqa.tracking import configure_tracking

    proj = tmp_path_factory.mktemp("proj")
    (proj / "dvc.yaml").write_text("stages: {}\n")  # a project: the CLI finds its ./mlruns
    (proj / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n  min_f1: 0.0\n")
    (proj / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GATE_ROWS))
    with inside_project(proj):
        for i, f1 in enumerate((0.5, 0.6, 0.4), start=1):
            # three checkpoints, not one registered thrice
            ckpt = distinct_copy(tiny_model_dir, proj / f"ckpt{i}", 1e-4 * i)
            configure_tracking()
            with mlflow.start_run() as run:
                mlflow.log_params({"learning_rate": 1e-3, "epochs": 2, "base_model": "tiny"})
                mlflow.set_tags(
                    {
                        "git_commit": "abc123",
                        "env_lock_sha256": "f" * 64,
                        "backend": "cpu",
                        "device_name": "x86_64",
                        "device_arch": "x86_64",
                        "precision": "fp32",
                        "data_md5_train": "d41d8cd98f00b204e9800998ecf8427e",
                        "data_md5_dev": "0" * 32,
                    }
                )
            (ckpt / "medqa.json").write_text(
                json.dumps(
                    {
                        "run_id": run.info.run_id,
                        "backend": "cpu",
                        "base_model": "tiny",
                        "max_seq_length": 128,
                        "doc_stride": 48,
                    }
                )
            )
            (proj / "decoding.json").write_text(json.dumps(DECODING))
            # lets the folder be used directly
            (ckpt / "decoding.json").write_text(json.dumps(DECODING))
            register_version(proj, ckpt, NAME, f1, f1 / 2, f"registration{i}.json")
        yield proj


def client() -> MlflowClient:
    from medqa.tracking import configure_tracking

    configure_tracking()
    return MlflowClient()


def champion() -> str:
    return str(client().get_model_version_by_alias(NAME, "champion").version)


def test_versions_carry_lineage_tags(in_project):
    mv = client().get_model_version(NAME, "1")
    run_id = mv.tags["run_id"]
    assert mv.tags["git_commit"] == "abc123" and mv.tags["env_lock_sha256"] == "f" * 64
    assert (
        mv.tags["data_md5_train"] == "d41d8cd98f00b204e9800998ecf8427e"
        and mv.tags["data_md5_dev"] == "0" * 32
    )
    assert json.loads(mv.tags["params"])["learning_rate"] == "0.001"
    assert mv.tags["device"] == "cpu, x86_64, x86_64, fp32"
    assert mv.tags["tracking_uri"].startswith("sqlite:///") and run_id in mv.tags["run_link"]
    # no server to link to: how to open the run in a local UI (integration/test_team_setup.py: a server)
    assert f"mlflow ui --backend-store-uri {mv.tags['tracking_uri']}" in mv.tags["run_link"]
    assert {"test_f1", "test_em", "backend", "base_model", "best_baseline_f1"} <= set(mv.tags)


def test_promote_rollback_twice_and_models(in_project, capsys):
    assert champion() == "2"  # the gate: v1 (first), then v2 (better); v3 below v2
    assert main(["promote", "3"]) == 0
    assert "@champion: v2 -> v3 (promote" in capsys.readouterr().out and champion() == "3"
    assert main(["promote", "3"]) == 0 and "already v3" in capsys.readouterr().out

    assert main(["rollback"]) == 0
    assert "v3 -> v2 (rollback" in capsys.readouterr().out and champion() == "2"
    assert main(["rollback", "--name", NAME]) == 0
    assert "v2 -> v1 (rollback" in capsys.readouterr().out and champion() == "1"
    assert main(["rollback"]) == 2
    assert "no earlier champion" in capsys.readouterr().err and champion() == "1"

    history = json.loads(client().get_registered_model(NAME).tags[HISTORY_TAG])
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("gate", "1", None),
        ("gate", "2", "1"),
        ("promote", "3", "2"),
        ("rollback", "2", "3"),
        ("rollback", "1", "2"),
    ]

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["test_f1"], r["aliases"]) for r in rows] == [
        ("3", 0.4, ["candidate"]),
        ("2", 0.6, []),
        ("1", 0.5, ["champion"]),
    ]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "0.4000" in table and "champion" in table

    assert main(["promote", "9"]) == 2 and "has no version '9'" in capsys.readouterr().err
    assert (
        main(["models", "--name", "nope"]) == 2
        and "no registered model named 'nope'" in capsys.readouterr().err
    )
    # back to the state the server test expects
    assert main(["promote", "2"]) == 0 and champion() == "2"


def _predict_file(
    project: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medqa", "predict", "--model", f"models:/{NAME}@champion", *args],
        cwd=project,
        env=_clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_batch_predict_jsonl_csv_stdin_agree(in_project):
    proj = in_project
    (proj / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "\n")
    with open(proj / "in.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "question", "context"])
        w.writeheader()
        w.writerows(RECORDS)

    assert (
        main(
            [
                "predict",
                "--model",
                f"models:/{NAME}@champion",
                "--input",
                "in.jsonl",
                "--output",
                "out.jsonl",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    from_jsonl = _read_jsonl((proj / "out.jsonl").read_text())
    assert [r["id"] for r in from_jsonl] == ["q1", "q2", 3]  # no id: the line number
    for res, rec in zip(from_jsonl, RECORDS):
        assert set(res) == {
            "id",
            "answer",
            "score",
            "confidence",
            "start",
            "end",
            "abstained",
            "reason",
        }
        assert not res["abstained"] and rec["context"][res["start"] : res["end"]] == res["answer"]

    from_csv = _read_jsonl(_predict_file(proj, "--input", "in.csv").stdout)
    from_stdin = _predict_file(proj, "--input", "-", stdin=(proj / "in.jsonl").read_text())
    assert from_stdin.returncode == 0 and "predict" in from_stdin.stderr  # the progress bar
    for other in (from_csv, _read_jsonl(from_stdin.stdout)):
        assert [(r["answer"], r["start"], r["end"]) for r in other] == [
            (r["answer"], r["start"], r["end"]) for r in from_jsonl
        ]
        assert [r["score"] for r in other] == pytest.approx(
            [r["score"] for r in from_jsonl], abs=1e-5
        )
    assert from_csv[2]["id"] == 3  # the third record, in CSV as in JSONL

    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "medqa",
            "predict",
            "--model",
            f"models:/{NAME}/2",
            "--json",
            "--question",
            RECORDS[0]["question"],
            "--context",
            CONTEXT,
        ],
        cwd=proj,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(single.stdout)["answer"] == from_jsonl[0]["answer"]


@pytest.mark.parametrize(
    "lines,expected",
    [
        ([RECORDS[0], {"question": "q?"}], "line 2: missing field 'context'"),
        (
            [RECORDS[0], RECORDS[1], {"question": "q?", "context": "  "}],
            "line 3: 'context' is empty",
        ),
        ([{"question": 7, "context": CONTEXT}], "line 1: 'question' must be a string, got int"),
        ([RECORDS[0], "{not json"], "line 2: invalid JSON"),
    ],
)
def test_bad_batch_records_exit_2_naming_the_line(in_project, capsys, lines, expected):
    (in_project / "bad.jsonl").write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(in_project / "ckpt1"),
                "--input",
                "bad.jsonl",
                "--output",
                "o.jsonl",
                "--batch-size",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"bad.jsonl: {expected}" in err and "Traceback" not in err
    assert not (in_project / "o.jsonl").exists() and not list(in_project.glob(".o.jsonl.*"))


def test_bad_csv_record_names_its_line(in_project):
    (in_project / "bad.csv").write_text(f"question,context\nWhat?,{CONTEXT}\nWhy?,\n")
    res = _predict_file(in_project, "--input", "bad.csv")
    assert res.returncode == 2 and "bad.csv: line 3: 'context' is empty" in res.stderr
    assert "Traceback" not in res.stderr


def test_pickle_weights_are_refused(tmp_path, tiny_model_dir, capsys):
    import torch
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "decoding.json").write_text(json.dumps(DECODING))
    with pytest.raises(ModelError, match="safetensors"):
        QAPredictor(folder)
    assert main(["predict", "--model", str(folder), "--question", "q?", "--context", "c."]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "model.safetensors" in err and "Traceback" not in err


def _post(port: int, records: list[dict], **extra: object) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        method="POST",
        data=json.dumps({"dataframe_records": records, **extra}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_champion_matches_predict_and_refuses_bad_input(in_project):
    proj, port = in_project, free_port()
    expected = _read_jsonl(
        _predict_file(
            proj, "--input", "-", stdin="".join(json.dumps(r) + "\n" for r in RECORDS)
        ).stdout
    )
    log = proj / "serve.log"
    cmd = [sys.executable, "-m", "medqa", "serve", "--port", str(port)]
    server = start_server(cmd, log, _clean_env(), cwd=proj)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)

        status, body = _post(port, [{k: r[k] for k in ("question", "context")} for r in RECORDS])
        assert status == 200
        served = body["predictions"]
        assert [(s["answer"], s["start"], s["end"], s["abstained"]) for s in served] == [
            (e["answer"], e["start"], e["end"], e["abstained"]) for e in expected
        ]
        assert [s["score"] for s in served] == pytest.approx(
            [e["score"] for e in expected], abs=1e-5
        )

        huge = (CONTEXT + " ") * 150  # ~30k characters: dozens of sliding windows
        status, body = _post(
            port, [{"question": "How far can dosing be extended?", "context": huge}]
        )
        assert status == 200 and body["predictions"][0]["answer"]

        # a question too long for the windows: an abstention that says so, not a refused request
        status, body = _post(port, [{"question": "why " * 200, "context": CONTEXT}, RECORDS[0]])
        assert status == 200
        too_long, answered = body["predictions"]
        assert too_long["abstained"] and too_long["reason"].startswith("question too long: ")
        assert answered == served[0] and answered["reason"] is None  # JSON null, never NaN

        # this version was evaluated without a calibrator: no policy to ask for
        question = [{k: RECORDS[0][k] for k in ("question", "context")}]
        status, body = _post(port, question, params={"min_confidence": 0.5})
        assert status == 400 and "needs a calibrated confidence" in body["message"]

        for records, extra, message in [
            ([{"question": "q?"}], {}, "record 1: missing field 'context'"),
            ([RECORDS[0], {"question": "q?"}], {}, "record 2: missing field 'context'"),
            ([{"questions": "q?"}], {}, "no record has question or context"),
            ([{"question": "q?", "context": ""}], {}, "record 1: 'context' is empty"),
            ([{"question": 5, "context": CONTEXT}], {}, "record 1: 'question' must be a string"),
            (
                [{"question": "q?", "context": "x" * (MAX_CONTEXT_CHARS + 1)}],
                {},
                f"record 1: context has {MAX_CONTEXT_CHARS + 1} characters",
            ),
            (question, {"params": {"min_confidence": 2}}, "params.min_confidence must be"),
            (question, {"params": {"temperature": 1}}, "unknown params ['temperature']"),
        ]:
            status, body = _post(port, records, **extra)
            assert status == 400, (records[-1].keys(), status, body)
            assert body["message"].startswith(message), body["message"][-500:]
    finally:
        stop_group(server)
