"""The team setup of docs/team.md against real servers on 127.0.0.1: one MLflow tracking server
with proxied artifacts that a tiny project's `dvc repro` logs and registers to, registry look-ups
and a REST server from a folder outside any project, and a DVC remote on S3-compatible storage
(moto in server mode) that data, checkpoints and the run-cache are pushed to and pulled from."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from helpers import (
    environ_without,
    free_port,
    make_tiny_project,
    project_env,
    sh,
    start_server,
    stop_group,
    wait_until_up,
    write_tiny_splits,
)
from medqa.cli import main
from medqa.tracking import LOCATION_COLUMNS, folder_digest

pytestmark = pytest.mark.integration

NAME = "tiny-qa"
BUCKET = "medqa-dvc"
CONTEXT = "Aflibercept 8 mg can be extended to intervals of up to 16 weeks after loading doses."
OUTS = ("data/validated", "data/features", "models/checkpoint")


def _env(tracking_uri: str) -> dict[str, str]:
    """A team member's shell: the tracking server, S3 credentials, no other MLflow setting."""
    return project_env(
        "AWS_",
        MLFLOW_TRACKING_URI=tracking_uri,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )


def _s3(url: str) -> Any:
    """A client of the S3 server, with the credentials every member's shell has (_env)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_model_dir) -> Iterator[dict]:
    """Both servers, and a tiny project whose `dvc repro` ran against the tracking server."""
    base = tmp_path_factory.mktemp("team")
    server_dir, mlflow_port, s3_port = base / "mlflow-server", free_port(), free_port()
    server_dir.mkdir()
    plain = environ_without("MLFLOW_")
    tracking = start_server(
        [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}"),
            *("--artifacts-destination", str(server_dir / "artifacts"), "--serve-artifacts"),
            *("--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
        ],
        base / "mlflow-server.log",
        plain,
    )
    s3 = start_server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        base / "s3.log",
        plain,
    )
    try:
        url, s3_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{s3_port}"
        wait_until_up(f"{s3_url}/", s3, base / "s3.log", seconds=300, interval=1)
        wait_until_up(
            f"{url}/health", tracking, base / "mlflow-server.log", seconds=300, interval=1
        )
        _s3(s3_url).create_bucket(Bucket=BUCKET)
        env = _env(url)
        proj = make_tiny_project(base / "alice", tiny_model_dir, env)
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["train"]["epochs"] = 1
        (proj / "params.yaml").write_text(yaml.safe_dump(params))
        # one passage each: the setup, not the model, is tested
        write_tiny_splits(proj / "data" / "raw" / "amd_qa", train=1, dev=1, test=1)
        sh(["git", "commit", "-qam", "one passage per split, one epoch"], proj, env)
        out = sh([*DVC, "repro"], proj, env)
        assert "Running stage 'register'" in out
        yield {"url": url, "s3": s3_url, "server_dir": server_dir, "proj": proj, "env": env}
    finally:
        stop_group(tracking)
        stop_group(s3)


def test_runs_models_and_artifacts_live_on_the_server(team):
    proj, url = team["proj"], team["url"]
    assert not (proj / "mlruns").exists()  # nothing local: the server holds runs and artifacts
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    mv = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(mv.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert list((team["server_dir"] / "artifacts").rglob("registration.json"))
    with sqlite3.connect(team["server_dir"] / "mlflow.db") as db:
        for table, column in LOCATION_COLUMNS:
            for (where,) in db.execute(f"SELECT {column} FROM {table}"):
                assert where is None or where.startswith("mlflow-artifacts:/"), (table, where)
    assert mv.tags["tracking_uri"] == url
    link = mv.tags["run_link"]
    assert link == f"{url}/#/experiments/{run.info.experiment_id}/runs/{mv.run_id}"
    with urllib.request.urlopen(link, timeout=60) as page:  # the UI; the fragment picks the run
        assert page.status == 200 and b"<html" in page.read(4096).lower()


def test_a_rerun_of_register_leaves_the_training_run_duration_alone(team):
    client = MlflowClient(tracking_uri=team["url"], registry_uri=team["url"])
    run_id = client.get_model_version_by_alias(NAME, "champion").run_id
    before = client.get_run(run_id).info
    time.sleep(1.1)
    out = sh([sys.executable, "-m", "medqa", "register"], team["proj"], team["env"])
    assert "kept tiny-qa v1" in out
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time)


def test_lookups_and_serving_from_outside_any_project(team, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"  # a serving machine: no checkout, only the server's URI
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team["url"])
    assert main(["models", "--name", NAME, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], "champion" in r["aliases"]) for r in rows] == [("1", True)]
    question = ["--question", "How far can dosing be extended?", "--context", CONTEXT]
    assert main(["predict", "--model", f"models:/{NAME}@champion", "--json", *question]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    port, log = free_port(), tmp_path / "serve.log"
    serve = [sys.executable, "-m", "medqa", "serve", "--name", NAME, "--port", str(port)]
    server = start_server(serve, log, team["env"], cwd=elsewhere)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log, seconds=300, interval=1)
        record = {"question": question[1], "context": CONTEXT}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": [record]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            served = json.loads(resp.read())["predictions"][0]
        assert (served["answer"], served["start"]) == (predicted["answer"], predicted["start"])
    finally:
        stop_group(server)
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no store was created here


def test_dvc_remote_on_s3_carries_data_checkpoints_and_the_run_cache(team, tmp_path):
    proj, env = team["proj"], team["env"]
    sh([*DVC, "remote", "add", "-d", "team", f"s3://{BUCKET}/dvcstore"], proj, env)
    sh([*DVC, "remote", "modify", "team", "endpointurl", team["s3"]], proj, env)
    sh(["git", "add", "dvc.lock", ".dvc/config", "data/.gitignore", "models/.gitignore"], proj, env)
    sh(["git", "commit", "-qm", "pipeline results and the team remote"], proj, env)
    sh([*DVC, "push", "--run-cache"], proj, env)
    keys = [o["Key"] for o in _s3(team["s3"]).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("dvcstore/files/md5/") for k in keys)
    assert any(k.startswith("dvcstore/runs/") for k in keys)  # the run-cache went too
    digests = {out: folder_digest(proj / out) for out in OUTS}

    # a teammate's clone: `dvc pull` brings data, features and the checkpoint, as they were
    bob = tmp_path / "bob"
    sh(["git", "clone", "-q", str(proj), str(bob)], tmp_path, env)
    sh([*DVC, "pull"], bob, env)
    assert {out: folder_digest(bob / out) for out in OUTS} == digests

    # a clone without dvc.lock: the run-cache restores tokenize and train instead of running them
    carol = tmp_path / "carol"
    sh(["git", "clone", "-q", str(proj), str(carol)], tmp_path, env)
    (carol / "dvc.lock").unlink()
    sh([*DVC, "fetch", "--run-cache"], carol, env)  # only run records: no lock to pull outs by
    sh([*DVC, "repro", "-s", "validate"], carol, env)  # cache: false reports: never run-cached
    out = sh([*DVC, "repro", "--pull", "-s", "tokenize", "train"], carol, env)
    for stage in ("tokenize", "train"):
        assert f"Stage '{stage}' is cached - skipping run" in out, out[-3000:]
    assert folder_digest(carol / "models" / "checkpoint") == digests["models/checkpoint"]
