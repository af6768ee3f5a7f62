"""The ``champion`` alias: who holds it, the gate a new version must pass to take it, and the
history of every move.

One gate, on the same rows: the candidate's test F1 (from the evaluate stage) must be a real number
on a non-empty test split, at least ``register.min_f1``, and not below the current champion scored
*now*, as it is served, on the very same test rows (``data/validated/test.jsonl``). A champion that
cannot be scored is compared by its recorded F1 only when it was measured on the same test set
(same content hash); otherwise the gate refuses and says so.

Every move of ``champion`` (the gate, ``medqa promote``, ``medqa rollback``) is appended to the
registered model's ``champion_history`` tag, a JSON list kept in the registry itself so that any
machine with the tracking URI sees the same history and rollback can go back more than one step.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medqa.errors import ModelError, first_line
from medqa.predictor import load_saved_model, score_saved_model
from medqa.scoring import summarize

HISTORY_TAG = "champion_history"


def current_champion(client: MlflowClient, name: str) -> tuple[str | None, float | None]:
    """(version as a string, recorded test F1) of the current champion, or (None, None).

    The SQLite store hands versions back as ints, the register stage as strings: strings throughout.
    """
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    f1 = mv.tags.get("test_f1")
    return str(mv.version), float(f1) if f1 is not None else None


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (NaN, infinity, missing, text)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def tag_value(x: float | None) -> str:
    """A figure as a version tag: six decimals, or "nan" (which reads back as not a number)."""
    return f"{x:.6f}" if x is not None else "nan"


def score_champion(
    client: MlflowClient, name: str, version: str, rows: Sequence[dict[str, Any]], batch_size: int
) -> tuple[float | None, str | None]:
    """Test F1 of ``name`` v``version`` on ``rows``, scored as it is served (its own tokenizer, windows,
    decoding and threshold); (None, why) when it cannot be fetched, loaded or scored."""
    uri = f"models:/{name}/{version}"
    try:
        with tempfile.TemporaryDirectory(prefix="medqa-champion-") as tmp:
            folder, _, _ = fetch_registered_model(uri, Path(tmp))
            saved = load_saved_model(folder)
            decisions, _ = score_saved_model(
                saved, rows, [f"test row {i + 1}" for i in range(len(rows))], batch_size
            )
    except Exception as e:  # noqa: BLE001 - whatever breaks the old champion is a reason, not a crash
        return None, f"{uri} could not be scored: {first_line(e)}"
    return finite_or_none(
        summarize([d.answer(saved.threshold) for d in decisions], rows)["f1"]
    ), None


def _champion_f1(
    client: MlflowClient,
    name: str,
    version: str,
    rows: Sequence[dict[str, Any]],
    test_md5: str,
    batch_size: int,
) -> tuple[float | None, str]:
    """(F1, where it comes from) of champion ``version`` on ``rows``: scored now as it is served, or
    else its recorded F1 when that was measured on the same test set; F1 None (and why) otherwise."""
    champ_f1, why = score_champion(client, name, version, rows, batch_size)
    if champ_f1 is not None:
        return champ_f1, "scored now on the same test rows"
    champ = client.get_model_version(name, version)
    recorded = finite_or_none(champ.tags.get("test_f1"))
    if champ.tags.get("test_md5") != test_md5 or recorded is None:
        return None, f"{why}, and its recorded F1 is not from this test set"
    return recorded, f"its recorded F1 on the same test set ({why})"


def gate(
    client: MlflowClient,
    name: str,
    version: str,
    f1: float | None,
    rows: Sequence[dict[str, Any]],
    test_md5: str,
    min_f1: float,
    batch_size: int,
) -> dict[str, Any]:
    """Decide whether ``version`` (test F1 ``f1`` on ``rows``) becomes ``champion``; move it if so.

    Returns the decision with its reason and what it was compared against.
    """
    prev_version, prev_recorded = current_champion(client, name)
    decision: dict[str, Any] = {
        "previous_champion": prev_version,
        "previous_champion_f1": None,
        "previous_champion_f1_from": None,
    }

    def refuse(reason: str) -> dict[str, Any]:
        return decision | {"promoted": False, "reason": reason}

    if prev_version == version:
        fails = (
            ""
            if f1 is not None and f1 >= min_f1
            else f"; it would not pass the gate now (test F1 {f1} vs register.min_f1 {min_f1}): "
            "`medqa rollback` moves the alias back"
        )
        reason = f"v{version} is already @champion; alias unchanged{fails}"
        return decision | {
            "promoted": True,
            "previous_champion_f1": prev_recorded,
            "reason": reason,
        }
    if not rows:
        return refuse("the test split is empty: nothing to compare on")
    if f1 is None:
        return refuse("test F1 is not a number")
    if f1 < min_f1:
        return refuse(f"test F1 {f1:.4f} is below register.min_f1 {min_f1:.4f}")
    if prev_version is not None:
        champ_f1, source = _champion_f1(client, name, prev_version, rows, test_md5, batch_size)
        if champ_f1 is None:
            return refuse(f"{source}; compare by hand and use `medqa promote {version}`")
        decision |= {"previous_champion_f1": champ_f1, "previous_champion_f1_from": source}
        if f1 < champ_f1:
            return refuse(
                f"test F1 {f1:.4f} is below champion v{prev_version}'s {champ_f1:.4f} ({source})"
            )
        reason = (
            f"test F1 {f1:.4f} >= min_f1 {min_f1:.4f} and >= champion v{prev_version}'s "
            f"{champ_f1:.4f} ({source})"
        )
    else:
        reason = f"test F1 {f1:.4f} >= min_f1 {min_f1:.4f}; no champion yet"
    move_champion(client, name, version, "gate", reason)
    return decision | {"promoted": True, "reason": reason}


def champion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of ``champion``, oldest first."""
    raw = registered_model(client, name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def move_champion(
    client: MlflowClient, name: str, version: str, action: str, reason: str
) -> dict[str, Any]:
    """Point ``champion`` at ``version`` and append the move to the history; return the event.

    ``action`` is gate, promote or rollback; the version also gets a ``previous_champion`` tag.
    """
    previous, _ = current_champion(client, name)
    history = champion_history(client, name)
    client.set_registered_model_alias(name, "champion", version)
    event = {
        "version": str(version),
        "previous": previous,
        "action": action,
        "reason": reason,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, event]))
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, version, "previous_champion", previous)
    return event


