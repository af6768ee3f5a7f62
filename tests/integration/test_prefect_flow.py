"""The Prefect flow on a tiny throwaway project: DVC's cache decides what runs and each task's state is
named after it, overrides are checked first and run as a DVC experiment that leaves the workspace
alone, a bad-data failure stops the flow with the stage's own message and is not retried, a busy lock
is retried or waited for; the stage list comes from dvc.yaml (a toy two-stage project, seconds per
run); and the served deployment, schedule and a triggered run on a real Prefect server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    ROOT,
    STAGES,
    git_dvc_init,
    make_tiny_project,
    prefect_server,
    project_env,
    start_server,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """This file's environment: its own PREFECT_HOME, no telemetry, this venv's `medqa` first on PATH,
    no MLflow variables from outside (each project keeps its own mlruns/), a git identity."""
    env = project_env(
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    with pytest.MonkeyPatch.context() as mp:
        for key in set(os.environ) - set(env):
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        yield dict(os.environ)


@pytest.fixture(scope="session")
def prefect_harness(prefect_env: dict[str, str]) -> Iterator[None]:
    """A temporary Prefect server and database for the in-process flow runs (~11 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_env: dict[str, str]
) -> Path:
    """One project shared by this file's tests, so later tests find it reproduced and cached."""
    return make_tiny_project(tmp_path_factory.mktemp("flow") / "proj", tiny_model_dir)


def run_flow(**params: Any) -> tuple[Any, str]:
    """Run the flow in this process; return its final state and flow-run id."""
    from pipeline.flows import medqa_pipeline

    state = medqa_pipeline(**params, return_state=True)
    return state, str(state.state_details.flow_run_id)


def task_runs(flow_run_id: str) -> dict[str, int]:
    """{stage: run_count} of the task runs a flow run made (a retried task counts every attempt)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.run_count for run in runs}


def task_states(flow_run_id: str) -> dict[str, str]:
    """{stage: final state name} of a flow run's tasks, as the UI's task list shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state}


def flow_run_name(flow_run_id: str) -> str:
    """The flow run's name, which an override run's DVC experiment takes."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def commit_results(project: Path) -> None:
    """Commit dvc.lock and the outputs git keeps, as a team commits a run: an experiment starts from
    git's view of the workspace, in which a never-committed dvc.lock does not exist."""
    for cmd in (["git", "add", "-A", "--", ".", ":!mlruns"], ["git", "commit", "-qm", "results"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True, timeout=60)


def experiments(project: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """{name: (commit, params.yaml params)} of the experiments `dvc exp show --json` lists."""
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    found: dict[str, tuple[str, dict[str, Any]]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                params = node["data"].get("params", {}).get("params.yaml", {}).get("data", {})
                found[node["name"]] = (node["rev"], params)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(shown))
    return found


def artifact_markdown(flow_run_id: str) -> str:
    """The pipeline's markdown artifact of one flow run."""
    from pipeline.flows import ARTIFACT_KEY
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
            )
        )
    (artifact,) = found
    return str(artifact.data)


