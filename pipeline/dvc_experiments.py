"""A flow run with overrides as one DVC experiment: `dvc exp run --temp -n <name> -S key=value ...`.

Why an experiment: it runs in a temporary copy of the project, so the workspace (params.yaml
included) stays byte for byte as it was; the result is in `dvc exp show` and can be taken over with
`dvc exp apply <name>`. Its stages log to the project's MLflow store (MLFLOW_TRACKING_URI, else the
project's mlruns/), not to the copy's.

DVC runs a whole experiment in one call, so it runs in a thread of its own while the flow's tasks
follow its stages through what DVC logs for each. A failed stage of an experiment is therefore not
retried on its own (rerun the flow: stages that already ran are restored from DVC's run-cache).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvc.repo import Repo

from pipeline.dvc_runner import (
    DVC_STAGE_MESSAGES,
    StageError,
    StageStatus,
    listening_to_dvc,
    scripts_first,
    stage_error,
    working_dir,
)
from pipeline.fd_tee import Captured, tee_fd


class ExperimentError(Exception):
    """An override run's DVC experiment could not be set up or did not record a result."""


class ExperimentProgress(logging.Handler):
    """Follows a `dvc exp run` in another thread through what DVC logs for each stage, so that the
    flow's tasks can stand for the experiment's stages as they happen.

    A stage is finished when DVC reports a later stage or the experiment ends; the last stage DVC
    reported when the experiment failed is the one that failed.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.statuses: dict[str, StageStatus] = {}
        self.finished = False
        self.error: BaseException | None = None
        self.exp_rev: str | None = None
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        status = DVC_STAGE_MESSAGES.get(str(record.msg))
        if status and record.args:
            with self._changed:
                self.statuses.setdefault(str(record.args[0]), status)  # type: ignore[index]
                self._changed.notify_all()

    def finish(self, exp_rev: str | None = None, error: BaseException | None = None) -> None:
        """Record the experiment's end: its commit, or what it raised."""
        with self._changed:
            self.finished, self.exp_rev, self.error = True, exp_rev, error
            self._changed.notify_all()

    def wait(self, stage: str, later: list[str], stderr: Captured) -> StageStatus:
        """Block until ``stage`` is finished; what DVC did, or the StageError it failed with."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.finished or any(name in self.statuses for name in later)
            )
            later_started = any(name in self.statuses for name in later)
            status = self.statuses.get(stage)
            if not later_started and self.error is not None:
                raise stage_error(stage, self.error, list(stderr.lines)) from self.error
        if status is None:
            raise StageError(stage, "the DVC experiment ended without reaching it", False)
        return status

    def commit(self) -> str:
        """The commit of the ended experiment; ExperimentError if it recorded none."""
        if self.error is not None or self.exp_rev is None:
            raise ExperimentError(f"the DVC experiment did not record a result: {self.error}")
        return self.exp_rev


@dataclass(frozen=True)
class ExperimentRun:
    """A running experiment as the flow's tasks follow it: its progress and its teed output."""

    progress: ExperimentProgress
    stdout: Captured
    stderr: Captured


def dvc_value(value: Any) -> str:
    """A checked override's value as `dvc exp run -S key=VALUE` reads it back (Hydra's grammar takes
    JSON scalars and lists; a string is quoted so that "1" or "true" stays a string)."""
    return json.dumps(value)


@contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the stages DVC starts, and put the old values back after."""
    before = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _experiment_environ(root: Path) -> dict[str, str]:
    """What an experiment's stages need besides DVC's own variables: `medqa` first on PATH, and the
    project's MLflow store (an experiment runs in a copy of the project, whose own mlruns/ DVC
    deletes afterwards).

    The store and its `medqa` experiment are set up in the project by medqa.tracking, in a child
    process: MLflow keeps the URI in this process's environment, where it would outlive the run.
    """
    setup = "from medqa.tracking import configure_tracking as c; import sys; print(c(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", setup, str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExperimentError(f"cannot set up the project's MLflow store: {detail}")
    return scripts_first() | {"MLFLOW_TRACKING_URI": done.stdout.strip().splitlines()[-1]}


def _run_experiment(
    root: Path, name: str, overrides: dict[str, Any], progress: ExperimentProgress
) -> None:
    """`dvc exp run --temp -n NAME -S key=value ...` through DVC's API; the end goes to ``progress``."""
    try:
        with Repo(str(root)) as repo:
            results = repo.experiments.run(
                params=[f"{key}={dvc_value(value)}" for key, value in overrides.items()],
                tmp_dir=True,
                name=name,
            )
        progress.finish(exp_rev=next(iter(results), None))
    except BaseException as exc:  # noqa: BLE001 - any end: the waiting tasks must learn of it
        progress.finish(error=exc)


@contextmanager
def running_experiment(root: Path, name: str, overrides: dict[str, Any]) -> Iterator[ExperimentRun]:
    """Start the experiment ``name`` in a thread and yield it for the tasks to follow; when the block
    ends normally, wait for DVC to finish. After the block, ``progress.commit()`` is its result.

    For as long as the block runs, this process's current folder is the project, its environment has
    what the stages need and its stdout and stderr are teed, which the stages DVC starts inherit.
    """
    progress = ExperimentProgress()
    with (
        listening_to_dvc(progress),
        working_dir(str(root)),
        _environ(_experiment_environ(root)),
        tee_fd(1) as stdout,
        tee_fd(2) as stderr,
    ):
        runner = threading.Thread(
            target=_run_experiment,
            args=(root, name, overrides, progress),
            name="dvc-exp-run",
            daemon=True,
        )
        runner.start()
        yield ExperimentRun(progress, stdout, stderr)
        runner.join()
