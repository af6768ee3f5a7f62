"""The evaluate stage, the register stage's gate and `medqa evaluate --model/--split`, on a tiny model,
a few real passages and a real MLflow SQLite registry in a temporary folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from helpers import distinct_copy, scored_checkpoint_project, tiny_squad_slice
from medqa.adhoc_eval import default_reports_dir
from medqa.cli import main
from medqa.config import EvaluateParams, RegisterParams, TokenizeParams, ValidateParams
from medqa.device import resolve_precision
from medqa.evaluation import evaluate_checkpoint
from medqa.fileio import read_jsonl
from medqa.registry import register_model
from medqa.tracking import configure_tracking, file_md5
from medqa.validate import validate_records

pytestmark = pytest.mark.slow  # tiny models scored through the real stages

NAME = "tiny-eval"
WINDOWS = TokenizeParams(max_seq_length=128, doc_stride=48)
PARAMS = EvaluateParams(bootstrap_samples=50)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """Validated and tokenized splits of a few real passages, and a checkpoint with its medqa.json."""
    proj = tmp_path_factory.mktemp("eval-proj")
    # a project (dvc.yaml beside params.yaml), so its registry is its own ./mlruns
    (proj / "dvc.yaml").write_text("stages: {}\n")
    (proj / "params.yaml").write_text("evaluate:\n  bootstrap_samples: 50\n")
    scored_checkpoint_project(proj, tiny_model_dir, WINDOWS)
    return proj


def _stage(proj: Path, base_model: Path) -> dict:
    return evaluate_checkpoint(
        proj / "checkpoint",
        proj / "features",
        proj / "validated",
        proj / "reports",
        str(base_model),
        PARAMS,
    )


def _register(proj: Path, ckpt: Path, metrics: Path, min_f1: float = 0.0) -> dict:
    return register_model(
        ckpt,
        metrics,
        proj / "reports" / "decoding.json",
        proj / "validated" / "test.jsonl",
        proj / "registration.json",
        RegisterParams(NAME, min_f1),
        batch_size=8,
    )


def test_evaluate_ignores_the_registry_and_register_gates_on_the_same_rows(
    in_project, tiny_model_dir, capsys
):
    """Issue "Trust the cache and the gate" 6 and 7: one gate, on the same rows; one version per
    checkpoint."""
    proj = in_project
    first = _stage(proj, tiny_model_dir)
    assert not [k for k in first if "champion" in k]  # evaluate reads only what dvc.yaml lists
    # every pass at the precision the model will be served with; decoding.json carries it on
    auto = resolve_precision("auto", torch.device("cpu"), "evaluate.precision")
    assert (first["precision"], first["precision_reason"]) == auto
    decoding = json.loads((proj / "reports" / "decoding.json").read_text())
    assert decoding["precision"] == first["precision"]
    assert set(first["baselines_f1"]) == {"lexical_window", "base_model_untrained"}
    assert first["test_md5"] == file_md5(proj / "validated" / "test.jsonl")
    # throughput comes from the timed test decision pass, not a pass of its own
    speed = first["speed"]
    assert speed["questions_per_s"] == pytest.approx(first["n"] / speed["batched_pass_s"])
    assert speed["latency_p50_ms"] > 0 and speed["latency_p95_ms"] >= speed["latency_p50_ms"]

    configure_tracking()
    with mlflow.start_run() as run:
        pass
    config = json.loads((proj / "checkpoint" / "medqa.json").read_text())
    (proj / "checkpoint" / "medqa.json").write_text(
        json.dumps(config | {"run_id": run.info.run_id})
    )
    metrics = proj / "reports" / "metrics.json"
    capsys.readouterr()
    reg = _register(proj, proj / "checkpoint", metrics)
    assert reg["promoted"] and reg["version"] == "1" and reg["new_version"]
    # MLflow's own "Successfully registered model" / "Created version" lines got past `medqa -q`
    mlflow_lines = capsys.readouterr().err
    assert "Successfully registered" not in mlflow_lines and "Created version" not in mlflow_lines
    assert MlflowClient().get_model_version(NAME, "1").run_id == run.info.run_id
    ended = MlflowClient().get_run(run.info.run_id).info
    second = _stage(proj, tiny_model_dir)  # a champion now exists: evaluate's figures do not move
    # test scores land on the training run without reopening it (its duration stays training's)
    logged = MlflowClient().get_run(run.info.run_id)
    assert (logged.info.status, logged.info.end_time) == (ended.status, ended.end_time)
    assert logged.data.metrics["test_f1"] == pytest.approx(second["f1"])
    assert {k: second[k] for k in ("f1", "exact", "null_threshold", "baselines_f1")} == {
        k: first[k] for k in ("f1", "exact", "null_threshold", "baselines_f1")
    }

    # the same checkpoint again (say only register.min_f1 changed): no new version, the gate re-decided
    again = _register(proj, proj / "checkpoint", metrics, min_f1=0.0)
    assert (
        again["version"] == "1"
        and not again["new_version"]
        and "already registered as v1" in again["reason"]
    )
    client = MlflowClient()
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert client.get_model_version(NAME, "1").tags["precision"] == first["precision"]
    assert client.get_model_version(NAME, "1").tags["gate_reason"] == again["reason"]

    # the champion's recorded F1 says 0, but scored now on the same rows it does better than the
    # candidate claims: the gate goes by the rows, not by the tag
    assert first["f1"] > 0
    client.set_model_version_tag(NAME, "1", "test_f1", "0.0")
    worse = proj / "worse-metrics.json"
    worse.write_text(json.dumps(json.loads(metrics.read_text()) | {"f1": first["f1"] / 2}))
    cand = _register(proj, distinct_copy(proj / "checkpoint", proj / "ckpt2", 1e-4), worse)
    assert cand["version"] == "2" and not cand["promoted"]
    assert (
        "below champion v1's" in cand["reason"]
        and "scored now on the same test rows" in cand["reason"]
    )
    assert cand["previous_champion_f1"] == pytest.approx(first["f1"])
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    on_disk = json.loads((proj / "registration.json").read_text())
    assert (
        on_disk["reason"] == cand["reason"]
        and client.get_model_version(NAME, "2").tags["gate_promoted"] == "false"
    )

    # the same model by registry URI in ad-hoc mode: its recorded threshold, the same figures
    out = proj / "adhoc"
    assert (
        main(
            [
                "evaluate",
                "--model",
                f"models:/{NAME}@champion",
                "--split",
                "test",
                "--validated",
                str(proj / "validated"),
                "--reports",
                str(out),
            ]
        )
        == 0
    )
    adhoc = json.loads((out / "metrics.json").read_text())
    assert adhoc["f1"] == pytest.approx(second["f1"]) and adhoc["model_version"] == "1"
    assert (
        adhoc["null_threshold"] == first["null_threshold"] and "95% CI" in capsys.readouterr().out
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                f"models:/{NAME}@nope",
                "--split",
                "test",
                "--validated",
                str(proj / "validated"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        f"models:/{NAME}@nope: {NAME} has no alias 'nope'" in err
        and len(err.strip().splitlines()) == 1
    )

    # a champion that cannot be scored, with no F1 from this test set: the gate refuses and says why
    empty = proj / "empty"
    empty.mkdir()
    broken = client.create_model_version(NAME, source=str(empty))
    client.set_registered_model_alias(NAME, "champion", broken.version)
    try:
        third = _register(proj, distinct_copy(proj / "checkpoint", proj / "ckpt3", 2e-4), metrics)
        assert (
            not third["promoted"]
            and f"models:/{NAME}/{broken.version} could not be scored" in third["reason"]
        )
        assert "not from this test set" in third["reason"]
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def _flat_rows(n: int) -> list[dict]:
    """The first ``n`` test questions as flat JSONL records (answer_text/answer_start; "" = unanswerable)."""
    rows = []
    for article in tiny_squad_slice("test", 2)["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                a = qa["answers"][0] if qa["answers"] else {"text": "", "answer_start": ""}
                rows.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"],
                        "context": para["context"],
                        "answer_text": a["text"],
                        "answer_start": a["answer_start"],
                    }
                )
    return rows[:n]


@pytest.fixture()
def served_model(tmp_path, tiny_model_dir) -> Path:
    """The tiny model with a recorded threshold that makes it abstain on every question."""
    folder = tmp_path / "served"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "decoding.json").write_text(
        json.dumps(
            {
                "n_best": 20,
                "max_answer_length": 30,
                "null_threshold": 1e9,
                "max_seq_length": 128,
                "doc_stride": 48,
            }
        )
    )
    return folder


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_adhoc_evaluate_on_a_data_file_uses_the_recorded_threshold(
    tmp_path, served_model, monkeypatch, capsys
):
    rows = [
        *_flat_rows(8),
        {
            "id": "none-1",
            "question": "Which gene was sequenced?",
            "answer_text": "",
            "answer_start": "",
            "context": _flat_rows(1)[0]["context"],
        },
    ]
    data = _write_jsonl(tmp_path / "mine.jsonl", rows)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", str(served_model), "--split", str(data)]) == 0
    out = capsys.readouterr().out
    assert "EM " in out and "95% CI" in out and "from " in out
    (reports,) = (tmp_path / "reports").glob(
        "eval-served-mine-*"
    )  # a new folder, never reports/metrics.json
    assert not (tmp_path / "reports" / "metrics.json").exists()
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["null_threshold"] == 1e9 and metrics["threshold_from"] == str(
        served_model / "decoding.json"
    )
    unanswerable = sum(1 for r in rows if not r["answer_text"])
    assert metrics["n"] == len(rows) and metrics["f1"] == pytest.approx(unanswerable / len(rows))
    predictions = [
        json.loads(line) for line in (reports / "predictions.jsonl").read_text().splitlines()
    ]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    assert all(
        p["prediction"] == "" for p in predictions
    )  # the threshold was applied, not re-tuned
    assert json.loads((reports / "decoding.json").read_text())["max_seq_length"] == 128
    assert str(data) in (reports / "errors.md").read_text()
    assert metrics["precision"] == "fp32" and "none recorded" in metrics["precision_reason"]

    # one flag away: the same model at bf16, said so on stdout and in the reports
    out_dir = tmp_path / "bf16"
    argv = [
        "evaluate",
        "--model",
        str(served_model),
        "--split",
        str(data),
        "--reports",
        str(out_dir),
    ]
    assert main([*argv, "--precision", "bf16"]) == 0
    assert "precision bf16 (set by --precision)" in capsys.readouterr().out
    assert json.loads((out_dir / "metrics.json").read_text())["precision"] == "bf16"
    assert json.loads((out_dir / "decoding.json").read_text())["precision"] == "bf16"
    assert main(["evaluate", "--precision", "fp32"]) == 2  # the stage reads evaluate.precision
    assert "evaluate.precision" in capsys.readouterr().err


def test_default_reports_folder_names():
    from datetime import datetime

    now = datetime(2026, 1, 2, 3, 4, 5)
    assert default_reports_dir("models:/medqa-amd-qa@champion", "test", now) == Path(
        "reports/eval-medqa-amd-qa-champion-test-20260102-030405"
    )
    assert default_reports_dir("models:/m/3", "data/extra.jsonl", now) == Path(
        "reports/eval-m-v3-extra-20260102-030405"
    )


def _public_set_rows() -> list[dict]:
    """Three test questions, two with the faults public SQuAD-shaped sets hold and the validate
    stage repairs: an answer with a trailing space, and an answer_start two characters off."""
    rows = _flat_rows(3)
    rows[0]["answer_text"] += " "
    rows[1]["answer_start"] += 2
    return rows


def test_adhoc_evaluate_repairs_a_data_file_as_the_validate_stage_does(
    tmp_path, served_model, capsys
):
    """One validation policy: a file the validate stage takes whole, repairs and all, is scored
    (not refused), and the repairs are the stage's own, counted beside the scores."""
    data = _write_jsonl(tmp_path / "public.jsonl", _public_set_rows())
    out = tmp_path / "out"
    argv = ["evaluate", "--model", str(served_model), "--split", str(data), "--reports", str(out)]
    assert main(argv) == 0
    assert "scored after 2 repairs" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["repairs"] == 2
    assert metrics["repairs_by_kind"] == {"strip_answer_whitespace": 1, "shift_answer_start": 1}
    stage = tmp_path / "stage"
    validate_records(
        data, stage / "validated", stage / "rejected.jsonl", stage / "v.json", ValidateParams()
    )
    assert read_jsonl(out / "repairs.jsonl") == read_jsonl(stage / "repairs.jsonl")


