"""`medqa serve`: a registered model over REST, in one process, with bounded work per request.

It speaks MLflow's scoring protocol (``POST /invocations`` with ``dataframe_records``,
``dataframe_split``, ``instances`` or ``inputs``; ``GET /ping``, ``/health``, ``/version``) and loads
the version's pyfunc, so requests, answers and error messages are those of ``mlflow models serve``.
It differs where that server failed its users (issue 20):

- Limits: at most ``max_records`` records and ``max_chars`` characters (questions and contexts) per
  request. A larger request gets HTTP 413 naming the limit before any work starts, where the MLflow
  server ran it and answered 504 after 60 s while the work went on in the background.
- One process: the model is loaded by the process that listens (no CLI, uvicorn and worker chain),
  so a cold start is the imports plus the model load, and signals reach the server itself.
- Shutdown: SIGTERM or SIGINT stops a running prediction after its current batch (its client gets
  503), then the server closes; nothing outlives it.
- One prediction at a time: a request's records go through the predictor's batched path together,
  and concurrent requests queue for the cores rather than thrash them.
- A page to try it (``GET /``): paste a passage and a question, see the answer highlighted with its
  confidence, or the abstention and why, and the version's model card. It ships with the package
  (no build step, no CDN), posts to ``/invocations`` (so the same limits hold), shows all text as
  text, and is sent with a Content-Security-Policy that allows only its own script and style.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medqa.contracts import REQUEST_FIELDS, REQUEST_PARAMS
from medqa.errors import ConfigError, ModelError
from medqa.predictor import PredictionStopped

log = logging.getLogger(__name__)

# How long a shutdown waits for requests to finish before it cancels them; a running prediction
# stops at its next batch anyway, so this only bounds a stuck client.
GRACEFUL_SHUTDOWN_S = 10
JSON = "application/json"
PAGE_DIR = Path(__file__).resolve().parent / "page"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
# Only the page's own script, style and API calls; no inline code, frames, forms or other origins.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _error(status: int, code: str, message: str) -> Response:
    """An error in MLflow's shape, so clients of its scoring server read it the same way."""
    return Response(json.dumps({"error_code": code, "message": message}), status, media_type=JSON)


def as_frame(parsed: Any) -> Any:
    """A parsed request as a DataFrame: ``instances`` and ``inputs`` parse to a list of records or
    a dict of columns (or of one record's values), which the pyfunc would turn into one anyway."""
    import numpy as np
    import pandas as pd

    if isinstance(parsed, pd.DataFrame):
        return parsed
    if isinstance(parsed, dict):  # parsed without a schema, values come as numpy arrays
        parsed = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in parsed.items()}
    try:
        return pd.DataFrame(parsed)
    except ValueError:  # a dict of scalars: one record
        return pd.DataFrame([parsed])


def request_size(frame: Any) -> tuple[int, int]:
    """(records, characters of their questions and contexts) of a parsed request frame.

    Values that are not text count as nothing here: the model's own checks refuse them with a 400.
    """
    chars = 0
    for column in ("question", "context"):
        if column in frame.columns:
            chars += sum(len(v) for v in frame[column] if isinstance(v, str))
    return len(frame), chars


