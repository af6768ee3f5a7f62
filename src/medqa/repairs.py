"""Lossless repairs (``validate.repair``, on by default), made before the checks run: only where what
the source meant is certain, and each one recorded (a line of repairs.jsonl):

- edge whitespace stripped from an answer;
- an answer_start moved to the nearest exact occurrence of its text within REPAIR_WINDOW characters;
- duplicate questions on one context merged into one with all their gold answers.

What cannot be repaired without guessing is left to the checks (``medqa.checks``), as with
``repair: false``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medqa.checks import CHUNK_ROWS, passes_row_checks, span_at, well_formed
from medqa.records import shown_id

# characters: how far a wrong answer_start may move to an exact occurrence of its text
REPAIR_WINDOW = 32


@dataclass(frozen=True)
class Repaired:
    """The rows after repairs and what was done to them, keyed by position in the frame as read."""

    # the rows read, answers repaired, merged rows left out; index: position as read
    frame: pd.DataFrame
    # position -> the repairs made to that row, in order
    records: dict[int, list[dict[str, Any]]]
    # position of a merged row -> position of the row that now holds its answers
    merged_into: dict[int, int]


def _stripped(context: str, text: str, start: int) -> tuple[str, int] | None:
    """The answer without edge whitespace and its start, if the context has the stripped text there:
    past the leading whitespace (the start was the padded text's), else at the start itself (the start
    was already the stripped text's)."""
    core, lead = text.strip(), len(text) - len(text.lstrip())
    if not core or core == text:
        return None
    return next(((core, at) for at in (start + lead, start) if span_at(context, core, at)), None)


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
        span_at(context, text, start)
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
        if well_formed(a):
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


def _mergeable(group: pd.DataFrame, id_counts: Counter[str]) -> bool:
    """Duplicates merge only when nothing is lost: all answerable or all unanswerable, the same title
    and question type, and ids that no row outside the group uses (else the merge would hide a clash)."""
    return (
        group["is_impossible"].nunique() == 1
        and group["title"].nunique() == 1
        and group["question_type"].nunique() == 1
        and all(id_counts[i] == n for i, n in Counter(group["id"]).items())
    )


def _where(df: pd.DataFrame, i: int) -> dict[str, Any]:
    """The id, file and position by which a repair record names the row it was made to."""
    return {"id": shown_id(df.at[i, "id"]), "source": df.at[i, "source"], "row": df.at[i, "row"]}


def _repair_all_answers(df: pd.DataFrame) -> tuple[dict[int, Any], dict[int, list[dict[str, Any]]]]:
    """Each row's answers after ``_repair_answers`` and the records of the rows it changed."""
    answers: dict[int, Any] = {}
    records: dict[int, list[dict[str, Any]]] = {}
    for i, context, row_answers in zip(df.index, df["context"], df["answers"]):
        answers[i], row_records = _repair_answers(context, row_answers)
        if row_records:
            records[i] = [{**_where(df, i), **record} for record in row_records]
    return answers, records


def _mergeable_groups(df: pd.DataFrame) -> list[list[int]]:
    """Positions of each group of clean rows asking one question on one context in one split that
    ``_mergeable`` lets merge, the first row first (it is the one kept)."""
    # row dicts a chunk at a time: a million of them at once would outweigh the frame itself
    chunks = (df.iloc[a : a + CHUNK_ROWS].to_dict("records") for a in range(0, len(df), CHUNK_ROWS))
    clean = df[[passes_row_checks(row) for chunk in chunks for row in chunk]]
    keys = pd.DataFrame(
        {
            "split": clean["split"],
            "question": clean["question"].map(_question_key),
            "context": clean["context"],
        }
    )
    repeated = keys.duplicated(keep=False)
    id_counts = Counter(v for v in df["id"] if isinstance(v, str))
    groups = clean[repeated].groupby([keys[c][repeated] for c in keys], sort=False)
    return [list(group.index) for _, group in groups if _mergeable(group, id_counts)]


def _answers_with(
    kept: list[dict[str, Any]], others: list[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """``kept`` as it is, then each (text, start) answer of ``others`` that it does not have yet."""
    union = list(kept)
    seen = {(a["text"], a["answer_start"]) for a in union}
    for a in (a for answers in others for a in answers):
        if (a["text"], a["answer_start"]) not in seen:
            seen.add((a["text"], a["answer_start"]))
            union.append(a)
    return union


def _merge_group(
    df: pd.DataFrame,
    group: list[int],
    answers: dict[int, Any],
    records: dict[int, list[dict[str, Any]]],
    merged_into: dict[int, int],
) -> None:
    """Merge the rows at ``group`` into its first: that row takes every distinct gold answer, the
    others are noted in ``merged_into``; each change recorded in ``records``."""
    first, *rest = group
    union = _answers_with(answers[first], [answers[j] for j in rest])
    kept = {"id": df.at[first, "id"], "source": df.at[first, "source"], "row": df.at[first, "row"]}
    for j in rest:
        merged_into[j] = first
        records.setdefault(j, []).append(
            {
                **_where(df, j),
                "what": "merge_duplicate_question",
                "before": {"question": df.at[j, "question"], "answers": answers[j]},
                "after": {"merged_into": kept, "answers": union},
            }
        )
    if len(union) > len(answers[first]):
        records.setdefault(first, []).append(
            {
                **_where(df, first),
                "what": "merge_duplicate_question",
                "before": {"answers": answers[first]},
                "after": {"answers": union, "merged_from": [df.at[j, "id"] for j in rest]},
            }
        )
        answers[first] = union


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
    answers, records = _repair_all_answers(df)
    # the merges look at the repaired answers: a row that a repair made clean may merge
    df["answers"] = pd.Series([answers[i] for i in df.index], index=df.index, dtype=object)
    merged_into: dict[int, int] = {}
    for group in _mergeable_groups(df):
        _merge_group(df, group, answers, records, merged_into)
    df["answers"] = pd.Series([answers[i] for i in df.index], index=df.index, dtype=object)
    return Repaired(df.drop(index=list(merged_into)), records, merged_into)
