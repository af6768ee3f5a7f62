"""The champion gate against a real MLflow SQLite registry (versions without artifacts: the old
champion cannot be re-scored, so its recorded F1 counts only when it is from the same test set)."""

import math

import mlflow
import pytest
from mlflow import MlflowClient

from medqa.champion import current_champion, gate
from medqa.tracking import configure_tracking

pytestmark = pytest.mark.slow  # a real MLflow store and registered tiny models

ROWS = [{"id": "q1", "question": "q?", "context": "zinc", "answers": []}]
MD5 = "a" * 32


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(tmp_path)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def new_version(client, name, f1, tmp_path, test_md5=MD5):
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=str(tmp_path))
    client.set_model_version_tag(name, mv.version, "test_f1", str(f1))
    client.set_model_version_tag(name, mv.version, "test_md5", test_md5)
    return str(mv.version)


def span_decisions(client, version, f1, min_f1=0.3, rows=ROWS, test_md5=MD5):
    return gate(client, "m", version, f1, rows, test_md5, min_f1, batch_size=8)


def test_gate_promotes_first_version_over_threshold(client, tmp_path):
    v1 = new_version(client, "m", 0.5, tmp_path)
    decision = span_decisions(client, v1, 0.5)
    assert decision["promoted"] and "no champion yet" in decision["reason"]
    assert current_champion(client, "m") == (v1, 0.5)


def test_gate_refuses_below_threshold_and_below_champion(client, tmp_path):
    v1 = new_version(client, "m", 0.5, tmp_path)
    span_decisions(client, v1, 0.5)
    v2 = new_version(client, "m", 0.2, tmp_path)
    d2 = span_decisions(client, v2, 0.2)
    assert not d2["promoted"] and "below register.min_f1" in d2["reason"]
    v3 = new_version(client, "m", 0.45, tmp_path)
    d3 = span_decisions(client, v3, 0.45)
    assert not d3["promoted"] and f"champion v{v1}" in d3["reason"]
    assert (
        d3["previous_champion_f1"] == 0.5
        and "recorded F1 on the same test set" in d3["previous_champion_f1_from"]
    )
    assert current_champion(client, "m")[0] == v1
    v4 = new_version(client, "m", 0.5, tmp_path)  # a tie is "not below": promoted
    assert span_decisions(client, v4, 0.5)["promoted"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == v4


@pytest.mark.parametrize("f1", [math.nan, None, math.inf])
def test_a_score_that_is_not_a_number_never_passes(client, tmp_path, f1):
    """Issue "Trust the cache and the gate" 5: NaN compared false with everything and was promoted."""
    v1 = new_version(client, "m", 0.5, tmp_path)
    span_decisions(client, v1, 0.5)
    v2 = new_version(client, "m", "nan", tmp_path)
    d = span_decisions(client, v2, None if f1 is None or not math.isfinite(f1) else f1)
    assert not d["promoted"] and "not a number" in d["reason"]
    assert current_champion(client, "m")[0] == v1


def test_an_empty_test_split_never_passes(client, tmp_path):
    v1 = new_version(client, "m", 0.9, tmp_path)
    d = span_decisions(client, v1, 0.9, rows=[])
    assert not d["promoted"] and "test split is empty" in d["reason"]
    assert current_champion(client, "m") == (None, None)


def test_a_champion_from_another_test_set_is_not_compared_by_its_recorded_f1(client, tmp_path):
    v1 = new_version(client, "m", 0.2, tmp_path, test_md5="b" * 32)  # scored on other rows
    client.set_registered_model_alias("m", "champion", v1)
    v2 = new_version(client, "m", 0.5, tmp_path)
    d = span_decisions(client, v2, 0.5)
    assert (
        not d["promoted"]
        and "not from this test set" in d["reason"]
        and "medqa promote" in d["reason"]
    )
    assert current_champion(client, "m")[0] == v1


def test_the_current_champion_is_re_decided_not_re_promoted(client, tmp_path):
    v1 = new_version(client, "m", 0.5, tmp_path)
    span_decisions(client, v1, 0.5)
    again = span_decisions(client, v1, 0.5, min_f1=0.9)
    assert (
        again["promoted"]
        and "already @champion" in again["reason"]
        and "would not pass" in again["reason"]
    )