class ScoringApp:
    """The HTTP endpoints around one loaded pyfunc model and its QAPredictor."""

    def __init__(
        self, model: Any, max_records: int, max_chars: int, about: dict[str, Any] | None = None
    ) -> None:
        self.model = model
        self.about = about or {}
        self.predictor = model.unwrap_python_model().predictor
        self.max_records, self.max_chars = max_records, max_chars
        # JSON escapes take up to 6 bytes a character; beyond this the body is refused unread
        self.max_body_bytes = 6 * max_chars + 65_536
        self.one_at_a_time = anyio.Lock()
        self.app = Starlette(
            routes=[
                Route("/ping", self.ping, methods=["GET"]),
                Route("/health", self.ping, methods=["GET"]),
                Route("/version", self.version, methods=["GET"]),
                Route("/invocations", self.invocations, methods=["POST"]),
                Route("/about", self.describe, methods=["GET"]),
                *(Route(path, self.page, methods=["GET"]) for path in PAGE_FILES),
            ]
        )

    async def page(self, request: Request) -> Response:
        """The try-it page and its script and style, with the restrictive headers."""
        name, media_type = PAGE_FILES[request.url.path]
        return Response((PAGE_DIR / name).read_bytes(), 200, PAGE_HEADERS, media_type=media_type)

    async def describe(self, request: Request) -> Response:
        """What the page shows about the model: which one, at which precision, its answer policy's
        floor (None: no policy) and its card."""
        calibrator = self.predictor.calibrator
        body = {
            "precision": self.predictor.precision,
            "engine": self.predictor.engine,
            "min_confidence": calibrator.min_confidence if calibrator is not None else None,
            **self.about,
        }
        return Response(json.dumps(body), 200, PAGE_HEADERS, media_type=JSON)

    async def ping(self, request: Request) -> Response:
        """Healthy once listening: the model is loaded before the socket opens."""
        return Response("\n", 200, media_type=JSON)

    async def version(self, request: Request) -> Response:
        import mlflow

        return Response(mlflow.__version__, 200, media_type=JSON)

    def _too_large(self, what: str, n: int, limit: int, flag: str) -> Response:
        return _error(
            413,
            "REQUEST_TOO_LARGE",
            f"request has {n} {what}; the limit is {limit} per request (split it into smaller "
            f"requests, or raise the server's {flag})",
        )

    async def _body(self, request: Request) -> bytes | Response:
        """The request body, or a 413 as soon as it is longer than any request within the limits."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large(
                "bytes", int(declared), self.max_body_bytes, "--max-chars / serve.max_chars"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                return self._too_large(
                    "bytes or more", len(body), self.max_body_bytes, "--max-chars / serve.max_chars"
                )
        return bytes(body)

    def _policy_problem(self, params: Any) -> str | None:
        """Why a request's ``params`` (MLflow's per-request settings) cannot be used, or None.

        ``min_confidence`` replaces the version's answer policy for that request (0: every answer
        the threshold lets through; 1: none); a version registered before it could be asked for
        says so instead of silently ignoring it.
        """
        if params is None:
            return None
        if not isinstance(params, dict):
            return f"params must be an object such as {{{REQUEST_PARAMS[0]!r}: 0.5}}"
        unknown = sorted(set(params) - set(REQUEST_PARAMS))
        if unknown:
            return f"unknown params {unknown}; this server takes {list(REQUEST_PARAMS)}"
        if self.model.metadata.get_params_schema() is None:
            return f"{self.about.get('model')} was registered before per-request params existed"
        floor = params.get("min_confidence")
        if floor is not None and (
            isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor <= 1
        ):
            return f"params.min_confidence must be a number from 0 to 1 or null, got {floor!r}"
        return None

    def _record_problem(self, frame: Any) -> str | None:
        """The first record that cannot be answered and why, named by its place in the request."""
        if len(frame) and not set(REQUEST_FIELDS) & set(frame.columns):
            return f"no record has {' or '.join(REQUEST_FIELDS)}; send records like {{question, context}}"
        rows = frame.reindex(columns=list(REQUEST_FIELDS)).astype(object)
        for i, record in enumerate(rows.where(rows.notna(), None).to_dict("records")):
            if (why := self.predictor.problem(record)) is not None:
                return f"record {i + 1}: {why}"
        return None

    async def invocations(self, request: Request) -> Response:
        """Parse as MLflow does, refuse what is over the limits, predict all records at once."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import infer_and_parse_data, predictions_to_json

        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != JSON:
            return _error(
                415, "BAD_REQUEST", f"send {JSON} (MLflow's JSON formats); got {content_type!r}"
            )
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:  # parsed in a worker thread: a large body must not hold up /ping and the other requests
            data = await anyio.to_thread.run_sync(json.loads, body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, "BAD_REQUEST", f"the body is not valid UTF-8 JSON ({e})")
        if not isinstance(data, dict):
            return _error(400, "BAD_REQUEST", "expected a JSON object such as {dataframe_records}")
        params = data.pop("params", None)
        if (why := self._policy_problem(params)) is not None:
            return _error(400, "BAD_REQUEST", why)
        try:  # parsed without the schema: its type errors dump the frame, ``_record_problem`` names
            parsed = await anyio.to_thread.run_sync(lambda: infer_and_parse_data(data))
            frame = as_frame(parsed)
            records, chars = request_size(frame)
            if records > self.max_records:
                return self._too_large(
                    "records", records, self.max_records, "--max-records / serve.max_records"
                )
            if chars > self.max_chars:
                return self._too_large(
                    "characters of questions and contexts",
                    chars,
                    self.max_chars,
                    "--max-chars / serve.max_chars",
                )
            if (why := self._record_problem(frame)) is not None:
                return _error(400, "BAD_REQUEST", why)
            async with self.one_at_a_time:
                predictions = await anyio.to_thread.run_sync(self.model.predict, frame, params)
        except PredictionStopped as e:
            return _error(503, "SERVICE_UNAVAILABLE", str(e))
        except MlflowException as e:
            return Response(e.serialize_as_json(), e.get_http_status_code(), media_type=JSON)
        out = StringIO()
        predictions_to_json(predictions, out)
        return Response(out.getvalue(), 200, media_type=JSON)


