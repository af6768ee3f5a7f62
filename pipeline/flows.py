"""The medqa pipeline as a Prefect flow whose tasks are the stages of dvc.yaml, in DVC's order.

This module is the Prefect wiring only: DVC does the work (pipeline.dvc_runner says why, and which
failures are retried). Each task's final state is named after what DVC did: Ran (the command ran),
Restored (DVC's run-cache had these inputs: outputs checked out, command not run) or Cached (nothing
changed, skipped); the UI's task list shows it at a glance. Each run leaves a markdown artifact with
the results (pipeline.artifact).

Two ways to run:
- Without overrides: `dvc repro` in the project, one stage per task; the workspace's outputs and
  dvc.lock are the result. A stage that failed transiently is retried (exponential back-off,
  `retries` times); bad data or params, or a broken project, fail at once.
- With overrides: they are first checked by the same loader every stage uses (medqa.config), so a bad
  key or value fails the run before any stage, with that one line as the run's state message. Then
  the run is one DVC experiment named after the flow run, which leaves the workspace unchanged
  (pipeline.dvc_experiments); the tasks follow its stages as DVC reports them.
A failed stage's `error:` line (or its last stderr line) becomes the message of the failed task and of
the flow run; downstream stages do not run. A flow run holds the pipeline lock from its first stage to
writing its artifact, so two runs on one project never train into the same folder at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dvc.exceptions import DvcException
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.tasks import exponential_backoff

from medqa.config import check_overrides
from medqa.errors import ConfigError
from pipeline.artifact import output_reader, results_markdown
from pipeline.dvc_experiments import ExperimentError, ExperimentProgress, running_experiment
from pipeline.dvc_runner import (
    FlowStage,
    PipelineBusyError,
    StageError,
    StageStatus,
    dvc_tmp_dir,
    pipeline_lock,
    pipeline_stages,
    reproduce,
)
from pipeline.fd_tee import Captured

PARAMS_FILE = "params.yaml"
ARTIFACT_KEY = "medqa-pipeline"
# the task's final state: (name in the UI, message)
_STATES: dict[str, tuple[str, str]] = {
    "ran": ("Ran", "DVC ran the stage's command"),
    "restored": ("Restored", "DVC's run-cache had these inputs: outputs checked out, not run"),
    "cached": ("Cached", "nothing the stage depends on changed: DVC skipped it"),
}


def _retry_if_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: retry only failures StageError marks transient."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StageError) and exc.transient


def _final_state(status: StageStatus) -> State[StageStatus]:
    """Completed, named after what DVC did, so the UI's task list says it; the result is ``status``."""
    name, message = _STATES[status]
    return Completed(name=name, message=message, data=status)


@task(retry_condition_fn=_retry_if_transient)
def reproduce_stage(project_dir: str, stage: str) -> State[StageStatus]:
    """Ask DVC to reproduce this one stage of dvc.yaml in the workspace and report what it did.

    DVC's messages go to the run's log as they come, once (not also DVC's own print of them); the
    stage's own output passes through to the terminal and is repeated in the log for the UI."""
    logger = get_run_logger()
    status, output = reproduce(project_dir, stage, logger)
    if output:  # the stage's own summary, for the run's log in the UI
        logger.info("%s:\n%s", stage, "\n".join(output))
    return _final_state(status)


@task(cache_policy=NO_CACHE)
def experiment_stage(
    stage: str,
    later: list[str],
    progress: ExperimentProgress,
    stdout: Captured,
    stderr: Captured,
) -> State[StageStatus]:
    """Stand for one stage of the running DVC experiment: finish when DVC has, as DVC did."""
    logger = get_run_logger()
    seen = stdout.count
    status = progress.wait(stage, later, stderr)
    if lines := stdout.since(seen):
        logger.info("%s:\n%s", stage, "\n".join(lines[-20:]))
    return _final_state(status)


def _reproduce_workspace(
    root: Path, stages: list[FlowStage], statuses: dict[str, str], retries: int, backoff_s: float
) -> None:
    """`dvc repro` in the workspace, one task per stage, each retried when it failed transiently."""
    for stage in stages:
        run = reproduce_stage.with_options(
            name=stage.name, retries=retries, retry_delay_seconds=exponential_backoff(backoff_s)
        )
        try:
            statuses[stage.name] = str(run(str(root), stage.name, return_state=True).result())
        except Exception:
            statuses[stage.name] = "failed"
            raise


def _reproduce_experiment(
    root: Path, stages: list[FlowStage], overrides: dict[str, Any], statuses: dict[str, str]
) -> tuple[str, str]:
    """Run the pipeline as one DVC experiment named after this flow run, one task per stage as DVC
    reports them; returns the experiment's name and commit."""
    name = flow_run.get_name() or "medqa-pipeline"
    with running_experiment(root, name, overrides) as run:
        names = [stage.name for stage in stages]
        for i, stage in enumerate(names):
            state = experiment_stage.with_options(name=stage)(
                stage, names[i + 1 :], run.progress, run.stdout, run.stderr, return_state=True
            )
            try:
                statuses[stage] = str(state.result())
            except Exception:
                statuses[stage] = "failed"
                raise
    return name, run.progress.commit()


@flow
def medqa_pipeline(
    project_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    retries: int = 2,
    retry_backoff_s: float = 30.0,
    lock_timeout_s: float = 3600.0,
) -> dict[str, str] | State[Any]:
    """The stages of dvc.yaml, each reproduced by DVC in ``project_dir``; see the module docstring.

    Args:
        project_dir: the DVC project (default: the current folder, e.g. a deployment's working dir).
        overrides: dotted params.yaml keys and values, e.g. {"train.epochs": 5}: checked first, then
            run as a DVC experiment named after the flow run; the workspace is not changed.
        retries: how often a stage that failed transiently is tried again (not in an experiment).
        retry_backoff_s: first retry delay; each further retry waits twice as long.
        lock_timeout_s: how long to wait for another run of this pipeline on the same project.

    Returns:
        Each stage's result: "ran", "restored" or "cached"; a failed run ends in a Failed state whose
        message is the one-line reason.
    """
    logger = get_run_logger()
    root = Path(project_dir or os.getcwd()).resolve()
    try:
        if overrides:
            check_overrides(overrides, root / PARAMS_FILE)
        stages = pipeline_stages(root)
        tmp_dir = dvc_tmp_dir(root)
    except (ConfigError, DvcException) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    statuses = dict.fromkeys((stage.name for stage in stages), "not run")
    experiment: tuple[str, str] | None = None
    try:
        with pipeline_lock(tmp_dir, lock_timeout_s, logger):
            try:
                if overrides:
                    logger.info("overrides %s: running them as a DVC experiment", overrides)
                    experiment = _reproduce_experiment(root, stages, overrides, statuses)
                else:
                    _reproduce_workspace(root, stages, statuses, retries, retry_backoff_s)
            finally:
                create_markdown_artifact(
                    markdown=results_markdown(
                        stages, statuses, overrides, output_reader(root, experiment), experiment
                    ),
                    key=ARTIFACT_KEY,
                    description="medqa pipeline: stage results, test EM/F1, registration",
                )
    except (StageError, PipelineBusyError, ExperimentError) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    logger.info("stages: %s", statuses)
    return statuses