def test_flow_runs_each_stage_once_then_dvc_caches_and_an_override_runs_as_an_experiment(
    project, prefect_harness
):
    checkpoint = project / "models" / "checkpoint" / "model.safetensors"

    state, run_id = run_flow(project_dir=str(project), retries=0)
    assert state.is_completed(), state.message
    assert state.result() == dict.fromkeys(STAGES, "ran")
    assert task_states(run_id) == dict.fromkeys(STAGES, "Ran")
    assert json.loads((project / "reports" / "registration.json").read_text())["version"] == "1"
    table = artifact_markdown(run_id)
    assert "| train | ran |" in table and "- test: EM " in table and "lexical_window" in table
    assert "registry: tiny-qa v1 (now @champion)" in table
    trained_at = checkpoint.stat().st_mtime_ns

    state, run_id = run_flow(project_dir=str(project), retries=0)
    assert state.result() == dict.fromkeys(STAGES, "cached")
    assert task_states(run_id) == dict.fromkeys(STAGES, "Cached")
    assert checkpoint.stat().st_mtime_ns == trained_at  # not retrained
    assert json.loads((project / "reports" / "registration.json").read_text())["version"] == "1"
    assert "| register | cached |" in artifact_markdown(run_id)

    # an evaluation parameter, as `dvc exp run -S` sets it, reruns evaluate and register only, in a
    # DVC experiment named after the flow run; the workspace keeps its params and results
    commit_results(project)
    params_before = (project / "params.yaml").read_bytes()
    registration_before = (project / "reports" / "registration.json").read_bytes()
    state, run_id = run_flow(
        project_dir=str(project), retries=0, overrides={"evaluate.batch_size": 16}
    )
    expected = {
        "validate": "cached",
        "tokenize": "cached",
        "train": "cached",
        "evaluate": "ran",
        "register": "ran",
    }
    assert state.is_completed(), state.message
    assert state.result() == expected
    assert task_states(run_id) == {stage: status.title() for stage, status in expected.items()}
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "reports" / "registration.json").read_bytes() == registration_before
    assert checkpoint.stat().st_mtime_ns == trained_at
    name = flow_run_name(run_id)
    assert experiments(project)[name][1]["evaluate"]["batch_size"] == 16
    table = artifact_markdown(run_id)
    assert f"DVC experiment `{name}`" in table and "| evaluate | ran |" in table
    assert "v1" in table  # same checkpoint: the registered version is the one of the first run


def test_a_bad_override_fails_the_run_before_any_stage_with_the_loaders_reason(
    project, prefect_harness
):
    before = (project / "params.yaml").read_bytes()
    for overrides, reason in (
        ({"register.min_f1": "high"}, "override: register.min_f1: expected float, got str 'high'"),
        (
            {"train.lr": 0.1},
            "override: unknown key train.lr (known: attention_dropout, batch_size, ",
        ),
    ):
        state, run_id = run_flow(project_dir=str(project), overrides=overrides)
        assert state.is_failed() and state.message.startswith(reason), state.message
        assert "\n" not in state.message
        assert task_runs(run_id) == {}
        assert (project / "params.yaml").read_bytes() == before


def test_a_locked_dvc_repo_is_retried_with_backoff(project, prefect_harness):
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        repo.lock.lock()  # as a `dvc repro` in a terminal would hold it
        # held well past DVC's own few seconds of lock retries, so the first attempt must fail
        threading.Timer(9.0, repo.lock.unlock).start()
        state, run_id = run_flow(project_dir=str(project), retries=5, retry_backoff_s=0.5)
    assert state.is_completed(), state.message
    assert task_runs(run_id)["validate"] > 1
    assert set(state.result().values()) <= {"ran", "cached"}


def test_a_second_run_waits_for_the_pipeline_lock_or_gives_up_clearly(project, prefect_harness):
    from dvc.lock import Lock
    from dvc.repo import Repo
    from pipeline.dvc_runner import PIPELINE_LOCK_FILE

    with Repo(str(project)) as repo:
        held = Lock(os.path.join(repo.tmp_dir, PIPELINE_LOCK_FILE))
    held.lock()  # as another flow run of this pipeline would hold it
    try:
        state, run_id = run_flow(project_dir=str(project), lock_timeout_s=0)
        assert state.is_failed()
        assert (
            "another medqa pipeline run holds" in state.message
            and "lock_timeout_s" in state.message
        )
        assert task_runs(run_id) == {}
    finally:
        threading.Timer(2.0, held.unlock).start()
    started = time.monotonic()
    state, _ = run_flow(project_dir=str(project), lock_timeout_s=60)
    assert state.is_completed(), state.message
    assert time.monotonic() - started >= 2.0
    assert state.result() == dict.fromkeys(STAGES, "cached")


