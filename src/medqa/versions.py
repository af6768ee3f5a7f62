"""The registry's tools: list versions, fetch a version's model folder, promote one by hand, roll
the champion back. Used by ``medqa models/promote/rollback`` and ad-hoc evaluation, never by a stage,
so editing them reruns nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medqa.champion import (
    champion_history,
    current_champion,
    model_version,
    move_champion,
    registered_model,
)
from medqa.errors import ModelError, first_line


def promote(client: MlflowClient, name: str, version: str) -> dict[str, Any] | None:
    """Make ``version`` the champion by hand, bypassing the gate; None when it already is."""
    registered_model(client, name)
    mv = model_version(client, name, str(version))
    version, (current, current_f1) = str(mv.version), current_champion(client, name)
    if current == version:
        return None
    f1 = mv.tags.get("test_f1", "unknown")
    was = f"v{current} (test F1 {current_f1})" if current is not None else "no champion"
    return move_champion(
        client, name, version, "promote", f"manual promote: test F1 {f1}, replacing {was}"
    )


def _champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """The champions in force, oldest first, after replaying promotions (push) and rollbacks (pop)."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rollback":
            while stack and stack[-1] != event["version"]:
                stack.pop()
            if not stack:
                stack.append(event["version"])
        else:
            stack.append(event["version"])
    return stack


def rollback(client: MlflowClient, name: str) -> dict[str, Any]:
    """Move ``champion`` back to the champion before the current one; repeated calls go further back.

    Versions deleted since they were champion are skipped; a champion set outside medqa counts as the
    latest move.
    """
    current, _ = current_champion(client, name)
    if current is None:
        raise ModelError(f"{name} has no champion to roll back")
    stack = _champion_stack(champion_history(client, name))
    if not stack or stack[-1] != current:
        stack.append(current)
    existing = {str(mv.version) for mv in client.search_model_versions(f"name='{name}'")}
    for target in reversed(stack[:-1]):
        if target != current and target in existing:
            return move_champion(client, name, target, "rollback", f"rollback from v{current}")
    raise ModelError(f"{name}: no earlier champion to roll back to (history holds only v{current})")


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with its test figures and aliases."""
    aliases: dict[str, list[str]] = {}
    for alias, version in registered_model(
        client, name
    ).aliases.items():  # search results omit aliases
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "test_f1": float(mv.tags["test_f1"]) if "test_f1" in mv.tags else None,
                "test_em": float(mv.tags["test_em"]) if "test_em" in mv.tags else None,
                "created": datetime.fromtimestamp(
                    mv.creation_timestamp / 1000, timezone.utc
                ).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def model_card_text(client: MlflowClient, name: str, ref: str) -> str:
    """The model card the register stage wrote for version ``ref`` (a number or an alias)."""
    registered = registered_model(client, name)
    version = str(registered.aliases[ref]) if ref in registered.aliases else ref
    uri = model_version(client, name, version).tags.get("model_card")
    if not uri:
        raise ModelError(f"{name} v{version} has no model card (registered before cards were)")
    try:
        return str(mlflow.artifacts.load_text(uri))
    except MlflowException as e:
        raise ModelError(f"{uri}: cannot read the model card ({first_line(e)})") from None
