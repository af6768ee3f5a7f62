"""Validate's split files read back for tokenize: one row at a time, each checked as it is read,
into Arrow on disk, so a split of any size is never held in memory whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from medqa.errors import DataError, first_line

if TYPE_CHECKING:
    from datasets import Dataset


def _is_validated_row(row: Any) -> bool:
    """The fields tokenize reads, in the types validate writes them."""
    return (
        isinstance(row, dict)
        and all(isinstance(row.get(k), str) for k in ("question", "context"))
        and isinstance(row.get("answers"), list)
        and all(
            isinstance(a, dict)
            and isinstance(a.get("text"), str)
            and isinstance(a.get("answer_start"), int)
            for a in row["answers"]
        )
    )


@contextmanager
def _open_validated(path: Path) -> Iterator[TextIO]:
    """A split file written by validate, open for reading; what goes wrong reading or parsing it
    becomes one line saying why (missing: validate has not run; not UTF-8 or not JSON lines: it
    was not written by validate)."""
    try:
        with open(path, encoding="utf-8") as fh:
            yield fh
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; run medqa validate first") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or first_line(e)})") from None
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError
        raise DataError(
            f"{path}: not validated data ({first_line(e)}); rerun medqa validate"
        ) from None


def validated_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The fields tokenize reads of each row of a split file and its line number, checked as read
    (for ``Dataset.from_generator``: one row at a time); a row not validated stops the run."""
    with _open_validated(path) as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            row = json.loads(text)
            if not _is_validated_row(row):
                raise DataError(
                    f"{path} line {line}: not a validated row (question, context, answers); "
                    "rerun medqa validate"
                )
            yield {
                "line": line,
                "id": row["id"] if isinstance(row.get("id"), str) else None,
                "question": row["question"],
                "context": row["context"],
                "answers": [
                    {"text": a["text"], "answer_start": int(a["answer_start"])}
                    for a in row["answers"]
                ],
            }


def load_split(path: Path, cache_dir: Path) -> Dataset | None:
    """A split's rows, as Arrow in ``cache_dir`` as they are read; None for none (refused by
    ``Dataset.from_generator``)."""
    from datasets import Dataset, Features, List, Value
    from datasets.exceptions import DatasetGenerationError

    with _open_validated(path) as fh:
        if not any(text.strip() for text in fh):
            return None
    answer = {"text": Value("string"), "answer_start": Value("int64")}
    columns = {"line": Value("int64"), "id": Value("string"), "question": Value("string")}
    features = Features({**columns, "context": Value("string"), "answers": List(answer)})
    try:
        return Dataset.from_generator(
            validated_rows, features=features, gen_kwargs={"path": path}, cache_dir=str(cache_dir)
        )
    except DatasetGenerationError as e:  # datasets wraps what the generator raised
        raise (e.__cause__ if isinstance(e.__cause__, DataError) else e) from None