def test_bad_data_fails_the_flow_with_the_stage_message_without_retry(
    tmp_path, tiny_model_dir, prefect_harness
):
    proj = make_tiny_project(tmp_path / "proj", tiny_model_dir)
    (proj / "data" / "raw" / "amd_qa" / "train.json").write_text("{ not json", encoding="utf-8")

    state, run_id = run_flow(project_dir=str(proj), retries=2, retry_backoff_s=0.5)
    assert state.is_failed()
    assert "stage 'validate' failed (not retried): medqa validate: error:" in state.message
    assert "exited with 2" in state.message
    assert task_runs(run_id) == {"validate": 1}  # one attempt; tokenize..register never started
    assert "| validate | failed |" in artifact_markdown(run_id)
    assert not (proj / "data" / "features").exists()


# A toy pipeline with this repo's params.yaml and two stages that are not medqa's, listed in
# dvc.yaml in the opposite of their run order: the flow must take names, order and outputs from DVC.
TOY_DVC_YAML = """\
stages:
  report:
    cmd: python report.py
    deps: [report.py, out/a.txt]
    params: [register.min_f1]
    outs: [out/b.json]
  prepare:
    cmd: python prepare.py
    deps: [prepare.py]
    params: [evaluate.batch_size]
    outs: [out/a.txt]
"""
TOY_PREPARE = """\
import os, yaml
os.makedirs("out", exist_ok=True)
open("out/a.txt", "w").write(str(yaml.safe_load(open("params.yaml"))["evaluate"]["batch_size"]))
"""
# what the stage saw: its params, the DVC experiment it runs in, the MLflow store it would log to
TOY_REPORT = """\
import json, os, sys, yaml
min_f1 = yaml.safe_load(open("params.yaml"))["register"]["min_f1"]
if min_f1 > 0.9:
    sys.exit(print("medqa report: error: toy min_f1 above 0.9", file=sys.stderr) or 2)
seen = {k: os.environ.get(k) for k in ("DVC_EXP_NAME", "MLFLOW_TRACKING_URI")}
json.dump({"min_f1": min_f1, "a": open("out/a.txt").read(), **seen}, open("out/b.json", "w"))
"""


def make_toy_project(dest: Path) -> Path:
    """A git + DVC project whose two stages run in well under a second."""
    dest.mkdir()
    shutil.copy(ROOT / "params.yaml", dest)
    (dest / "dvc.yaml").write_text(TOY_DVC_YAML)
    (dest / "prepare.py").write_text(TOY_PREPARE)
    (dest / "report.py").write_text(TOY_REPORT)
    return git_dvc_init(dest)


@pytest.fixture()
def toy(tmp_path: Path, prefect_env: dict[str, str]) -> Path:
    return make_toy_project(tmp_path / "toy")


def test_the_stage_list_names_order_and_outputs_come_from_dvc_yaml(toy):
    from pipeline.dvc_runner import FlowStage, pipeline_stages

    assert pipeline_stages(toy) == [
        FlowStage("prepare", ("out/a.txt",)),
        FlowStage("report", ("out/b.json",)),
    ]


def test_task_states_are_named_ran_cached_or_restored_after_what_dvc_did(toy, prefect_harness):
    state, run_id = run_flow(project_dir=str(toy), retries=0)
    assert state.result() == {"prepare": "ran", "report": "ran"}
    assert task_states(run_id) == {"prepare": "Ran", "report": "Ran"}
    assert "| prepare | ran |" in artifact_markdown(run_id)

    state, run_id = run_flow(project_dir=str(toy), retries=0)
    assert task_states(run_id) == {"prepare": "Cached", "report": "Cached"}

    params = (toy / "params.yaml").read_text()
    (toy / "params.yaml").write_text(params.replace("min_f1: ", "min_f1: 0.25 #", 1))
    state, run_id = run_flow(project_dir=str(toy), retries=0)
    assert task_states(run_id) == {"prepare": "Cached", "report": "Ran"}
    (toy / "params.yaml").write_text(params)  # back: DVC's run-cache has these inputs
    state, run_id = run_flow(project_dir=str(toy), retries=0)
    assert task_states(run_id) == {"prepare": "Cached", "report": "Restored"}


