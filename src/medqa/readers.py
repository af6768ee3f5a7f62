"""Reading raw QA data in every supported shape into one frame of rows (``records.COLUMNS``), each
named by its file and position; a file that cannot be read stops the run with one line naming it.

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
"""

from __future__ import annotations

import gzip
import io
import json
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow

from medqa.errors import DataError, first_line
from medqa.records import (
    COLUMNS,
    SPLITS,
    as_int,
    is_missing,
    is_seq,
    record_row,
    scalar,
    split_by_context,
)

SPLIT_ALIASES = {**{s: s for s in SPLITS}, "validation": "dev", "valid": "dev", "val": "dev"}
FILE_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "squad"}
KNOWN_FILES = ".json, .jsonl, .csv or .parquet files (any case, optionally .gz)"
# besides hidden files: never data, so not reported
IGNORED_PREFIXES = ("readme", "license", "licence")
SURROGATE = re.compile("[\ud800-\udfff]")
FLAT_REQUIRED = ("id", "question", "context")
HF_REQUIRED = ("id", "question", "context", "answers")
FRAME_CHUNK_ROWS = 50_000  # rows held as dicts at once while the frame is built


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
        # BadGzipFile is an OSError; EOFError: truncated
        except (OSError, EOFError, zlib.error) as e:
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


def _read_squad(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a SQuAD JSON file, article by article; each article's parsed objects are let go
    once its rows are made, so the parsed file and the frame built from it never both sit whole
    in memory."""
    doc = _parse_json(path, _read_text(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a 'data' list)")
    articles, split = doc.pop("data"), doc.get("split")
    for a_i in range(len(articles)):
        article, articles[a_i] = articles[a_i], None
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{a_i}] has no 'paragraphs' list")
        for p_i, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise DataError(f"{path}: data[{a_i}].paragraphs[{p_i}] has no 'qas' list")
            for q_i, qa in enumerate(para["qas"]):
                where = f"data[{a_i}].paragraphs[{p_i}].qas[{q_i}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: {where} is not an object")
                # a SQuAD question's own fields, plus the title and passage it sits under
                rec = {**qa, "title": article.get("title"), "context": para.get("context")}
                yield record_row(rec, answers=qa.get("answers"), split=split, row=where)


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


def _read_flat(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    records, columns = _read_jsonl(path) if fmt == "jsonl" else _read_table(path, fmt)
    if not records:
        raise DataError(f"{path}: no rows")
    missing = [c for c in FLAT_REQUIRED if c not in columns]
    if "answers" not in columns:
        missing += [c for c in ("answer_text", "answer_start") if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    for i, rec in enumerate(records):
        answers: Any
        if "answer_text" in columns:
            text = scalar(rec.get("answer_text"))
            answers = (
                []
                if is_missing(text) or (isinstance(text, str) and text == "")
                else [{"text": text, "answer_start": as_int(rec.get("answer_start"))}]
            )
        else:
            answers = rec.get("answers")
        yield record_row(rec, answers=answers, split=rec.get("split"), row=f"row {i + 1}")


def is_saved_hf_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    if not path.is_dir():
        return False
    from datasets import config  # imported here: `datasets` takes a second to import

    return any(
        (path / name).is_file()
        for name in (config.DATASETDICT_JSON_FILENAME, config.DATASET_STATE_JSON_FILENAME)
    )


def _read_hf(source: str, saved: bool) -> Iterator[dict[str, Any]]:
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
    for name, ds in parts:
        split = str(name) if name else None
        missing = [c for c in HF_REQUIRED if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{source}: split {split or '(unnamed)'} missing column(s) {', '.join(missing)}"
            )
        for i, rec in enumerate(ds):  # row by row: never the whole split as Python objects
            yield record_row(
                rec,
                answers=rec.get("answers"),
                split=split or rec.get("split"),
                row=f"{split or ''}[{i}]",
            )


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
    if is_missing(v) or (isinstance(v, str) and v.strip() == ""):
        return None
    return SPLIT_ALIASES.get(v.strip().lower(), v) if isinstance(v, str) else str(scalar(v))


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
        elif is_seq(v):
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
    frames, rows = [], []
    for f, kind in _inputs(raw_path, fmt):
        if kind == "hf":
            file_rows = _read_hf(str(f), saved=is_saved_hf_dataset(f))
        else:
            file_rows = _read_squad(f) if kind == "squad" else _read_flat(f, kind)
        name_split, source = _split_from_name(f) if f.exists() else None, str(f)
        for r in file_rows:
            r["source"] = source
            _refuse_surrogates(r)
            r["split"] = _split_value(r["split"]) or name_split
            rows.append(r)
            if len(rows) == FRAME_CHUNK_ROWS:  # as columns: a row dict weighs more than its values
                frames.append(pd.DataFrame(rows, columns=COLUMNS, dtype=object))
                rows = []
    if rows:
        frames.append(pd.DataFrame(rows, columns=COLUMNS, dtype=object))
    if not frames:
        raise DataError(f"{raw_path}: no questions found")
    df = pd.concat(frames, ignore_index=True)
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
