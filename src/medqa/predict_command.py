"""``medqa predict``: one question, or a file of them streamed through the model, with a saved or
registered model; and its parser.

A tool command like those of ``tool_commands`` (a source dep of no stage: see
``medqa.provenance``), in a module of its own because reading and writing question files is most of
its code. Its module level imports only the shared helpers; the library is imported inside the
functions that use it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medqa.cli_common import (
    REGISTRY_PREFIXES,
    Subparsers,
    engine_option,
    precision_option,
    require_store,
)

log = logging.getLogger(__name__)

# the columns of a question file; a CSV header may spell them in any case
COLUMNS = ("id", "question", "context")
REQUIRED_COLUMNS = ("question", "context")


def _load_predictor(
    model: str,
    decoding: Path | None = None,
    precision: str | None = None,
    engine: str = "eager",
) -> Any:
    """The QAPredictor behind a registry URI (through its pyfunc, as the server loads it) or a
    folder (with ``decoding``: that decoding.json instead of the folder's own, e.g. for a training
    checkpoint), at its recorded precision or at ``precision``, on ``engine``; the choices are
    logged."""
    if model.startswith(REGISTRY_PREFIXES):
        from medqa.server import load_served_model
        from medqa.tracking import configure_tracking

        require_store()
        configure_tracking()
        predictor = load_served_model(model, precision).unwrap_python_model().predictor
    else:
        from medqa.predictor import QAPredictor

        predictor = QAPredictor(model, decoding_file=decoding, precision=precision)
    predictor.use_engine(engine)
    log.info("precision %s (%s)", predictor.precision, predictor.precision_reason)
    log.info("engine %s (%s)", predictor.engine, predictor.engine_reason)
    return predictor


def _check_batch_paths(args: argparse.Namespace) -> None:
    """Refuse --input/--output mistakes before the model loads and any prediction runs: a missing
    input; an output that is a folder, or the input file itself (it would be overwritten). A missing
    folder of --output is created, as every other output folder of medqa is."""
    from medqa.errors import DataError

    if args.input != "-" and not Path(args.input).is_file():
        what = "is a folder" if Path(args.input).is_dir() else "no such file"
        raise DataError(f"--input {args.input}: {what}")
    if args.output in (None, "-"):
        return
    out = Path(args.output)
    if out.is_dir():
        raise DataError(f"--output {out}: is a folder; name a file, e.g. {out / 'answers.jsonl'}")
    if args.input != "-" and out.exists() and os.path.samefile(args.input, out):
        raise DataError(
            f"--output {out} is the --input file: the answers would overwrite the questions; "
            "name another file"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--output {out}: cannot create {out.parent} ({e.strerror})") from None


def _sniff_format(lines: Any) -> tuple[str, Any]:
    """jsonl when the first non-blank line is a JSON object, else csv (a header row), for input
    whose name says neither (stdin); returns the lines with the ones read put back in front."""
    import itertools

    head = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    first = head[-1].lstrip() if head else ""
    fmt = "jsonl" if first.startswith("{") or not first else "csv"
    return fmt, itertools.chain(head, lines)


def _input_format(args: argparse.Namespace, name: str, source: Any) -> tuple[str, Any]:
    """--format auto: csv for a .csv file, jsonl for .jsonl/.json/.ndjson, else (stdin) by content;
    returns the format and the lines to read (any sniffed ones put back)."""
    suffix = Path(name.lower()).suffix
    if args.format == "auto" and suffix in (".csv", ".jsonl", ".json", ".ndjson"):
        return ("csv" if suffix == ".csv" else "jsonl"), source
    if args.format == "auto":
        return _sniff_format(source)
    return args.format, source


def read_records(lines: Iterable[str], fmt: str) -> Iterator[tuple[int, int, Any]]:
    """(record number, line, record) of each record of a JSONL or CSV stream, one at a time (files
    of any size). Records are numbered from 1 in either format: a CSV header and blank lines are
    not records. The line, for errors, is the record's in the file (in a CSV file its last line: a
    quoted field may span several).
    """
    from medqa.errors import DataError

    if fmt == "csv":
        yield from _csv_records(lines)
        return
    number = 0
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"line {line}: invalid JSON ({e.msg} at column {e.colno})") from None
        number += 1
        yield number, line, record


def _csv_records(lines: Iterable[str]) -> Iterator[tuple[int, int, dict[str, str]]]:
    """``read_records`` of a CSV stream whose first row names the columns."""
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:
        return
    reader.fieldnames = _csv_columns(reader.fieldnames, reader.line_num)
    for number, row in enumerate(reader, start=1):
        yield number, reader.line_num, row


def _csv_columns(header: Sequence[str], line: int) -> list[str]:
    """The header with id, question and context matched in any case and around spaces (a
    spreadsheet's `ID,Question,Context` reads); a missing or doubled column is refused, naming the
    columns the header has."""
    from medqa.errors import DataError

    names = [h.strip().lower() if h.strip().lower() in COLUMNS else h for h in header]
    found = ", ".join(repr(h) for h in header)
    doubled = [c for c in COLUMNS if names.count(c) > 1]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if doubled or missing:
        why = f"{doubled[0]!r} is named twice" if doubled else f"no {missing[0]!r} column"
        raise DataError(
            f"line {line}: {why}; the header has {found} (needed: question and context, "
            "optionally id, in any case)"
        )
    return names


@contextlib.contextmanager
def _streams(
    args: argparse.Namespace, name: str, out_path: Path | None
) -> Iterator[tuple[Any, Any]]:
    """--input (a file, or - for stdin, a BOM dropped) and where results go, open for the block.

    A file output is a temporary file beside it, deleted on the way out unless the block renamed
    it into place, so a failed run leaves no half-written results and no temporary file.
    """
    import io
    import tempfile

    from medqa.errors import DataError

    with contextlib.ExitStack() as stack:
        try:
            if args.input == "-":
                stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
                source = stack.enter_context(stdin)
            else:
                source = stack.enter_context(open(args.input, encoding="utf-8-sig", newline=""))
            sink = (
                stack.enter_context(
                    tempfile.NamedTemporaryFile(
                        "w",
                        encoding="utf-8",
                        dir=out_path.parent,
                        prefix=f".{out_path.name}.",
                        delete=False,
                    )
                )
                if out_path
                else sys.stdout
            )
        except OSError as e:
            raise DataError(f"{e.filename or name}: {e.strerror}") from None
        if out_path:  # on the way out, unless it was renamed into place
            stack.callback(Path(sink.name).unlink, missing_ok=True)
        yield source, sink


def _predict_file(predictor: Any, args: argparse.Namespace) -> None:
    """Stream --input through the model in batches; write JSONL results to --output (renamed into
    place at the end) or stdout. A bad record stops the run, named by the input it came from."""
    from tqdm import tqdm

    from medqa.contracts import progress_bars_shown
    from medqa.errors import DataError

    name = "stdin" if args.input == "-" else args.input
    out_path = Path(args.output) if args.output not in (None, "-") else None
    with (
        _streams(args, name, out_path) as (source, sink),
        tqdm(
            unit="rec",
            desc="predict",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not progress_bars_shown(),
        ) as bar,
    ):
        try:
            fmt, lines = _input_format(args, name, source)
            n = predict_stream(
                predictor,
                read_records(lines, fmt),
                lambda r: print(json.dumps(r), file=sink),
                args.batch_size,
                bar.update,
            )
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: not UTF-8 text ({e.reason})") from None
        if out_path:
            sink.close()
            os.replace(sink.name, out_path)
    log.info("predicted %d records%s", n, f" -> {out_path}" if out_path else "")


def cmd_predict(args: argparse.Namespace) -> None:
    """One question, or a file of them; every argument mistake is refused before the model loads,
    which can take a while."""
    from medqa.errors import DataError

    single = args.question is not None or args.context is not None
    if single == (args.input is not None):
        raise DataError("give either --question and --context, or --input FILE (- for stdin)")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.decoding is not None and args.model.startswith(REGISTRY_PREFIXES):
        raise DataError(
            "--decoding is for a model folder; a registered model carries its own decoding.json"
        )
    if not single:
        _check_batch_paths(args)
    predictor = _load_predictor(args.model, args.decoding, args.precision, args.engine)
    predictor.min_confidence = args.min_confidence
    if not single:
        _predict_file(predictor, args)
        return
    result = predictor.predict([{"question": args.question, "context": args.context}])[0]
    if args.json:
        print(json.dumps(result))
    elif result["abstained"]:
        print(f"no answer: {result['reason']}\nconfidence: {_share(result['confidence'])}")
    else:
        print(
            f"answer: {result['answer']}\nconfidence: {_share(result['confidence'])} "
            f"(raw score {result['score']:.3f})\noffsets: {result['start']}-{result['end']}"
        )


def _share(p: float | None) -> str:
    """A confidence for people; "not calibrated" for a model from before calibration."""
    return "not calibrated" if p is None else f"{p:.3f}"


def add_parsers(sub: Subparsers) -> None:
    """Register predict on ``medqa``'s subparsers: the model, then single mode's or batch mode's
    options."""
    s = sub.add_parser(
        "predict",
        help="answer questions with a saved or registered model: one, or a file of them",
        description="Single mode: --question and --context. Batch mode: --input, a JSONL or CSV "
        "file (or - for stdin) with question, context and optional id; read in a "
        "stream, predicted in batches, written as JSONL (id, answer, score, start, end, "
        "abstained). A result's id is the record's id, else its record number (1 for the "
        "first record: a CSV header and blank lines do not count). CSV column names match in "
        "any case. A bad record stops the run naming its line (exit 2).",
    )
    s.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version>, or a folder",
    )
    s.add_argument(
        "--decoding",
        type=Path,
        help="decoding.json to use with a model folder (a training checkpoint has none: use "
        "reports/decoding.json)",
    )
    precision_option(s, "the one its test F1 was measured at")
    engine_option(
        s,
        "eager",
        "compiling takes longer than a few questions; compile pays back on a file of thousands",
    )
    s.add_argument(
        "--min-confidence",
        type=float,
        help="withhold answers whose calibrated confidence is below this (default: the model's "
        "own answer policy, evaluate.target_f1; 0: give every answer)",
    )
    s.add_argument("--question")
    s.add_argument("--context")
    s.add_argument("--json", action="store_true", help="single mode: print the result as JSON")
    s.add_argument("--input", help="batch mode: JSONL or CSV file, or - for stdin")
    s.add_argument(
        "--format",
        choices=["auto", "jsonl", "csv"],
        default="auto",
        help="input format (auto: csv for a .csv file, jsonl for .jsonl/.json/.ndjson; "
        "otherwise, as for stdin, jsonl when the first line is a JSON object, else csv)",
    )
    s.add_argument(
        "--output",
        help="batch mode: JSONL results file, not the input file nor a folder; its folder is "
        "created if missing (default: stdout)",
    )
    s.add_argument("--batch-size", type=int, default=32, help="records per model call (default 32)")
    s.set_defaults(func=cmd_predict)


def predict_stream(
    predictor: Any,  # a medqa.predictor.QAPredictor (imported where used, as the module says)
    records: Iterable[tuple[int, int, Any]],
    write: Callable[[dict[str, Any]], None],
    batch_size: int,
    on_batch: Callable[[int], None] = lambda n: None,
) -> int:
    """Answer ``records`` ((record number, line, record), as ``predict_command.read_records`` reads
    a file) in batches of ``batch_size``, calling ``write`` per result; return the count.

    Each record is checked as it is read, so a bad one stops the run naming its line before its
    batch is predicted. A result's ``id`` is the record's ``id`` or, without one, its record number.
    """
    from medqa.errors import DataError

    batch: list[tuple[int, dict[str, Any]]] = []
    total = 0

    def flush() -> None:
        nonlocal total
        for (number, rec), res in zip(
            batch,
            predictor.predict(
                [{"question": r["question"], "context": r["context"]} for _, r in batch]
            ),
        ):
            rid = rec.get("id")
            write({"id": number if rid in (None, "") else rid, **res})
        total += len(batch)
        on_batch(len(batch))
        batch.clear()

    for number, line, rec in records:
        if (why := predictor.problem(rec)) is not None:
            raise DataError(f"line {line}: {why}{_fields_found(rec)}")
        batch.append((number, rec))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return total


def _fields_found(record: Any) -> str:
    """The fields of a record that lacks question or context, so a misspelt one shows."""
    if not isinstance(record, dict) or {"question", "context"} <= record.keys():
        return ""
    return f" (its fields: {', '.join(repr(k) for k in record) or 'none'})"
