"""The validate stage: formats in, every bad row named, accounting always adds up, atomic outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest

from medqa.config import ValidateParams
from medqa.data import read_qa_records, split_by_context, validate_squad_records
from medqa.errors import DataError

CTX = "Faricimab blocks both VEGF-A and angiopoietin-2."
CTX2 = "Pegcetacoplan is injected monthly or every other month for geographic atrophy."
CTX3 = "Geographic atrophy is the late dry form of age-related macular degeneration."


def squad(qas, context=CTX, split=None):
    doc = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    if split:
        doc["split"] = split
    return doc


def qa(i, q="What does faricimab block?", text="VEGF-A and angiopoietin-2", start=None, context=CTX):
    if text is None:
        return {"id": i, "question": q, "is_impossible": True, "answers": []}
    return {"id": i, "question": q, "answers": [{"text": text, "answer_start": context.index(text) if start is None else start}]}


def write_splits(folder: Path, train, dev=None, test=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "dev.json").write_text(json.dumps(dev or squad([qa("d1", "When is pegcetacoplan given?", "monthly", context=CTX2)], CTX2)))
    (folder / "test.json").write_text(json.dumps(test or squad([qa("t1", "What kind of AMD is it?", "late dry form", context=CTX3)], CTX3)))
    return folder


def run(tmp_path, raw, on_invalid="fail"):
    params = ValidateParams(on_invalid=on_invalid)
    return validate_squad_records(raw, tmp_path / "validated", tmp_path / "rejected.jsonl",
                                  tmp_path / "validation.json", params)


def test_good_squad_folder_is_accepted_with_splits_from_file_names(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa("a1"), qa("a2", "Is it a gene therapy?", None)]))
    s = run(tmp_path, raw)
    assert s.rows_in == 4 and s.rejected == 0 and s.accepted == {"train": 2, "dev": 1, "test": 1}
    rows = [json.loads(line) for line in (tmp_path / "validated" / "train.jsonl").read_text().splitlines()]
    assert rows[1]["is_impossible"] is True and rows[1]["answers"] == []


def test_bad_span_fails_with_file_row_id_and_reason(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa("a1"), qa("bad", start=3)]))
    with pytest.raises(DataError) as err:
        run(tmp_path, raw)
    msg = str(err.value)
    assert "1 of 4 rows failed" in msg
    assert "train.json data[0].paragraphs[0].qas[1] id='bad': answer_span_matches_context" in msg
    assert not (tmp_path / "validated").exists(), "a failed run must not leave validated data behind"


def test_drop_mode_rejects_rows_and_accounts_for_every_row(tmp_path):
    train = squad([qa("a1"), qa("a1", "Another question?"), qa("x", "", "VEGF-A"),
                   {"id": "imp", "question": "Is it safe?", "is_impossible": True,
                    "answers": [{"text": "VEGF-A", "answer_start": CTX.index("VEGF-A")}]}])
    raw = write_splits(tmp_path / "raw", train)
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.rows_in == s.rejected + sum(s.accepted.values())
    rejected = {r["id"]: r["reasons"] for r in map(json.loads, (tmp_path / "rejected.jsonl").read_text().splitlines())}
    assert "id:unique_id" in rejected["a1"]
    assert "question:non_empty_text" in rejected["x"]
    assert "is_impossible_matches_answers" in rejected["imp"]
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["rows_in"] == report["accepted"] + report["rejected"]


def test_leakage_same_context_in_two_splits_is_caught(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa("a1")]), dev=squad([qa("d1", "Which two targets?")]))
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.failures_by_check.get("context_in_two_splits") == 1
    assert s.accepted["train"] == 1 and s.accepted["dev"] == 0


def test_flat_formats_jsonl_csv_parquet(tmp_path):
    rows = [{"id": "r1", "question": "What does faricimab block?", "context": CTX,
             "answer_text": "VEGF-A", "answer_start": CTX.index("VEGF-A")},
            {"id": "r2", "question": "Is it oral?", "context": CTX2, "answer_text": "", "answer_start": ""}]
    df = pd.DataFrame(rows)
    for name, write in (("d.jsonl", lambda p: df.to_json(p, orient="records", lines=True)),
                        ("d.csv", lambda p: df.to_csv(p, index=False)),
                        ("d.parquet", lambda p: df.astype(str).to_parquet(p))):
        path = tmp_path / name
        write(path)
        recs = read_qa_records(path)
        assert list(recs["id"]) == ["r1", "r2"], name
        assert recs.loc[0, "answers"] == [{"text": "VEGF-A", "answer_start": CTX.index("VEGF-A")}]
        assert recs.loc[1, "is_impossible"] == True  # noqa: E712 - numpy bool
        assert set(recs["split"]) <= {"train", "dev", "test"}


@pytest.mark.parametrize("content,expected", [
    ("{not json", r"invalid JSON at line 1 column 2"),
    ('{"data": 3}', "not SQuAD JSON"),
    ("", "empty file"),
])
def test_unreadable_files_get_one_clear_line(tmp_path, content, expected):
    f = tmp_path / "train.json"
    f.write_text(content)
    with pytest.raises(DataError, match=expected) as err:
        read_qa_records(f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_missing_path_and_missing_columns(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_qa_records(tmp_path / "nope")
    f = tmp_path / "x.csv"
    f.write_text("id,question\n1,q\n")
    with pytest.raises(DataError, match="missing column"):
        read_qa_records(f)


def test_wrong_encoding_is_named(tmp_path):
    f = tmp_path / "train.json"
    f.write_bytes('{"data": []} \xe9'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_qa_records(f)


def test_split_by_context_is_deterministic():
    assert split_by_context("abc") == split_by_context("abc")
    counts = pd.Series([split_by_context(f"ctx {i}") for i in range(2000)]).value_counts(normalize=True)
    assert 0.65 < counts["train"] < 0.75 and 0.1 < counts["test"] < 0.2
