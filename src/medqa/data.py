"""The validate stage: read SQuAD-style QA data in any supported shape, repair what can be repaired
without guessing, check every row with pandera, and write the good rows per split, accounting for every
row read (accepted + repaired + rejected == read; see ValidationSummary).

Inputs (``validate.format``; ``auto`` picks by file suffix, in any case and with an optional ``.gz``,
and recognises ``save_to_disk`` folders). Anything else in a data folder is an error naming it, except
hidden files and README*/LICENSE* files. A lone surrogate (``"\\ud800"``) in any text stops the run with
the file and row named.

- ``squad``: SQuAD v1.1 / v2.0 JSON (``.json``). Every gold answer of a question is kept and checked.
- ``jsonl`` / ``csv`` / ``parquet``: one question per row with ``id``, ``question``, ``context`` and
  either ``answer_text`` + ``answer_start`` (empty text: no answer) or a SQuAD-style ``answers`` column.
- ``hf``: a Hugging Face ``Dataset`` / ``DatasetDict`` folder written by ``save_to_disk`` (``auto`` finds
  one as ``raw_path`` itself or as a sub-folder of it), or else any name ``datasets.load_dataset``
  takes, such as a hub dataset (which needs a network; offline it fails with one line, at once under
  HF_HUB_OFFLINE=1, else after the hub client's retries). Columns id/title/context/question/answers
  with ``answers = {"text": [...], "answer_start": [...]}``; splits are the DatasetDict keys.

Integer ids (public SQuAD-shaped files have them) become strings. is_impossible may be a bool, 0/1 or
true/false/yes/no; absent or blank, it is taken from the answers. A row's split comes from the data
(DatasetDict key, a top-level ``"split"`` in SQuAD JSON, a ``split`` column) or else from the file
name (``train.json``, ``squad_dev.jsonl``; "validation"/"valid"/"val" mean dev); when no row has one,
a hash of the context assigns 70/15/15. If only some rows have a split, the others fail known_split.
Data that names its splits must name all three (train, dev, test), or the stage stops and says so.

Repairs (``validate.repair``, on by default; each one a line of repairs.jsonl, see ``repair_records``):
edge whitespace stripped from an answer, an answer_start moved to the nearest exact occurrence of its
text within REPAIR_WINDOW characters, duplicate questions on one context merged into one with all their
gold answers. What cannot be repaired without guessing is left to the rules below.

Rules. Each check's name is the reason a rejected row shows (``column:check`` for column checks):

- answer_span_matches_context: ``context[answer_start : answer_start + len(text)] == text`` exactly,
  character for character (no whitespace stripping, no Unicode normalisation), because the tokenizer
  offsets that training uses are computed on that exact string.
- answer_has_edge_whitespace: an answer text must not begin or end with a character for which
  ``str.isspace()`` is true. Token offsets never cover whitespace, so such an answer is never exactly a
  token span; the repair strips it where the context has the stripped text at the shifted (or the given)
  start; otherwise strip the text and move answer_start at the source.
- answer_longer_than_context: an answer text longer than its context (the answer belongs elsewhere).
- malformed_answers: answers must be a list of ``{"text": non-empty str, "answer_start": int}``.
- is_impossible_matches_answers: is_impossible is a boolean, true exactly when there are no answers.
- duplicate_question_on_context: the same question on the same context twice in one split; the first
  is kept (with repair, one that could not be merged: say answerable once and unanswerable once).
- context_in_two_splits, question_on_context_in_two_splits: leakage between splits. The rows of the
  earliest split (train, then dev, then test) are kept and the others rejected; a repeated question
  is named by both checks, a new question on a repeated context by the first only.
- question:at_most_N_tokens (the validate stage): a question must leave room for a window of context
  (``medqa.features.max_question_tokens``) for ``base_model``'s tokenizer and the tokenize settings;
  the rejected row shows its ``question_tokens``.
- id:non_empty_id, id:unique_id, question/context:non_empty_text, question/context:at_most_N_chars,
  split:known_split.
"""

from __future__ import annotations

import fcntl
import glob
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from medqa.config import ValidateParams
from medqa.errors import DataError, first_line
from medqa.fileio import atomic_dir, write_json_atomic, write_jsonl_atomic

SPLITS = ("train", "dev", "test")
SPLIT_RANK = {s: i for i, s in enumerate(SPLITS)}
SPLIT_ALIASES = {
    "train": "train",
    "dev": "dev",
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "test": "test",
}
FILE_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "squad"}
KNOWN_FILES = ".json, .jsonl, .csv or .parquet files (any case, optionally .gz)"
IGNORED_PREFIXES = (
    "readme",
    "license",
    "licence",
)  # besides hidden files: never data, so not reported
SURROGATE = re.compile("[\ud800-\udfff]")
FLAT_REQUIRED = ("id", "question", "context")
HF_REQUIRED = ("id", "question", "context", "answers")
OUTPUT_COLUMNS = ["id", "title", "context", "question", "question_type", "is_impossible", "answers"]
COLUMNS = [*OUTPUT_COLUMNS, "split", "source", "row"]
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes"}, {"0", "false", "no"}
MAX_ROWS_SHOWN = 10
REPAIR_WINDOW = (
    32  # characters: how far a wrong answer_start may move to an exact occurrence of its text
)


# --- value normalisation: every source's values in one shape, anything unreadable left for a check ---


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _scalar(v: Any) -> Any:
    """numpy scalars (Parquet, Arrow) as Python ones, so checks and JSON output see plain types."""
    return v.item() if isinstance(v, np.generic) else v


