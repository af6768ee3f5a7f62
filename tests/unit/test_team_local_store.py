"""The local MLflow store as a team member meets it: a project moved or copied to another folder,
commands run from a subfolder or from outside any project, a read-only or removed store, and a
training run whose duration registration must not stretch. A real SQLite store throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from helpers import DECODING, distinct_copy
from medqa.cli import main
from medqa.tracking import configure_tracking, reroot_local_store

pytestmark = pytest.mark.slow  # real stores, a few CLI processes

NAME = "tiny-qa"
CONTEXT = "Aflibercept 8 mg can be extended to intervals of up to 16 weeks after loading doses."
ROWS = [
    {
        "id": "t1",
        "question": "How far can dosing be extended?",
        "context": CONTEXT,
        "answers": [{"text": "16 weeks", "answer_start": CONTEXT.index("16 weeks")}],
    },
    {"id": "t2", "question": "Which dose of zinc?", "context": CONTEXT, "answers": []},
]


def _training_run(params: dict[str, object]) -> str:
    """A finished MLflow run standing in for a training: what register reads off it."""
    with mlflow.start_run(run_name="train-tiny") as run:
        mlflow.log_params(params)
        mlflow.set_tags({"git_commit": "abc123", "backend": "cpu", "precision": "fp32"})
    return run.info.run_id


def _checkpoint(proj: Path, tiny_model_dir: Path, name: str, bias: float) -> Path:
    """A copy of the tiny model with its own weights (so its content hash is new) and a finished
    training run of its own in the project's store."""
    ckpt = distinct_copy(tiny_model_dir, proj / "models" / name, bias)
    configure_tracking(proj)
    run_id = _training_run({"learning_rate": 1e-3, "bias": bias})
    mlflow.set_tracking_uri(None)
    config = {"run_id": run_id, "backend": "cpu", "base_model": "tiny"} | DECODING
    (ckpt / "medqa.json").write_text(json.dumps(config))
    return ckpt


def _register(ckpt: Path) -> int:
    """`medqa register` of ``ckpt`` with the project's metrics, decoding and test rows."""
    return main(
        [
            "register",
            "--model",
            str(ckpt),
            "--metrics",
            "reports/metrics.json",
            "--decoding",
            "reports/decoding.json",
            "--test",
            "reports/test.jsonl",
            "--out",
            "reports/registration.json",
        ]
    )


