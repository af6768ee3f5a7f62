"""`medqa serve` starts truthfully (issue 30, item 3): a busy port or a missing model is one error
line and exit 2 before any announcement, the port is checked before the model loads, and "serving
... at URL" appears only once that URL answers."""

from __future__ import annotations

import re
import socket
import sys
import time
import urllib.request

import pytest

from helpers import environ_without, free_port, start_server, stop_group
from medqa.cli import main

# a server process whose model is a stand-in: what is tested is when it listens and says so
FAKE_MODEL_SERVER = """
import threading
from types import SimpleNamespace

import medqa.server as server

predictor = SimpleNamespace(
    precision="fp32",
    precision_reason="test",
    engine="eager",
    engine_reason="test",
    use_engine=lambda engine: None,
    stop=threading.Event(),
)
model = SimpleNamespace(
    unwrap_python_model=lambda: SimpleNamespace(predictor=predictor),
    metadata=SimpleNamespace(get_input_schema=lambda: None),
)
server.load_served_model = lambda uri, precision=None: model
server.serve("stand-in-model", "127.0.0.1", 0, None, 8, 2000)
"""


@pytest.fixture()
def outside_project(tmp_path, monkeypatch):
    """A folder outside any project, with a store of its own so that serve may start there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _serve(folder, port: int, capsys) -> tuple[int, list[str], float]:
    """`medqa serve` of a folder model that does not exist: exit status, stderr lines, seconds."""
    started = time.monotonic()
    rc = main(["serve", "--model", str(folder / "no-such-model"), "--port", str(port)])
    return rc, capsys.readouterr().err.strip().splitlines(), time.monotonic() - started


def test_a_busy_port_is_one_line_before_the_model_loads(outside_project, monkeypatch, capsys):
    def must_not_load(uri, precision=None):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr("medqa.server.load_served_model", must_not_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, err, seconds = _serve(outside_project, port, capsys)
    assert rc == 2
    assert err == [
        f"medqa serve: error: cannot serve on 127.0.0.1:{port}: the port is in use: stop what "
        "listens there, or choose another --port"
    ]
    assert seconds < 5


def test_a_missing_model_is_one_line_with_no_announcement(outside_project, capsys):
    port = free_port()
    rc, err, _ = _serve(outside_project, port, capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("medqa serve: error: "), err
    assert "no-such-model" in err[0]
    with socket.socket() as again:  # the port it took for the model is given back
        again.bind(("127.0.0.1", port))


def test_a_port_out_of_range_is_one_line(outside_project, capsys):
    rc = main(["serve", "--model", "m", "--port", "70000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "cannot serve on 127.0.0.1:70000" in err[0] and "check --host and --port" in err[0]


@pytest.mark.slow  # a server process
def test_the_announcement_comes_once_the_url_answers(tmp_path):
    log = tmp_path / "serve.log"
    env = environ_without("MLFLOW_")
    proc = start_server([sys.executable, "-c", FAKE_MODEL_SERVER], log, env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120  # the imports, on a loaded machine
        while not (
            found := re.search(r"serving stand-in-model at (\S+)/invocations", log.read_text())
        ):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        # asked at once: the line must not come before the socket listens
        with urllib.request.urlopen(f"{found.group(1)}/ping", timeout=5) as resp:
            assert resp.status == 200
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", found.group(1)), found.group(1)
        assert not found.group(1).endswith(":0")  # the port the system chose, not "0"
    finally:
        stop_group(proc)
