"""Property tests for the validate stage: random malformed records and files never raise anything but
DataError, and in drop mode every row read is accepted, repaired or rejected
(rows_in == accepted + repaired + rejected), with every answer written an exact span of its context.

Examples are kept small (few rows, short texts, ~50 examples per property) so the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa.config import ValidateParams
from medqa.errors import DataError
from medqa.fileio import read_jsonl
from medqa.readers import read_qa_records
from medqa.validate import ValidationSummary, validate_records

pytestmark = pytest.mark.slow  # hypothesis: hundreds of random files

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONTEXTS = [
    "Faricimab blocks both VEGF-A and angiopoietin-2.",
    "Geographic atrophy is the late dry form of AMD.",
    " spaces  around\tand\u00a0odd\u2028breaks ",
    "",
]
NAMES = [
    "train.json",
    "dev.json",
    "test.json",
    "extra.json",
    "train.jsonl",
    "validation.csv",
    "d.parquet",
]
# a well-formed question per split, added beside random files so that the run gets past the check that
# data naming its splits names all three, to the rows themselves
FILLERS = {
    f"filler_{split}.json": {
        "data": [
            {
                "title": "f",
                "paragraphs": [
                    {
                        "context": f"Filler passage for the {split} split.",
                        "qas": [
                            {
                                "id": f"filler-{split}",
                                "question": "Which split?",
                                "answers": [
                                    {"text": split, "answer_start": len("Filler passage for the ")}
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    for split in ("train", "dev", "test")
}

short_text = st.text(max_size=12)
scalar = st.none() | st.booleans() | st.integers(-5, 60) | st.floats(allow_nan=True) | short_text
junk = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def answer(draw: st.DrawFn, context: Any) -> Any:
    """Mostly a plausible answer (a real span, or one off by a little), sometimes junk."""
    if isinstance(context, str) and context and draw(st.booleans()):
        start = draw(st.integers(0, len(context) - 1))
        end = draw(st.integers(start, len(context)))
        return {
            "text": context[start:end],
            "answer_start": start + draw(st.sampled_from([0, 0, 0, 1, -1, 500])),
        }
    return draw(st.fixed_dictionaries({}, optional={"text": junk, "answer_start": junk}) | junk)


@st.composite
def answers(draw: st.DrawFn, context: Any) -> Any:
    items = draw(st.lists(answer(context), max_size=3))
    shape = draw(st.sampled_from(["list", "list", "hf", "junk"]))
    if shape == "hf":  # the Hugging Face dict of lists, sometimes with unequal lengths
        starts = [a.get("answer_start") if isinstance(a, dict) else a for a in items]
        return {
            "text": [a.get("text") if isinstance(a, dict) else a for a in items],
            "answer_start": starts[: draw(st.integers(0, 3))],
        }
    return draw(junk) if shape == "junk" else items


@st.composite
def qa_record(draw: st.DrawFn, context: Any) -> dict[str, Any]:
    rec = {
        "id": draw(st.sampled_from(["q1", "q2", "q3", 1, 2]) | junk),
        "question": draw(st.sampled_from(["What?", "Which?", "What?"]) | junk),
        "answers": draw(answers(context)),
    }
    if draw(st.booleans()):
        rec["is_impossible"] = draw(st.booleans() | junk)
    return {
        k: v for k, v in rec.items() if draw(st.integers(0, 9)) > 0
    }  # now and then a key is missing


@st.composite
def squad_doc(draw: st.DrawFn) -> Any:
    """A SQuAD document with junk anywhere: fields, lists, types, split."""
    paragraphs = []
    for _ in range(draw(st.integers(0, 3))):
        context = draw(st.sampled_from(CONTEXTS) | junk)
        paragraphs.append(
            {"context": context, "qas": draw(st.lists(qa_record(context), max_size=3))}
        )
    doc: Any = {"data": [{"title": draw(junk), "paragraphs": paragraphs}]}
    if draw(st.booleans()):
        doc["split"] = draw(st.sampled_from(["train", "validation", "holdout"]) | junk)
    return draw(st.just(doc) | junk) if draw(st.integers(0, 9)) == 0 else doc


@st.composite
def flat_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        context = draw(st.sampled_from(CONTEXTS))
        a = draw(answer(context))
        row = {
            "id": draw(st.sampled_from(["r1", "r2", "3"]) | short_text),
            "question": draw(short_text),
            "context": context,
            "answer_text": a.get("text", "") if isinstance(a, dict) else "",
            "answer_start": a.get("answer_start", "") if isinstance(a, dict) else draw(short_text),
            "split": draw(st.sampled_from(["", "train", "dev", "val", "nope"])),
        }
        rows.append({k: v for k, v in row.items() if draw(st.integers(0, 9)) > 0})
    return rows


def refuse_non_json(constant: str) -> None:
    """Outputs must be strict JSON: NaN or Infinity would break other readers."""
    raise AssertionError(f"{constant} in an output file")


def add_fillers(raw: Path) -> None:
    for name, doc in FILLERS.items():
        (raw / name).write_text(json.dumps(doc), encoding="utf-8")


def accounting_holds(raw: Path, out: Path, repair: bool = True) -> None:
    """Validate ``raw`` in drop mode: a DataError is fine; otherwise every row is accounted for."""
    try:
        s = validate_records(
            raw,
            out / "validated",
            out / "rejected.jsonl",
            out / "report.json",
            ValidateParams(on_invalid="drop", repair=repair),
        )
    except DataError:
        return
    assert s.rows_in == sum(s.accepted.values()) + sum(s.repaired.values()) + s.rejected
    files = [*(out / "validated").glob("*.jsonl"), out / "rejected.jsonl", out / "repairs.jsonl"]
    lines = {
        p.name: [
            line for line in p.read_text(encoding="utf-8").split("\n") if line
        ]  # not splitlines: U+2028
        for p in files
    }
    assert {split: len(lines[f"{split}.jsonl"]) for split in s.written} == s.written
    assert sum(s.written.values()) == sum(s.accepted.values()) + sum(s.repaired.values()) - s.merged
    assert len(lines["rejected.jsonl"]) == s.rejected
    assert len(lines["repairs.jsonl"]) == sum(s.repairs_by_kind.values())
    assert repair or not lines["repairs.jsonl"]
    for line in (line for file_lines in lines.values() for line in file_lines):
        json.loads(line, parse_constant=refuse_non_json)
    for split in s.written:
        for row in map(json.loads, lines[f"{split}.jsonl"]):
            for a in row["answers"]:
                assert (
                    row["context"][a["answer_start"] : a["answer_start"] + len(a["text"])]
                    == a["text"]
                )
    report = json.loads((out / "report.json").read_text())
    assert report["rows_in"] == report["accepted"] + report["repaired"] + report["rejected"]


def validate_as_train(doc: dict, tmp: Path) -> ValidationSummary:
    """Validate ``doc`` as the train split of a folder with the filler dev/test splits, into ``tmp``."""
    raw = tmp / "raw"
    raw.mkdir()
    (raw / "train.json").write_text(json.dumps(doc), encoding="utf-8")
    add_fillers(raw)
    return validate_records(raw, tmp / "v", tmp / "r.jsonl", tmp / "v.json", ValidateParams())


def in_tmp(fn: Callable[[Path], None]) -> None:
    """Run ``fn`` in a fresh folder (pytest's tmp_path is one folder for all hypothesis examples)."""
    with tempfile.TemporaryDirectory() as d:
        fn(Path(d))


@SETTINGS
@given(
    docs=st.lists(st.tuples(st.sampled_from(NAMES[:4]), squad_doc()), min_size=1, max_size=3),
    fill=st.booleans(),
    repair=st.booleans(),
)
def test_random_squad_files_only_raise_data_error_and_rows_add_up(docs, fill, repair):
    def check(tmp: Path) -> None:
        raw = tmp / "raw"
        raw.mkdir()
        for name, doc in docs:
            (raw / name).write_text(json.dumps(doc), encoding="utf-8")
        if fill:
            add_fillers(raw)
        with contextlib.suppress(DataError):
            read_qa_records(raw)
        accounting_holds(raw, tmp, repair)

    in_tmp(check)


@SETTINGS
@given(
    rows=flat_rows(),
    fmt=st.sampled_from(["jsonl", "csv", "parquet"]),
    name=st.sampled_from(["train", "d"]),
    fill=st.booleans(),
)
def test_random_flat_files_only_raise_data_error_and_rows_add_up(rows, fmt, name, fill):
    def check(tmp: Path) -> None:
        raw = tmp / "raw"
        raw.mkdir()
        f = raw / f"{name}.{fmt}"
        df = pd.DataFrame(rows)
        if fmt == "jsonl":
            f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        elif fmt == "csv":
            df.to_csv(f, index=False)
        else:
            df.astype(str).to_parquet(f)
        if fill:
            add_fillers(raw)
        accounting_holds(raw if fill else f, tmp)

    in_tmp(check)


@SETTINGS
@given(
    content=st.binary(max_size=120) | st.text(max_size=120).map(str.encode),
    suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]),
)
def test_random_bytes_only_raise_data_error(content, suffix):
    def check(tmp: Path) -> None:
        f = tmp / f"train{suffix}"
        f.write_bytes(content)
        try:
            read_qa_records(f)
        except DataError as e:
            assert str(f) in str(e) and "\n" not in str(e), (
                "read errors are one line naming the file"
            )
        accounting_holds(f, tmp)

    in_tmp(check)


