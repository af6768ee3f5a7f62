"""The champion gate against a real MLflow SQLite registry."""

import mlflow
import pytest
from mlflow import MlflowClient

from medqa.registry import champion_f1, promote_if_better
from medqa.tracking import configure_tracking


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(tmp_path)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def new_version(client, name, f1, tmp_path):
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=str(tmp_path))
    client.set_model_version_tag(name, mv.version, "test_f1", str(f1))
    return str(mv.version)


def test_gate_promotes_first_version_over_threshold(client, tmp_path):
    v1 = new_version(client, "m", 0.5, tmp_path)
    decision = promote_if_better(client, "m", v1, 0.5, min_f1=0.3)
    assert decision["promoted"] and "no champion yet" in decision["reason"]
    assert champion_f1(client, "m") == (v1, 0.5)


def test_gate_refuses_below_threshold_and_below_champion(client, tmp_path):
    v1 = new_version(client, "m", 0.5, tmp_path)
    promote_if_better(client, "m", v1, 0.5, min_f1=0.3)
    v2 = new_version(client, "m", 0.2, tmp_path)
    d2 = promote_if_better(client, "m", v2, 0.2, min_f1=0.3)
    assert not d2["promoted"] and "below register.min_f1" in d2["reason"]
    v3 = new_version(client, "m", 0.45, tmp_path)
    d3 = promote_if_better(client, "m", v3, 0.45, min_f1=0.3)
    assert not d3["promoted"] and f"champion v{v1}" in d3["reason"]
    assert champion_f1(client, "m")[0] == v1
    v4 = new_version(client, "m", 0.5, tmp_path)  # a tie is "not below": promoted
    assert promote_if_better(client, "m", v4, 0.5, min_f1=0.3)["promoted"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == v4
