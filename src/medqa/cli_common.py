"""What the stage commands, the tool commands and ``medqa``'s entry point all use: the params file,
the MLflow store check, path options that default to params.yaml's ``paths`` group, and the one
``--precision`` option.

It is a source dep of every stage (``medqa.provenance``), so it holds only what both kinds of
command need: a helper used by tools alone belongs in their modules (``predict_command``,
``tool_commands``), where editing it reruns no stage. Library modules are imported inside the
functions, as in the commands, so that importing this module costs nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeAlias

from medqa.contracts import ENGINE_CHOICES, PRECISION_CHOICES

# what ArgumentParser.add_subparsers returns, which the command modules add their parsers to;
# argparse gives its type no public name
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# a --model that starts with one of these names the MLflow registry rather than a folder
REGISTRY_PREFIXES = ("models:/", "runs:/")


def project_params(args: argparse.Namespace) -> Any:
    """The project's params.yaml, found from any subfolder (or --params); the documented defaults
    when neither exists."""
    from medqa.config import DEFAULT_PARAMS, Params, find_project_root, load_params

    if args.params is None:
        root = find_project_root()
        path = root / DEFAULT_PARAMS if root else DEFAULT_PARAMS
        return load_params(path) if path.exists() else Params()
    return load_params(args.params)


def require_store() -> None:
    """Refuse to open the MLflow store outside a project when no tracking server is set: MLflow
    would create an empty store where the command was typed and report "no such model"."""
    from medqa.config import PROJECT_FILES, find_project_root
    from medqa.errors import ConfigError
    from medqa.tracking import user_tracking_uri

    if user_tracking_uri() is None and find_project_root() is None:
        raise ConfigError(
            f"{Path.cwd()} is not inside a medqa project (no folder at or above it holds "
            f"{' and '.join(PROJECT_FILES)}) and MLFLOW_TRACKING_URI is not set: run it in the "
            "project, or set MLFLOW_TRACKING_URI to the team's tracking server"
        )


def path_option(parser: argparse.ArgumentParser, flag: str, where: str, text: str = "") -> None:
    """A path option whose default comes from params.yaml's ``paths`` group, as dvc.yaml's does.

    ``where`` is a paths key, optionally followed by a file inside it ("reports/metrics.json");
    ``medqa.cli`` fills it in after parsing, once the (possibly --params) file is known.
    """
    defaults = dict(parser.get_default("path_defaults") or {})
    defaults[flag.lstrip("-").replace("-", "_")] = where
    parser.set_defaults(path_defaults=defaults)
    parser.add_argument(flag, type=Path, help=f"{text} (default: paths.{where})".lstrip())


def path_options(parser: argparse.ArgumentParser, *specs: tuple[str, ...]) -> None:
    """``path_option`` for each (flag, where) or (flag, where, help text)."""
    for spec in specs:
        path_option(parser, *spec)


def precision_option(parser: argparse.ArgumentParser, default: str, note: str = "") -> None:
    """The --precision of every command that loads a model (evaluate, predict, serve): one set of
    choices, the contracts' own, so a new precision needs no edit here; ``default`` says what
    leaving it out means for this command, ``note`` adds a caveat of its own."""
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help=f"arithmetic of the model (default: {default}; auto: bf16 where the hardware has it, "
        f"else fp32{note})",
    )


def engine_option(parser: argparse.ArgumentParser, default: str, note: str) -> None:
    """The --engine of predict and serve (medqa.engine): eager torch or torch.compile; auto is the
    engine recorded with the model; ``note`` says why ``default`` suits this command."""
    parser.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=default,
        help=f"what runs the forward pass: eager, compile (torch.compile: the same answers, faster "
        f"on a CPU without bf16 after a compile of a minute or two) or auto (the engine recorded "
        f"with the model) (default: {default}: {note})",
    )
