"""The validate stage: read SQuAD-style QA data in any supported shape, check every row with pandera,
and write the accepted rows per split, accounting for every row read (accepted + rejected == read).

Inputs (``validate.format``; ``auto`` picks by file suffix and recognises ``save_to_disk`` folders):

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

Rules. Each check's name is the reason a rejected row shows (``column:check`` for column checks):

- answer_span_matches_context: ``context[answer_start : answer_start + len(text)] == text`` exactly,
  character for character (no whitespace stripping, no Unicode normalisation), because the tokenizer
  offsets that training uses are computed on that exact string.
- answer_has_edge_whitespace: an answer text must not begin or end with a character for which
  ``str.isspace()`` is true. Token offsets never cover whitespace, so such an answer is never exactly a
  token span, and the validator does not rewrite data: strip the text and move answer_start at the source.
- answer_longer_than_context: an answer text longer than its context (the answer belongs elsewhere).
- malformed_answers: answers must be a list of ``{"text": non-empty str, "answer_start": int}``.
- is_impossible_matches_answers: is_impossible is a boolean, true exactly when there are no answers.
- duplicate_question_on_context: the same question on the same context twice in one split; the first
  is kept.
- context_in_two_splits, question_on_context_in_two_splits: leakage between splits. The rows of the
  earliest split (train, then dev, then test) are kept and the others rejected; a repeated question
  is named by both checks, a new question on a repeated context by the first only.
- id:non_empty_id, id:unique_id, question/context:non_empty_text, question/context:at_most_N_chars,
  split:known_split.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from medqa.atomic import atomic_dir, write_json_atomic, write_jsonl_atomic
from medqa.config import ValidateParams
from medqa.errors import DataError

SPLITS = ("train", "dev", "test")
SPLIT_RANK = {s: i for i, s in enumerate(SPLITS)}
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev",
                 "test": "test"}
FILE_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "squad"}
FLAT_REQUIRED = ("id", "question", "context")
HF_REQUIRED = ("id", "question", "context", "answers")
OUTPUT_COLUMNS = ["id", "title", "context", "question", "question_type", "is_impossible", "answers"]
COLUMNS = [*OUTPUT_COLUMNS, "split", "source", "row"]
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes"}, {"0", "false", "no"}
MAX_ROWS_SHOWN = 10


# --- value normalisation: every source's values in one shape, anything unreadable left for a check ---

def _first_line(e: BaseException) -> str:
    """An exception's message cut to its first line, so every read error stays one line."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


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
        return [{k: _scalar(x) for k, x in a.items()} if isinstance(a, Mapping) else _scalar(a) for a in value]
    return value


def _text_or_empty(v: Any) -> str:
    """Free-text extras (title, question_type) are not checked, so keep them JSON-safe strings."""
    return "" if _is_missing(v) else v if isinstance(v, str) else str(_scalar(v))


def _row(*, id: Any, title: Any, context: Any, question: Any, question_type: Any, is_impossible: Any,
         answers: Any, split: Any, row: str) -> dict[str, Any]:
    """One QA row in the frame's shape; is_impossible defaults to "no answers" when absent or blank."""
    answers = _answers(answers)
    if _is_missing(is_impossible) or (isinstance(is_impossible, str) and not is_impossible.strip()):
        impossible = isinstance(answers, list) and not answers
    else:
        impossible = _as_bool(is_impossible)
    return {"id": _value(id), "title": _text_or_empty(title), "context": _value(context),
            "question": _value(question), "question_type": _text_or_empty(question_type),
            "is_impossible": impossible, "answers": answers, "split": split, "row": row}


def _record_row(rec: Mapping[str, Any], *, answers: Any, split: Any, row: str) -> dict[str, Any]:
    """A row from a flat record (JSONL, CSV, Parquet, Hugging Face), whose fields are named as ours."""
    return _row(id=rec.get("id"), title=rec.get("title"), context=rec.get("context"), question=rec.get("question"),
                question_type=rec.get("question_type"), is_impossible=rec.get("is_impossible"), answers=answers,
                split=split, row=row)


# --- readers: one per format, each raising a one-line DataError that names the file and position ---

def _split_from_name(path: Path) -> str | None:
    stem = path.name.split(".")[0].lower()
    for part in reversed(stem.replace("-", "_").split("_")):
        if part in SPLIT_ALIASES:
            return SPLIT_ALIASES[part]
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or _first_line(e)})") from None


