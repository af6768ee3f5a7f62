"""The ``medqa`` command: the entry point, its global options and the assembly of its parser.

The subcommands live in the command modules: ``stage_commands`` (validate, tokenize, train,
evaluate, register: what dvc.yaml runs), and the tools, ``predict_command`` (predict) and
``tool_commands`` (the registry commands promote, rollback and models, serve and doctor). This
one parses, configures logging, fills in the path defaults from the params file and runs the
command; errors a user can fix print one line (no traceback) and exit with status 2.

Everything here runs for every stage, so it is a source dep of every stage (``medqa.provenance``):
keep it to what all commands share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from medqa.cli_common import REGISTRY_PREFIXES, project_params, require_store
from medqa.contracts import USER_ERROR_EXIT, error_line, progress_bars_shown
from medqa.errors import MedqaError

DISCLAIMER = "Research use only; not medical advice."


def _opens_store_at_once(args: argparse.Namespace) -> bool:
    """Commands that reach the store inside library code (register, serve, evaluate of a registry
    URI), checked before they start; the other registry commands check in their own helpers, after
    their own arguments."""
    return args.command in ("register", "serve") or (
        args.command == "evaluate" and str(args.model).startswith(REGISTRY_PREFIXES)
    )


def _configure_logging(verbose: bool, quiet: bool) -> None:
    """The library logs progress and decisions through ``logging`` under ``medqa``; the command's
    results go to stdout. -v adds debug detail, -q keeps warnings only (also from transformers and
    MLflow). Progress bars follow ``progress_bars_shown``: a terminal's stderr, and not -q."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    log = logging.getLogger("medqa")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when MLflow is imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was
    if not progress_bars_shown():
        _library_bars_off()


# the libraries' own switches for their progress bars, read when each is first imported
_LIBRARY_BARS_OFF = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def _library_bars_off() -> None:
    """No progress bars from transformers (loading and writing weights), datasets (saving
    features), the hub or MLflow (artifact downloads): their environment switches, which a stage's
    child processes inherit, and for a library an in-process caller has imported already, its own
    function."""
    os.environ.update(_LIBRARY_BARS_OFF)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def _resolve_paths(args: argparse.Namespace) -> None:
    """Set every path option left out (``cli_common.path_option``) from the params file's paths
    group: only after parsing is it known which params file that is."""
    if not getattr(args, "path_defaults", None):
        return
    from medqa.config import find_project_root

    paths = project_params(args).paths
    # relative to the project root found from a subfolder, spelled relative to where we stand
    # (from the root itself: exactly the paths.* values, as dvc.yaml has them)
    root = find_project_root() if args.params is None else None
    for dest, where in args.path_defaults.items():
        if getattr(args, dest) is None:
            key, _, inside = where.partition("/")
            path = Path(getattr(paths, key), inside)
            setattr(args, dest, Path(os.path.relpath(root / path)) if root else path)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand has its own --help.

    The command modules are imported here, not at module level: ``medqa.provenance`` counts
    ``stage_commands`` per stage and the tool modules for no stage, so none may be reached through
    an import that counts for every stage.
    """
    from medqa import predict_command, stage_commands, tool_commands

    ap = argparse.ArgumentParser(
        prog="medqa", description=f"Clinical extractive QA pipeline for AMD. {DISCLAIMER}"
    )
    ap.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file (default: the project's params.yaml, found from any subfolder, else "
        "built-in defaults)",
    )
    loud = ap.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="also log debug detail (to stderr)"
    )
    loud.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only (to stderr)"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (stage_commands, predict_command, tool_commands):  # the order of --help
        commands.add_parsers(sub)
    return ap


def _store_error(e: Exception) -> str | None:
    """Why MLflow failed, in a line a user can act on, or None for anything else (a bug, which
    keeps its traceback). Without MLflow imported the exception cannot be MLflow's."""
    if "mlflow" not in sys.modules:
        return None
    from medqa.tracking import explain_store_error

    return explain_store_error(e)


def main(argv: list[str] | None = None) -> int:
    """Entry point: MedqaError, an OSError on a path (a stage's input not there yet, an output that
    cannot be written) and a store error MLflow explains become one line on stderr and exit
    status 2."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        if _opens_store_at_once(args):
            require_store()
        _resolve_paths(args)
        args.func(args)
    except MedqaError as e:
        message = str(e)
    except OSError as e:  # a path given or defaulted that cannot be read or written: the user's fix
        where = f"{e.filename}: " if e.filename else ""
        message = f"{where}{e.strerror or e}"
    except Exception as e:
        why = _store_error(e)
        if why is None:
            raise
        message = why
    else:
        return 0
    print(error_line(args.command, message), file=sys.stderr)
    return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
