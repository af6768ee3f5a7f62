"""MLflow set-up: which store, and how its records stay valid when the project moves.

The store is ``MLFLOW_TRACKING_URI`` when it is set: for a team, an ``mlflow server`` that proxies
artifacts (``--artifacts-destination``), so that no client records a path of its own machine.
Otherwise it is the project's own SQLite store, ``mlruns/mlflow.db``, with artifacts under
``mlruns/artifacts``. The project is the nearest folder holding dvc.yaml and params.yaml, so a
command run from any subfolder finds the same store.

SQLite records artifact locations as absolute ``file://`` URIs. A moved or copied project would
go on reading and writing the artifacts of the folder it was first run in, so the store is
re-rooted to the folder it now sits in, and stderr says so once.

One run per training; register logs to it by run id without reopening it (a reopened run's end
time, hence its duration in the UI, moves to the end of the registration).

A tracking server is asked once, up front, whether it answers (``check_tracking_server``): MLflow's
own client retries a refused connection 7 times with exponential backoff, minutes of silence that
look like a hang when a teammate's server is down or an old export lingers. Its retries are bounded
here too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), for a server that stops answering mid-run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.exceptions import MlflowException

from medqa.config import find_project_root
from medqa.errors import ConfigError, first_line

EXPERIMENT = "medqa"
LOCAL_STORE = Path("mlruns")
LOCAL_DB = LOCAL_STORE / "mlflow.db"
LOCAL_ARTIFACTS = LOCAL_STORE / "artifacts"
# where MLflow's SQLite schema keeps absolute artifact locations: the experiment's, each run's,
# each logged model's and each model version's (tests/test_team_local_store.py moves a project)
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)
# SQLite's words for a store it may read but not write (the file, or its folder for the journal)
READ_ONLY_SIGNS = ("readonly database", "unable to open database file", "read-only file system")
# how long a tracking server may take to answer the first request before the command gives up
TIMEOUT_ENV = "MEDQA_TRACKING_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 5.0
# MLflow's retries of one request when the user has not chosen (MLflow's 7, with backoff, take
# minutes; 2 take seconds): rate-limited hosted stores are not this project's servers
MLFLOW_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
DEFAULT_MLFLOW_RETRIES = "2"


# MLflow copies the URI it is given into MLFLOW_TRACKING_URI: a local store's URI found there was
# set by this process, not by the user, and is chosen afresh (the project may be another one now)
_local_uri: str | None = None

log = logging.getLogger(__name__)


def user_tracking_uri() -> str | None:
    """MLFLOW_TRACKING_URI as the user set it; None when unset or set by this process itself."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri != _local_uri else None


def configure_tracking(root: Path | None = None) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI``, else at ``<root>/mlruns`` (default: the project
    root, else the current folder), and return the URI."""
    global _local_uri
    uri = user_tracking_uri()
    local_root = None
    if not uri:
        local_root = Path(root or find_project_root() or Path.cwd()).resolve()
        uri = _local_uri = _local_store(local_root)
    elif urlparse(uri).scheme in ("http", "https"):
        check_tracking_server(uri)
        os.environ.setdefault(MLFLOW_RETRIES_ENV, DEFAULT_MLFLOW_RETRIES)
    if uri != mlflow.get_tracking_uri():
        _forget_artifact_locations()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri, local_root))
    mlflow.set_experiment(EXPERIMENT)
    return uri


def tracking_timeout() -> float:
    """Seconds to wait for a tracking server's first answer: ``MEDQA_TRACKING_TIMEOUT_S``, else 5."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0")
    return seconds


def check_tracking_server(uri: str) -> None:
    """Refuse, in one line, a tracking server that does not answer within ``tracking_timeout()``.

    Any HTTP answer will do, an error status or a certificate MLflow may be told to accept
    included: only silence or a refused connection is this check's business, and what the server
    answers next is MLflow's (its errors are one line too, ``explain_store_error``).
    """
    timeout = tracking_timeout()
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return  # it answered TLS; whether to trust it is MLflow's setting
        why = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
    except (OSError, ValueError) as e:  # a timeout while reading, or a URI urllib cannot parse
        why = first_line(e) if not isinstance(e, TimeoutError) else "timed out"
    raise ConfigError(
        f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer ({why}): start "
        "it (docs/team.md), or unset MLFLOW_TRACKING_URI to use the project's own store; "
        f"{TIMEOUT_ENV} (now {timeout:g}) is how many seconds to wait for it"
    )


def _artifact_root(uri: str, local_root: Path | None) -> str | None:
    """Where a new experiment keeps its artifacts: the project's mlruns/artifacts; beside the
    database for a SQLite URI the user set (MLflow's default, ./mlruns, would be the folder the
    command happens to run in); the server's own choice for a tracking server."""
    if local_root is not None:
        return (local_root / LOCAL_ARTIFACTS).as_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()
    return None