def _parse_json(path: Path, text: str, line_offset: int = 0) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno + line_offset} column {e.colno}: {e.msg}") from None
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
                rows.append(_row(id=qa.get("id"), title=article.get("title"), context=para.get("context"),
                                 question=qa.get("question"), question_type=qa.get("question_type"),
                                 is_impossible=qa.get("is_impossible"), answers=qa.get("answers"),
                                 split=doc.get("split"), row=where))
    return rows


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Parsed line by line (not pd.read_json) so a bad record is reported with its line number."""
    records, columns = [], set()
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
    try:
        if fmt == "csv":
            with warnings.catch_warnings():
                # index_col=False: a first row with extra fields must not turn its leading fields into an
                # index; pandas then warns about (and would drop) the extra fields, which we refuse.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", index_col=False)
        else:
            df = pd.read_parquet(path)
    except pd.errors.ParserWarning:
        raise DataError(f"{path}: cannot read as csv: the first data row has more fields than the header") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (ValueError, OSError, pd.errors.ParserError, pyarrow.ArrowException) as e:
        raise DataError(f"{path}: cannot read as {fmt}: {_first_line(e)}") from None
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
        if "answer_text" in columns:
            text = _scalar(rec.get("answer_text"))
            answers = [] if _is_missing(text) or (isinstance(text, str) and text == "") else [
                {"text": text, "answer_start": _as_int(rec.get("answer_start"))}]
        else:
            answers = rec.get("answers")
        rows.append(_record_row(rec, answers=answers, split=rec.get("split"), row=f"row {i + 1}"))
    return rows


def is_saved_hf_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    if not path.is_dir():
        return False
    from datasets import config  # imported here: `datasets` takes a second to import

    return any((path / name).is_file() for name in (config.DATASETDICT_JSON_FILENAME,
                                                     config.DATASET_STATE_JSON_FILENAME))


def _read_hf(source: str, saved: bool) -> list[dict[str, Any]]:
    """Rows of a save_to_disk folder (``saved``) or of whatever ``datasets.load_dataset(source)`` loads."""
    import datasets

    try:
        obj = datasets.load_from_disk(source) if saved else datasets.load_dataset(source)
    except Exception as e:  # datasets and the hub client raise many unrelated types; all mean "cannot load"
        if saved:
            raise DataError(f"{source}: cannot load the saved dataset: {_first_line(e)}") from None
        if Path(source).exists():
            raise DataError(f"{source}: datasets.load_dataset cannot load it ({_first_line(e)})") from None
        raise DataError(f"{source}: datasets.load_dataset failed ({_first_line(e)}); a hub dataset needs a "
                        "network: offline, save it with save_to_disk and set validate.raw_path to that folder"
                        ) from None
    parts = obj.items() if isinstance(obj, datasets.DatasetDict) else [(obj.split, obj)]
    rows = []
    for name, ds in parts:
        split = str(name) if name else None
        missing = [c for c in HF_REQUIRED if c not in ds.column_names]
        if missing:
            raise DataError(f"{source}: split {split or '(unnamed)'} missing column(s) {', '.join(missing)}")
        rows += [_record_row(rec, answers=rec.get("answers"), split=split or rec.get("split"),
                             row=f"{split or ''}[{i}]") for i, rec in enumerate(ds.to_list())]
    return rows


def _inputs(raw_path: Path, fmt: str) -> list[tuple[Path, str]]:
    """The files and save_to_disk folders under ``raw_path``, each with the format that reads it."""
    if fmt == "hf" or (fmt == "auto" and is_saved_hf_dataset(raw_path)):
        return [(raw_path, "hf")]
    if not raw_path.exists():
        raise DataError(f"{raw_path}: no such file or folder (for a hub dataset set validate.format: hf)")
    if raw_path.is_file():
        candidates = [raw_path]
    else:
        candidates = sorted(f for f in raw_path.iterdir() if (f.is_file() and f.suffix in FILE_SUFFIXES)
                            or (fmt == "auto" and is_saved_hf_dataset(f)))
        if not candidates:
            raise DataError(f"{raw_path}: no .json, .jsonl, .csv or .parquet files or save_to_disk folders")
    inputs = []
    for f in candidates:
        kind = ("hf" if f.is_dir() else FILE_SUFFIXES.get(f.suffix)) if fmt == "auto" else fmt
        if kind is None:
            raise DataError(f"{f}: unknown format (set validate.format)")
        inputs.append((f, kind))
    return inputs


def _split_value(v: Any) -> str | None:
    if _is_missing(v) or (isinstance(v, str) and v.strip() == ""):
        return None
    return SPLIT_ALIASES.get(v.strip().lower(), v) if isinstance(v, str) else str(_scalar(v))


def read_qa_records(raw_path: Path, fmt: str = "auto") -> pd.DataFrame:
    """Read every record under ``raw_path`` into one frame with ``source`` and ``row`` columns."""
    raw_path = Path(raw_path)
    rows: list[dict[str, Any]] = []
    for f, kind in _inputs(raw_path, fmt):
        if f.is_file() and f.stat().st_size == 0:
            raise DataError(f"{f}: empty file")
        if kind == "hf":
            file_rows = _read_hf(str(f), saved=is_saved_hf_dataset(f))
        else:
            file_rows = _read_squad(f) if kind == "squad" else _read_flat(f, kind)
        name_split = _split_from_name(f) if f.exists() else None
        for r in file_rows:
            r["source"] = str(f)
            r["split"] = _split_value(r["split"]) or name_split
        rows.extend(file_rows)
    if not rows:
        raise DataError(f"{raw_path}: no questions found")
    df = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    if df["split"].isna().all():
        df["split"] = [split_by_context(c) for c in df["context"]]
    df["id"] = pd.Series([str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in df["id"]],
                         index=df.index, dtype=object)
    return df


def split_by_context(context: Any) -> str:
    """Deterministic 70/15/15 split keyed on the context, so one context never spans splits."""
    slot = int(hashlib.sha256(str(context).encode("utf-8")).hexdigest()[:8], 16) % 20
    return "train" if slot < 14 else "dev" if slot < 17 else "test"


# --- checks: each one names one fault and never raises on odd values (other checks name those) ---

def _well_formed(a: Any) -> bool:
    return (isinstance(a, dict) and isinstance(a.get("text"), str) and a["text"] != ""
            and isinstance(a.get("answer_start"), int) and not isinstance(a["answer_start"], bool))


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
    return all(0 <= s < len(context) and context[s:s + len(t)] == t for t, s in _good_answers(answers))


def _fits_context(context: Any, answers: Any) -> bool:
    return not isinstance(context, str) or all(len(t) <= len(context) for t, _ in _good_answers(answers))


def _no_edge_whitespace(answers: Any) -> bool:
    return all(t == t.strip() for t, _ in _good_answers(answers))


def _rowwise(fn: Callable[..., bool], *cols: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A frame-level check that calls ``fn`` on each row's ``cols`` (faster than DataFrame.apply)."""
    def check(df: pd.DataFrame) -> pd.Series:
        return pd.Series([fn(*vals) for vals in zip(*(df[c] for c in cols))], index=df.index, dtype=bool)
    return check