def registered_model(client: MlflowClient, name: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise ModelError(
            f"no registered model named {name!r} (run the register stage first)"
        ) from None


def model_version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise ModelError(f"{name} has no version {version!r}") from None


MODEL_DIR_ARTIFACT = (
    "artifacts/model_dir"  # where log_model puts the checkpoint (weights, tokenizer, decoding.json)
)


def fetch_registered_model(uri: str, dst: Path) -> tuple[Path, str, str]:
    """Download the model folder of ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` into ``dst``.

    Returns (folder, name, version). Only the checkpoint folder is fetched, not the pyfunc's code
    copy: callers load it with the safe loader and its own decoding.json, exactly as it is served.
    Call ``configure_tracking`` first.
    """
    rest = uri.removeprefix("models:/")
    name, sep, ref = rest.partition("@") if "@" in rest else rest.rpartition("/")
    if rest == uri or not name or not ref:
        raise ModelError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    client = MlflowClient()
    registered = registered_model(client, name)
    if sep == "@":
        if ref not in registered.aliases:
            known = ", ".join(sorted(registered.aliases)) or "none"
            raise ModelError(f"{uri}: {name} has no alias {ref!r} (aliases: {known})")
        version = str(registered.aliases[ref])
    else:
        version = str(model_version(client, name, ref).version)
    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}/{MODEL_DIR_ARTIFACT}", dst_path=str(dst)
            )
        )
    except MlflowException as e:
        raise ModelError(
            f"{uri}: cannot download v{version} ({e.message.splitlines()[0]})"
        ) from None
    if not (folder / "config.json").exists():
        raise ModelError(
            f"{uri}: v{version} has no {MODEL_DIR_ARTIFACT}/config.json (not a medqa model?)"
        )
    return folder, name, version