def _forget_artifact_locations() -> None:
    """Drop MLflow's per-process cache of artifact locations, which is keyed by run or model id
    alone: a process that moves on to another store (a copied project's, with the same ids) would
    otherwise read and write the first store's artifacts."""
    from mlflow.tracking._tracking_service import utils

    cache = getattr(utils, "_artifact_repos_cache", None)
    if cache is not None:
        cache.clear()


def _local_store(root: Path) -> str:
    """The SQLite URI of ``root``'s own store, created if missing and re-rooted if it was moved."""
    folder = root / LOCAL_STORE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{folder}: cannot create the MLflow store ({e.strerror})") from None
    db = root / LOCAL_DB
    if db.exists():
        reroot_local_store(db, root)
    # MLflow logs each SQL error with its traceback and then raises it as an MlflowException, which
    # the CLI reports in one line (explain_store_error): the log would bury that line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return f"sqlite:///{db}"


def reroot_local_store(db: Path, root: Path) -> Path | None:
    """Rewrite the artifact locations ``db`` recorded under another project folder to ``root``'s
    ``mlruns/``; return that other folder, or None when nothing had to change.

    Only locations under the old folder's ``mlruns/`` move: an artifact location someone chose
    elsewhere stays as it is. A store that cannot be written is refused with the reason, never
    left pointing at the old folder.
    """
    con = sqlite3.connect(db, timeout=30)
    try:
        try:
            row = con.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (EXPERIMENT,)
            ).fetchone()
        except sqlite3.Error:
            return None  # no MLflow tables yet (or not a database): MLflow itself says so
        suffix = "/" + LOCAL_ARTIFACTS.as_posix()
        if (
            row is None
            or row[0] == (root / LOCAL_ARTIFACTS).as_uri()
            or not row[0].endswith(suffix)
        ):
            return None
        old_uri = row[0][: -len(suffix)]
        old = Path(unquote(urlparse(old_uri).path))
        if old == root:
            return None
        moves = [
            (f"{old_uri}/{LOCAL_STORE}/", f"{root.as_uri()}/{LOCAL_STORE}/"),
            (f"{old}/{LOCAL_STORE}/", f"{root}/{LOCAL_STORE}/"),  # MLflow's Default experiment
        ]
        tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        try:
            with con:
                for table, column in LOCATION_COLUMNS:
                    if table not in tables:
                        continue
                    for was, now in moves:
                        con.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE substr({column}, 1, ?) = ?",
                            (now, len(was) + 1, len(was), was),
                        )
        except sqlite3.Error as e:
            raise ConfigError(
                f"{db}: recorded in {old}, now in {root}, and its artifact locations cannot be "
                f"moved here ({e}); make {root / LOCAL_STORE} writable"
            ) from None
    finally:
        con.close()
    log.warning(
        "%s was written in %s; its artifact locations now point into %s (the project was moved "
        "or copied)",
        *(db, old, root / LOCAL_STORE),
    )
    return old


def shareable_uri(uri: str) -> str:
    """``uri`` as a version tag: a project's own SQLite store relative to the project folder, since
    an absolute path names one machine's folder and goes stale when the project moves."""
    if uri.startswith("sqlite:///") and uri.endswith("/" + LOCAL_DB.as_posix()):
        return f"sqlite:///{LOCAL_DB.as_posix()}"
    return uri


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """A link to the run in the MLflow UI when the store is a server; otherwise how to see it."""
    if urlparse(uri).scheme in ("http", "https"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith("sqlite:"):
        return (
            f"no server: in the project folder run `mlflow ui --backend-store-uri "
            f"{shareable_uri(uri)}`, then open "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
        )
    scheme = urlparse(uri).scheme or "local"
    return f"no UI link for a {scheme} store: experiment {experiment_id}, run {run_id}"


def explain_store_error(e: BaseException) -> str | None:
    """One line for an MLflow error a user has to act on (a read-only store, a server that does
    not answer), or None when ``e`` is not MLflow's."""
    if not isinstance(e, MlflowException):
        return None
    uri = mlflow.get_tracking_uri()
    if any(sign in e.message for sign in READ_ONLY_SIGNS):
        store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:") else uri
        return (
            f"{store}: the MLflow store is read-only ({first_line(e)}); make it and its "
            "folder writable, or set MLFLOW_TRACKING_URI to a store you can write"
        )
    return f"MLflow store {uri}: {first_line(e)}"


def experiment_tags() -> dict[str, str]:
    """The DVC experiment a stage runs in (`dvc exp run` sets these for every stage it runs, the
    Prefect flow's override runs included), so a run or version says which experiment made it;
    empty in a plain `dvc repro`."""
    names = {"DVC_EXP_NAME": "dvc_experiment", "DVC_EXP_BASELINE_REV": "dvc_experiment_baseline"}
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def git_commit() -> str:
    """The current git commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_md5(path: Path) -> str:
    """MD5 of a file: the same hash DVC records for a single-file output."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(folder: Path, exclude: Collection[str] = ()) -> str:
    """SHA-256 over every file under ``folder`` (relative name and MD5), skipping files named in
    ``exclude``: equal digests mean equal contents (tokenized features, a checkpoint)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name not in exclude):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_md5(path).encode())
    return h.hexdigest()