def test_adhoc_evaluate_refuses_the_same_file_when_repair_is_off(tmp_path, served_model, capsys):
    rows = _public_set_rows()
    data = _write_jsonl(tmp_path / "public.jsonl", rows)
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  repair: false\n")
    out = tmp_path / "out"
    argv = ["evaluate", "--model", str(served_model), "--split", str(data), "--reports", str(out)]
    assert main(["--params", str(params), *argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"medqa evaluate: error: {data} row 1 id='{rows[0]['id']}': answer_has_edge_whitespace "
        "(1 more rows fail validation)"
    )
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing_model", "bad_row", "long_question", "no_threshold"])
def test_adhoc_errors_exit_2_with_one_line(tmp_path, served_model, tiny_model_dir, capsys, case):
    rows = _flat_rows(3)
    model, expected = str(served_model), ""
    if case == "missing_model":
        model, expected = str(tmp_path / "nope"), f"{tmp_path / 'nope'}: no such model folder"
    elif case == "bad_row":  # an answer nowhere in its passage: no repair can save it
        rows[1]["answer_text"] = "brolucizumab"
        expected = (
            f"{tmp_path / 'data.jsonl'} row 2 id='{rows[1]['id']}': answer_span_matches_context"
        )
    elif case == "long_question":
        rows[2]["question"] = "Which " + "very " * 80 + "long question?"
        expected = f"{tmp_path / 'data.jsonl'} row 3: question has"
    else:
        model, expected = str(tiny_model_dir), "decoding.json: missing"
    data = _write_jsonl(tmp_path / "data.jsonl", rows)
    assert (
        main(
            ["evaluate", "--model", model, "--split", str(data), "--reports", str(tmp_path / "out")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # before it, at most the weights' loading bar
    assert last.startswith("medqa evaluate: error: ") and expected in last
    assert not (tmp_path / "out").exists()
    if case == "no_threshold":
        assert "--decoding" in err