def _keys(s: pd.Series) -> pd.Series:
    """Hashable, same-type stand-ins for a column's values, so grouping works on malformed rows too."""
    return s.map(lambda v: v if isinstance(v, str) else f"\0{type(v).__name__}:{v!r}")


def _unique_id(ids: pd.Series) -> pd.Series:
    return ~(_keys(ids).duplicated(keep=False) & ids.map(lambda v: isinstance(v, str)))


def _first_in_split(df: pd.DataFrame) -> pd.Series:
    return ~pd.DataFrame({c: _keys(df[c]) for c in ("split", "question", "context")}).duplicated(keep="first")


def _no_leak(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """False for rows whose key also appears in an earlier split (train, then dev, then test)."""
    rank = df["split"].map(lambda s: SPLIT_RANK.get(s, len(SPLITS)) if isinstance(s, str) else len(SPLITS))
    earliest = rank.groupby([_keys(df[k]) for k in keys], sort=False).transform("min")
    return rank == earliest


def build_schema(params: ValidateParams) -> pa.DataFrameSchema:
    """The pandera schema every QA row must pass; check names are the reasons users see.

    Checks run with ``ignore_na=False``: a missing id, question or split is a failure, not a skip.
    """

    def each(fn: Callable[[Any], bool], name: str) -> pa.Check:
        return pa.Check(fn, element_wise=True, ignore_na=False, name=name)

    def text_checks(limit: int) -> list[pa.Check]:
        return [each(lambda v: isinstance(v, str) and v.strip() != "", "non_empty_text"),
                each(lambda v: not isinstance(v, str) or len(v) <= limit, f"at_most_{limit}_chars")]

    return pa.DataFrameSchema(
        {
            "id": pa.Column(checks=[each(lambda v: isinstance(v, str) and v.strip() != "", "non_empty_id"),
                                    pa.Check(_unique_id, ignore_na=False, name="unique_id")], nullable=True),
            "question": pa.Column(checks=text_checks(params.max_question_chars), nullable=True),
            "context": pa.Column(checks=text_checks(params.max_context_chars), nullable=True),
            "split": pa.Column(checks=each(lambda v: v in SPLITS, "known_split"), nullable=True),
        },
        checks=[
            pa.Check(_rowwise(_answers_well_formed, "answers"), name="malformed_answers"),
            pa.Check(_rowwise(_impossible_matches, "is_impossible", "answers"), name="is_impossible_matches_answers"),
            pa.Check(_rowwise(_span_ok, "context", "answers"), name="answer_span_matches_context"),
            pa.Check(_rowwise(_fits_context, "context", "answers"), name="answer_longer_than_context"),
            pa.Check(_rowwise(_no_edge_whitespace, "answers"), name="answer_has_edge_whitespace"),
            pa.Check(_first_in_split, name="duplicate_question_on_context"),
            pa.Check(lambda df: _no_leak(df, ["context"]), name="context_in_two_splits"),
            pa.Check(lambda df: _no_leak(df, ["question", "context"]), name="question_on_context_in_two_splits"),
        ],
        coerce=False,
    )


@dataclass(frozen=True)
class ValidationSummary:
    """What happened to every row: accepted + rejected == rows_in, always."""

    rows_in: int
    accepted: dict[str, int]
    rejected: int
    failures_by_check: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "accepted": sum(self.accepted.values()),
                "accepted_by_split": self.accepted, "rejected": self.rejected,
                "failures_by_check": self.failures_by_check}


