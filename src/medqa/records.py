"""What one QA row is, whatever it was read from: the three splits, the columns every reader fills
and the validate stage writes, and the normalisation that puts each source's values in that shape
(anything it cannot read is left as it is, for a check to name).

The tokenize stage imports its split names and ``QuestionLimit`` from here, not from the readers,
checks or repairs, so that editing a reader or a repair rule changes the validate stage only.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "dev", "test")  # in this order: where splits leak, the earliest keeps the row
OUTPUT_COLUMNS = ["id", "title", "context", "question", "question_type", "is_impossible", "answers"]
COLUMNS = [*OUTPUT_COLUMNS, "split", "source", "row"]  # a read frame's: where each row came from
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes"}, {"0", "false", "no"}


# --- value normalisation: every source's values in one shape, anything unreadable left for a check ---


def is_missing(v: Any) -> bool:
    """None, pandas' NA or a NaN: the ways a source leaves a field empty, which the checks treat alike."""
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def scalar(v: Any) -> Any:
    """numpy scalars (Parquet, Arrow) as Python ones, so checks and JSON output see plain types."""
    return v.item() if isinstance(v, np.generic) else v


def _value(v: Any) -> Any:
    """A checked field's value, with every kind of missing as None (NaN would reach JSON output as NaN)."""
    return None if is_missing(v) else scalar(v)


def as_int(v: Any) -> Any:
    """An answer start from a flat file (text in CSV, float in Parquet with gaps) as an int if it is one."""
    v = scalar(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", v):
        return int(v)
    return v


def _as_bool(v: Any) -> Any:
    """is_impossible spelled as a bool, 0/1 or a word ("true", "no", ...); anything else is left as is."""
    v = scalar(v)
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return v.strip().lower() in TRUE_WORDS
    return v


def is_seq(v: Any) -> bool:
    """A list as any source holds one (Arrow and Parquet give numpy arrays)."""
    return isinstance(v, (list, tuple, np.ndarray))


def _answers(value: Any) -> Any:
    """Answers as a list of {"text", "answer_start"} dicts, from SQuAD's list or the Hugging Face
    dict of lists; a value with no such reading is returned unchanged for malformed_answers to name."""
    if is_missing(value):
        return []
    if isinstance(value, Mapping) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        if is_seq(texts) and is_seq(starts) and len(texts) == len(starts):
            return [{"text": scalar(t), "answer_start": scalar(s)} for t, s in zip(texts, starts)]
        return value
    if is_seq(value):
        return [
            {k: scalar(x) for k, x in a.items()} if isinstance(a, Mapping) else scalar(a)
            for a in value
        ]
    return value


def _text_or_empty(v: Any) -> str:
    """Free-text extras (title, question_type) are not checked, so keep them JSON-safe strings."""
    return "" if is_missing(v) else v if isinstance(v, str) else str(scalar(v))


def qa_row(
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
    if is_missing(is_impossible) or (isinstance(is_impossible, str) and not is_impossible.strip()):
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


def record_row(rec: Mapping[str, Any], *, answers: Any, split: Any, row: str) -> dict[str, Any]:
    """A row from a flat record (JSONL, CSV, Parquet, Hugging Face), whose fields are named as ours."""
    return qa_row(
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


# --- splits, ids and the token limit on questions, which the validate and tokenize stages share ---


def split_by_context(context: Any) -> str:
    """Deterministic 70/15/15 split keyed on the context, so one context never spans splits."""
    slot = int(hashlib.sha256(str(context).encode("utf-8")).hexdigest()[:8], 16) % 20
    return "train" if slot < 14 else "dev" if slot < 17 else "test"


def shown_id(v: Any) -> str | None:
    """A row's id as the rejected-rows and repairs files show it: strings as they are, anything else
    as its repr, so the files stay strict JSON (no NaN or Infinity) whatever the source held."""
    return v if v is None or isinstance(v, str) else repr(v)


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
