"""Lossless repairs in the validate stage (validate.repair, on by default): edge whitespace stripped,
near-miss answer starts moved, duplicate questions merged; each recorded in repairs.jsonl and counted,
so that rows_in == accepted + repaired + rejected. What cannot be repaired without guessing is rejected
exactly as with ``repair: false``.
"""

import json

import pytest

from helpers import DATA, make_tiny_project, project_env
from medqa.config import ValidateParams
from medqa.errors import DataError
from medqa.fileio import read_jsonl
from medqa.validate import validate_eval_file, validate_records

FIXTURE = DATA / "amd_repairs"  # SQuAD v2 train/dev/test with repairable faults
P1 = (
    "Age-related macular degeneration (AMD) affects the macula, the central part of the retina. "
    "It blurs central vision, while peripheral vision is usually preserved. AMD is a leading cause "
    "of severe vision loss in older adults."
)
P2 = "Dry AMD and wet AMD differ in how fast vision is lost."
DEV = "Geographic atrophy is the advanced form of dry AMD."
TEST = "Smoking is the strongest modifiable risk factor for AMD."


def validate(tmp_path, raw, **params):
    return validate_records(
        raw,
        tmp_path / "validated",
        tmp_path / "rejected.jsonl",
        tmp_path / "validation.json",
        ValidateParams(**params),
    )


def outputs(tmp_path):
    """(written rows by id, [(id, reasons)] of the rejected rows, repair records, validation.json)."""
    written = {
        r["id"]: r
        for split in ("train", "dev", "test")
        for r in read_jsonl(tmp_path / "validated" / f"{split}.jsonl")
    }
    rejected = [(r["id"], r["reasons"]) for r in read_jsonl(tmp_path / "rejected.jsonl")]
    return (
        written,
        rejected,
        read_jsonl(tmp_path / "repairs.jsonl"),
        json.loads((tmp_path / "validation.json").read_text()),
    )


def assert_accounted(s, report, written, repairs):
    assert s.rows_in == sum(s.accepted.values()) + sum(s.repaired.values()) + s.rejected
    assert report["rows_in"] == report["accepted"] + report["repaired"] + report["rejected"]
    assert len(written) == sum(report["written_by_split"].values())
    assert len(written) == report["accepted"] + report["repaired"] - report["merged"]
    assert sum(report["repairs_by_kind"].values()) == len(repairs)
    for row in written.values():  # every answer written is an exact span of its context
        for a in row["answers"]:
            start = a["answer_start"]
            assert row["context"][start : start + len(a["text"])] == a["text"], row["id"]


def test_fixture_with_default_params_is_repaired_whole_and_every_row_accounted_for(tmp_path):
    s = validate(tmp_path, FIXTURE)  # default params: on_invalid fail, repair on
    written, rejected, repairs, report = outputs(tmp_path)
    assert (s.rows_in, s.rejected, rejected) == (15, 0, [])
    assert report["accepted"] == 6 and report["repaired"] == 9 and report["merged"] == 2
    assert report["written_by_split"] == {"train": 8, "dev": 3, "test": 2}
    assert report["repairs_by_kind"] == {
        "strip_answer_whitespace": 4,
        "shift_answer_start": 3,
        "merge_duplicate_question": 3,
    }
    assert_accounted(s, report, written, repairs)
    kinds = {}
    for r in repairs:
        kinds.setdefault(r["id"], []).append(r["what"])
    assert kinds == {
        "ws-vision": ["strip_answer_whitespace"],
        "off-by-one": ["shift_answer_start"],
        "ws-lead": ["strip_answer_whitespace"],
        "ws-and-off": ["shift_answer_start", "strip_answer_whitespace"],
        "dev-off": ["shift_answer_start"],
        "test-ws": ["strip_answer_whitespace"],
        "dup-who-1": ["merge_duplicate_question"],
        "dup-who-2": ["merge_duplicate_question"],
        "dup-drug-2": ["merge_duplicate_question"],
    }
    assert all(r["source"].endswith(".json") and r["row"].startswith("data[") for r in repairs)
    assert written["ws-and-off"]["answers"] == [
        {"text": "intravitreal injections", "answer_start": 118}
    ]
    assert written["off-by-one"]["answers"] == [{"text": "peripheral vision", "answer_start": 122}]
    # duplicates: the first row stays, with every distinct gold answer; an exact duplicate adds nothing
    assert "dup-who-2" not in written and "dup-drug-2" not in written
    assert [a["text"] for a in written["dup-who-1"]["answers"]] == [
        "older adults",
        "in older adults",
    ]
    assert written["dup-drug-1"]["answers"] == [{"text": "ranibizumab", "answer_start": 169}]
    merged = next(r for r in repairs if r["id"] == "dup-drug-2")
    assert merged["after"]["merged_into"]["id"] == "dup-drug-1"


