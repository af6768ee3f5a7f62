"""The medqa pipeline as a Prefect flow whose tasks are the stages of dvc.yaml, in DVC's order.

Why DVC does the work: dvc.lock and DVC's run-cache decide whether a stage runs, for a Prefect run and
for `dvc repro` in a terminal alike. The flow reads the stages (names, order, outputs) from dvc.yaml
through DVC, so a stage added there is a task here without an edit. Each task's final state is named
after what DVC did: Ran (the command ran), Restored (DVC's run-cache had these inputs: outputs checked
out, command not run) or Cached (nothing changed, skipped); the UI's task list shows it at a glance.

Two ways to run:
- Without overrides: `dvc repro` in the project, one stage per task; the workspace's outputs and
  dvc.lock are the result.
- With overrides: they are first checked by the same loader every stage uses (medqa.config), so a bad
  key or value fails the run before any stage, with that one line as the run's state message. Then
  the run is one DVC experiment, `dvc exp run --temp -n <flow-run name> -S key=value ...`, in a
  temporary copy: the workspace (params.yaml included) stays byte for byte as it was, the result is
  in `dvc exp show` and can be taken over with `dvc exp apply <name>`. Its stages log to the
  project's MLflow store (MLFLOW_TRACKING_URI, else the project's mlruns/), not to the copy's. The
  tasks follow the experiment's stages as DVC reports them; a failed stage of an experiment is not
  retried on its own (rerun the flow: stages that already ran are restored from DVC's run-cache).

Which failures are retried (exponential back-off, `retries` times):
- The medqa CLI exits with status 2 when data or params are wrong, after one line
  `medqa <stage>: error: ...` on stderr. DVC wraps that in a ReproductionError caused by
  StageCmdFailedError("failed to run: ..., exited with 2"); the status is read from that message, as
  DVC keeps it nowhere else. Status 2, and 126/127 (the command cannot be run or found), fail at once:
  the same inputs would fail the same way.
- Any other exit status (1: an unhandled exception; negative: killed by a signal, e.g. the OOM killer)
  and DVC's LockError (another DVC process holds the repo lock) are taken as transient and retried.
- Any other DVC error (a missing dependency, a broken dvc.yaml, not a DVC repo) fails at once.
DVC passes a stage's stdout and stderr straight through and keeps none of it, so the flow tees its
process's file descriptors while stages run: the stage's `error:` line (or its last stderr line)
becomes the message of the failed task and of the flow run; downstream stages do not run.

Concurrency: DVC holds its repo lock while it checks and commits a stage but releases it while the
stage's command runs (dvc.stage.decorators.unlocked_repo), so its lock alone would let two flow runs
train into the same folder at once. A flow run therefore holds a pipeline lock (DVC's own lock class,
on .dvc/tmp/medqa-pipeline.lock next to DVC's) from its first stage to writing its artifact; another
run waits for it with exponential back-off and fails with a clear message after `lock_timeout_s`.
A `dvc repro` typed in a terminal does not know the pipeline lock; it only meets DVC's repo lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dvc.api
from dvc.exceptions import DvcException
from dvc.lock import Lock, LockError
from dvc.repo import Repo
from dvc.repo.reproduce import plan_repro
from dvc.stage import PipelineStage
from dvc.stage.exceptions import StageCmdFailedError
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.tasks import exponential_backoff

from medqa.config import check_overrides
from medqa.errors import ConfigError
from medqa.reports import registration_lines, score_lines

PARAMS_FILE = "params.yaml"
PIPELINE_LOCK_FILE = "medqa-pipeline.lock"  # in DVC's .dvc/tmp
ARTIFACT_KEY = "medqa-pipeline"
PERMANENT_EXIT_CODES = frozenset({2, 126, 127})
_ERROR_LINE = re.compile(r"^medqa \S+: error: .*$", re.MULTILINE)
_EXIT_STATUS = re.compile(r"exited with (-?\d+)")

StageStatus = Literal["ran", "restored", "cached"]
# what DVC logs for a stage of the pipeline (dvc/stage/run.py, dvc/stage/cache.py, dvc/stage/__init__.py)
_DVC_STAGE_MESSAGES: dict[str, StageStatus] = {
    "Running stage '%s':": "ran",
    "Stage '%s' is cached - skipping run, checking out outputs": "restored",
    "Stage '%s' didn't change, skipping": "cached",
}
# the task's final state: (name in the UI, message)
_STATES: dict[str, tuple[str, str]] = {
    "ran": ("Ran", "DVC ran the stage's command"),
    "restored": ("Restored", "DVC's run-cache had these inputs: outputs checked out, not run"),
    "cached": ("Cached", "nothing the stage depends on changed: DVC skipped it"),
}
# the two reports the artifact shows, recognised by their keys wherever dvc.yaml puts them
_METRICS_KEYS = frozenset({"exact", "f1", "baselines_f1"})
_REGISTRATION_KEYS = frozenset({"model_name", "version", "promoted"})


@dataclass(frozen=True)
class FlowStage:
    """One stage of dvc.yaml as the flow needs it: its name and its outputs (paths from the root)."""

    name: str
    outs: tuple[str, ...]


def pipeline_stages(root: Path) -> list[FlowStage]:
    """dvc.yaml's stages in the order `dvc repro` runs them, with their outputs as DVC resolved them
    (``${...}`` filled in from params.yaml); `.dvc` files of `dvc add` are not stages of the flow."""
    with _working_dir(str(root)), Repo(str(root)) as repo:
        return [
            FlowStage(
                stage.addressing,
                tuple(os.path.relpath(out.fs_path, repo.root_dir) for out in stage.outs),
            )
            for stage in plan_repro(repo.index.graph)
            if isinstance(stage, PipelineStage)
        ]


class StageError(Exception):
    """A stage could not be reproduced; ``transient`` says whether running it again may help."""

    def __init__(self, stage: str, message: str, transient: bool) -> None:
        super().__init__(
            stage, message, transient
        )  # all in args, so the exception pickles into Prefect's state
        self.stage, self.message, self.transient = stage, message, transient

    def __str__(self) -> str:
        kind = "transient, retried" if self.transient else "not retried"
        return f"stage '{self.stage}' failed ({kind}): {self.message}"


class PipelineBusyError(Exception):
    """Another flow run held the pipeline lock for longer than this run was willing to wait."""


class ExperimentError(Exception):
    """An override run's DVC experiment could not be set up or did not record a result."""


