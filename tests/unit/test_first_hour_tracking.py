"""A tracking server that is down or silent is one line and exit 2 within seconds, for every command
that opens the store (issue 30, item 1), where MLflow's own retries kept them silent for minutes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import DECODING, environ_without, free_port
from medqa.cli import main
from medqa.errors import ConfigError
from medqa.tracking import check_tracking_server, configure_tracking

NAME = "medqa-amd-qa"
RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def _down_message(uri: str, timeout: str = "5") -> str:
    return (
        f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer (Connection "
        "refused): start it (docs/team.md), or unset MLFLOW_TRACKING_URI to use the project's own "
        f"store; MEDQA_TRACKING_TIMEOUT_S (now {timeout}) is how many seconds to wait for it"
    )


@pytest.fixture(autouse=True)
def _mlflow_settings_restored():
    """configure_tracking sets MLflow's retries in this process's environment and its URI: undone."""
    import mlflow

    saved = os.environ.get(RETRIES)
    yield
    os.environ.pop(RETRIES, None) if saved is None else os.environ.update({RETRIES: saved})
    mlflow.set_tracking_uri(None)


@pytest.fixture()
def answers_404():
    """A loopback HTTP server that answers every request with 404: up, but no MLflow."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), NotFound) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


@pytest.fixture()
def server_down(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI names a loopback port nothing listens on; the command runs elsewhere."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MEDQA_TRACKING_TIMEOUT_S", raising=False)
    return uri


def _register_inputs(folder) -> list[str]:
    """The files `medqa register` reads before it opens the store, as the stages leave them."""
    (folder / "ckpt").mkdir()
    (folder / "ckpt" / "medqa.json").write_text(json.dumps({"run_id": "r1"}))
    (folder / "metrics.json").write_text("{}")
    (folder / "decoding.json").write_text(json.dumps(DECODING))
    (folder / "test.jsonl").write_text(json.dumps({"id": "t1", "question": "q", "context": "c"}))
    return [
        *("register", "--model", str(folder / "ckpt"), "--metrics", str(folder / "metrics.json")),
        *("--decoding", str(folder / "decoding.json"), "--test", str(folder / "test.jsonl")),
        *("--out", str(folder / "registration.json")),
    ]


def _run_bounded(argv: list[str], seconds: float = 60) -> int:
    """`medqa ARGV` in this process; fail, rather than wait minutes, if it has not ended in time
    (the bound allows for a command's first imports on a loaded machine)."""
    ended: dict[str, int] = {}
    worker = threading.Thread(target=lambda: ended.setdefault("rc", main(argv)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert "rc" in ended, f"medqa {' '.join(argv)} still waiting after {seconds} s"
    return ended["rc"]


COMMANDS = {
    "models": ["models"],
    "models --card": ["models", "--card", "champion"],
    "promote": ["promote", "2"],
    "rollback": ["rollback"],
    "predict": [
        "predict",
        "--model",
        f"models:/{NAME}@champion",
        "--question",
        "q",
        "--context",
        "c",
    ],
    "serve": ["serve", "--model", f"models:/{NAME}/1", "--port", "0"],
}


@pytest.mark.parametrize("argv", [*COMMANDS.values(), "register"], ids=[*COMMANDS, "register"])
def test_every_store_command_is_one_line_when_the_server_is_down(
    server_down, tmp_path, argv, capsys
):
    argv = _register_inputs(tmp_path) if argv == "register" else argv
    rc = _run_bounded(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"medqa {argv[0]}: error: {_down_message(server_down)}"]


def test_configure_tracking_is_refused_at_once(server_down):
    """The one place the stages (train, evaluate, register) and the tools open the store."""
    started = time.monotonic()
    with pytest.raises(ConfigError, match="does not answer"):
        configure_tracking()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("chosen", "used"), [(None, 2), ("5", 5)])
def test_mlflows_retries_are_bounded_unless_the_user_chose(answers_404, monkeypatch, chosen, used):
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", answers_404)
    os.environ.pop(RETRIES, None) if chosen is None else os.environ.update({RETRIES: chosen})
    with pytest.raises(MlflowException):  # up, but not MLflow: MLflow's own error, at once
        configure_tracking()
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == used  # MLflow's default: 7, with backoff


def test_a_server_that_accepts_but_never_answers_is_refused_after_the_timeout(monkeypatch):
    monkeypatch.setenv("MEDQA_TRACKING_TIMEOUT_S", "0.5")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"does not answer \(timed out\).*\(now 0\.5\)"):
            check_tracking_server(uri)
    assert time.monotonic() - started < 3


def test_any_http_answer_counts_as_up(answers_404):
    check_tracking_server(answers_404 + "/")


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_the_timeout_setting_is_checked(value, monkeypatch):
    monkeypatch.setenv("MEDQA_TRACKING_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match=f"MEDQA_TRACKING_TIMEOUT_S='{value}': expected"):
        check_tracking_server("http://127.0.0.1:9")


@pytest.mark.slow
def test_medqa_models_is_one_line_within_seconds_not_minutes(tmp_path):
    """As a user meets it: a fresh process (MLflow's retries took ~4 minutes)."""
    uri = f"http://127.0.0.1:{free_port()}"
    env = environ_without("MLFLOW_", "MEDQA_") | {"MLFLOW_TRACKING_URI": uri}
    res = subprocess.run(
        [sys.executable, "-m", "medqa", "models"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,  # the imports on a loaded machine; the old silence lasted minutes
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [f"medqa models: error: {_down_message(uri)}"]
    assert res.stdout == ""