@pytest.fixture(scope="module")
def first_project(tmp_path_factory, tiny_model_dir):
    """A project (dvc.yaml, params.yaml) whose local store holds v1 @champion, registered in this
    folder; returns (folder, training run id, the run's end time before registration)."""
    base = tmp_path_factory.mktemp("team-local")
    proj = base / "first"
    (proj / "reports").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n")
    (proj / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n  min_f1: 0.0\n")
    (proj / "reports" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (proj / "reports" / "decoding.json").write_text(json.dumps(DECODING))
    metrics = {
        "f1": 0.5,
        "exact": 0.5,
        "baselines_f1": {"lexical": 0.1},
        "best_baseline": "lexical",
    }
    (proj / "reports" / "metrics.json").write_text(json.dumps(metrics))
    saved_cwd, saved_uri = Path.cwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        ckpt = _checkpoint(proj, tiny_model_dir, "ckpt1", 1e-4)
        run_id = json.loads((ckpt / "medqa.json").read_text())["run_id"]
        end_before = MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db").get_run(run_id).info
        os.chdir(proj)
        time.sleep(1.1)  # a reopened run would end at least a second later
        assert _register(ckpt) == 0
        yield proj, run_id, end_before
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(saved_cwd)
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri


@pytest.fixture()
def no_server(monkeypatch):
    """No tracking server: every command uses the local store of the project it runs in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _predict(capsys, model: str) -> dict:
    capsys.readouterr()
    rc = main(
        ["predict", "--model", model, "--json", "--question", "How far?", "--context", CONTEXT]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def test_register_leaves_the_training_run_closed_and_its_duration_alone(first_project):
    proj, run_id, before = first_project
    run = MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db").get_run(run_id)
    assert run.data.tags["registered_version"] == "1"  # register did log to the run
    assert (run.info.status, run.info.end_time) == (before.status, before.end_time)


def test_version_tags_hold_no_machine_path_and_no_fake_link(first_project):
    proj, run_id, _ = first_project
    store = MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db")
    mv, experiment = store.get_model_version(NAME, "1"), store.get_run(run_id).info.experiment_id
    assert mv.tags["tracking_uri"] == "sqlite:///mlruns/mlflow.db"
    link = mv.tags["run_link"]
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in link
    assert link.endswith(f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}")
    assert str(proj) not in link and "sqlite:////" not in link


def test_a_moved_project_uses_its_own_artifacts(
    first_project, tiny_model_dir, tmp_path, monkeypatch, capsys, no_server
):
    original, moved = tmp_path / "original", tmp_path / "moved"
    shutil.copytree(first_project[0], original)  # the fixture's folder stays for other tests
    monkeypatch.chdir(original)
    assert main(["models"]) == 0  # the copy's store now records this folder
    original.rename(moved)  # a move: the folder the store was last written in is gone
    monkeypatch.chdir(moved / "reports")  # a subfolder: the project is found above it
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    out = capsys.readouterr()
    assert [r["version"] for r in json.loads(out.out)] == ["1"]
    assert f"was written in {original}" in out.err  # said, in one line
    assert not (moved / "reports" / "mlruns").exists()
    ckpt2 = _checkpoint(moved, tiny_model_dir, "ckpt2", 2e-4)
    monkeypatch.chdir(moved)
    assert _register(ckpt2) == 0  # a new version: its model is logged into the moved store
    assert main(["promote", "2"]) == 0
    for model in (f"models:/{NAME}@champion", f"models:/{NAME}/1"):
        result = _predict(capsys, model)
        assert set(result) == {
            "answer",
            "score",
            "confidence",
            "start",
            "end",
            "abstained",
            "reason",
        }
    assert not original.exists()  # nothing was written back where it used to live
    assert list((moved / "mlruns" / "artifacts" / "models").iterdir())  # both versions' models
    store = MlflowClient(f"sqlite:///{moved}/mlruns/mlflow.db")
    for mv in store.search_model_versions(f"name='{NAME}'"):
        run = store.get_run(mv.run_id)
        assert run.info.artifact_uri.startswith((moved / "mlruns").as_uri())


def test_a_copied_project_never_touches_the_original(
    first_project, tiny_model_dir, tmp_path, monkeypatch, capsys, no_server
):
    proj = first_project[0]
    copy = tmp_path / "copy"
    shutil.copytree(proj, copy)
    before = _tree(proj)
    monkeypatch.chdir(copy)
    # a rerun of register: the version exists, so the gate re-decides and logs to the run
    assert _register(copy / "models" / "ckpt1") == 0
    assert _predict(capsys, f"models:/{NAME}@champion")
    assert _tree(proj) == before
    artifacts = copy / "mlruns" / "artifacts" / first_project[1] / "artifacts"
    assert json.loads((artifacts / "registration.json").read_text())["new_version"] is False


def test_outside_a_project_registry_commands_refuse_and_create_nothing(
    tmp_path, monkeypatch, capsys, no_server
):
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["models"],
        ["rollback"],
        ["predict", "--model", f"models:/{NAME}@champion", "--question", "q?", "--context", "c"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "is not inside a medqa project" in err, err
        assert "MLFLOW_TRACKING_URI" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlruns/, no mlflow.db


def _freeze(path: Path) -> None:
    """Make ``path`` unwritable even for root (the immutable flag), else by its mode bits."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return
    res = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot make a file read-only as root here: {res.stderr.strip()}")


def _thaw(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "medqa", *args],
        cwd=cwd,
        env=env | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("frozen", ["mlruns/mlflow.db", "mlruns"])
def test_a_read_only_store_reads_and_refuses_writes_in_one_line(
    first_project, tmp_path, frozen, monkeypatch, capsys, no_server
):
    copy = tmp_path / "ro"
    shutil.copytree(first_project[0], copy)
    reroot_local_store(copy / "mlruns" / "mlflow.db", copy)  # while it can still be written
    _freeze(copy / frozen)
    try:
        monkeypatch.chdir(copy)
        capsys.readouterr()
        assert main(["models", "--json"]) == 0
        assert [r["version"] for r in json.loads(capsys.readouterr().out)] == ["1"]
        # a rerun of register writes the gate's decision onto the version
        res = _cli(
            copy,
            "register",
            *("--model", "models/ckpt1", "--metrics", "reports/metrics.json"),
            *("--decoding", "reports/decoding.json", "--test", "reports/test.jsonl"),
            *("--out", "reports/registration.json"),
        )
        assert res.returncode == 2, res.stderr[-2000:]
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("medqa ")]
        assert len(errors) == 1 and "read-only" in errors[0], res.stderr[-2000:]
    finally:
        _thaw(copy / frozen)


def test_register_after_mlruns_was_removed_says_so_in_one_line(
    first_project, tiny_model_dir, tmp_path, no_server
):
    copy = tmp_path / "no-store"
    shutil.copytree(first_project[0], copy)
    _checkpoint(copy, tiny_model_dir, "ckpt3", 3e-4)  # a new checkpoint: it must be logged
    shutil.rmtree(copy / "mlruns")  # between train and register
    # a process of its own, as dvc runs it (this one still holds the removed store open)
    res = _cli(
        copy,
        "register",
        *("--model", "models/ckpt3", "--metrics", "reports/metrics.json"),
        *("--decoding", "reports/decoding.json", "--test", "reports/test.jsonl"),
        *("--out", "reports/registration.json"),
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("medqa register: ")]
    assert len(errors) == 1 and "is not in the MLflow store" in errors[0], res.stderr[-2000:]
    assert "was mlruns/ removed?" in errors[0]
