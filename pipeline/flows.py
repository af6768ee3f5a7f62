"""The medqa pipeline as a Prefect flow whose tasks are the stages of dvc.yaml, in order.

Why DVC does the work: dvc.lock and DVC's run-cache decide whether a stage runs, for a Prefect run and
for `dvc repro` in a terminal alike. A task only asks DVC to reproduce its own stage and reports what
DVC did: "ran" (the command ran), "restored" (DVC's run-cache had these inputs: outputs checked out,
command not run) or "cached" (nothing changed, skipped).

Which failures are retried (exponential back-off, `retries` times):
- The medqa CLI exits with status 2 when data or params are wrong, after one line
  `medqa <stage>: error: ...` on stderr. DVC wraps that in a ReproductionError caused by
  StageCmdFailedError("failed to run: ..., exited with 2"); the status is read from that message, as
  DVC keeps it nowhere else. Status 2, and 126/127 (the command cannot be run or found), fail at once:
  the same inputs would fail the same way.
- Any other exit status (1: an unhandled exception; negative: killed by a signal, e.g. the OOM killer)
  and DVC's LockError (another DVC process holds the repo lock) are taken as transient and retried.
- Any other DVC error (a missing dependency, a broken dvc.yaml, not a DVC repo) fails at once.
DVC passes a stage's stdout and stderr straight through and keeps none of it, so each task tees its
process's file descriptors while the stage runs: the stage's `error:` line (or its last stderr line)
becomes the message of the exception that fails the task and the flow; downstream stages do not run.

Concurrency: DVC holds its repo lock while it checks and commits a stage but releases it while the
stage's command runs (dvc.stage.decorators.unlocked_repo), so its lock alone would let two flow runs
train into the same folder at once. A flow run therefore holds a pipeline lock (DVC's own lock class,
on .dvc/tmp/medqa-pipeline.lock next to DVC's) from applying its overrides to writing its artifact;
another run waits for it with exponential back-off and fails with a clear message after `lock_timeout_s`.
A `dvc repro` typed in a terminal does not know the pipeline lock; it only meets DVC's repo lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from dvc.exceptions import DvcException
from dvc.lock import Lock, LockError
from dvc.repo import Repo
from dvc.stage.exceptions import StageCmdFailedError
from dvc.utils.serialize import modify_yaml
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from medqa.reports import figure

STAGES = ("validate", "tokenize", "train", "evaluate", "register")
PARAMS_FILE = "params.yaml"
METRICS_FILE = "reports/metrics.json"  # written by the evaluate stage (dvc.yaml metrics)
REGISTRATION_FILE = "reports/registration.json"  # written by the register stage
PIPELINE_LOCK_FILE = "medqa-pipeline.lock"  # in DVC's .dvc/tmp
ARTIFACT_KEY = "medqa-pipeline"
PERMANENT_EXIT_CODES = frozenset({2, 126, 127})
_RUN_CACHE_RESTORE = (
    "Stage '%s' is cached - skipping run, checking out outputs"  # dvc/stage/cache.py
)
_ERROR_LINE = re.compile(r"^medqa \S+: error: .*$", re.MULTILINE)
_EXIT_STATUS = re.compile(r"exited with (-?\d+)")

StageStatus = Literal["ran", "restored", "cached"]


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


@contextmanager
def _tee_fd(fd: int, keep: int = 200) -> Iterator[deque[str]]:
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
    lines: deque[str] = deque(maxlen=keep)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for raw in source:
                os.write(saved, raw)
                lines.append(raw.decode(errors="replace").rstrip()[-500:])

    reader = threading.Thread(target=pump, name=f"tee-fd{fd}", daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, fd)  # drops this process's last write end of the pipe: the reader gets EOF
        reader.join(timeout=10)
        if (
            not reader.is_alive()
        ):  # a stray grandchild may still hold the pipe: then keep `saved` open for it
            os.close(saved)


class _RunCacheWatch(logging.Handler):
    """Notices DVC's "is cached - skipping run" message: Repo.reproduce() returns a stage restored from
    the run-cache exactly like one whose command ran."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.restored = False

    def emit(self, record: logging.LogRecord) -> None:
        self.restored |= record.msg == _RUN_CACHE_RESTORE


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


def _stage_error(stage: str, exc: DvcException, stderr: list[str]) -> StageError:
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


@task(retry_condition_fn=_retry_if_transient)
def reproduce_stage(project_dir: str, stage: str) -> StageStatus:
    """Ask DVC to reproduce this one stage of dvc.yaml and report what it did.

    single_item: the upstream stages are the flow's earlier tasks, already reproduced. The stage's
    command runs with this interpreter's scripts folder first on PATH, so `medqa` is the one installed
    next to this Prefect, whichever shell started the worker.
    """
    logger = get_run_logger()
    run_env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    }
    with (
        _working_dir(project_dir),
        _watch_run_cache() as watch,
        _tee_fd(1) as stdout,
        _tee_fd(2) as stderr,
    ):
        try:
            with Repo(project_dir) as repo:
                reproduced = repo.reproduce(stage, single_item=True, run_env=run_env)
        except DvcException as exc:
            raise _stage_error(stage, exc, list(stderr)) from exc
    if stdout:  # DVC's messages and the stage's own summary, for the run's log in the UI
        logger.info("%s:\n%s", stage, "\n".join(list(stdout)[-20:]))
    if not reproduced:
        return "cached"
    return "restored" if watch.restored else "ran"