def _value(v: Any) -> Any:
    """A checked field's value, with every kind of missing as None (NaN would reach JSON output as NaN)."""
    return None if _is_missing(v) else _scalar(v)


def _as_int(v: Any) -> Any:
    """An answer start from a flat file (text in CSV, float in Parquet with gaps) as an int if it is one."""
    v = _scalar(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", v):
        return int(v)
    return v


def _as_bool(v: Any) -> Any:
    """is_impossible spelled as a bool, 0/1 or a word ("true", "no", ...); anything else is left as is."""
    v = _scalar(v)
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return v.strip().lower() in TRUE_WORDS
    return v


def _is_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _answers(value: Any) -> Any:
    """Answers as a list of {"text", "answer_start"} dicts, from SQuAD's list or the Hugging Face
    dict of lists; a value with no such reading is returned unchanged for malformed_answers to name."""
    if _is_missing(value):
        return []
    if isinstance(value, Mapping) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        if _is_seq(texts) and _is_seq(starts) and len(texts) == len(starts):
            return [{"text": _scalar(t), "answer_start": _scalar(s)} for t, s in zip(texts, starts)]
        return value
    if _is_seq(value):
        return [
            {k: _scalar(x) for k, x in a.items()} if isinstance(a, Mapping) else _scalar(a)
            for a in value
        ]
    return value


def _text_or_empty(v: Any) -> str:
    """Free-text extras (title, question_type) are not checked, so keep them JSON-safe strings."""
    return "" if _is_missing(v) else v if isinstance(v, str) else str(_scalar(v))


def _row(
    *,
    id: Any,
    title: Any,
    context: Any,
    question: Any,
    question_type: Any,
    is_impossible: Any,
    answers: Any,
    split: Any,
    row: str,
) -> dict[str, Any]:
    """One QA row in the frame's shape; is_impossible defaults to "no answers" when absent or blank."""
    answers = _answers(answers)
    if _is_missing(is_impossible) or (isinstance(is_impossible, str) and not is_impossible.strip()):
        impossible = isinstance(answers, list) and not answers
    else:
        impossible = _as_bool(is_impossible)
    return {
        "id": _value(id),
        "title": _text_or_empty(title),
        "context": _value(context),
        "question": _value(question),
        "question_type": _text_or_empty(question_type),
        "is_impossible": impossible,
        "answers": answers,
        "split": split,
        "row": row,
    }


def _record_row(rec: Mapping[str, Any], *, answers: Any, split: Any, row: str) -> dict[str, Any]:
    """A row from a flat record (JSONL, CSV, Parquet, Hugging Face), whose fields are named as ours."""
    return _row(
        id=rec.get("id"),
        title=rec.get("title"),
        context=rec.get("context"),
        question=rec.get("question"),
        question_type=rec.get("question_type"),
        is_impossible=rec.get("is_impossible"),
        answers=answers,
        split=split,
        row=row,
    )


# --- readers: one per format, each raising a one-line DataError that names the file and position ---


def _split_from_name(path: Path) -> str | None:
    stem = path.name.split(".")[0].lower()
    for part in reversed(stem.replace("-", "_").split("_")):
        if part in SPLIT_ALIASES:
            return SPLIT_ALIASES[part]
    return None


def _file_format(path: Path) -> str | None:
    """The format a file's suffix names, ignoring case and a trailing ``.gz`` (``train.JSON.gz``: squad)."""
    return FILE_SUFFIXES.get(Path(path.name.lower().removesuffix(".gz")).suffix)


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when its name ends in ``.gz``; an empty file is refused here, as the
    readers would each name it differently."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or first_line(e)})") from None
    if data and path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (
            OSError,
            EOFError,
            zlib.error,
        ) as e:  # BadGzipFile is an OSError; EOFError: truncated
            raise DataError(f"{path}: not a valid gzip file ({first_line(e)})") from None
    if not data:
        raise DataError(f"{path}: empty file")
    return data


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _parse_json(path: Path, text: str, line_offset: int = 0) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: invalid JSON at line {e.lineno + line_offset} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply at line {1 + line_offset}") from None