class _StoppingServer(uvicorn.Server):
    """uvicorn's server whose exit signal also stops the prediction in progress, and which says
    where it serves only once it listens: a user or script that reads the line may send at once."""

    def __init__(self, config: uvicorn.Config, stop: threading.Event, announcement: str) -> None:
        super().__init__(config)
        self._stop = stop
        self._announcement = announcement

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._announcement, file=sys.stderr, flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._stop.set()
        super().handle_exit(sig, frame)


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` but not yet listening: a busy port, or an address this
    machine does not have, is refused in one line before the model loads (seconds to minutes), and
    until it has loaded a client's connection is refused rather than left waiting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides it
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            why = "the port is in use: stop what listens there, or choose another --port"
        else:
            why = f"{getattr(e, 'strerror', None) or e} (check --host and --port)"
        raise ConfigError(f"cannot serve on {host}:{port}: {why}") from None
    return sock


def _url(sock: socket.socket) -> str:
    """The base URL of a bound socket: its real port (``--port 0`` picks one) and address."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_served_model(uri: str, precision: str | None = None) -> Any:
    """The pyfunc of ``uri``, its predictor at the recorded precision or at ``precision``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(uri)
    except MlflowException as e:
        raise ModelError(f"{uri}: {e.message.splitlines()[0]}") from None
    except OSError as e:
        raise ModelError(f"{uri}: cannot load ({e})") from None
    if precision is not None:
        model.unwrap_python_model().predictor.use_precision(precision)
    return model


def describe_served(uri: str) -> dict[str, Any]:
    """The served model's name for people and, for a registered version, its model card."""
    about: dict[str, Any] = {"model": uri, "card": None}
    if not uri.startswith("models:/"):
        return about
    from mlflow import MlflowClient

    from medqa.versions import model_card_text

    rest = uri.removeprefix("models:/")
    name, _, ref = rest.partition("@") if "@" in rest else rest.rpartition("/")
    try:
        about["card"] = model_card_text(MlflowClient(), name, ref)
    except ModelError as e:
        log.warning("no model card for the page: %s", e)
    return about


def serve(
    uri: str,
    host: str,
    port: int,
    precision: str | None,
    max_records: int,
    max_chars: int,
    engine: str = "auto",
) -> None:
    """Load ``uri`` and answer requests on ``host:port`` until SIGTERM or SIGINT; ``max_records``
    and ``max_chars`` bound each request (params.yaml's serve group). The port is taken before the
    model loads and announced on stderr once it listens; a compiled ``engine`` (auto: the one
    recorded with the version) compiles before that, so no request waits for it."""
    sock = bind_port(host, port)
    try:
        _serve_on(sock, uri, precision, max_records, max_chars, engine)
    finally:
        sock.close()


def _serve_on(
    sock: socket.socket,
    uri: str,
    precision: str | None,
    max_records: int,
    max_chars: int,
    engine: str,
) -> None:
    """``serve`` on a bound socket, which uvicorn makes listen once the model is loaded."""
    started = time.perf_counter()
    model = load_served_model(uri, precision)
    scoring = ScoringApp(model, max_records, max_chars, describe_served(uri))
    p = scoring.predictor
    p.use_engine(engine)
    log.info(
        "loaded %s in %.1f s; precision %s (%s); engine %s (%s); limits %d records, %d "
        "characters per request",
        uri,
        time.perf_counter() - started,
        p.precision,
        p.precision_reason,
        p.engine,
        p.engine_reason,
        max_records,
        max_chars,
    )
    if p.engine == "compile":
        log.info("compiling the model for this machine before listening (a minute or two)")
        log.info("compiled in %.1f s", p.warm_up())
    config = uvicorn.Config(
        scoring.app,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level="info",
    )
    server = _StoppingServer(config, p.stop, f"serving {uri} at {_url(sock)}/invocations")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it stopped for: a normal end here
        return
