"""`medqa predict --decoding`: a training checkpoint (no decoding.json of its own) answers with the
evaluate stage's settings, as the error message for a bare checkpoint says to do."""

from __future__ import annotations

import json
import shutil

from medqa.cli import main

DECODING = {
    "n_best": 20,
    "max_answer_length": 30,
    "null_threshold": -1e9,
    "max_seq_length": 128,
    "doc_stride": 48,
}
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
