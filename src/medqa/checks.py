"""The rules every QA row must pass: a pandera schema of each row's own fields, run on chunks of
rows, and the checks across rows (unique ids, duplicates, leakage) on 128-bit digests of the whole
data, so that memory stays bounded at a million rows. Each check names one fault and never raises
on odd values (other checks name those); its name is the reason a rejected row shows
(``column:check`` for column checks):

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

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from medqa.config import ValidateParams
from medqa.errors import DataError
from medqa.records import SPLITS, QuestionLimit

SPLIT_RANK = {s: i for i, s in enumerate(SPLITS)}
CHUNK_ROWS = 20_000  # rows per schema run: pandera's memory grows with the frame it checks


# --- what one row's own fields must be (the repairs use these too, to tell what they may touch) ---


def well_formed(a: Any) -> bool:
    """One answer as malformed_answers wants it: ``{"text": non-empty str, "answer_start": int}``."""
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
    return [(a["text"], a["answer_start"]) for a in answers if well_formed(a)]


def _answers_well_formed(answers: Any) -> bool:
    return isinstance(answers, list) and all(well_formed(a) for a in answers)


def _impossible_matches(is_impossible: Any, answers: Any) -> bool:
    if not isinstance(answers, list):
        return True
    return isinstance(is_impossible, bool) and is_impossible == (len(answers) == 0)


def span_at(context: str, text: str, start: int) -> bool:
    """Whether ``context`` holds exactly ``text`` at ``start``, as the tokenizer offsets need it."""
    return start >= 0 and context[start : start + len(text)] == text


def _span_ok(context: Any, answers: Any) -> bool:
    if not isinstance(context, str):
        return True
    return all(s < len(context) and span_at(context, t, s) for t, s in _good_answers(answers))


def _fits_context(context: Any, answers: Any) -> bool:
    return not isinstance(context, str) or all(
        len(t) <= len(context) for t, _ in _good_answers(answers)
    )


def _no_edge_whitespace(answers: Any) -> bool:
    return all(t == t.strip() for t, _ in _good_answers(answers))


def passes_row_checks(row: Mapping[str, Any]) -> bool:
    """Whether a row passes every check of its own fields (not those across rows). Only such rows are
    merged by the repairs, so a merge never carries a fault of one row into another."""
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


# --- checks across rows, and the schema that runs every check ---


def _rowwise(fn: Callable[..., bool], *cols: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A frame-level check that calls ``fn`` on each row's ``cols`` (faster than DataFrame.apply)."""

    def check(df: pd.DataFrame) -> pd.Series:
        return pd.Series(
            [fn(*vals) for vals in zip(*(df[c] for c in cols))], index=df.index, dtype=bool
        )

    return check


def _key(v: Any) -> str:
    """A hashable, same-type stand-in for a value, so grouping works on malformed rows too."""
    return v if isinstance(v, str) else f"\0{type(v).__name__}:{v!r}"


def _digests(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """A 128-bit BLAKE2 digest of each row's value in each of ``cols``, as two uint64 columns: what
    the checks across rows compare, 16 bytes a value however long the text, so they see the whole
    data at any size. Plain loops: ``Series.map`` to text would copy every context (pandas infers
    its string dtype), and pandas' own hashing first copies a column to fixed-width text."""
    out: dict[str, np.ndarray] = {}
    for c in cols:
        raw = b"".join(
            hashlib.blake2b(_key(v).encode("utf-8", "surrogatepass"), digest_size=16).digest()
            for v in df[c]
        )
        halves = np.frombuffer(raw, dtype=np.uint64).reshape(-1, 2)
        out |= {f"{c}0": halves[:, 0], f"{c}1": halves[:, 1]}
    return pd.DataFrame(out, index=df.index)


def _unique_id(ids: pd.Series) -> pd.Series:
    repeated = _digests(ids.to_frame("id"), ["id"]).duplicated(keep=False)
    return ~(repeated & ids.map(lambda v: isinstance(v, str)))


def _first_in_split(df: pd.DataFrame) -> pd.Series:
    return ~_digests(df, ["split", "question", "context"]).duplicated(keep="first")


def _no_leak(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """False for rows whose key also appears in an earlier split (train, then dev, then test)."""
    rank = df["split"].map(
        lambda s: SPLIT_RANK.get(s, len(SPLITS)) if isinstance(s, str) else len(SPLITS)
    )
    digests = _digests(df, keys)
    earliest = rank.groupby([digests[c] for c in digests], sort=False).transform("min")
    return rank == earliest


# the checks that compare rows with each other: run once over the whole frame, on digests
ACROSS_ROWS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "id:unique_id": lambda df: _unique_id(df["id"]),
    "duplicate_question_on_context": _first_in_split,
    "context_in_two_splits": lambda df: _no_leak(df, ["context"]),
    "question_on_context_in_two_splits": lambda df: _no_leak(df, ["question", "context"]),
}


def build_schema(
    params: ValidateParams, question_limit: QuestionLimit | None = None
) -> pa.DataFrameSchema:
    """The pandera schema of every check of a row's own fields (those across rows are
    ``ACROSS_ROWS``); check names are the reasons users see.

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
                checks=each(lambda v: isinstance(v, str) and v.strip() != "", "non_empty_id"),
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
        ],
        coerce=False,
    )


def _schema_failures(
    df: pd.DataFrame, schema: pa.DataFrameSchema, reasons: dict[int, list[str]]
) -> None:
    """Add to ``reasons`` (by the frame's index) the checks of ``schema`` that rows of ``df`` fail."""
    try:
        schema.validate(df, lazy=True)
        return
    except pa.errors.SchemaErrors as err:
        fc = err.failure_cases
    unplaced = fc[fc["index"].isna()]
    if not unplaced.empty:  # a check that could not run must not let rows through unchecked
        case = unplaced.iloc[0]
        failure = str(case["failure_case"]).replace("\n", " ")
        raise DataError(f"check {case['check']} could not run: {failure}")
    for _, case in fc.drop_duplicates(["index", "check"]).iterrows():
        check = str(case["check"])
        is_column_check = case.get("schema_context") == "Column" and isinstance(case["column"], str)
        label = f"{case['column']}:{check}" if is_column_check else check
        reasons.setdefault(int(case["index"]), []).append(label)


def find_invalid_rows(
    df: pd.DataFrame, params: ValidateParams, question_limit: QuestionLimit | None = None
) -> dict[int, list[str]]:
    """Map frame position → sorted names of the checks that row fails (all failures, lazily collected).

    The schema runs on CHUNK_ROWS rows at a time and the checks across rows once over the whole
    frame's digests, so memory beyond the frame itself stays bounded at any size.
    """
    df = df.reset_index(drop=True)
    schema = build_schema(params, question_limit)
    reasons: dict[int, list[str]] = {}
    for start in range(0, len(df), CHUNK_ROWS):
        _schema_failures(df.iloc[start : start + CHUNK_ROWS], schema, reasons)
    for label, check in ACROSS_ROWS.items():
        for i in np.flatnonzero(~check(df).to_numpy(dtype=bool)):
            reasons.setdefault(int(i), []).append(label)
    return {i: sorted(labels) for i, labels in sorted(reasons.items())}