def find_invalid_rows(df: pd.DataFrame, params: ValidateParams) -> dict[int, list[str]]:
    """Map frame index → sorted names of the checks that row fails (all failures, lazily collected)."""
    df = df.reset_index(drop=True)
    try:
        build_schema(params).validate(df, lazy=True)
        return {}
    except pa.errors.SchemaErrors as err:
        fc = err.failure_cases
    unplaced = fc[fc["index"].isna()]
    if not unplaced.empty:  # a check that could not run must not let rows through unchecked
        case = unplaced.iloc[0]
        raise DataError(f"check {case['check']} could not run: {str(case['failure_case']).replace(chr(10), ' ')}")
    reasons: dict[int, list[str]] = {}
    for _, case in fc.drop_duplicates(["index", "check"]).iterrows():
        check = str(case["check"])
        is_column_check = case.get("schema_context") == "Column" and isinstance(case["column"], str)
        label = f"{case['column']}:{check}" if is_column_check else check
        reasons.setdefault(int(case["index"]), []).append(label)
    return {i: sorted(labels) for i, labels in reasons.items()}


def _failure_summary(df: pd.DataFrame, reasons: dict[int, list[str]], by_check: dict[str, int]) -> str:
    lines = [f"{len(reasons)} of {len(df)} rows failed validation:"]
    lines += [f"  {check}: {n}" for check, n in by_check.items()]
    for i in sorted(reasons)[:MAX_ROWS_SHOWN]:
        row = df.loc[i]
        lines.append(f"  {row['source']} {row['row']} id={row['id']!r}: {', '.join(reasons[i])}")
    if len(reasons) > MAX_ROWS_SHOWN:
        lines.append(f"  ... and {len(reasons) - MAX_ROWS_SHOWN} more")
    lines.append("Fix the rows, or set validate.on_invalid: drop to write them to the rejected-rows file.")
    return "\n".join(lines)


def _shown_id(v: Any) -> str | None:
    """A rejected row's id as the rejected-rows file shows it: strings as they are, anything else as
    its repr, so the file stays strict JSON (no NaN or Infinity) whatever the source held."""
    return v if v is None or isinstance(v, str) else repr(v)


def validate_squad_records(raw_path: Path, out_dir: Path, rejected_path: Path, report_path: Path,
                           params: ValidateParams) -> ValidationSummary:
    """Validate raw QA data and write ``out_dir/{train,dev,test}.jsonl``; raise on bad rows in fail mode."""
    df = read_qa_records(raw_path, params.format).reset_index(drop=True)
    reasons = find_invalid_rows(df, params)
    by_check = dict(Counter(r for rs in reasons.values() for r in rs).most_common())
    if reasons and params.on_invalid == "fail":
        raise DataError(_failure_summary(df, reasons, by_check))
    keep = df.drop(index=list(reasons))
    accepted = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            part = keep[keep["split"] == split]
            accepted[split] = write_jsonl_atomic(tmp / f"{split}.jsonl", part[OUTPUT_COLUMNS].to_dict("records"))
    rejected_rows = [{"id": _shown_id(df.loc[i, "id"]), "source": df.loc[i, "source"], "row": df.loc[i, "row"],
                      "reasons": reasons[i]} for i in sorted(reasons)]
    write_jsonl_atomic(rejected_path, rejected_rows)
    summary = ValidationSummary(len(df), accepted, len(rejected_rows), by_check)
    assert summary.rows_in == sum(accepted.values()) + summary.rejected, "row accounting broken"
    write_json_atomic(report_path, summary.as_dict())
    return summary
