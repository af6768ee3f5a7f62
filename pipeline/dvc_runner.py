"""The flow's side of DVC: the stages of dvc.yaml, reproducing one of them, what DVC did, why it
failed, and the pipeline lock. No Prefect here: pipeline.flows turns these into tasks and states.

Why DVC does the work: dvc.lock and DVC's run-cache decide whether a stage runs, for a Prefect run and
for `dvc repro` in a terminal alike. The stages (names, order, outputs) are read from dvc.yaml through
DVC, so a stage added there is a task of the flow without an edit. What DVC did to a stage (ran its
command, restored it from the run-cache, skipped it) is read from the messages DVC logs, as
Repo.reproduce() returns a restored stage exactly like one whose command ran.

Which failures are retried (StageError.transient; the flow retries with exponential back-off):
- The medqa CLI exits with status 2 (medqa.contracts.USER_ERROR_EXIT) when data or params are wrong,
  after one line `medqa <stage>: error: ...` on stderr. DVC wraps that in a ReproductionError caused
  by StageCmdFailedError("failed to run: ..., exited with 2"); the status is read from that message,
  as DVC keeps it nowhere else. Status 2, and 126/127 (the command cannot be run or found), fail at
  once: the same inputs would fail the same way.
- Any other exit status (1: an unhandled exception; negative: killed by a signal, e.g. the OOM killer)
  and DVC's LockError (another DVC process holds the repo lock) are taken as transient and retried.
- Any other DVC error (a missing dependency, a broken dvc.yaml, not a DVC repo) fails at once.
DVC passes a stage's stdout and stderr straight through and keeps none of it, so they are teed
(pipeline.fd_tee) while a stage runs: the stage's `error:` line (or its last stderr line) becomes the
message of the failed stage.

Concurrency: DVC holds its repo lock while it checks and commits a stage but releases it while the
stage's command runs (dvc.stage.decorators.unlocked_repo), so its lock alone would let two flow runs
train into the same folder at once. A flow run therefore holds a pipeline lock (DVC's own lock class,
on .dvc/tmp/medqa-pipeline.lock next to DVC's) from its first stage to writing its artifact; another
run waits for it with exponential back-off and fails with a clear message after `lock_timeout_s`.
A `dvc repro` typed in a terminal does not know the pipeline lock; it only meets DVC's repo lock.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dvc.exceptions import DvcException
from dvc.lock import Lock, LockError
from dvc.repo import Repo
from dvc.repo.reproduce import plan_repro
from dvc.stage import PipelineStage
from dvc.stage.exceptions import StageCmdFailedError

from medqa.contracts import USER_ERROR_EXIT, find_error_line
from pipeline.fd_tee import tee_fd

PIPELINE_LOCK_FILE = "medqa-pipeline.lock"  # in DVC's .dvc/tmp
PERMANENT_EXIT_CODES = frozenset({USER_ERROR_EXIT, 126, 127})
_EXIT_STATUS = re.compile(r"exited with (-?\d+)")

StageStatus = Literal["ran", "restored", "cached"]
# what DVC logs for a stage of the pipeline (dvc/stage/run.py, dvc/stage/cache.py, dvc/stage/__init__.py)
DVC_STAGE_MESSAGES: dict[str, StageStatus] = {
    "Running stage '%s':": "ran",
    "Stage '%s' is cached - skipping run, checking out outputs": "restored",
    "Stage '%s' didn't change, skipping": "cached",
}


@dataclass(frozen=True)
class FlowStage:
    """One stage of dvc.yaml as the flow needs it: its name and its outputs (paths from the root)."""

    name: str
    outs: tuple[str, ...]


def pipeline_stages(root: Path) -> list[FlowStage]:
    """dvc.yaml's stages in the order `dvc repro` runs them, with their outputs as DVC resolved them
    (``${...}`` filled in from params.yaml); `.dvc` files of `dvc add` are not stages of the flow."""
    with working_dir(str(root)), Repo(str(root)) as repo:
        return [
            FlowStage(
                stage.addressing,
                tuple(os.path.relpath(out.fs_path, repo.root_dir) for out in stage.outs),
            )
            for stage in plan_repro(repo.index.graph)
            if isinstance(stage, PipelineStage)
        ]


def dvc_tmp_dir(root: Path) -> str:
    """The project's .dvc/tmp, where the pipeline lock lies next to DVC's own repo lock."""
    with Repo(str(root)) as repo:
        return repo.tmp_dir


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


def stage_error(stage: str, exc: BaseException, stderr: list[str]) -> StageError:
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
    detail = find_error_line("\n".join(stderr)) or (stderr[-1] if stderr else "no output on stderr")
    transient = status is None or int(status.group(1)) not in PERMANENT_EXIT_CODES
    return StageError(stage, f"{detail} [{failed}]", transient=transient)


@contextmanager
def working_dir(path: str) -> Iterator[None]:
    """DVC's Python API resolves targets and paths from the current folder, so it must be the project."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def scripts_first() -> dict[str, str]:
    """PATH with this interpreter's scripts folder first, for the stages' `medqa` commands."""
    scripts = str(Path(sys.executable).parent)
    return {"PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}


@contextmanager
def listening_to_dvc(*handlers: logging.Handler, instead: bool = False) -> Iterator[None]:
    """Give ``handlers`` the "dvc" logger's records, at INFO at least, for the duration of the block:
    what DVC does to each stage is said nowhere but in those messages.

    Each message is printed once: DVC's own console handlers print it (or, ``instead``, only
    ``handlers`` get it), and it goes no further up, where the root logger's handler (Prefect's
    console in a flow run) would print it again.
    """
    dvc_logger = logging.getLogger("dvc")
    level, own, propagate = dvc_logger.level, dvc_logger.handlers[:], dvc_logger.propagate
    dvc_logger.handlers[:] = [*([] if instead else own), *handlers]
    dvc_logger.propagate = False
    dvc_logger.setLevel(min(dvc_logger.getEffectiveLevel(), logging.INFO))
    try:
        yield
    finally:
        dvc_logger.handlers[:] = own
        dvc_logger.propagate = propagate
        dvc_logger.setLevel(level)


class _RunCacheWatch(logging.Handler):
    """Notices DVC's "is cached - skipping run" message: Repo.reproduce() returns a stage restored from
    the run-cache exactly like one whose command ran."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.restored = False

    def emit(self, record: logging.LogRecord) -> None:
        self.restored |= DVC_STAGE_MESSAGES.get(str(record.msg)) == "restored"


class _ToLogger(logging.Handler):
    """DVC's messages, as they come, to a logger of the caller's (a flow's run logger, which
    shows them in the terminal and in the UI alike)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        super().__init__(logging.INFO)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        self.logger.log(record.levelno, "%s", record.getMessage())


def reproduce(
    project_dir: str,
    stage: str,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> tuple[StageStatus, list[str]]:
    """Ask DVC to reproduce this one stage of dvc.yaml in the workspace: what DVC did, and the last
    lines of stdout (the stage's own summary, and DVC's messages unless ``logger`` took them
    instead of DVC's console) for the run's log.

    single_item: the upstream stages are the flow's earlier tasks, already reproduced. The stage's
    command runs with this interpreter's scripts folder first on PATH, so `medqa` is the one installed
    next to this Prefect, whichever shell started the worker. Raises StageError.
    """
    watch = _RunCacheWatch()
    to_logger = [] if logger is None else [_ToLogger(logger)]
    with (
        working_dir(project_dir),
        listening_to_dvc(watch, *to_logger, instead=logger is not None),
        tee_fd(1) as stdout,
        tee_fd(2) as stderr,
    ):
        try:
            with Repo(project_dir) as repo:
                reproduced = repo.reproduce(stage, single_item=True, run_env=scripts_first())
        except DvcException as exc:
            raise stage_error(stage, exc, list(stderr.lines)) from exc
    status: StageStatus = ("restored" if watch.restored else "ran") if reproduced else "cached"
    return status, list(stdout.lines)[-20:]


@contextmanager
def pipeline_lock(
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