def apply_param_overrides(params_path: Path, overrides: dict[str, Any]) -> None:
    """Write dotted-key overrides into params.yaml in place, as `dvc exp run -S key=value` does.

    The file is rewritten through DVC's round-trip YAML, so comments and order stay. Only keys that
    already exist can be set: a typo must not become a new param that no stage reads. The change stays
    in the working tree, so git + dvc.lock reproduce the result.
    """
    with modify_yaml(params_path) as params:
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node: Any = params
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf not in node:
                raise ValueError(
                    f"{params_path.name} has no key {dotted!r}; only existing keys can be overridden"
                )
            node[leaf] = value


@contextmanager
def _pipeline_lock(tmp_dir: str, timeout_s: float, logger: logging.LoggerAdapter) -> Iterator[None]:
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


def _results_markdown(
    root: Path, statuses: dict[str, str], overrides: dict[str, Any] | None
) -> str:
    """The run's artifact: what each stage did, test EM/F1 against the baselines, the registration."""
    lines = ["## medqa pipeline", "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {status} |" for stage, status in statuses.items()]
    if overrides:
        lines += ["", "Param overrides: " + ", ".join(f"`{k}={v!r}`" for k, v in overrides.items())]
    if any(status in ("failed", "not run") for status in statuses.values()):
        return "\n".join([*lines, "", "No results: the pipeline did not finish."])
    # Both reports are outputs of stages that just succeeded or were verified unchanged by DVC: they exist.
    metrics = json.loads((root / METRICS_FILE).read_text(encoding="utf-8"))
    registration = json.loads((root / REGISTRATION_FILE).read_text(encoding="utf-8"))
    lo, hi = metrics.get("f1_ci95") or (None, None)
    lines += [
        "",
        "| test metric | value |",
        "|---|---|",
        f"| EM | {figure(metrics['exact'])} |",
        f"| F1 | {figure(metrics['f1'])} |",
        f"| F1 95% CI (n={metrics['n']}) | {figure(lo)} – {figure(hi)} |",
    ]
    lines += [
        f"| baseline {name} F1 | {figure(f1)} |" for name, f1 in metrics["baselines_f1"].items()
    ]
    lines.append(
        f"| lead over best baseline ({metrics['best_baseline']}) | "
        f"{figure(metrics['lead_over_best_baseline'], '+.4f')} |"
    )
    champion = "became @champion" if registration["promoted"] else "did not become @champion"
    when = " (an earlier run's: register was cached)" if statuses["register"] == "cached" else ""
    lines += [
        "",
        f"Registered `{registration['model_name']}` v{registration['version']}{when}: {champion} — "
        f"{registration['reason']}",
    ]
    return "\n".join(lines)


@flow
def medqa_pipeline(
    project_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    retries: int = 2,
    retry_backoff_s: float = 30.0,
    lock_timeout_s: float = 3600.0,
) -> dict[str, str]:
    """validate → tokenize → train → evaluate → register, each reproduced by DVC in ``project_dir``.

    Args:
        project_dir: the DVC project (default: the current folder).
        overrides: dotted params.yaml keys and values, e.g. {"train.epochs": 5}, written to params.yaml first.
        retries: how often a stage that failed transiently is tried again.
        retry_backoff_s: first retry delay; each further retry waits twice as long.
        lock_timeout_s: how long to wait for another run of this pipeline on the same project.

    Returns:
        Each stage's result: "ran", "restored" or "cached".
    """
    logger = get_run_logger()
    root = Path(project_dir or os.getcwd()).resolve()
    with Repo(str(root)) as repo:
        tmp_dir = repo.tmp_dir
    statuses = dict.fromkeys(STAGES, "not run")
    with _pipeline_lock(tmp_dir, lock_timeout_s, logger):
        try:
            if overrides:
                apply_param_overrides(root / PARAMS_FILE, overrides)
                logger.info("params.yaml overrides applied: %s", overrides)
            for stage in STAGES:
                run = reproduce_stage.with_options(
                    name=stage,
                    retries=retries,
                    retry_delay_seconds=exponential_backoff(retry_backoff_s),
                )
                try:
                    statuses[stage] = run(str(root), stage)
                except Exception:
                    statuses[stage] = "failed"
                    raise
        finally:
            create_markdown_artifact(
                markdown=_results_markdown(root, statuses, overrides),
                key=ARTIFACT_KEY,
                description="medqa pipeline: stage results, test EM/F1, registration",
            )
    logger.info("stages: %s", statuses)
    return statuses