def test_repair_false_is_the_strict_validator(tmp_path):
    with pytest.raises(DataError, match=r"^7 of 15 rows failed validation:"):
        validate(tmp_path, FIXTURE, repair=False)
    s = validate(tmp_path, FIXTURE, repair=False, on_invalid="drop")
    written, rejected, repairs, report = outputs(tmp_path)
    assert repairs == [] and report["repaired"] == 0 and report["merged"] == 0 and s.rejected == 7
    assert rejected == [
        ("dev-off", ["answer_span_matches_context"]),
        ("test-ws", ["answer_has_edge_whitespace", "answer_span_matches_context"]),
        ("ws-vision", ["answer_has_edge_whitespace", "answer_span_matches_context"]),
        ("off-by-one", ["answer_span_matches_context"]),
        ("ws-lead", ["answer_has_edge_whitespace"]),
        ("ws-and-off", ["answer_has_edge_whitespace", "answer_span_matches_context"]),
        ("dup-drug-2", ["duplicate_question_on_context"]),
    ]
    assert_accounted(s, report, written, repairs)


def test_an_evaluation_file_is_held_to_the_same_policy(tmp_path):
    """validate_eval_file (``medqa evaluate --split FILE``) repairs a file as the validate stage does
    (the same repairs, the same rows out); with repair off it refuses it as the checks alone do."""
    path = FIXTURE / "train.json"
    data = validate_eval_file(path, ValidateParams())
    validate(tmp_path, FIXTURE)
    _, _, repairs, _ = outputs(tmp_path)
    assert data.repairs == [r for r in repairs if r["source"] == str(path)]
    assert len(data.repairs) == 8  # the fixture's 10 but dev-off's and test-ws's
    assert data.rows == read_jsonl(tmp_path / "validated" / "train.jsonl")
    assert len(data.labels) == len(data.rows)
    with pytest.raises(
        DataError,
        match=r"train\.json data\[0\]\S+ id='ws-vision': answer_has_edge_whitespace, "
        r"answer_span_matches_context \(4 more rows fail validation\)$",
    ):
        validate_eval_file(path, ValidateParams(repair=False))


def squad(split, context, qas):
    return {
        "version": "v2.0",
        "split": split,
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}],
    }


def q(i, question, text=None, start=None, context=P1, impossible=False):
    answers = (
        []
        if text is None
        else [{"text": text, "answer_start": context.index(text) if start is None else start}]
    )
    return {"id": i, "question": question, "is_impossible": impossible, "answers": answers}


def folder(tmp_path, train, dev=None, test=None):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, context, qas in (
        ("train", P1, train),
        ("dev", DEV, dev or [q("d1", "Which form?", "advanced form", context=DEV)]),
        ("test", TEST, test or [q("t1", "What is the risk factor?", "Smoking", context=TEST)]),
    ):
        doc = squad(split, context, qas) if isinstance(qas, list) else qas
        (raw / f"{split}.json").write_text(json.dumps(doc), encoding="utf-8")
    return raw


SPAN, EDGE, DUP = (
    "answer_span_matches_context",
    "answer_has_edge_whitespace",
    "duplicate_question_on_context",
)
UNREPAIRABLE = {
    # case: (train qas, expected rejected [(id, reasons)]), the same as without repair
    "start more than 32 characters off": (
        [q("far", "Who?", "older adults", start=P1.index("older adults") - 40)],
        [("far", [SPAN])],
    ),
    "two occurrences equally near": ("ambiguous", [("amb", [SPAN])]),
    "only whitespace": ([q("blank", "What?", "   ", start=0)], [("blank", [EDGE, SPAN])]),
    "padded text neither at its start nor near it": (
        [q("pad", "Which part?", "retina ", start=P1.index("retina") + 1)],
        [("pad", [EDGE, SPAN])],
    ),
    "duplicate answerable and unanswerable": (
        [
            q("a1", "Whom does it affect?", "older adults"),
            q("a2", "Whom does it affect?", impossible=True),
        ],
        [("a2", [DUP])],
    ),
    "duplicate whose answer is bad": (
        [
            q("a1", "Whom does it affect?", "older adults"),
            q("a2", "Whom does it affect?", "older adults", start=9999),
        ],
        [("a2", [SPAN, DUP])],
    ),
    "duplicate whose id another row uses": (
        [
            q("a1", "Whom does it affect?", "older adults"),
            q("a2", "Whom does it affect?", "older adults"),
            q("a2", "What does it affect?", "the macula"),
        ],
        [("a2", [DUP, "id:unique_id"]), ("a2", ["id:unique_id"])],
    ),
}


@pytest.mark.parametrize("case", sorted(UNREPAIRABLE))
def test_what_cannot_be_repaired_losslessly_is_rejected_as_without_repair(tmp_path, case):
    train, expected = UNREPAIRABLE[case]
    if train == "ambiguous":  # "AMD" at 4 and 16; a start of 10 is 6 from both
        train = squad("train", P2, [q("amb", "Which?", "AMD", start=10, context=P2)])
    for repair in (True, False):
        out = tmp_path / str(repair)
        out.mkdir()
        s = validate(out, folder(out, train), on_invalid="drop", repair=repair)
        written, rejected, repairs, report = outputs(out)
        assert rejected == expected and repairs == [] and report["repaired"] == 0, (case, repair)
        assert_accounted(s, report, written, repairs)


