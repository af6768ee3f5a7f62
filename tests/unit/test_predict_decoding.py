"""`medqa predict --decoding`: a training checkpoint (no decoding.json of its own) answers with the
evaluate stage's settings, as the error message for a bare checkpoint says to do; and a model's
recorded windows are checked against its positions when it is loaded for predict or serve."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import DECODING
from medqa.cli import main
from medqa.errors import ConfigError
from medqa.predictor import load_saved_model

CONTEXT = "The AREDS2 formula contains zinc 80 mg and copper 2 mg."


def test_a_checkpoint_without_decoding_json_takes_one_from_the_command_line(
    tmp_path, tiny_model_dir, capsys
):
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(tiny_model_dir, ckpt)
    args = [
        "predict",
        "--model",
        str(ckpt),
        "--json",
        "--question",
        "How much zinc?",
        "--context",
        CONTEXT,
    ]
    assert main(args) == 2
    assert "--decoding" in capsys.readouterr().err
    (tmp_path / "decoding.json").write_text(json.dumps(DECODING))
    assert main([*args, "--decoding", str(tmp_path / "decoding.json")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not result["abstained"] and CONTEXT[result["start"] : result["end"]] == result["answer"]
    assert (
        main(
            [
                "predict",
                "--model",
                "models:/x@champion",
                "--decoding",
                "d.json",
                "--question",
                "q",
                "--context",
                "c",
            ]
        )
        == 2
    )
    assert "--decoding is for a model folder" in capsys.readouterr().err


def test_windows_past_the_models_positions_are_refused_on_load_with_both_numbers(
    tmp_path, tiny_model_dir, capsys
):
    """A model whose recorded max_seq_length is longer than its positions (trained on contexts short
    enough never to fill a window) would answer short contexts and crash with an index error on the
    first long one; loading it must refuse instead, naming the settings file and both numbers."""
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(tiny_model_dir, ckpt)
    (ckpt / "decoding.json").write_text(json.dumps(DECODING | {"max_seq_length": 1024}))
    with pytest.raises(ConfigError) as err:
        load_saved_model(ckpt)
    message = str(err.value)
    assert message.startswith(f"{ckpt / 'decoding.json'}: max_seq_length 1024 is longer than")
    assert "512 tokens (max_position_embeddings 512)" in message and "\n" not in message
    args = ["predict", "--model", str(ckpt), "--question", "How much zinc?", "--context", CONTEXT]
    assert main(args) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "1024" in err_lines[0] and "512 tokens" in err_lines[0]
