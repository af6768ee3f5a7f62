"""The medqa command as a user meets it: malformed params, data files, validated files, prediction
inputs and arguments end with exit status 2 and one ``medqa <command>: error: ...`` line on stderr,
never a Python traceback (issue "Data and settings as they come").

Commands run in this process (``medqa.cli.main``), each example in a fresh folder, with the tiny
model of conftest.py where a model is needed. An exception escaping ``main`` fails the test with its
traceback; argparse's own usage errors (SystemExit 2, usage line then error line) count as handled.
Commands may print other lines to stderr first (progress, the chosen precision): the error line must
be the only error and the last line. Examples are few and small: the file runs in under a minute.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa.cli import main

pytestmark = pytest.mark.slow  # hypothesis over CLI processes

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DECODING = {
    "n_best": 5,
    "max_answer_length": 30,
    "null_threshold": -1e9,
    "max_seq_length": 128,
    "doc_stride": 48,
}
CONTEXT = "Faricimab blocks both VEGF-A and angiopoietin-2 and is given every sixteen weeks."
RECORDS = [
    {"id": "a", "question": "What does faricimab block?", "context": CONTEXT},
    {"id": "b", "question": "How often is it given?", "context": CONTEXT},
]


@pytest.fixture(autouse=True)
def _no_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model as predict takes a folder: weights, tokenizer and a decoding.json."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "decoding.json").write_text(json.dumps(DECODING))
    return folder


def run_cli(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    """``medqa argv`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse refusing the arguments
                rc = e.code
    finally:
        sys.stdin = saved_stdin
    return rc, out.getvalue(), err.getvalue()


def error_line(rc: int, err: str, command: str) -> str:
    """The one error line of a refused command; fails unless the refusal is clean."""
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if not errors[0].startswith("medqa: error:"):  # argparse names no subcommand-level error
        assert errors[0].startswith(f"medqa {command}: error: "), err
    return errors[0]


def refusal(argv: list[str], stdin: bytes = b"") -> str:
    """The one error line of ``medqa argv``, which must be refused cleanly."""
    rc, _, err = run_cli(argv, stdin)
    return error_line(rc, err, argv[0])


@contextlib.contextmanager
def fresh_folder():
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        yield Path(d)


# --- predict: --input/--output mistakes refused before anything runs; stdin CSV read as CSV ---


def test_predict_output_equal_to_input_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "".join(json.dumps(r) + "\n" for r in RECORDS)
    Path("q.jsonl").write_text(text)
    Path("q2.jsonl").symlink_to("q.jsonl")
    for output in ("q.jsonl", "./q.jsonl", "q2.jsonl"):
        argv = ["predict", "--model", "no-such-model", "--input", "q.jsonl", "--output", output]
        line = refusal(argv)
        assert line == (
            f"medqa predict: error: --output {Path(output)} is the --input file: the answers "
            "would overwrite the questions; name another file"
        )
    assert Path("q.jsonl").read_text() == text


def test_predict_output_naming_a_folder_is_refused_up_front_and_leaves_no_temp_file(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    Path("q.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    Path("out").mkdir()
    argv = ["predict", "--model", "no-such-model", "--input", "q.jsonl", "--output", "out"]
    line = refusal(argv)
    assert (
        line
        == "medqa predict: error: --output out: is a folder; name a file, e.g. out/answers.jsonl"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "q.jsonl"]


def test_predict_output_in_a_missing_folder_is_written_there(tmp_path, monkeypatch, model_folder):
    monkeypatch.chdir(tmp_path)
    Path("q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    argv = ["predict", "--model", str(model_folder), "--input", "q.jsonl"]
    rc, _, err = run_cli([*argv, "--output", "new/deeper/answers.jsonl"])
    assert rc == 0, err
    rows = [json.loads(line) for line in Path("new/deeper/answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert sorted(p.name for p in Path("new/deeper").iterdir()) == ["answers.jsonl"]


def test_predict_reads_csv_from_stdin_without_format(tmp_path, monkeypatch, model_folder):
    """The README's `medqa predict --input - < questions.csv` (it failed with "invalid JSON")."""
    monkeypatch.chdir(tmp_path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "question", "context"])
    writer.writeheader()
    writer.writerows(RECORDS)
    argv = ["predict", "--model", str(model_folder), "--input", "-"]
    rc, out, err = run_cli(argv, stdin=("\ufeff" + buf.getvalue()).encode())  # with a BOM
    assert rc == 0, err
    from_csv = [json.loads(line) for line in out.splitlines()]
    rc, out, err = run_cli(argv, stdin="".join(json.dumps(r) + "\n" for r in RECORDS).encode())
    assert rc == 0, err
    from_jsonl = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in from_csv] == ["a", "b"]
    assert [(r["answer"], r["start"]) for r in from_csv] == [
        (r["answer"], r["start"]) for r in from_jsonl
    ]


# --- validate: a question too long in tokens is rejected there, and tokenize never crashes ---


def test_validate_rejects_a_question_too_long_in_tokens_and_tokenize_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = Path("raw")
    raw.mkdir()
    long_q = (
        "is " * 333
    )  # 999 characters, 333 tokens: past tokenize's windows, under the 1000 chars
    for split, n in (("train", 3), ("dev", 1), ("test", 1)):
        qas = [{"id": f"{split}{i}", "question": f"Question {i}?", "answers": []} for i in range(n)]
        if split == "train":
            qas.append({"id": "long", "question": long_q, "answers": []})
        context = f"A {split} passage about drusen, the yellow deposits under the retina. " * 30
        doc = {"data": [{"title": split, "paragraphs": [{"context": context, "qas": qas}]}]}
        (raw / f"{split}.json").write_text(json.dumps(doc))
    params = {"validate": {"raw_path": "raw"}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    rc, _, err = run_cli(["validate"])
    assert rc == 2 and "Traceback" not in err
    assert "question:at_most_189_tokens: 1" in err and "(question: 333 tokens)" in err
    params["validate"]["on_invalid"] = "drop"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    rc, out, err = run_cli(["validate"])
    assert rc == 0, err
    (rejected,) = [
        json.loads(line) for line in Path("reports/rejected.jsonl").read_text().splitlines()
    ]
    assert (rejected["id"], rejected["question_tokens"]) == ("long", 333)
    rc, out, err = run_cli(["tokenize"])
    assert rc == 0 and "windows per split" in out, err


# --- properties: whatever is malformed, one line and exit status 2 ---

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "drop", "fail", "cpu", "./missing", "org/missing", "", "/", "."]),
)
KEYS = {
    "": ["base_model", "validate", "tokenize", "train", "evaluate", "register", "paths", "extra"],
    "validate": ["raw_path", "format", "on_invalid", "repair", "max_question_chars", "nope"],
    "tokenize": ["max_seq_length", "doc_stride", "train_fraction"],
    "train": ["batch_size", "learning_rate", "epochs", "seed", "warmup_ratio", "device"],
    "evaluate": ["batch_size", "bootstrap_samples", "decode"],
    "register": ["model_name", "min_f1"],
    "paths": ["validated", "features", "reports", "checkpoint"],
}


@st.composite
def params_documents(draw) -> str:
    """params.yaml text: a mapping of known groups with odd values, or not YAML at all."""
    if draw(st.booleans()):
        return draw(st.text(max_size=40))
    doc = {}
    for key in draw(st.lists(st.sampled_from(KEYS[""]), max_size=3, unique=True)):
        if key in KEYS and draw(st.booleans()):
            names = st.sampled_from(KEYS[key])
            doc[key] = draw(st.dictionaries(names, SCALARS, max_size=3))
        else:
            doc[key] = draw(SCALARS)
    return yaml.safe_dump(doc)


COMMANDS = [
    ["validate"],
    ["tokenize"],
    ["train"],
    ["evaluate"],
    ["evaluate", "--split", "dev"],
    ["register"],
    ["models"],
    ["promote", "1"],
    ["rollback"],
    ["predict", "--model", "m", "--question", "q?", "--context", "c."],
]


@SETTINGS
@given(text=params_documents(), command=st.sampled_from(COMMANDS))
def test_any_params_file_in_an_empty_folder_is_one_line(text, command):
    """Outside a project with nothing built, every command stops with one line, whatever the params
    hold: a params error, or the input it needs that is not there yet."""
    with fresh_folder():
        Path("params.yaml").write_text(text, encoding="utf-8", errors="surrogateescape")
        refusal(command)


def test_summary_without_reports_is_one_line(tmp_path, monkeypatch, capsys):
    from medqa.summary import main as summary

    monkeypatch.chdir(tmp_path)
    assert summary() == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("medqa summary: error: ")
    assert len(err.strip().splitlines()) == 1


FILE_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(['{"data": 1}', '{"data": [{"paragraphs": [{"qas": [1]}]}]}', "id,question\n"]),
    st.lists(
        st.dictionaries(
            st.sampled_from(["id", "question", "context", "answers", "answer_text"]),
            SCALARS,
            max_size=5,
        ),
        max_size=3,
    ).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows)),
)


@SETTINGS
@given(
    files=st.dictionaries(
        st.sampled_from(["train.json", "dev.JSONL", "test.csv", "x.parquet", "t.json.gz", "a.txt"]),
        FILE_TEXT,
        min_size=1,
        max_size=3,
    ),
)
def test_validate_on_any_data_folder_succeeds_or_is_one_line(files):
    """on_invalid: drop, so bad rows go to the rejected-rows file (fail mode lists them instead)."""
    with fresh_folder():
        raw = Path("raw")
        raw.mkdir()
        for name, text in files.items():
            (raw / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        Path("params.yaml").write_text(
            yaml.safe_dump({"validate": {"raw_path": "raw", "on_invalid": "drop"}})
        )
        rc, _, err = run_cli(["validate"])
        if rc != 0:
            error_line(rc, err, "validate")


@SETTINGS
@given(splits=st.dictionaries(st.sampled_from(["train", "dev", "test"]), FILE_TEXT, max_size=3))
def test_tokenize_on_any_validated_folder_succeeds_or_is_one_line(splits, tiny_model_dir):
    with fresh_folder():
        Path("data/validated").mkdir(parents=True)
        for split, text in splits.items():
            Path(f"data/validated/{split}.jsonl").write_text(
                text, encoding="utf-8", errors="surrogateescape"
            )
        Path("params.yaml").write_text(
            yaml.safe_dump(
                {
                    "base_model": str(tiny_model_dir),
                    "tokenize": {"max_seq_length": 64, "doc_stride": 16},
                }
            )
        )
        rc, _, err = run_cli(["tokenize"])
        if rc != 0:
            error_line(rc, err, "tokenize")


@settings(SETTINGS, max_examples=10)
@given(
    text=FILE_TEXT,
    name=st.sampled_from(["in.jsonl", "in.csv", "in.txt", "-"]),
    output=st.sampled_from([None, "out.jsonl", "in.jsonl", ".", "sub/out.jsonl", "-"]),
    batch=st.sampled_from(["1", "0", "-3", "x"]),
)
def test_predict_on_any_input_succeeds_or_is_one_line(model_folder, text, name, output, batch):
    with fresh_folder():
        data = text.encode("utf-8", errors="surrogateescape")
        if name != "-":
            Path(name).write_bytes(data)
        argv = ["predict", "--model", str(model_folder), "--input", name, "--batch-size", batch]
        rc, _, err = run_cli([*argv, *(["--output", output] if output else [])], stdin=data)
        if rc != 0:
            error_line(rc, err, "predict")


ARGS = st.lists(
    st.sampled_from(
        [
            "--raw",
            "--out",
            "--validated",
            "--features",
            "--split",
            "--model",
            "--input",
            "--output",
            "--decoding",
            "--name",
            "--json",
            "/dev/null",
            "/",
            "missing",
            "a\tb",
            "",
            "-",
            "models:/x@champion",
            "runs:/r/m",
            "dev",
            "1",
        ]
    ),
    max_size=5,
)


@SETTINGS
@given(
    command=st.sampled_from(
        ["validate", "tokenize", "train", "evaluate", "register", "predict", "models", "rollback"]
    ),
    args=ARGS,
)
def test_odd_arguments_are_one_line(command, args):
    with fresh_folder():
        rc, _, err = run_cli([command, *args])
        if rc != 0:
            error_line(rc, err, command)
