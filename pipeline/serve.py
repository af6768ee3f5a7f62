"""`python -m pipeline.serve`: publish the medqa-pipeline deployment on a cron schedule; run its runs.

One long-running command: it registers (or updates) the deployment on the Prefect server named by
PREFECT_API_URL and executes the runs that the schedule, the UI or `prefect deployment run` create,
one at a time. Stop it with SIGTERM or Ctrl-C; that pauses the schedule until it is served again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import EntrypointType
from pydantic import ValidationError

from medqa.yamlfile import load_yaml
from pipeline.flows import medqa_pipeline

DEFAULT_CRON = "0 2 * * *"


def _override(text: str) -> tuple[str, Any]:
    """KEY=VALUE with a YAML value, as in `dvc exp run -S train.epochs=5`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, load_yaml(value)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default is what a plain nightly deployment needs."""
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description="Serve the medqa pipeline (validate, tokenize, train, evaluate, register; each stage "
        "reproduced by DVC) as a Prefect deployment on a cron schedule. Needs a Prefect server: "
        "`prefect server start --host 127.0.0.1 --port 4200` and "
        "PREFECT_API_URL=http://127.0.0.1:4200/api. Runs until stopped (SIGTERM or Ctrl-C).",
    )
    ap.add_argument(
        "--cron",
        default=DEFAULT_CRON,
        help=f'cron schedule, five fields (default: "{DEFAULT_CRON}", nightly at 02:00)',
    )
    ap.add_argument(
        "--timezone", default="UTC", help="IANA time zone of the schedule (default: UTC)"
    )
    ap.add_argument("--name", default="nightly", help="deployment name (default: nightly)")
    ap.add_argument(
        "--project-dir",
        type=Path,
        default=Path.cwd(),
        help="the DVC project the runs reproduce (default: the current folder)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=_override,
        action="append",
        default=[],
        help="default params.yaml override for every run, e.g. --set train.epochs=5 (repeatable)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries of a stage that failed transiently, never for bad data or params (default: 2)",
    )
    ap.add_argument(
        "--retry-backoff",
        type=float,
        default=30.0,
        help="first retry delay in seconds, doubling after each retry (default: 30)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Validate the schedule, then serve until stopped."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        schedule = CronSchedule(cron=args.cron, timezone=args.timezone)
    except ValidationError as e:
        ap.error("; ".join(err["msg"] for err in e.errors()))
    parameters: dict[str, Any] = {
        "project_dir": str(args.project_dir.resolve()),
        "retries": args.retries,
        "retry_backoff_s": args.retry_backoff,
    }
    if args.overrides:
        parameters["overrides"] = dict(args.overrides)
    medqa_pipeline.serve(
        name=args.name,
        schedules=[schedule],
        parameters=parameters,
        limit=1,
        tags=["medqa"],
        description="validate → tokenize → train → evaluate → register, reproduced by DVC",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