def test_an_override_runs_as_a_dvc_experiment_and_leaves_the_workspace_unchanged(
    toy, prefect_harness
):
    from dvc.api import read

    state, _ = run_flow(project_dir=str(toy), retries=0)
    assert state.is_completed(), state.message
    commit_results(toy)
    workspace = {
        path: path.read_bytes()
        for path in (toy / "params.yaml", toy / "dvc.lock", toy / "out/b.json")
    }

    state, run_id = run_flow(project_dir=str(toy), overrides={"register.min_f1": 0.5})
    assert state.is_completed(), state.message
    assert task_states(run_id) == {"prepare": "Cached", "report": "Ran"}
    assert {path: path.read_bytes() for path in workspace} == workspace
    name = flow_run_name(run_id)
    rev, params = experiments(toy)[name]
    assert params["register"]["min_f1"] == 0.5
    seen = json.loads(read("out/b.json", repo=str(toy), rev=rev))
    assert seen["min_f1"] == 0.5 and seen["DVC_EXP_NAME"] == name
    # the stages log to the project's MLflow store, not to the experiment's temporary copy's
    assert seen["MLFLOW_TRACKING_URI"] == f"sqlite:///{toy.resolve() / 'mlruns' / 'mlflow.db'}"
    assert f"DVC experiment `{name}` (commit `{rev[:7]}`)" in artifact_markdown(run_id)


def test_a_stage_failing_in_an_experiment_fails_its_task_and_the_run_with_its_error_line(
    toy, prefect_harness
):
    before = (toy / "params.yaml").read_bytes()
    state, run_id = run_flow(project_dir=str(toy), retries=2, overrides={"register.min_f1": 0.95})
    assert state.is_failed()
    assert state.message.startswith(
        "stage 'report' failed (not retried): medqa report: error: toy min_f1 above 0.9"
    ), state.message
    assert task_states(run_id) == {"prepare": "Ran", "report": "Failed"}
    assert "| report | failed |" in artifact_markdown(run_id)
    assert (toy / "params.yaml").read_bytes() == before
    assert flow_run_name(run_id) not in experiments(toy)


def test_served_deployment_has_its_cron_schedule_and_runs_when_triggered(
    project, prefect_env, tmp_path
):
    env = dict(prefect_env, PREFECT_HOME=str(tmp_path / "prefect-home"))
    with prefect_server(env, tmp_path / "server.log") as (api, server):
        serve = start_server(
            [
                sys.executable,
                "-m",
                "pipeline.serve",
                "--cron",
                "30 1 * * 1",
                "--name",
                "test",
                "--project-dir",
                str(project),
                "--retries",
                "0",
            ],
            tmp_path / "serve.log",
            env | {"PREFECT_API_URL": api},
            cwd=ROOT,
        )
        try:

            def deployment() -> dict | None:
                found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
                return found[0] if found else None

            dep = wait_for(deployment, 120, "the served deployment")
            assert dep["name"] == "test" and dep["parameters"]["project_dir"] == str(project)
            assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["30 1 * * 1"]

            def created() -> dict | None:
                # a busy server may answer an error body (no "id") instead of the new run
                response = httpx.post(
                    f"{api}/deployments/{dep['id']}/create_flow_run", json={}, timeout=30
                )
                return response.json() if response.status_code < 300 else None

            run = wait_for(created, 120, "the triggered flow run to be created")

            def finished() -> dict | None:
                fr = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
                return (
                    fr
                    if fr["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                    else None
                )

            done = wait_for(finished, 300, "the triggered flow run")
            assert done["state_type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
            print(f"served flow run: {done['total_run_time']:.1f} s")
            artifacts = httpx.post(
                f"{api}/artifacts/filter",
                timeout=10,
                json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
            ).json()
            assert len(artifacts) == 1 and "| register |" in artifacts[0]["data"]
        finally:
            stop(serve)  # before the server: serve pauses its deployment on the way out
    assert serve.returncode is not None and server.returncode is not None