@SETTINGS
@given(lines=st.lists(junk.map(json.dumps) | short_text, max_size=4))
def test_random_jsonl_lines_only_raise_data_error(lines):
    def check(tmp: Path) -> None:
        f = tmp / "d.jsonl"  # no split in the name: a hash of the context splits what can be read
        f.write_text("\n".join(lines), encoding="utf-8")
        accounting_holds(f, tmp)

    in_tmp(check)


@st.composite
def valid_squad(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed SQuAD doc: distinct questions, answers that are whole words of their context."""
    paragraphs, n = [], 0
    for context in draw(
        st.lists(st.sampled_from(CONTEXTS[:2]), min_size=1, max_size=2, unique=True)
    ):
        words = [(i, w) for i, w in enumerate(context.split(" "))]
        qas = []
        for _ in range(draw(st.integers(1, 3))):
            n += 1
            picked = draw(st.lists(st.sampled_from(words), max_size=3))
            answers = [
                {"text": w, "answer_start": len(" ".join(context.split(" ")[:i])) + (1 if i else 0)}
                for i, w in picked
            ]
            qas.append(
                {
                    "id": draw(st.sampled_from([n, f"q{n}"])),
                    "question": f"Question {n}?",
                    "answers": answers,
                }
            )
        paragraphs.append({"context": context, "qas": qas})
    return {"data": [{"title": "t", "paragraphs": paragraphs}]}


@SETTINGS
@given(doc=valid_squad())
def test_well_formed_squad_is_accepted_whole(doc):
    def check(tmp: Path) -> None:
        s = validate_as_train(doc, tmp)
        n = sum(len(p["qas"]) for p in doc["data"][0]["paragraphs"])
        assert s.rejected == 0 and s.accepted["train"] == n + 1 and sum(s.repaired.values()) == 0

    in_tmp(check)


@st.composite
def hf_columns(draw: st.DrawFn) -> dict[str, list[Any]]:
    """Columns for a Hugging Face Dataset: Arrow wants one type per column, so the junk is in the values
    (empty, duplicate or whitespace text, starts off the context, text and start lists of unequal length)."""
    n = draw(st.integers(1, 4))
    contexts = draw(st.lists(st.sampled_from(CONTEXTS), min_size=n, max_size=n))
    texts = [
        draw(st.lists(st.sampled_from(["VEGF-A", " dry ", "", "AMD"]) | short_text, max_size=2))
        for _ in range(n)
    ]
    return {
        "id": draw(st.lists(st.sampled_from(["h1", "h2", ""]), min_size=n, max_size=n)),
        "question": draw(
            st.lists(st.sampled_from(["What?", "", "Which?"]), min_size=n, max_size=n)
        ),
        "context": contexts,
        "answers": [
            {"text": t, "answer_start": draw(st.lists(st.integers(-2, 60), max_size=2))}
            for t in texts
        ],
    }


@settings(SETTINGS, max_examples=15)
@given(columns=hf_columns(), as_dict=st.booleans())
def test_random_hf_datasets_only_raise_data_error_and_rows_add_up(columns, as_dict):
    from datasets import Dataset, DatasetDict

    def check(tmp: Path) -> None:
        ds = Dataset.from_dict(columns)
        (DatasetDict({"train": ds, "validation": ds, "test": ds}) if as_dict else ds).save_to_disk(
            tmp / "hf"
        )
        accounting_holds(tmp / "hf", tmp)

    in_tmp(check)


PADS = [" ", "  ", "\t", "\n", "\u00a0"]


@st.composite
def repairable_squad(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, set[tuple[str, int]]]]:
    """A well-formed doc with lossless faults added (edge whitespace, a start a few characters off where
    the text occurs once, the same question again in other case or spacing), and each question's gold
    (text, start) set as it must come out."""
    doc = draw(valid_squad())
    expected = {}
    for para in doc["data"][0]["paragraphs"]:
        context, dups = para["context"], []
        for qa in para["qas"]:
            expected[str(qa["id"])] = {(a["text"], a["answer_start"]) for a in qa["answers"]}
            if draw(st.booleans()):  # asked again; answerable exactly when the first is
                words = [(m.group(), m.start()) for m in re.finditer(r"\S+", context)]
                again = draw(
                    st.lists(st.sampled_from(words), min_size=1, max_size=2)
                    if qa["answers"]
                    else st.just([])
                )
                question = draw(
                    st.sampled_from([str.upper, str.lower, lambda t: " " + t.replace(" ", "  ")])
                )
                dups.append(
                    {
                        "id": f"again-{qa['id']}",
                        "question": question(qa["question"]),
                        "answers": [{"text": t, "answer_start": s} for t, s in again],
                    }
                )
                expected[str(qa["id"])] |= set(again)
            for a in qa["answers"]:
                fault = draw(st.sampled_from(["none", "pad", "shift"]))
                if fault == "pad":
                    left, right = draw(st.sampled_from(["", *PADS])), draw(st.sampled_from(PADS))
                    a["answer_start"] -= draw(st.sampled_from([0, len(left)]))
                    a["text"] = left + a["text"] + right
                elif fault == "shift" and context.count(a["text"]) == 1:
                    a["answer_start"] += draw(st.sampled_from([-3, -2, -1, 1, 2, 3]))
        para["qas"] += dups
    return doc, expected


@SETTINGS
@given(case=repairable_squad())
def test_lossless_faults_are_repaired_back_to_the_original_answers(case):
    doc, expected = case

    def check(tmp: Path) -> None:
        s = validate_as_train(doc, tmp)
        got = {
            r["id"]: {(a["text"], a["answer_start"]) for a in r["answers"]}
            for r in read_jsonl(tmp / "v" / "train.jsonl")
        }
        assert got == {**expected, "filler-train": {("train", 23)}}
        assert s.rejected == 0 and s.rows_in == sum(s.accepted.values()) + sum(s.repaired.values())

    in_tmp(check)
