"""prefect.yaml as a team runs it, against a real Prefect server on 127.0.0.1: a process work pool,
`prefect deploy`, a worker started in a checkout, `prefect deployment run --watch`; the commands in
the order docs/team.md gives them. The project is the tiny one of tests/helpers.py."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import ROOT, STAGES, make_tiny_project, prefect_server, project_env, stop

pytestmark = pytest.mark.integration


@pytest.fixture()
def team_env(tmp_path: Path) -> dict[str, str]:
    """A fresh PREFECT_HOME, this venv first on PATH, no MLflow variables from outside, a git
    identity, a worker that polls every second instead of every ten, and a console wide enough
    that the CLI's lines are not wrapped."""
    return project_env(
        "PREFECT_",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        COLUMNS="250",
    )


@pytest.fixture()
def checkout(tmp_path: Path, tiny_model_dir: Path, team_env: dict[str, str]) -> Path:
    """A worker machine's checkout: the tiny project plus this repo's flow code and prefect.yaml."""
    project = make_tiny_project(tmp_path / "checkout", tiny_model_dir, env=team_env)
    shutil.copytree(
        ROOT / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "prefect.yaml", project)
    return project


@pytest.fixture()
def server(tmp_path: Path, team_env: dict[str, str]) -> Iterator[str]:
    """`prefect server start` on a free loopback port, streaming flow-run logs out (so that
    `--watch` prints them); yields its API URL, stops it after."""
    logs_out = {
        "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
        "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
    }
    with prefect_server(team_env | logs_out, tmp_path / "server.log") as (api, _):
        yield api


def prefect(*args: str, env: dict[str, str], cwd: Path, timeout_s: float = 300) -> str:
    """Run one `prefect` command as a user would; its output, stdout and stderr together (also
    printed: `pytest -s` shows the session)."""
    done = subprocess.run(
        ["prefect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    out = f"[exit {done.returncode}]\n{done.stdout}{done.stderr}"
    print(f"$ prefect {' '.join(args)}\n{out}")
    return out


def test_a_deployment_from_prefect_yaml_is_scheduled_and_run_by_a_worker_from_its_pool(
    server, checkout, team_env, tmp_path
):
    env = team_env | {"PREFECT_API_URL": server}
    started = time.monotonic()
    out = prefect("work-pool", "create", "medqa", "--type", "process", env=env, cwd=checkout)
    assert out.startswith("[exit 0]"), out
    out = prefect("--no-prompt", "deploy", "--all", env=env, cwd=checkout)
    assert out.startswith("[exit 0]") and "medqa-pipeline/nightly" in out, out

    (dep,) = httpx.post(f"{server}/deployments/filter", json={}, timeout=10).json()
    assert dep["name"] == "nightly" and dep["work_pool_name"] == "medqa"
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in dep["schedules"]] == [
        ("0 2 * * *", "UTC")
    ]
    # the checkout is found on the worker when a run starts, not fixed when deploying
    assert dep["pull_steps"] == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $MEDQA_PROJECT_DIR }}"
            }
        }
    ]

    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            ["prefect", "worker", "start", "--pool", "medqa"],
            cwd=tmp_path,  # not the checkout: the worker goes there through MEDQA_PROJECT_DIR
            env=env | {"MEDQA_PROJECT_DIR": str(checkout)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            params_before = (checkout / "params.yaml").read_bytes()
            bad = prefect(
                "deployment",
                "run",
                "medqa-pipeline/nightly",
                "-p",
                'overrides={"register.min_f1": "high"}',
                "--watch",
                env=env,
                cwd=tmp_path,
            )
            reason = "override: register.min_f1: expected float, got str 'high'"
            assert bad.startswith("[exit 1]") and reason in bad, bad
            assert (checkout / "params.yaml").read_bytes() == params_before

            good = prefect(
                "deployment",
                "run",
                "medqa-pipeline/nightly",
                "--watch",
                env=env,
                cwd=tmp_path,
                timeout_s=900,  # the tiny project's first run trains: minutes on a busy CPU
            )
            assert "Flow run finished successfully in 'Completed'" in good, (
                good,
                (tmp_path / "worker.log").read_text()[-3000:],
            )
        finally:
            stop(worker)
    print(f"pool, deploy, worker and two runs: {time.monotonic() - started:.1f} s")

    runs = httpx.post(f"{server}/flow_runs/filter", json={}, timeout=10).json()
    run = next(r for r in runs if r["state_type"] == "COMPLETED")
    failed = next(r for r in runs if r["state_type"] == "FAILED")
    assert failed["state"]["message"] == reason
    tasks = httpx.post(
        f"{server}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [run["id"], failed["id"]]}}},
        timeout=10,
    ).json()
    assert {t["name"].rsplit("-", 1)[0]: t["state"]["name"] for t in tasks} == dict.fromkeys(
        STAGES, "Ran"
    )  # and none for the refused run
    assert all(t["flow_run_id"] == run["id"] for t in tasks)
    (artifact,) = httpx.post(
        f"{server}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
        timeout=10,
    ).json()
    assert "| register | ran |" in artifact["data"] and "- test: EM " in artifact["data"]
    assert (checkout / "reports" / "registration.json").exists()
