"""The flow's override check (medqa.config.check_overrides): the stages' own params loader, run on
params.yaml plus the overrides before anything runs or is written. Fast: no Prefect, no DVC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import ROOT
from medqa.config import check_overrides
from medqa.errors import ConfigError
from medqa.yamlfile import load_yaml


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_valid_overrides_give_the_params_a_run_would_get_and_write_nothing(params_file):
    before = params_file.read_bytes()
    params = check_overrides(
        {"train.learning_rate": 1e-4, "evaluate.decode.n_best": 5, "register.min_f1": 1},
        params_file,
    )
    assert params.train.learning_rate == 1e-4 and params.evaluate.decode.n_best == 5
    assert params.register.min_f1 == 1.0
    assert params_file.read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"register.min_f1": "high"}, "override: register.min_f1: expected float, got str 'high'"),
        ({"register.min_f1": 30}, "override: register.min_f1: must be in [0, 1]"),
        (
            {"train.lr": 0.1},
            "override: unknown key train.lr (known: attention_dropout, batch_size, ",
        ),
        ({"nosuch.key": 1}, "override: unknown key nosuch (known: "),
        ({"train": {"epochs": 1}}, "override train: is a group; override its keys one by one"),
        ({"train.epochs.x": 1}, "override train.epochs.x: epochs is not a group of params"),
    ],
)
def test_a_bad_override_is_refused_in_one_line_naming_the_key(params_file, overrides, reason):
    before = params_file.read_bytes()
    with pytest.raises(ConfigError) as caught:
        check_overrides(overrides, params_file)
    assert str(caught.value).startswith(reason) and "\n" not in str(caught.value)
    assert params_file.read_bytes() == before


def test_a_broken_params_file_is_named_before_the_overrides(params_file):
    params_file.write_text("train: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"params\.yaml: invalid YAML"):
        check_overrides({"train.epochs": 1}, params_file)


def test_every_value_kind_survives_the_trip_through_dvc_exp_run_set_param(tmp_path):
    """What the flow passes to `dvc exp run -S` is read back by DVC as the value that was checked."""
    from dvc.utils.hydra import apply_overrides
    from pipeline.dvc_experiments import dvc_value

    path = tmp_path / "params.yaml"
    values = {"s": "high", "n": "1", "b": True, "i": 3, "f": 2e-05, "l": [1, 2], "z": None}
    path.write_text(json.dumps({"g": dict.fromkeys(values, 0)}), encoding="utf-8")
    apply_overrides(str(path), [f"g.{k}={dvc_value(v)}" for k, v in values.items()])
    assert load_yaml(path.read_text(encoding="utf-8"))["g"] == values
