"""Section 6: `medqa serve` over loopback against the raw forward+decode of the same questions.

The model of section 2 is saved as the same pyfunc the register stage logs and served by a fresh
`medqa serve` process on 127.0.0.1 at the precision recorded with it. Measured: cold start (process
start to the first healthy /ping), per-request latency and throughput with 1, 4 and 8 clients each
sending one question per request (a bounded number of requests per level), and one request of 32
records. The raw figures call QAPredictor.predict in another process on the same questions, so the
difference is what HTTP, JSON and MLflow's schema checks add.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RawTiming:
    """QAPredictor in-process: ms per one-question call, seconds per call with all of ``batch``."""

    single_ms: list[float]
    batch_seconds: list[float]
    precision: str


@dataclass
class ServerTiming:
    """What the client saw: cold start, latencies (ms) and wall seconds per concurrency level, the
    32-record call's seconds, and how long the server took to exit after SIGTERM."""

    cold_start_s: float
    latency_ms: dict[int, list[float]] = field(default_factory=dict)
    wall_s: dict[int, float] = field(default_factory=dict)
    batch_seconds: list[float] = field(default_factory=list)
    shutdown_s: float = float("nan")


def save_served_model(model_dir: Path, dest: Path) -> Path:
    """``model_dir`` as the pyfunc the register stage logs (same code, signature and artifacts)."""
    import mlflow

    from medqa.registry import INPUT_EXAMPLE, PACKAGE_DIR, SIGNATURE

    mlflow.pyfunc.save_model(
        str(dest),
        python_model=str(PACKAGE_DIR / "qa_model.py"),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(PACKAGE_DIR)],
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
        pip_requirements=["torch", "transformers>=5", "pandas", "mlflow>=3"],
    )
    return dest


def time_raw(model_dir: Path, records: list[dict[str, str]], batch: int, repeats: int) -> RawTiming:
    """One-question predict calls over ``records`` and ``repeats`` calls with the first ``batch``."""
    from medqa.predictor import QAPredictor

    predictor = QAPredictor(model_dir)
    predictor.predict(records[:2])  # warm-up
    single_ms = []
    for record in records:
        start = time.perf_counter()
        predictor.predict([record])
        single_ms.append((time.perf_counter() - start) * 1000)
    batch_seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(records[:batch])
        batch_seconds.append(time.perf_counter() - start)
    return RawTiming(single_ms, batch_seconds, predictor.precision)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, records: list[dict[str, str]]) -> float:
    """Seconds of one /invocations call; raises on anything but 200."""
    body = json.dumps({"dataframe_records": records}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        resp.read()
    return time.perf_counter() - start


def time_server(
    served: Path,
    records: list[dict[str, str]],
    levels: dict[int, int],
    batch: int,
    repeats: int,
    log: Path,
) -> ServerTiming:
    """Start `medqa serve` on ``served``, time it as above, then stop it with SIGTERM.

    ``levels`` maps a number of concurrent clients to how many one-question requests they send in
    all, cycling through ``records``.
    """
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [sys.executable, "-m", "medqa", "serve", "--model", str(served), "--port", str(port)]
    with open(log, "ab") as out:
        start = time.perf_counter()
        server = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"medqa serve exited with {server.returncode} (see {log})")
            if time.perf_counter() - start > 300:
                raise RuntimeError(f"medqa serve not healthy after 300 s (see {log})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.05)
        timing = ServerTiming(time.perf_counter() - start)
        _post(port, records[:2])  # warm-up
        for clients, n in levels.items():
            work = [[records[i % len(records)]] for i in range(n)]
            begin = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                timing.latency_ms[clients] = [
                    s * 1000 for s in pool.map(lambda r: _post(port, r), work)
                ]
            timing.wall_s[clients] = time.perf_counter() - begin
        timing.batch_seconds = [_post(port, records[:batch]) for _ in range(repeats)]
        stop = time.perf_counter()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        timing.shutdown_s = time.perf_counter() - stop
        return timing
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
