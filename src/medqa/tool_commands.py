"""The tool commands other than predict (``predict_command``): the registry commands (``models``,
``promote``, ``rollback``), ``serve`` and ``doctor``, and their parsers.

No stage runs these commands, so this module is a source dep of no stage (``medqa.provenance``
explains why that is honest): editing serve's help text reruns nothing. Keep it that way: its
module level imports only the shared helpers, and every library module is imported inside the
command that uses it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from medqa.cli_common import (
    REGISTRY_PREFIXES,
    Subparsers,
    engine_option,
    precision_option,
    project_params,
    require_store,
)

NAME_HELP = "registered model name (default: register.model_name from params.yaml)"


def _registry(args: argparse.Namespace) -> tuple[Any, str]:
    """An MlflowClient on the project's registry and the model name (--name or register.model_name)."""
    from mlflow import MlflowClient

    from medqa.tracking import configure_tracking

    require_store()
    configure_tracking()
    return MlflowClient(), args.name or project_params(args).register.model_name


def _print_move(name: str, event: dict[str, Any]) -> None:
    """One line per move of @champion, from and to, with the reason recorded in its history."""
    was = f"v{event['previous']}" if event["previous"] is not None else "none"
    print(f"{name}@champion: {was} -> v{event['version']} ({event['action']}: {event['reason']})")


def cmd_promote(args: argparse.Namespace) -> None:
    """Move @champion by hand; promoting the champion itself changes (and records) nothing."""
    from medqa.versions import promote

    client, name = _registry(args)
    event = promote(client, name, args.version)
    if event is None:
        print(f"{name}@champion is already v{args.version}; nothing changed")
    else:
        _print_move(name, event)


def cmd_rollback(args: argparse.Namespace) -> None:
    """Undo the last move of @champion."""
    from medqa.versions import rollback

    client, name = _registry(args)
    _print_move(name, rollback(client, name))


def cmd_models(args: argparse.Namespace) -> None:
    """The registered versions as a table for people, or as JSON for scripts."""
    from medqa.versions import list_versions

    client, name = _registry(args)
    if args.card:
        from medqa.versions import model_card_text

        print(model_card_text(client, name, args.card), end="")
        return
    rows = list_versions(client, name)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{name}")
    print(f"{'version':>7}  {'test_f1':>7}  {'test_em':>7}  {'created (UTC)':<25}  aliases")
    for r in rows:
        f1 = f"{r['test_f1']:.4f}" if r["test_f1"] is not None else "-"
        em = f"{r['test_em']:.4f}" if r["test_em"] is not None else "-"
        print(f"{r['version']:>7}  {f1:>7}  {em:>7}  {r['created']:<25}  {', '.join(r['aliases'])}")


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve until stopped; the request limits are checked before the model loads."""
    from medqa.errors import ConfigError
    from medqa.server import serve
    from medqa.tracking import configure_tracking

    p = project_params(args)
    max_records = p.serve.max_records if args.max_records is None else args.max_records
    max_chars = p.serve.max_chars if args.max_chars is None else args.max_chars
    if max_records < 1 or max_chars < 1:
        raise ConfigError("--max-records and --max-chars must be at least 1")
    model = args.model or f"models:/{args.name or p.register.model_name}@champion"
    if model.startswith(REGISTRY_PREFIXES):  # a pyfunc folder needs no registry
        configure_tracking()
    serve(model, args.host, args.port, args.precision, max_records, max_chars, args.engine)


def cmd_doctor(args: argparse.Namespace) -> None:
    """The host's facts, then a warning per problem found (or that none was)."""
    from medqa.doctor import doctor_report

    facts, warnings = doctor_report()
    print("\n".join(facts))
    for w in warnings:
        print(f"warning: {w}")
    if not warnings:
        print("no problems found")


# --- parsers ---------------------------------------------------------------------------------------


def _add_registry_commands(sub: Subparsers) -> None:
    """promote, rollback and models: the champion alias moved by hand, and the versions listed."""
    s = sub.add_parser(
        "promote",
        help="move @champion to a version by hand (bypasses the gate; recorded)",
        description="Point the champion alias at VERSION and append the move to the registered "
        "model's champion_history tag, so that rollback can undo it.",
    )
    s.add_argument("version", help="the version number to promote")
    s.add_argument("--name", help=NAME_HELP)
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser(
        "rollback",
        help="move @champion back to the previous champion (repeatable)",
        description="Move the champion alias back one step in the champion history; run it again "
        "to go further back. Deleted versions are skipped.",
    )
    s.add_argument("--name", help=NAME_HELP)
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("models", help="list registered versions with test F1 and aliases")
    s.add_argument("--name", help=NAME_HELP)
    s.add_argument("--json", action="store_true", help="print the list as JSON")
    s.add_argument(
        "--card",
        metavar="VERSION",
        help="print the model card of a version instead: a number or an alias (champion)",
    )
    s.set_defaults(func=cmd_models)


def _add_serve(sub: Subparsers) -> None:
    """serve: what to serve, where, and the per-request limits."""
    s = sub.add_parser(
        "serve",
        help="serve a registered model over REST (MLflow's scoring protocol, one process)",
        description="Serve a registered version of the project's registry in this process. "
        'POST /invocations with {"dataframe_records": [{"question": ..., '
        '"context": ...}]} (any JSON format of `mlflow models serve`); GET /ping for health. '
        "Bad records get HTTP 400; a request over --max-records or --max-chars gets 413. "
        "SIGTERM or Ctrl-C stops it, a running request included, within one batch.",
    )
    s.add_argument(
        "--model",
        help="models:/ URI or a saved pyfunc folder (default: models:/<name>@champion)",
    )
    s.add_argument("--name", help=NAME_HELP)
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    precision_option(s, "the one its test F1 was measured at")
    engine_option(s, "auto", "a server runs long enough to repay compiling at start-up")
    s.add_argument(
        "--max-records",
        type=int,
        help="records per request; more get HTTP 413 (default: serve.max_records)",
    )
    s.add_argument(
        "--max-chars",
        type=int,
        help="characters of questions and contexts per request; more get HTTP 413 "
        "(default: serve.max_chars)",
    )
    s.set_defaults(func=cmd_serve)


def cmd_evaluate_adhoc(args: argparse.Namespace) -> None:
    """`medqa evaluate --model/--split`: any model on any data file, scored as it is served, the
    file checked and repaired by the validate stage's policy."""
    from medqa.adhoc_eval import default_reports_dir, evaluate_model, split_label
    from medqa.stage_commands import print_scores

    p = project_params(args)
    model, split = args.model or p.paths.checkpoint, args.split or "test"
    reports = args.reports or default_reports_dir(model, split)
    r = evaluate_model(
        model, split, args.validated, reports, p.validate, p.evaluate, args.decoding, args.precision
    )
    print_scores(split_label(split), r)
    print(f"precision {r['precision']} ({r['precision_reason']})")
    print(
        f"null threshold {r['null_threshold']:.4f} from {r['threshold_from']}; reports in {reports}"
    )


def add_parsers(sub: Subparsers) -> None:
    """Register these tool subcommands on ``medqa``'s subparsers, after predict, in --help order,
    and hand `medqa evaluate` its ad-hoc mode (the stage's parser is registered first)."""
    sub.choices["evaluate"].set_defaults(adhoc=cmd_evaluate_adhoc)
    _add_registry_commands(sub)
    _add_serve(sub)
    s = sub.add_parser(
        "doctor", help="show the torch build, backend (rocm/cuda/mps/cpu) and device"
    )
    s.set_defaults(func=cmd_doctor)
