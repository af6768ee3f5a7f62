"""What a new user's own files meet (issue 30, item 6): a CSV header in any case, a missing column
named beside the columns found, one numbering rule for records without an id in CSV and JSONL,
and `medqa evaluate --model models:/... --split FILE` naming what it read, never a deleted folder."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from helpers import DECODING, inside_project, one_version_project
from medqa.cli import main
from medqa.errors import DataError
from medqa.predict_command import read_records

CONTEXT = "Zinc 80 mg and copper 2 mg are in the AREDS2 formula."


def _records(text: str, fmt: str) -> list[tuple[int, int, dict]]:
    return list(read_records(io.StringIO(text), fmt))


def test_csv_columns_match_in_any_case() -> None:
    rows = _records(f'ID,Question, Context \nq1,How much zinc?,"{CONTEXT}"\n', "csv")
    assert rows == [(1, 2, {"id": "q1", "question": "How much zinc?", "context": CONTEXT})]


@pytest.mark.parametrize(
    "header,message",
    [
        (
            "ID,Query,Context",
            "line 1: no 'question' column; the header has 'ID', 'Query', 'Context'",
        ),
        ("question,Question,context", "line 1: 'question' is named twice"),
    ],
)
def test_a_csv_header_without_the_columns_is_refused_naming_them(header: str, message: str) -> None:
    with pytest.raises(DataError) as refused:
        _records(f"{header}\na,b,c\n", "csv")
    assert str(refused.value).startswith(message)


def test_records_are_numbered_alike_in_csv_and_jsonl() -> None:
    """The same questions get the same numbers in either format: a CSV header and blank lines are
    not records; the line (for errors) is where the record is in the file."""
    csv_text = f'question,context\nHow much zinc?,"{CONTEXT}"\n\nHow much copper?,"{CONTEXT}"\n'
    jsonl_text = "".join(
        json.dumps({"question": q, "context": CONTEXT}) + "\n" + extra
        for q, extra in (("How much zinc?", "\n"), ("How much copper?", ""))
    )
    from_csv, from_jsonl = _records(csv_text, "csv"), _records(jsonl_text, "jsonl")
    assert [n for n, _, _ in from_csv] == [n for n, _, _ in from_jsonl] == [1, 2]
    assert [line for _, line, _ in from_csv] == [2, 4]
    assert [line for _, line, _ in from_jsonl] == [1, 3]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("inputs") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "decoding.json").write_text(json.dumps(DECODING))
    return folder


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_predict_ids_are_record_numbers_in_either_format(
    model_folder: Path, tmp_path: Path, capsys, name: str
) -> None:
    questions = tmp_path / name
    if name.endswith(".csv"):
        questions.write_text(f'ID,Question,Context\n,What?,"{CONTEXT}"\nz9,Which?,"{CONTEXT}"\n')
    else:
        questions.write_text(
            json.dumps({"question": "What?", "context": CONTEXT})
            + "\n"
            + json.dumps({"id": "z9", "question": "Which?", "context": CONTEXT})
            + "\n"
        )
    argv = ["predict", "--model", str(model_folder), "--input", str(questions)]
    assert main(argv) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [1, "z9"]


def test_a_jsonl_record_missing_a_field_shows_the_fields_it_has(
    model_folder: Path, tmp_path: Path, capsys
) -> None:
    questions = tmp_path / "in.jsonl"
    questions.write_text(json.dumps({"Question": "What?", "Context": CONTEXT}) + "\n")
    assert main(["predict", "--model", str(model_folder), "--input", str(questions)]) == 2
    err = capsys.readouterr().err
    assert "line 1: missing field 'question' (its fields: 'Question', 'Context')" in err


@pytest.mark.slow
def test_adhoc_evaluate_of_a_registered_model_names_no_deleted_folder(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    start = CONTEXT.index("80 mg")
    row = {"id": "t1", "question": "How much zinc?", "context": CONTEXT, "answers": []}
    data = proj / "my_questions.jsonl"
    data.write_text(
        json.dumps(
            {
                "id": "m1",
                "question": "How much zinc?",
                "context": CONTEXT,
                "answer_text": "80 mg",
                "answer_start": start,
            }
        )
        + "\n"
    )
    with inside_project(proj):
        one_version_project(proj, tiny_model_dir, "tiny-qa", DECODING, row)
        capsys.readouterr()
        argv = ["evaluate", "--model", "models:/tiny-qa@champion", "--split", data.name]
        assert main([*argv, "--reports", "out"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("my_questions.jsonl: EM "), out
    assert "medqa-eval-" not in out and "models:/tiny-qa/1 (its decoding.json)" in out, out
    assert "medqa-eval-" not in (proj / "out" / "metrics.json").read_text()
