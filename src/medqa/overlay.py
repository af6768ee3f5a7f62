"""Params overlays: a YAML file holding only the params a recipe changes (recipes/paper.yaml), turned
into the dotted overrides `dvc exp run -S` takes.

A recipe kept as a file is reviewed, diffed and tested like params.yaml itself; the Makefile only
asks this module for the flags. ``python -m medqa.overlay FILE`` prints them, one ``-S key=value``
per override, after checking them against params.yaml as every stage would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from medqa.config import DEFAULT_PARAMS, check_overrides
from medqa.contracts import USER_ERROR_EXIT, error_line
from medqa.errors import ConfigError
from medqa.yamlfile import load_yaml


def overlay_overrides(path: Path) -> dict[str, Any]:
    """The overlay's leaf keys as dotted overrides (``{"train.batch_size": 32}``)."""
    try:
        raw = load_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params groups")
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(raw, "")
    return flat


def dvc_set_flags(overrides: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments for `dvc exp run`; values in YAML's flow form (null, 2e-05)."""
    return [f"-S {key}={json.dumps(value)}" for key, value in overrides.items()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m medqa.overlay OVERLAY.yaml", file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        overrides = overlay_overrides(Path(args[0]))
        check_overrides(overrides, DEFAULT_PARAMS)
    except ConfigError as e:
        print(error_line("overlay", str(e)), file=sys.stderr)
        return USER_ERROR_EXIT
    print(" ".join(dvc_set_flags(overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