@dataclass
class _Captured:
    """The last lines written to a file descriptor, and how many lines were written in all."""

    lines: deque[str]
    count: int = 0

    def since(self, count: int) -> list[str]:
        """The lines written after ``count`` lines had been (as many as are kept)."""
        new = self.count - count
        return list(self.lines)[-new:] if new > 0 else []


@contextmanager
def _tee_fd(fd: int, keep: int = 200) -> Iterator[_Captured]:
    """Pass everything written to ``fd`` through unchanged while keeping its last ``keep`` lines.

    A stage's command inherits this process's stdout and stderr from DVC, so its output can only be
    seen here, at the file-descriptor level.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    captured = _Captured(deque(maxlen=keep))

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for raw in source:
                os.write(saved, raw)
                captured.lines.append(raw.decode(errors="replace").rstrip()[-500:])
                captured.count += 1

    reader = threading.Thread(target=pump, name=f"tee-fd{fd}", daemon=True)
    reader.start()
    try:
        yield captured
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, fd)  # drops this process's last write end of the pipe: the reader gets EOF
        reader.join(timeout=10)
        if not reader.is_alive():  # a stray grandchild may still hold the pipe: keep `saved` for it
            os.close(saved)


class _RunCacheWatch(logging.Handler):
    """Notices DVC's "is cached - skipping run" message: Repo.reproduce() returns a stage restored from
    the run-cache exactly like one whose command ran."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.restored = False

    def emit(self, record: logging.LogRecord) -> None:
        self.restored |= _DVC_STAGE_MESSAGES.get(str(record.msg)) == "restored"


@contextmanager
def _watch_run_cache() -> Iterator[_RunCacheWatch]:
    """Listen to the "dvc" logger at INFO for the duration of one stage."""
    dvc_logger = logging.getLogger("dvc")
    watch = _RunCacheWatch()
    level = dvc_logger.level
    dvc_logger.addHandler(watch)
    dvc_logger.setLevel(min(dvc_logger.getEffectiveLevel(), logging.INFO))
    try:
        yield watch
    finally:
        dvc_logger.removeHandler(watch)
        dvc_logger.setLevel(level)


