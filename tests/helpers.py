"""Plain functions and constants the tests share; the fixtures are in conftest.py.

Tests import this module as ``from helpers import ...`` (pyproject.toml puts tests/ on pytest's
``pythonpath``). It imports nothing from the project at module level, so benchmarks/ can load it by
path for ``make_tiny_project`` without pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from medqa.config import TokenizeParams

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository
SHIPPED = ROOT / "data" / "raw" / "amd_qa"
FIXTURES = TESTS / "fixtures"  # small files in a public dataset's own shape
DATA = TESTS / "data"  # datasets in the project's raw layout

STAGES = ("validate", "tokenize", "train", "evaluate", "register")
# Decoding settings for a tiny model; null_threshold -1e9: it never abstains, every record gets a span.
DECODING = {
    "n_best": 20,
    "max_answer_length": 30,
    "null_threshold": -1e9,
    "max_seq_length": 128,
    "doc_stride": 48,
}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}
T = TypeVar("T")


# --- environments -------------------------------------------------------------------------------


def environ_without(*prefixes: str) -> dict[str, str]:
    """This process's environment less the variables whose names start with one of ``prefixes``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def project_env(*drop: str, **extra: str) -> dict[str, str]:
    """The environment a stage or CLI process of a throwaway project needs: no MLflow variables
    from outside (each project keeps its own ./mlruns) nor any starting with ``drop``, this venv's
    tools first on PATH, the hub offline and a git identity; ``extra`` on top."""
    env = environ_without("MLFLOW_", *drop)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | {"HF_HUB_OFFLINE": "1"} | GIT_IDENTITY | extra


# --- tiny projects ------------------------------------------------------------------------------


def tiny_squad_slice(split: str, articles: int) -> dict:
    """The first ``articles`` passages of a shipped split, as SQuAD v2 JSON."""
    doc = json.loads((SHIPPED / f"{split}.json").read_text(encoding="utf-8"))
    return {**doc, "data": doc["data"][:articles]}


def write_tiny_splits(folder: Path, train: int = 4, dev: int = 2, test: int = 2) -> Path:
    """``folder`` (made if missing) with train/dev/test SQuAD files of the first few real passages
    of the shipped splits: 4, 2 and 2 unless told."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"{split}.json").write_text(
            json.dumps(tiny_squad_slice(split, n)), encoding="utf-8"
        )
    return folder


def scored_checkpoint_project(proj: Path, model_dir: Path, windows: TokenizeParams) -> Path:
    """``proj`` with validated and tokenized splits of a few real passages (train 1, dev 2, test 2)
    and ``checkpoint/``, a copy of ``model_dir`` with the medqa.json the evaluate stage reads;
    ``windows`` is the TokenizeParams they were cut with."""
    from medqa.config import ValidateParams
    from medqa.features import tokenize_splits
    from medqa.validate import validate_records

    raw = write_tiny_splits(proj / "raw", train=1)
    validate_records(
        raw, proj / "validated", proj / "rejected.jsonl", proj / "validation.json", ValidateParams()
    )
    tokenize_splits(proj / "validated", proj / "features", str(model_dir), windows)
    shutil.copytree(model_dir, proj / "checkpoint")
    config = {"backend": "cpu", "base_model": str(model_dir)}
    config |= {"max_seq_length": windows.max_seq_length, "doc_stride": windows.doc_stride}
    (proj / "checkpoint" / "medqa.json").write_text(json.dumps(config))
    return proj


def git_dvc_init(dest: Path, env: dict[str, str] | None = None) -> Path:
    """Make ``dest`` a git + DVC repository (analytics off) with everything in it committed."""
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "init"],
    ):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, timeout=120)
    return dest


def make_tiny_project(dest: Path, model_dir: Path, env: dict[str, str] | None = None) -> Path:
    """A git + DVC project with this repo's dvc.yaml, lock and src/, a few real passages, and a tiny model.

    Shared by the dvc repro integration test, the Prefect flow tests and benchmarks/orchestration_bench.py,
    so all of them run the same wiring.
    """
    import yaml

    dest.mkdir()
    for name in ("dvc.yaml", "uv.lock", "requirements-lock.txt"):
        shutil.copy(ROOT / name, dest)
    shutil.copytree(
        ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    write_tiny_splits(dest / "data" / "raw" / "amd_qa")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] = str(model_dir)
    params["train"].update(epochs=2, batch_size=8, learning_rate=1e-3)
    params["tokenize"].update(max_seq_length=128, doc_stride=48)
    params["evaluate"]["bootstrap_samples"] = 50
    params["register"].update(model_name="tiny-qa", min_f1=0.0)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return git_dvc_init(dest, env)


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``cmd`` to the end; its stdout and stderr together. Fails the test on a non-zero exit."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


# --- a registry in a project folder -------------------------------------------------------------


@contextmanager
def inside_project(proj: Path) -> Iterator[Path]:
    """Work in ``proj`` with no MLFLOW_TRACKING_URI, so MLflow uses the project's own ./mlruns;
    the working folder, the variable and MLflow's tracking URI are restored after."""
    import mlflow

    saved_cwd, saved_uri = Path.cwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(proj)
    try:
        yield proj
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(saved_cwd)
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def distinct_copy(model_dir: Path, dest: Path, bias: float) -> Path:
    """A copy of a saved model whose QA head's bias is shifted by ``bias``: its own weights, so its
    content hash differs from the original's and from the other copies'."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, dest)
    tensors = load_file(dest / "model.safetensors")
    tensors["qa_outputs.bias"] = tensors["qa_outputs.bias"] + bias
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def register_version(
    proj: Path, ckpt: Path, name: str, f1: float, exact: float, registration: str
) -> None:
    """Register ``ckpt`` as the register stage does, with a metrics.json claiming ``f1`` and
    ``exact`` and the project's decoding.json and test.jsonl; the result goes to ``registration``."""
    from medqa.config import RegisterParams
    from medqa.registry import register_model

    (proj / "metrics.json").write_text(
        json.dumps(
            {
                "f1": f1,
                "exact": exact,
                "baselines_f1": {"lexical_window": 0.1},
                "best_baseline": "lexical_window",
            }
        )
    )
    register_model(
        ckpt,
        proj / "metrics.json",
        proj / "decoding.json",
        proj / "test.jsonl",
        proj / registration,
        RegisterParams(name, 0.0),
    )


