"""The validate stage: read SQuAD-style QA data in any supported shape, check it with pandera,
and write the accepted rows per split, accounting for every row read.

Span rule: an answer is valid when ``context[answer_start : answer_start + len(text)] == text``
exactly, character for character (no whitespace stripping, no Unicode normalisation), because the
tokenizer offsets that training uses are computed on that exact string.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from medqa.atomic import atomic_dir, write_json_atomic, write_jsonl_atomic
from medqa.config import ValidateParams
from medqa.errors import DataError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev",
                 "test": "test"}
FLAT_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "squad"}
FLAT_REQUIRED = ("id", "question", "context", "answer_text", "answer_start")


def _split_from_name(path: Path) -> str | None:
    stem = path.name.split(".")[0].lower()
    for part in reversed(stem.replace("-", "_").split("_")):
        if part in SPLIT_ALIASES:
            return SPLIT_ALIASES[part]
    return None


def _read_squad(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
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
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: data[{a_i}].paragraphs[{p_i}].qas[{q_i}] is not an object")
                answers = qa.get("answers") or []
                rows.append({
                    "id": qa.get("id"),
                    "title": article.get("title", ""),
                    "context": para.get("context"),
                    "question": qa.get("question"),
                    "question_type": qa.get("question_type", ""),
                    "is_impossible": qa.get("is_impossible", len(answers) == 0),
                    "answers": answers,
                    "split": doc.get("split"),
                    "row": f"data[{a_i}].paragraphs[{p_i}].qas[{q_i}]",
                })
    return rows


def _read_flat(path: Path, fmt: str) -> list[dict[str, Any]]:
    try:
        if fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        elif fmt == "csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None
    if df.empty:
        raise DataError(f"{path}: no rows")
    missing = [c for c in FLAT_REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        text = rec.get("answer_text")
        has_answer = isinstance(text, str) and text != ""
        start = rec.get("answer_start")
        try:
            start = int(start) if has_answer else None
        except (TypeError, ValueError):
            start = -1  # caught by the span check with the row named
        impossible = rec.get("is_impossible", not has_answer)
        if isinstance(impossible, str):
            impossible = impossible.strip().lower() in {"1", "true", "yes"}
        rows.append({
            "id": rec.get("id"), "title": rec.get("title", ""), "context": rec.get("context"),
            "question": rec.get("question"), "question_type": rec.get("question_type", ""),
            "is_impossible": impossible,
            "answers": [{"text": text, "answer_start": start}] if has_answer else [],
            "split": rec.get("split"), "row": f"row {i + 1}",
        })
    return rows


def read_qa_records(raw_path: Path, fmt: str = "auto") -> pd.DataFrame:
    """Read every record under ``raw_path`` into one frame with ``source`` and ``row`` columns."""
    raw_path = Path(raw_path)
    if not raw_path.exists():
        raise DataError(f"{raw_path}: no such file or folder")
    files = sorted(f for f in raw_path.iterdir() if f.suffix in FLAT_SUFFIXES) if raw_path.is_dir() else [raw_path]
    if not files:
        raise DataError(f"{raw_path}: no .json, .jsonl, .csv or .parquet files")
    rows: list[dict[str, Any]] = []
    for f in files:
        kind = FLAT_SUFFIXES.get(f.suffix) if fmt == "auto" else fmt
        if kind is None:
            raise DataError(f"{f}: unknown format (set validate.format)")
        if f.stat().st_size == 0:
            raise DataError(f"{f}: empty file")
        file_rows = _read_squad(f) if kind == "squad" else _read_flat(f, kind)
        name_split = _split_from_name(f)
        for r in file_rows:
            r["source"] = str(f)
            split = r.get("split") or name_split
            r["split"] = SPLIT_ALIASES.get(str(split).lower(), str(split)) if split else None
        rows.extend(file_rows)
    df = pd.DataFrame(rows, columns=["id", "title", "context", "question", "question_type",
                                     "is_impossible", "answers", "split", "source", "row"])
    if df["split"].isna().all():
        df["split"] = [split_by_context(c) for c in df["context"]]
    df["id"] = df["id"].map(lambda v: str(v) if isinstance(v, (int, str)) else v)
    return df


def split_by_context(context: Any) -> str:
    """Deterministic 70/15/15 split keyed on the context, so one context never spans splits."""
    slot = int(hashlib.sha256(str(context).encode("utf-8")).hexdigest()[:8], 16) % 20
    return "train" if slot < 14 else "dev" if slot < 17 else "test"


def _span_ok(row: pd.Series) -> bool:
    ctx, answers = row["context"], row["answers"]
    if not isinstance(ctx, str) or not isinstance(answers, list):
        return False
    for a in answers:
        if not isinstance(a, dict):
            return False
        text, start = a.get("text"), a.get("answer_start")
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            return False
        if not 0 <= start < len(ctx) or ctx[start:start + len(text)] != text:
            return False
    return True


def _answers_consistent(row: pd.Series) -> bool:
    if not isinstance(row["is_impossible"], bool) or not isinstance(row["answers"], list):
        return False
    return row["is_impossible"] == (len(row["answers"]) == 0)


def build_schema(params: ValidateParams) -> pa.DataFrameSchema:
    """The pandera schema every QA row must pass; check names are the reasons users see."""

    def nonempty_text(limit: int) -> list[pa.Check]:
        return [pa.Check(lambda s: s.map(lambda v: isinstance(v, str) and v.strip() != ""),
                         element_wise=False, name="non_empty_text"),
                pa.Check(lambda s: s.map(lambda v: not isinstance(v, str) or len(v) <= limit),
                         name=f"at_most_{limit}_chars")]

    return pa.DataFrameSchema(
        {
            "id": pa.Column(object, [pa.Check(lambda s: s.map(lambda v: isinstance(v, str) and v != ""),
                                               name="non_empty_id"),
                                      pa.Check(lambda s: ~s.duplicated(keep=False), name="unique_id")],
                            nullable=True),
            "question": pa.Column(object, nonempty_text(params.max_question_chars), nullable=True),
            "context": pa.Column(object, nonempty_text(params.max_context_chars), nullable=True),
            "split": pa.Column(object, pa.Check.isin(list(SPLITS), name="known_split"), nullable=True),
        },
        checks=[
            pa.Check(lambda df: df.apply(_answers_consistent, axis=1), name="is_impossible_matches_answers"),
            pa.Check(lambda df: df.apply(_span_ok, axis=1), name="answer_span_matches_context"),
            pa.Check(lambda df: ~df.duplicated(["question", "context"], keep="first"),
                     name="duplicate_question_on_context"),
            pa.Check(lambda df: _no_leak(df, ["context"]), name="context_in_two_splits"),
        ],
        coerce=False,
    )


def _no_leak(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """False for rows whose key appears in more than one split (train keeps its rows)."""
    splits_per_key = df.groupby(keys, dropna=False)["split"].transform("nunique")
    return ~((splits_per_key > 1) & (df["split"] != "train"))


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
    """Map frame index → names of the checks that row fails (all failures, lazily collected)."""
    df = df.reset_index(drop=True)
    try:
        build_schema(params).validate(df, lazy=True)
        return {}
    except pa.errors.SchemaErrors as err:
        fc = err.failure_cases
    reasons: dict[int, list[str]] = {}
    for _, case in fc.dropna(subset=["index"]).drop_duplicates(["index", "check"]).iterrows():
        check = str(case["check"])
        is_column_check = case.get("schema_context") == "Column" and isinstance(case["column"], str)
        label = f"{case['column']}:{check}" if is_column_check else check
        reasons.setdefault(int(case["index"]), []).append(label)
    return reasons


def validate_squad_records(raw_path: Path, out_dir: Path, rejected_path: Path, report_path: Path,
                           params: ValidateParams) -> ValidationSummary:
    """Validate raw QA data and write ``out_dir/{train,dev,test}.jsonl``; raise on bad rows in fail mode."""
    df = read_qa_records(raw_path, params.format).reset_index(drop=True)
    reasons = find_invalid_rows(df, params)
    by_check = dict(Counter(r for rs in reasons.values() for r in rs).most_common())
    if reasons and params.on_invalid == "fail":
        lines = [f"{len(reasons)} of {len(df)} rows failed validation:"]
        lines += [f"  {check}: {n}" for check, n in by_check.items()]
        for i in sorted(reasons)[:10]:
            row = df.loc[i]
            lines.append(f"  {row['source']} {row['row']} id={row['id']!r}: {', '.join(reasons[i])}")
        lines.append("Fix the rows, or set validate.on_invalid: drop to write them to the rejected-rows file.")
        raise DataError("\n".join(lines))
    keep = df.drop(index=list(reasons))
    accepted = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            part = keep[keep["split"] == split]
            cols = ["id", "title", "context", "question", "question_type", "is_impossible", "answers"]
            accepted[split] = write_jsonl_atomic(tmp / f"{split}.jsonl", part[cols].to_dict("records"))
    rejected_rows = [{"id": df.loc[i, "id"], "source": df.loc[i, "source"], "row": df.loc[i, "row"],
                      "reasons": reasons[i]} for i in sorted(reasons)]
    write_jsonl_atomic(rejected_path, rejected_rows)
    summary = ValidationSummary(len(df), accepted, len(rejected_rows), by_check)
    assert summary.rows_in == sum(accepted.values()) + summary.rejected, "row accounting broken"
    write_json_atomic(report_path, summary.as_dict())
    return summary