@contextmanager
def _working_dir(path: str) -> Iterator[None]:
    """DVC's Python API resolves targets and paths from the current folder, so it must be the project."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _stage_error(stage: str, exc: BaseException, stderr: list[str]) -> StageError:
    """Turn what DVC raised into a StageError with the stage's own message; see the module docstring."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    if any(isinstance(e, LockError) for e in chain):
        return StageError(
            stage,
            "another DVC process (e.g. a `dvc repro` in a terminal) holds the repo lock "
            ".dvc/tmp/lock",
            transient=True,
        )
    failed = next((e for e in chain if isinstance(e, StageCmdFailedError)), None)
    if failed is None:
        return StageError(stage, ": ".join(str(e) for e in chain), transient=False)
    status = _EXIT_STATUS.search(str(failed))
    errors = _ERROR_LINE.findall("\n".join(stderr))
    detail = errors[-1] if errors else (stderr[-1] if stderr else "no output on stderr")
    transient = status is None or int(status.group(1)) not in PERMANENT_EXIT_CODES
    return StageError(stage, f"{detail} [{failed}]", transient=transient)


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

    single_item: the upstream stages are the flow's earlier tasks, already reproduced. The stage's
    command runs with this interpreter's scripts folder first on PATH, so `medqa` is the one installed
    next to this Prefect, whichever shell started the worker.
    """
    logger = get_run_logger()
    with (
        _working_dir(project_dir),
        _watch_run_cache() as watch,
        _tee_fd(1) as stdout,
        _tee_fd(2) as stderr,
    ):
        try:
            with Repo(project_dir) as repo:
                reproduced = repo.reproduce(stage, single_item=True, run_env=_scripts_first())
        except DvcException as exc:
            raise _stage_error(stage, exc, list(stderr.lines)) from exc
    if stdout.count:  # DVC's messages and the stage's own summary, for the run's log in the UI
        logger.info("%s:\n%s", stage, "\n".join(list(stdout.lines)[-20:]))
    if not reproduced:
        return _final_state("cached")
    return _final_state("restored" if watch.restored else "ran")


def _scripts_first() -> dict[str, str]:
    """PATH with this interpreter's scripts folder first, for the stages' `medqa` commands."""
    scripts = str(Path(sys.executable).parent)
    return {"PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}


class _ExperimentProgress(logging.Handler):
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
        status = _DVC_STAGE_MESSAGES.get(str(record.msg))
        if status and record.args:
            with self._changed:
                self.statuses.setdefault(str(record.args[0]), status)  # type: ignore[index]
                self._changed.notify_all()

    def finish(self, exp_rev: str | None = None, error: BaseException | None = None) -> None:
        """Record the experiment's end: its commit, or what it raised."""
        with self._changed:
            self.finished, self.exp_rev, self.error = True, exp_rev, error
            self._changed.notify_all()

    def wait(self, stage: str, later: list[str], stderr: _Captured) -> StageStatus:
        """Block until ``stage`` is finished; what DVC did, or the StageError it failed with."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.finished or any(name in self.statuses for name in later)
            )
            later_started = any(name in self.statuses for name in later)
            status = self.statuses.get(stage)
            if not later_started and self.error is not None:
                raise _stage_error(stage, self.error, list(stderr.lines)) from self.error
        if status is None:
            raise StageError(stage, "the DVC experiment ended without reaching it", False)
        return status


@task(cache_policy=NO_CACHE)
def experiment_stage(
    stage: str,
    later: list[str],
    progress: _ExperimentProgress,
    stdout: _Captured,
    stderr: _Captured,
) -> State[StageStatus]:
    """Stand for one stage of the running DVC experiment: finish when DVC has, as DVC did."""
    logger = get_run_logger()
    seen = stdout.count
    status = progress.wait(stage, later, stderr)
    if lines := stdout.since(seen):
        logger.info("%s:\n%s", stage, "\n".join(lines[-20:]))
    return _final_state(status)


def _dvc_value(value: Any) -> str:
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
    return _scripts_first() | {"MLFLOW_TRACKING_URI": done.stdout.strip().splitlines()[-1]}


def _run_experiment(
    root: Path, name: str, overrides: dict[str, Any], progress: _ExperimentProgress
) -> None:
    """`dvc exp run --temp -n NAME -S key=value ...` through DVC's API; the end goes to ``progress``."""
    try:
        with Repo(str(root)) as repo:
            results = repo.experiments.run(
                params=[f"{key}={_dvc_value(value)}" for key, value in overrides.items()],
                tmp_dir=True,
                name=name,
            )
        progress.finish(exp_rev=next(iter(results), None))
    except BaseException as exc:  # noqa: BLE001 - any end: the waiting tasks must learn of it
        progress.finish(error=exc)


def _reproduce_experiment(
    root: Path, stages: list[FlowStage], overrides: dict[str, Any], statuses: dict[str, str]
) -> tuple[str, str]:
    """Run the pipeline as one DVC experiment named after this flow run, one task per stage as DVC
    reports them; returns the experiment's name and commit."""
    name = flow_run.get_name() or "medqa-pipeline"
    progress = _ExperimentProgress()
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.addHandler(progress)
    dvc_logger.setLevel(min(dvc_logger.getEffectiveLevel(), logging.INFO))
    try:
        with (
            _working_dir(str(root)),
            _environ(_experiment_environ(root)),
            _tee_fd(1) as stdout,
            _tee_fd(2) as stderr,
        ):
            runner = threading.Thread(
                target=_run_experiment,
                args=(root, name, overrides, progress),
                name="dvc-exp-run",
                daemon=True,
            )
            runner.start()
            names = [stage.name for stage in stages]
            for i, stage in enumerate(names):
                state = experiment_stage.with_options(name=stage)(
                    stage, names[i + 1 :], progress, stdout, stderr, return_state=True
                )
                try:
                    statuses[stage] = str(state.result())
                except Exception:
                    statuses[stage] = "failed"
                    raise
            runner.join()
    finally:
        dvc_logger.removeHandler(progress)
        dvc_logger.setLevel(level)
    if progress.error is not None or progress.exp_rev is None:
        raise ExperimentError(f"the DVC experiment did not record a result: {progress.error}")
    return name, progress.exp_rev


