"""The markdown a flow run leaves as its Prefect artifact: what each stage did, test EM/F1 against the
baselines, the registration.

The two reports are recognised by their keys among dvc.yaml's JSON outputs, wherever dvc.yaml puts
them, and read from the workspace or, for an override run, from its DVC experiment's commit (the
workspace is not where an experiment's results are).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dvc.api
from dvc.exceptions import DvcException

from medqa.reports import registration_lines, score_lines
from pipeline.dvc_runner import FlowStage

_METRICS_KEYS = frozenset({"exact", "f1", "baselines_f1"})
_REGISTRATION_KEYS = frozenset({"model_name", "version", "promoted"})


def _find_report(
    stages: list[FlowStage], read: Callable[[str], str], keys: frozenset[str]
) -> tuple[str, dict[str, Any]] | None:
    """The first JSON output of dvc.yaml holding ``keys``, and the stage that writes it."""
    for stage in stages:
        for out in stage.outs:
            if not out.endswith(".json"):
                continue
            try:
                doc = json.loads(read(out))
            except (OSError, ValueError, DvcException):
                continue
            if isinstance(doc, dict) and keys <= doc.keys():
                return stage.name, doc
    return None


def results_markdown(
    stages: list[FlowStage],
    statuses: dict[str, str],
    overrides: dict[str, Any] | None,
    read: Callable[[str], str],
    experiment: tuple[str, str] | None,
) -> str:
    """The run's artifact: what each stage did, test EM/F1 against the baselines, the registration."""
    lines = ["## medqa pipeline", "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {status} |" for stage, status in statuses.items()]
    if overrides:
        lines += ["", "Param overrides: " + ", ".join(f"`{k}={v!r}`" for k, v in overrides.items())]
    if experiment:
        name, rev = experiment
        lines += [
            "",
            f"DVC experiment `{name}` (commit `{rev[:7]}`); the workspace is unchanged. "
            f"Compare with `dvc exp show`, take it over with `dvc exp apply {name}`.",
        ]
    if any(status in ("failed", "not run") for status in statuses.values()):
        return "\n".join([*lines, "", "No results: the pipeline did not finish."])
    found_metrics = _find_report(stages, read, _METRICS_KEYS)
    found_registration = _find_report(stages, read, _REGISTRATION_KEYS)
    if found_metrics:  # the same lines `medqa evaluate` and `make pipeline` print
        lines += ["", *(f"- {line.strip()}" for line in score_lines(found_metrics[1]))]
    if found_registration:
        stage, registration = found_registration
        when = f" (an earlier run's: {stage} was cached)" if statuses.get(stage) == "cached" else ""
        lines += ["", *(f"- {line}{when}" for line in registration_lines(registration)[1:])]
    return "\n".join(lines)


def output_reader(root: Path, experiment: tuple[str, str] | None) -> Callable[[str], str]:
    """How the artifact reads an output: from the workspace, or from the experiment's commit."""
    if experiment is None:
        return lambda path: (root / path).read_text(encoding="utf-8")
    rev = experiment[1]
    return lambda path: str(dvc.api.read(path, repo=str(root), rev=rev))