def _read_squad(path: Path) -> list[dict[str, Any]]:
    doc = _parse_json(path, _read_text(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a 'data' list)")
    rows = []
    for a_i, article in enumerate(doc["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{a_i}] has no 'paragraphs' list")
        for p_i, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise DataError(f"{path}: data[{a_i}].paragraphs[{p_i}] has no 'qas' list")
            for q_i, qa in enumerate(para["qas"]):
                where = f"data[{a_i}].paragraphs[{p_i}].qas[{q_i}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: {where} is not an object")
                rows.append(
                    _row(
                        id=qa.get("id"),
                        title=article.get("title"),
                        context=para.get("context"),
                        question=qa.get("question"),
                        question_type=qa.get("question_type"),
                        is_impossible=qa.get("is_impossible"),
                        answers=qa.get("answers"),
                        split=doc.get("split"),
                        row=where,
                    )
                )
    return rows


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Parsed line by line (not pd.read_json) so a bad record is reported with its line number."""
    records: list[dict[str, Any]] = []
    columns: set[str] = set()
    for n, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        rec = _parse_json(path, line, line_offset=n - 1)
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
        records.append(rec)
        columns.update(rec)
    return records, columns


def _read_table(path: Path, fmt: str) -> tuple[list[dict[str, Any]], set[str]]:
    data = io.BytesIO(_read_bytes(path))
    try:
        if fmt == "csv":
            with warnings.catch_warnings():
                # index_col=False: a first row with extra fields must not turn its leading fields into an
                # index; pandas then warns about (and would drop) the extra fields, which we refuse.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(
                    data, dtype=str, keep_default_na=False, encoding="utf-8", index_col=False
                )
        else:
            df = pd.read_parquet(data)
    except pd.errors.ParserWarning:
        raise DataError(
            f"{path}: cannot read as csv: the first data row has more fields than the header"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (ValueError, OSError, pd.errors.ParserError, pyarrow.ArrowException) as e:
        raise DataError(f"{path}: cannot read as {fmt}: {first_line(e)}") from None
    return df.to_dict("records"), {str(c) for c in df.columns}


def _read_flat(path: Path, fmt: str) -> list[dict[str, Any]]:
    records, columns = _read_jsonl(path) if fmt == "jsonl" else _read_table(path, fmt)
    if not records:
        raise DataError(f"{path}: no rows")
    missing = [c for c in FLAT_REQUIRED if c not in columns]
    if "answers" not in columns:
        missing += [c for c in ("answer_text", "answer_start") if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = []
    for i, rec in enumerate(records):
        answers: Any
        if "answer_text" in columns:
            text = _scalar(rec.get("answer_text"))
            answers = (
                []
                if _is_missing(text) or (isinstance(text, str) and text == "")
                else [{"text": text, "answer_start": _as_int(rec.get("answer_start"))}]
            )
        else:
            answers = rec.get("answers")
        rows.append(_record_row(rec, answers=answers, split=rec.get("split"), row=f"row {i + 1}"))
    return rows


def is_saved_hf_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    if not path.is_dir():
        return False
    from datasets import config  # imported here: `datasets` takes a second to import

    return any(
        (path / name).is_file()
        for name in (config.DATASETDICT_JSON_FILENAME, config.DATASET_STATE_JSON_FILENAME)
    )


def _read_hf(source: str, saved: bool) -> list[dict[str, Any]]:
    """Rows of a save_to_disk folder (``saved``) or of whatever ``datasets.load_dataset(source)`` loads."""
    import datasets

    try:
        obj = datasets.load_from_disk(source) if saved else datasets.load_dataset(source)
    # datasets and the hub client raise many unrelated types; all mean "cannot load"
    except Exception as e:  # noqa: BLE001
        if saved:
            raise DataError(f"{source}: cannot load the saved dataset: {first_line(e)}") from None
        if Path(source).exists():
            raise DataError(
                f"{source}: datasets.load_dataset cannot load it ({first_line(e)})"
            ) from None
        raise DataError(
            f"{source}: datasets.load_dataset failed ({first_line(e)}); a hub dataset needs a "
            "network: offline, save it with save_to_disk and set validate.raw_path to that folder"
        ) from None
    parts = obj.items() if isinstance(obj, datasets.DatasetDict) else [(obj.split, obj)]
    rows = []
    for name, ds in parts:
        split = str(name) if name else None
        missing = [c for c in HF_REQUIRED if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{source}: split {split or '(unnamed)'} missing column(s) {', '.join(missing)}"
            )
        rows += [
            _record_row(
                rec,
                answers=rec.get("answers"),
                split=split or rec.get("split"),
                row=f"{split or ''}[{i}]",
            )
            for i, rec in enumerate(ds.to_list())
        ]
    return rows


def _ignored(path: Path) -> bool:
    """Hidden files (.gitkeep, .DS_Store) and README/LICENSE files, which sit beside data but are not data."""
    return path.name.startswith(".") or path.name.lower().startswith(IGNORED_PREFIXES)


def _inputs(raw_path: Path, fmt: str) -> list[tuple[Path, str]]:
    """The files and save_to_disk folders under ``raw_path``, each with the format that reads it.

    Anything else in a data folder is an error rather than skipped: a ``train.txt`` or ``test.tsv``
    left out silently would train or score on less data than the user thinks.
    """
    if fmt == "hf" or (fmt == "auto" and is_saved_hf_dataset(raw_path)):
        return [(raw_path, "hf")]
    if not raw_path.exists():
        raise DataError(
            f"{raw_path}: no such file or folder (for a hub dataset set validate.format: hf)"
        )
    if not raw_path.is_file() and not raw_path.is_dir():
        raise DataError(f"{raw_path}: not a file or folder (a device, socket or pipe)")
    if raw_path.is_file():
        kind = _file_format(raw_path) if fmt == "auto" else fmt
        if kind is None:
            raise DataError(
                f"{raw_path}: unknown format: expected {KNOWN_FILES} (or set validate.format)"
            )
        return [(raw_path, kind)]
    inputs: list[tuple[Path, str]] = []
    unknown = []
    for f in sorted(raw_path.iterdir()):
        if _ignored(f):
            continue
        if f.is_file() and (kind := _file_format(f)):
            inputs.append((f, kind if fmt == "auto" else fmt))
        elif fmt == "auto" and is_saved_hf_dataset(f):
            inputs.append((f, "hf"))
        else:
            unknown.append(f.name + ("/" if f.is_dir() else ""))
    if unknown:
        raise DataError(
            f"{raw_path}: cannot read {', '.join(unknown)}: a data folder holds {KNOWN_FILES}"
            f"{' or save_to_disk folders' if fmt == 'auto' else ''}; move the rest out "
            "(README*, LICENSE* and hidden files are ignored)"
        )
    if not inputs:
        raise DataError(
            f"{raw_path}: no .json, .jsonl, .csv or .parquet files or save_to_disk folders"
        )
    return inputs


def _split_value(v: Any) -> str | None:
    if _is_missing(v) or (isinstance(v, str) and v.strip() == ""):
        return None
    return SPLIT_ALIASES.get(v.strip().lower(), v) if isinstance(v, str) else str(_scalar(v))


def _surrogate(value: Any) -> str | None:
    """The first lone surrogate (``"\\ud800"`` in JSON) anywhere in a value, keys included, or None.

    Such a string is not Unicode text: it cannot be hashed by pandas, written as UTF-8 or tokenized,
    so a row holding one stops the run here, named, instead of failing inside a check or a write.
    Iterative, as junk answers may nest deeply.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if m := SURROGATE.search(v):
                return m.group()
        elif isinstance(v, Mapping):
            stack += [*v.keys(), *v.values()]
        elif _is_seq(v):
            stack += list(v)
    return None


def _refuse_surrogates(row: dict[str, Any]) -> None:
    for name in ("id", "title", "question", "context", "question_type", "answers", "split"):
        if (ch := _surrogate(row[name])) is not None:
            raise DataError(
                f"{row['source']} {row['row']}: {name} holds a lone surrogate U+{ord(ch):04X}, "
                "which is not Unicode text; fix the escape at the source"
            )


def _require_splits(raw_path: Path, splits: pd.Series) -> None:
    """Data that names its splits must name all three: an absent test split would otherwise surface
    stages later as an empty test.jsonl, and an absent dev split as a training run with no dev score."""
    present = [s for s in SPLITS if (splits == s).any()]
    missing = [s for s in SPLITS if s not in present]
    if missing:
        named = f"only {', '.join(present)}" if present else "none of train, dev, test"
        raise DataError(
            f"{raw_path}: no {' or '.join(missing)} split: the data names its splits (file "
            f"names, a split column or DatasetDict keys) but {named}; add the {missing[0]} "
            f"rows (e.g. a {missing[0]}.json beside the others), or name no split at all so "
            "that a hash of the context assigns train/dev/test 70/15/15"
        )


def read_qa_records(
    raw_path: Path, fmt: str = "auto", *, require_splits: bool = False
) -> pd.DataFrame:
    """Read every record under ``raw_path`` into one frame with ``source`` and ``row`` columns.

    ``require_splits`` (the validate stage): data that names splits must name train, dev and test.
    Off for a single evaluation file, whose name (``dev.json``) may name one split only.
    """
    raw_path = Path(raw_path)
    rows: list[dict[str, Any]] = []
    for f, kind in _inputs(raw_path, fmt):
        if kind == "hf":
            file_rows = _read_hf(str(f), saved=is_saved_hf_dataset(f))
        else:
            file_rows = _read_squad(f) if kind == "squad" else _read_flat(f, kind)
        name_split = _split_from_name(f) if f.exists() else None
        for r in file_rows:
            r["source"] = str(f)
            _refuse_surrogates(r)
            r["split"] = _split_value(r["split"]) or name_split
        rows.extend(file_rows)
    if not rows:
        raise DataError(f"{raw_path}: no questions found")
    df = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    if df["split"].isna().all():
        df["split"] = [split_by_context(c) for c in df["context"]]
    elif require_splits:
        _require_splits(raw_path, df["split"])
    df["id"] = pd.Series(
        [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in df["id"]],
        index=df.index,
        dtype=object,
    )
    return df


def split_by_context(context: Any) -> str:
    """Deterministic 70/15/15 split keyed on the context, so one context never spans splits."""
    slot = int(hashlib.sha256(str(context).encode("utf-8")).hexdigest()[:8], 16) % 20
    return "train" if slot < 14 else "dev" if slot < 17 else "test"


# --- checks: each one names one fault and never raises on odd values (other checks name those) ---


def _well_formed(a: Any) -> bool:
    return (
        isinstance(a, dict)
        and isinstance(a.get("text"), str)
        and a["text"] != ""
        and isinstance(a.get("answer_start"), int)
        and not isinstance(a["answer_start"], bool)
    )


def _good_answers(answers: Any) -> list[tuple[str, int]]:
    """(text, start) of the well-formed answers; the rest are malformed_answers' business."""
    if not isinstance(answers, list):
        return []
    return [(a["text"], a["answer_start"]) for a in answers if _well_formed(a)]


def _answers_well_formed(answers: Any) -> bool:
    return isinstance(answers, list) and all(_well_formed(a) for a in answers)


def _impossible_matches(is_impossible: Any, answers: Any) -> bool:
    if not isinstance(answers, list):
        return True
    return isinstance(is_impossible, bool) and is_impossible == (len(answers) == 0)


def _span_ok(context: Any, answers: Any) -> bool:
    if not isinstance(context, str):
        return True
    return all(s < len(context) and _span_at(context, t, s) for t, s in _good_answers(answers))


def _fits_context(context: Any, answers: Any) -> bool:
    return not isinstance(context, str) or all(
        len(t) <= len(context) for t, _ in _good_answers(answers)
    )


def _no_edge_whitespace(answers: Any) -> bool:
    return all(t == t.strip() for t, _ in _good_answers(answers))


def _rowwise(fn: Callable[..., bool], *cols: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A frame-level check that calls ``fn`` on each row's ``cols`` (faster than DataFrame.apply)."""

    def check(df: pd.DataFrame) -> pd.Series:
        return pd.Series(
            [fn(*vals) for vals in zip(*(df[c] for c in cols))], index=df.index, dtype=bool
        )

    return check


def _keys(s: pd.Series) -> pd.Series:
    """Hashable, same-type stand-ins for a column's values, so grouping works on malformed rows too."""
    return s.map(lambda v: v if isinstance(v, str) else f"\0{type(v).__name__}:{v!r}")


def _unique_id(ids: pd.Series) -> pd.Series:
    return ~(_keys(ids).duplicated(keep=False) & ids.map(lambda v: isinstance(v, str)))


def _first_in_split(df: pd.DataFrame) -> pd.Series:
    return ~pd.DataFrame({c: _keys(df[c]) for c in ("split", "question", "context")}).duplicated(
        keep="first"
    )


def _no_leak(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """False for rows whose key also appears in an earlier split (train, then dev, then test)."""
    rank = df["split"].map(
        lambda s: SPLIT_RANK.get(s, len(SPLITS)) if isinstance(s, str) else len(SPLITS)
    )
    earliest = rank.groupby([_keys(df[k]) for k in keys], sort=False).transform("min")
    return rank == earliest


@dataclass(frozen=True)
class QuestionLimit:
    """The longest question, in tokens, that fits beside a window of context for the base model's
    tokenizer and the tokenize settings (``medqa.features.question_limit`` builds it). Limits in
    characters cannot say this: a 998-character question passes them and then stops tokenize."""

    max_tokens: int
    count: Callable[[list[str]], list[int]]  # tokens of each question, as tokenize counts them
    setting: str  # the model and settings the limit is for, as the messages name them

    @property
    def check_name(self) -> str:
        return f"at_most_{self.max_tokens}_tokens"

    def fits(self, questions: pd.Series) -> pd.Series:
        """True where a question fits; values that are not text pass (non_empty_text names them)."""
        texts = {i: v for i, v in questions.items() if isinstance(v, str)}
        counts = dict(zip(texts, self.count(list(texts.values()))))
        return pd.Series(
            [counts.get(i, 0) <= self.max_tokens for i in questions.index],
            index=questions.index,
            dtype=bool,
        )


def build_schema(
    params: ValidateParams, question_limit: QuestionLimit | None = None
) -> pa.DataFrameSchema:
    """The pandera schema every QA row must pass; check names are the reasons users see.

    Checks run with ``ignore_na=False``: a missing id, question or split is a failure, not a skip.
    With ``question_limit``, a question too long in tokens fails ``question:at_most_N_tokens``.
    """

    def each(fn: Callable[[Any], bool], name: str) -> pa.Check:
        return pa.Check(fn, element_wise=True, ignore_na=False, name=name)

    def text_checks(limit: int) -> list[pa.Check]:
        return [
            each(lambda v: isinstance(v, str) and v.strip() != "", "non_empty_text"),
            each(lambda v: not isinstance(v, str) or len(v) <= limit, f"at_most_{limit}_chars"),
        ]

    return pa.DataFrameSchema(
        {
            "id": pa.Column(
                checks=[
                    each(lambda v: isinstance(v, str) and v.strip() != "", "non_empty_id"),
                    pa.Check(_unique_id, ignore_na=False, name="unique_id"),
                ],
                nullable=True,
            ),
            "question": pa.Column(
                checks=text_checks(params.max_question_chars)
                + (
                    [pa.Check(question_limit.fits, ignore_na=False, name=question_limit.check_name)]
                    if question_limit
                    else []
                ),
                nullable=True,
            ),
            "context": pa.Column(checks=text_checks(params.max_context_chars), nullable=True),
            "split": pa.Column(checks=each(lambda v: v in SPLITS, "known_split"), nullable=True),
        },
        checks=[
            pa.Check(_rowwise(_answers_well_formed, "answers"), name="malformed_answers"),
            pa.Check(
                _rowwise(_impossible_matches, "is_impossible", "answers"),
                name="is_impossible_matches_answers",
            ),
            pa.Check(_rowwise(_span_ok, "context", "answers"), name="answer_span_matches_context"),
            pa.Check(
                _rowwise(_fits_context, "context", "answers"), name="answer_longer_than_context"
            ),
            pa.Check(_rowwise(_no_edge_whitespace, "answers"), name="answer_has_edge_whitespace"),
            pa.Check(_first_in_split, name="duplicate_question_on_context"),
            pa.Check(lambda df: _no_leak(df, ["context"]), name="context_in_two_splits"),
            pa.Check(
                lambda df: _no_leak(df, ["question", "context"]),
                name="question_on_context_in_two_splits",
            ),
        ],
        coerce=False,
    )


# --- lossless repairs (validate.repair): only where what the source meant is certain, each recorded ---


@dataclass(frozen=True)
class Repaired:
    """The rows after repairs and what was done to them, keyed by position in the frame as read."""

    frame: (
        pd.DataFrame
    )  # the rows read, answers repaired, merged rows left out; index: position as read
    records: dict[int, list[dict[str, Any]]]  # position -> the repairs made to that row, in order
    merged_into: dict[
        int, int
    ]  # position of a merged row -> position of the row that now holds its answers


def _span_at(context: str, text: str, start: int) -> bool:
    return start >= 0 and context[start : start + len(text)] == text


def _stripped(context: str, text: str, start: int) -> tuple[str, int] | None:
    """The answer without edge whitespace and its start, if the context has the stripped text there:
    past the leading whitespace (the start was the padded text's), else at the start itself (the start
    was already the stripped text's)."""
    core, lead = text.strip(), len(text) - len(text.lstrip())
    if not core or core == text:
        return None
    return next(((core, at) for at in (start + lead, start) if _span_at(context, core, at)), None)


def _nearest_occurrence(context: str, text: str, start: int) -> int | None:
    """Start of the exact occurrence of ``text`` nearest ``start`` within REPAIR_WINDOW characters; None
    when there is none, or two are equally near (which one was meant cannot be told)."""
    hits, at = [], context.find(text, max(0, start - REPAIR_WINDOW))
    while at != -1 and at <= start + REPAIR_WINDOW:
        hits.append(at)
        at = context.find(text, at + 1)
    nearest = sorted(hits, key=lambda h: abs(h - start))[:2]
    if not nearest or (len(nearest) == 2 and abs(nearest[0] - start) == abs(nearest[1] - start)):
        return None
    return nearest[0]


def _answer_repairs(context: str, text: str, start: int) -> list[tuple[str, str, int]]:
    """(kind, text, start) after each repair one answer needs. Stripping comes first, so that an answer
    whose start is right for its stripped text is not moved to another occurrence of the padded one."""
    if fixed := _stripped(context, text, start):
        return [("strip_answer_whitespace", *fixed)]
    if (
        _span_at(context, text, start)
        or (moved := _nearest_occurrence(context, text, start)) is None
    ):
        return []
    steps = [("shift_answer_start", text, moved)]
    if fixed := _stripped(context, text, moved):
        steps.append(("strip_answer_whitespace", *fixed))
    return steps


def _repair_answers(context: Any, answers: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A row's answers with edge whitespace and near-miss starts repaired, and a record per repair."""
    if not isinstance(context, str) or not isinstance(answers, list):
        return answers, []
    out, records = [], []
    for k, a in enumerate(answers):
        if _well_formed(a):
            text, start = a["text"], a["answer_start"]
            for kind, new_text, new_start in _answer_repairs(context, text, start):
                records.append(
                    {
                        "what": kind,
                        "answer": k,
                        "before": {"text": text, "answer_start": start},
                        "after": {"text": new_text, "answer_start": new_start},
                    }
                )
                text, start = new_text, new_start
            if (text, start) != (a["text"], a["answer_start"]):
                a = {**a, "text": text, "answer_start": start}
        out.append(a)
    return out, records


def _question_key(question: str) -> str:
    """Questions that differ only in case or spacing are one question."""
    return " ".join(question.split()).casefold()


def _clean(row: Mapping[str, Any]) -> bool:
    """A row that passes every check of its own fields: the only kind merged, so a merge never carries
    a fault of one row into another (rows that are not clean are left to the checks, as without repair)."""
    text_ok = all(
        isinstance(row[c], str) and row[c].strip() != "" for c in ("id", "question", "context")
    )
    answers = row["answers"]
    return (
        text_ok
        and isinstance(row["split"], str)
        and _answers_well_formed(answers)
        and _impossible_matches(row["is_impossible"], answers)
        and _span_ok(row["context"], answers)
        and _fits_context(row["context"], answers)
        and _no_edge_whitespace(answers)
    )


def _mergeable(group: pd.DataFrame, id_counts: Counter[str]) -> bool:
    """Duplicates merge only when nothing is lost: all answerable or all unanswerable, the same title
    and question type, and ids that no row outside the group uses (else the merge would hide a clash)."""
    return (
        group["is_impossible"].nunique() == 1
        and group["title"].nunique() == 1
        and group["question_type"].nunique() == 1
        and all(id_counts[i] == n for i, n in Counter(group["id"]).items())
    )


def repair_records(df: pd.DataFrame) -> Repaired:
    """Repair what can be repaired without guessing, before the checks run (validate.repair):

    - strip_answer_whitespace: an answer with edge whitespace is stripped and its start shifted past the
      leading whitespace, when the stripped text is exactly there (or exactly at the start as given);
    - shift_answer_start: a start that misses its text moves to the nearest exact occurrence within
      REPAIR_WINDOW characters (not when two are equally near);
    - merge_duplicate_question: clean rows asking one question (same text up to case and spacing) on one
      context in one split become the first of them, with every distinct (text, start) gold answer.

    Anything else is left for the checks to reject, as with ``repair: false``.
    """
    df = df.copy()
    records: dict[int, list[dict[str, Any]]] = {}

    def note(i: int, record: dict[str, Any]) -> None:
        where = {
            "id": _shown_id(df.at[i, "id"]),
            "source": df.at[i, "source"],
            "row": df.at[i, "row"],
        }
        records.setdefault(i, []).append({**where, **record})

    answers: dict[int, Any] = {}
    for i, context, row_answers in zip(df.index, df["context"], df["answers"]):
        answers[i], row_records = _repair_answers(context, row_answers)
        for record in row_records:
            note(i, record)
    df["answers"] = pd.Series([answers[i] for i in df.index], index=df.index, dtype=object)

    merged_into: dict[int, int] = {}
    clean = df[[_clean(row) for row in df.to_dict("records")]]
    keys = pd.DataFrame(
        {
            "split": clean["split"],
            "question": clean["question"].map(_question_key),
            "context": clean["context"],
        }
    )
    repeated = keys.duplicated(keep=False)
    id_counts = Counter(v for v in df["id"] if isinstance(v, str))
    for _, group in clean[repeated].groupby([keys[c][repeated] for c in keys], sort=False):
        if not _mergeable(group, id_counts):
            continue
        first, *rest = group.index
        union = list(answers[first])
        seen = {(a["text"], a["answer_start"]) for a in union}
        for a in (a for j in rest for a in answers[j]):
            if (a["text"], a["answer_start"]) not in seen:
                seen.add((a["text"], a["answer_start"]))
                union.append(a)
        kept = {
            "id": df.at[first, "id"],
            "source": df.at[first, "source"],
            "row": df.at[first, "row"],
        }
        for j in rest:
            merged_into[j] = first
            note(
                j,
                {
                    "what": "merge_duplicate_question",
                    "before": {"question": df.at[j, "question"], "answers": answers[j]},
                    "after": {"merged_into": kept, "answers": union},
                },
            )
        if len(union) > len(answers[first]):
            note(
                first,
                {
                    "what": "merge_duplicate_question",
                    "before": {"answers": answers[first]},
                    "after": {"answers": union, "merged_from": [df.at[j, "id"] for j in rest]},
                },
            )
            answers[first] = union
    df["answers"] = pd.Series([answers[i] for i in df.index], index=df.index, dtype=object)
    return Repaired(df.drop(index=list(merged_into)), records, merged_into)


# --- outputs: written whole or not at all, and what killed runs left behind cleaned up ---


def _unheld(folder: Path) -> bool:
    """Whether no process holds a lock on ``folder`` (``stage_output_dir`` holds one on its temp
    folder until the rename): such a temp folder belongs to a run that was killed."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False  # gone already, or not ours to read
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases a lock taken here


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_dirs(path: Path) -> list[Path]:
    """Remove what killed runs writing ``path`` left beside it, and return it: ``.<name>.tmp-*``
    temp folders no live process holds a lock on, and ``.<name>.old-<pid>`` folders of a process
    that is gone (the previous output, moved aside for the swap: put back if ``path`` is missing,
    as the last good output). Other outputs' temp folders are never touched."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for f in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
        if not f.is_dir() or f.is_symlink():
            continue
        kind, _, pid = f.name[len(path.name) + 2 :].partition("-")
        orphaned_old = kind == "old" and pid.isdigit() and not _pid_alive(int(pid))
        if orphaned_old and not path.exists():
            os.replace(f, path)
        elif orphaned_old or (kind == "tmp" and _unheld(f)):
            shutil.rmtree(f, ignore_errors=True)
            removed.append(f)
    return removed


@contextmanager
def stage_output_dir(path: Path) -> Iterator[Path]:
    """``atomic_dir`` for a stage's output folder, after removing what killed runs left beside it.

    The temp folder is locked (flock, which dies with the process) from just after it is made until
    it has been renamed into place, so a run cleaning up never removes a live run's temp folder (but
    for the instant between mkdtemp and flock, which only two runs writing one output at once meet).
    """
    remove_stale_temp_dirs(path)
    fds: list[int] = []

    def close_all() -> None:
        for fd in fds:
            os.close(fd)

    with ExitStack() as stack:
        stack.callback(close_all)  # runs last: after the rename
        tmp = stack.enter_context(atomic_dir(path))
        fds.append(os.open(tmp, os.O_RDONLY))
        fcntl.flock(fds[0], fcntl.LOCK_EX)
        yield tmp


@dataclass(frozen=True)
class ValidationSummary:
    """What happened to every row read: rows_in == accepted + repaired + rejected, always.

    accepted: written as read. repaired: changed by a repair and written, or merged into another row
    (``merged`` of them, which have no line of their own). written: lines per split file, so
    sum(written) == sum(accepted) + sum(repaired) - merged.
    """

    rows_in: int
    accepted: dict[str, int]
    repaired: dict[str, int]
    merged: int
    rejected: int
    written: dict[str, int]
    repairs_by_kind: dict[str, int]
    failures_by_check: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "accepted": sum(self.accepted.values()),
            "repaired": sum(self.repaired.values()),
            "rejected": self.rejected,
            "merged": self.merged,
            "accepted_by_split": self.accepted,
            "repaired_by_split": self.repaired,
            "written_by_split": self.written,
            "repairs_by_kind": self.repairs_by_kind,
            "failures_by_check": self.failures_by_check,
        }


def find_invalid_rows(
    df: pd.DataFrame, params: ValidateParams, question_limit: QuestionLimit | None = None
) -> dict[int, list[str]]:
    """Map frame position → sorted names of the checks that row fails (all failures, lazily collected)."""
    df = df.reset_index(drop=True)
    try:
        build_schema(params, question_limit).validate(df, lazy=True)
        return {}
    except pa.errors.SchemaErrors as err:
        fc = err.failure_cases
    unplaced = fc[fc["index"].isna()]
    if not unplaced.empty:  # a check that could not run must not let rows through unchecked
        case = unplaced.iloc[0]
        failure = str(case["failure_case"]).replace("\n", " ")
        raise DataError(f"check {case['check']} could not run: {failure}")
    reasons: dict[int, list[str]] = {}
    for _, case in fc.drop_duplicates(["index", "check"]).iterrows():
        check = str(case["check"])
        is_column_check = case.get("schema_context") == "Column" and isinstance(case["column"], str)
        label = f"{case['column']}:{check}" if is_column_check else check
        reasons.setdefault(int(case["index"]), []).append(label)
    return {i: sorted(labels) for i, labels in reasons.items()}


def _question_tokens(
    df: pd.DataFrame, reasons: dict[int, list[str]], limit: QuestionLimit | None
) -> dict[int, int]:
    """Length in tokens of each question rejected for its length in tokens, to show beside it."""
    if limit is None:
        return {}
    label = f"question:{limit.check_name}"
    too_long = [i for i, r in reasons.items() if label in r]
    return dict(zip(too_long, limit.count([df.at[i, "question"] for i in too_long])))


def _failure_summary(
    df: pd.DataFrame,
    reasons: dict[int, list[str]],
    by_check: dict[str, int],
    tokens: dict[int, int],
    limit: QuestionLimit | None,
) -> str:
    lines = [f"{len(reasons)} of {len(df)} rows failed validation:"]
    lines += [f"  {check}: {n}" for check, n in by_check.items()]
    if tokens and limit:
        lines.append(f"  (a question takes at most {limit.max_tokens} tokens for {limit.setting})")
    for i in sorted(reasons)[:MAX_ROWS_SHOWN]:
        row = df.loc[i]
        length = f" (question: {tokens[i]} tokens)" if i in tokens else ""
        lines.append(
            f"  {row['source']} {row['row']} id={row['id']!r}: {', '.join(reasons[i])}{length}"
        )
    if len(reasons) > MAX_ROWS_SHOWN:
        lines.append(f"  ... and {len(reasons) - MAX_ROWS_SHOWN} more")
    lines.append(
        "Fix the rows, or set validate.on_invalid: drop to write them to the rejected-rows file."
    )
    return "\n".join(lines)


def _shown_id(v: Any) -> str | None:
    """A rejected row's id as the rejected-rows file shows it: strings as they are, anything else as
    its repr, so the file stays strict JSON (no NaN or Infinity) whatever the source held."""
    return v if v is None or isinstance(v, str) else repr(v)


def validate_records(
    raw_path: Path,
    out_dir: Path,
    rejected_path: Path,
    report_path: Path,
    params: ValidateParams,
    *,
    repairs_path: Path | None = None,
    question_limit: QuestionLimit | None = None,
) -> ValidationSummary:
    """Validate raw QA data and write ``out_dir/{train,dev,test}.jsonl``; raise on bad rows in fail mode.

    With ``params.repair`` the rows are repaired first (``repair_records``); the repairs of rows that are
    written go to ``repairs_path`` (default: repairs.jsonl beside ``rejected_path``), always written, empty
    when there are none. A merged row is rejected with the row it was merged into, with that row's reasons
    and duplicate_question_on_context, so that every row read is accounted for.
    With ``question_limit`` (the CLI always gives one), a question too long in tokens is rejected,
    its length in tokens shown (``question_tokens`` in the rejected-rows file).
    """
    df = read_qa_records(raw_path, params.format, require_splits=True).reset_index(drop=True)
    fixed = repair_records(df) if params.repair else Repaired(df, {}, {})
    reasons = {
        int(fixed.frame.index[i]): r
        for i, r in find_invalid_rows(fixed.frame, params, question_limit).items()
    }
    for j, first in fixed.merged_into.items():
        if first in reasons:
            reasons[j] = sorted({*reasons[first], "duplicate_question_on_context"})
    reasons = dict(sorted(reasons.items()))
    by_check = dict(Counter(r for rs in reasons.values() for r in rs).most_common())
    tokens = _question_tokens(df, reasons, question_limit)
    if reasons and params.on_invalid == "fail":
        raise DataError(_failure_summary(df, reasons, by_check, tokens, question_limit))
    repairs = {i: recs for i, recs in fixed.records.items() if i not in reasons}
    keep = fixed.frame.drop(index=[i for i in reasons if i in fixed.frame.index])
    accepted, repaired, written = {}, {}, {}
    with stage_output_dir(out_dir) as tmp:
        for split in SPLITS:
            part = keep[keep["split"] == split]
            written[split] = write_jsonl_atomic(
                tmp / f"{split}.jsonl", part[OUTPUT_COLUMNS].to_dict("records")
            )
            repaired[split] = sum(1 for i in repairs if df.at[i, "split"] == split)
            accepted[split] = sum(1 for i in part.index if i not in repairs)
    rejected_rows = [
        {
            "id": _shown_id(df.at[i, "id"]),
            "source": df.at[i, "source"],
            "row": df.at[i, "row"],
            "reasons": reasons[i],
            **({"question_tokens": tokens[i]} if i in tokens else {}),
        }
        for i in reasons
    ]
    write_jsonl_atomic(rejected_path, rejected_rows)
    repair_rows = [record for i in sorted(repairs) for record in repairs[i]]
    write_jsonl_atomic(repairs_path or Path(rejected_path).parent / "repairs.jsonl", repair_rows)
    merged = sum(1 for j in fixed.merged_into if j not in reasons)
    summary = ValidationSummary(
        rows_in=len(df),
        accepted=accepted,
        repaired=repaired,
        merged=merged,
        rejected=len(rejected_rows),
        written=written,
        repairs_by_kind=dict(Counter(r["what"] for r in repair_rows).most_common()),
        failures_by_check=by_check,
    )
    assert summary.rows_in == sum(accepted.values()) + sum(repaired.values()) + summary.rejected, (
        "rows lost"
    )
    assert sum(written.values()) == sum(accepted.values()) + sum(repaired.values()) - merged, (
        "lines lost"
    )
    write_json_atomic(report_path, summary.as_dict())
    return summary


def validate_eval_file(
    path: Path, params: ValidateParams
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a user's data file checked by the validate stage's rules, and a label per row.

    The whole file is one evaluation set: its rows are put in one split, so split names and
    cross-split leakage (training concerns) cannot reject them, while every other check applies.
    The first bad row stops the run, named by file, row and id with its failed checks.
    """
    df = read_qa_records(Path(path), "auto").reset_index(drop=True)
    df["split"] = "test"
    reasons = find_invalid_rows(df, params)
    if reasons:
        i = min(reasons)
        more = f" ({len(reasons) - 1} more rows fail validation)" if len(reasons) > 1 else ""
        raise DataError(
            f"{df.loc[i, 'source']} {df.loc[i, 'row']} id={df.loc[i, 'id']!r}: "
            f"{', '.join(reasons[i])}{more}"
        )
    # through JSON, as the validate stage writes them, so the rows are the ones a pipeline run would see
    rows = [json.loads(json.dumps(r, default=str)) for r in df[OUTPUT_COLUMNS].to_dict("records")]
    return rows, [f"{s} {r}" for s, r in zip(df["source"], df["row"])]