@contextmanager
def _pipeline_lock(
    tmp_dir: str, timeout_s: float, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> Iterator[None]:
    """Hold the pipeline lock for a whole flow run; wait with exponential back-off, at most ``timeout_s``."""
    path = os.path.join(tmp_dir, PIPELINE_LOCK_FILE)
    lock = Lock(path)
    deadline = time.monotonic() + timeout_s
    delay = 1.0
    while True:
        try:
            lock.lock()  # DVC's lock tries for ~3 s before it raises LockError
            break
        except LockError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PipelineBusyError(
                    f"another medqa pipeline run holds {path}; gave up after waiting {timeout_s:g} s "
                    "(flow parameter lock_timeout_s)"
                ) from None
            logger.info(
                "another medqa pipeline run holds %s; retrying in %.0f s", path, min(delay, left)
            )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 60.0)
    try:
        yield
    finally:
        lock.unlock()


def _find_report(
    stages: list[FlowStage], read: Callable[[str], str], keys: frozenset[str]
) -> tuple[str, dict[str, Any]] | None:
    """The first JSON output of dvc.yaml holding ``keys``, and the stage that writes it."""
    for stage in stages:
        for out in stage.outs:
            if not out.endswith(".json"):
                continue
            try:
                doc = json.loads(read(out))
            except (OSError, ValueError, DvcException):
                continue
            if isinstance(doc, dict) and keys <= doc.keys():
                return stage.name, doc
    return None


def _results_markdown(
    stages: list[FlowStage],
    statuses: dict[str, str],
    overrides: dict[str, Any] | None,
    read: Callable[[str], str],
    experiment: tuple[str, str] | None,
) -> str:
    """The run's artifact: what each stage did, test EM/F1 against the baselines, the registration."""
    lines = ["## medqa pipeline", "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {status} |" for stage, status in statuses.items()]
    if overrides:
        lines += ["", "Param overrides: " + ", ".join(f"`{k}={v!r}`" for k, v in overrides.items())]
    if experiment:
        name, rev = experiment
        lines += [
            "",
            f"DVC experiment `{name}` (commit `{rev[:7]}`); the workspace is unchanged. "
            f"Compare with `dvc exp show`, take it over with `dvc exp apply {name}`.",
        ]
    if any(status in ("failed", "not run") for status in statuses.values()):
        return "\n".join([*lines, "", "No results: the pipeline did not finish."])
    found_metrics = _find_report(stages, read, _METRICS_KEYS)
    found_registration = _find_report(stages, read, _REGISTRATION_KEYS)
    if found_metrics:  # the same lines `medqa evaluate` and `make pipeline` print
        lines += ["", *(f"- {line.strip()}" for line in score_lines(found_metrics[1]))]
    if found_registration:
        stage, registration = found_registration
        when = f" (an earlier run's: {stage} was cached)" if statuses.get(stage) == "cached" else ""
        lines += ["", *(f"- {line}{when}" for line in registration_lines(registration)[1:])]
    return "\n".join(lines)


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
        with Repo(str(root)) as repo:
            tmp_dir = repo.tmp_dir
    except (ConfigError, DvcException) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    statuses = dict.fromkeys((stage.name for stage in stages), "not run")
    experiment: tuple[str, str] | None = None
    try:
        with _pipeline_lock(tmp_dir, lock_timeout_s, logger):
            try:
                if overrides:
                    logger.info("overrides %s: running them as a DVC experiment", overrides)
                    experiment = _reproduce_experiment(root, stages, overrides, statuses)
                else:
                    _reproduce_workspace(root, stages, statuses, retries, retry_backoff_s)
            finally:
                create_markdown_artifact(
                    markdown=_results_markdown(
                        stages, statuses, overrides, _reader(root, experiment), experiment
                    ),
                    key=ARTIFACT_KEY,
                    description="medqa pipeline: stage results, test EM/F1, registration",
                )
    except (StageError, PipelineBusyError, ExperimentError) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    logger.info("stages: %s", statuses)
    return statuses


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


def _reader(root: Path, experiment: tuple[str, str] | None) -> Callable[[str], str]:
    """How the artifact reads an output: from the workspace, or from the experiment's commit."""
    if experiment is None:
        return lambda path: (root / path).read_text(encoding="utf-8")
    rev = experiment[1]
    return lambda path: str(dvc.api.read(path, repo=str(root), rev=rev))