# A calibrator that says 0.5 for every answer and abstention and withholds nothing: predictable
# confidences for tests of what is served.
CALIBRATION = {
    "features": ["margin", "answer_prob", "runner_up_gap", "log_span_words"],
    "answer": {"weights": [], "bias": 0.0, "mean": [], "scale": []},
    "abstention": {"weights": [], "bias": 0.0, "mean": [], "scale": []},
    "min_confidence": 0.0,
}


def one_version_project(
    proj: Path, model_dir: Path, name: str, decoding: dict, test_row: dict
) -> None:
    """Make ``proj`` a project whose registry holds ``model_dir`` as version 1 (and @champion) of
    ``name``, read with ``decoding``, its test split the one ``test_row``. Call it inside
    ``inside_project(proj)``."""
    import mlflow

    from medqa.tracking import configure_tracking

    (proj / "params.yaml").write_text(f"register:\n  model_name: {name}\n  min_f1: 0.0\n")
    (proj / "dvc.yaml").write_text("stages: {}\n")  # a project: the registry is its ./mlruns
    (proj / "test.jsonl").write_text(json.dumps(test_row) + "\n")
    ckpt = proj / "checkpoint"
    shutil.copytree(model_dir, ckpt)
    configure_tracking()
    with mlflow.start_run() as run:
        mlflow.set_tags({"backend": "cpu", "precision": "fp32"})
    (ckpt / "medqa.json").write_text(
        json.dumps({"run_id": run.info.run_id, "backend": "cpu", "base_model": "tiny"})
    )
    (proj / "decoding.json").write_text(json.dumps(decoding))
    register_version(proj, ckpt, name, 0.5, 0.4, "registration.json")


# --- servers and other processes ----------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen:
    """A server process in its own session (so its whole group can be signalled), its output in a
    file: a chatty server must never block on a full pipe."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_up(
    url: str, proc: subprocess.Popen, log: Path, seconds: float = 120, interval: float = 0.5
) -> None:
    """Poll ``url`` until it answers; fail with the log's end if ``proc`` exits or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(interval)


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s``. An HTTP error
    from httpx counts as not yet."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if found := probe():
                return found
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to the process, then SIGKILL to the process group the test started if it does not
    exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group the test started, SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def prefect_server(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`prefect server start` on a free loopback port, its output in ``log``; yields its API URL
    (once /api/health answers) and the process, and stops it after."""
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    proc = start_server(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env
    )
    try:
        wait_for(
            lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200,
            120,
            "the server's /api/health",
        )
        yield api, proc
    finally:
        stop(proc)