def test_a_repaired_row_that_fails_another_check_is_rejected_and_not_listed_as_repaired(tmp_path):
    off = P1.index("peripheral vision") + 1
    train = [
        q("x", "Which vision is preserved?", "peripheral vision", start=off),
        q("x", "Whom does it affect?", "older adults"),
    ]
    s = validate(tmp_path, folder(tmp_path, train), on_invalid="drop")
    written, rejected, repairs, report = outputs(tmp_path)
    assert rejected == [("x", ["id:unique_id"])] * 2 and s.rejected == 2 and repairs == []
    assert_accounted(s, report, written, repairs)


def test_a_merged_row_is_rejected_with_the_row_it_joined(tmp_path):
    """dev repeats train's context (leakage): the kept dev row is rejected, and its merged twin with it."""
    dev = squad(
        "dev",
        P1,
        [
            q("d1", "Whom does it affect?", "older adults"),
            q("d2", "Whom does it affect?", "in older adults"),
        ],
    )
    s = validate(
        tmp_path,
        folder(tmp_path, [q("a1", "Which part?", "the macula")], dev=dev),
        on_invalid="drop",
    )
    written, rejected, repairs, report = outputs(tmp_path)
    assert rejected == [("d1", ["context_in_two_splits"]), ("d2", ["context_in_two_splits", DUP])]
    assert (
        repairs == []
        and report["repaired"] == 0
        and s.accepted == {"train": 1, "dev": 0, "test": 1}
    )
    assert_accounted(s, report, written, repairs)


def test_duplicates_differing_in_title_or_question_type_are_not_merged(tmp_path):
    dup = [
        q("a1", "Whom does it affect?", "older adults"),
        {**q("a2", "Whom does it affect?", "in older adults"), "question_type": "population"},
    ]
    s = validate(tmp_path, folder(tmp_path, dup), on_invalid="drop")
    assert (
        s.failures_by_check == {"duplicate_question_on_context": 1}
        and sum(s.repaired.values()) == 0
    )


def test_repairs_path_may_be_given(tmp_path):
    off = P1.index("peripheral vision") - 1
    raw = folder(tmp_path, [q("off", "Which vision?", "peripheral vision", start=off)])
    validate_records(
        raw,
        tmp_path / "v",
        tmp_path / "r.jsonl",
        tmp_path / "v.json",
        ValidateParams(),
        repairs_path=tmp_path / "elsewhere" / "fixes.jsonl",
    )
    assert [r["what"] for r in read_jsonl(tmp_path / "elsewhere" / "fixes.jsonl")] == [
        "shift_answer_start"
    ]
    assert not (tmp_path / "repairs.jsonl").exists()


NOWHERE = {"text": "brolucizumab", "answer_start": 10}  # in no fixture context: cannot be repaired


@pytest.mark.integration
def test_the_pipeline_trains_on_the_fixture_and_a_failed_validate_keeps_the_last_reports(
    tmp_path, tiny_model_dir
):
    """validate → tokenize → train under DVC on the repairable fixture plus one row no repair
    can save (on_invalid: drop), every row accounted for; then a validate that fails on broken
    data leaves the reports of the last good run in place (DVC deletes non-persistent outputs
    before a run)."""
    import shutil
    import subprocess
    import sys

    import yaml

    env = project_env()
    proj = make_tiny_project(tmp_path / "proj", tiny_model_dir, env)
    raw = proj / "data" / "raw" / "amd_qa"
    shutil.rmtree(raw)
    shutil.copytree(FIXTURE, raw)
    doc = json.loads((raw / "train.json").read_text())
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "unrepairable", "question": "Which drug is injected?", "answers": [NOWHERE]}
    )
    (raw / "train.json").write_text(json.dumps(doc))
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["validate"]["on_invalid"] = "drop"
    params["train"]["epochs"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params))

    def dvc(*args):
        return subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=proj,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    res = dvc("repro", "train")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    reports = proj / "reports"
    report = json.loads((reports / "validation.json").read_text())
    assert report["rows_in"] == 16 and report["rejected"] == 1
    assert report["rows_in"] == report["accepted"] + report["repaired"] + report["rejected"]
    assert report["repaired"] == 9 and report["merged"] == 2
    assert [r["id"] for r in read_jsonl(reports / "rejected.jsonl")] == ["unrepairable"]
    checkpoint = proj / "models" / "checkpoint"
    summary = json.loads((checkpoint / "medqa.json").read_text())
    curve = json.loads((checkpoint / "train_curve.json").read_text())
    assert summary["train_windows"] > 0 and summary["final_train_loss"] > 0
    assert [r["epoch"] for r in curve] == [1] and curve[0]["train_loss"] > 0  # logged after steps

    names = ("validation.json", "rejected.jsonl", "repairs.jsonl")
    kept = {f: (reports / f).read_text() for f in names}
    (raw / "train.json").write_text("{oops")
    res = dvc("repro", "validate")
    assert res.returncode != 0 and "train.json: invalid JSON at line 1" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert {f: (reports / f).read_text() for f in kept} == kept
    assert not list((proj / "data").glob(".validated.*"))
