"""The validate stage: read SQuAD-style QA data in any supported shape (``medqa.readers``), repair
what can be repaired without guessing (``medqa.repairs``), check every row with pandera
(``medqa.checks``), and write the good rows per split, accounting for every row read
(accepted + repaired + rejected == read; see ValidationSummary).

``validate_eval_file`` holds a user's evaluation file to the same policy, repairs included, so a file
the stage takes whole is one ``medqa evaluate --split FILE`` scores.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medqa.checks import find_invalid_rows
from medqa.config import ValidateParams
from medqa.contracts import REPAIRS_LOG
from medqa.errors import DataError
from medqa.fileio import dumps_strict, write_json_atomic, write_jsonl_atomic
from medqa.outdir import stage_output_dir
from medqa.readers import read_qa_records
from medqa.records import OUTPUT_COLUMNS, SPLITS, QuestionLimit, shown_id
from medqa.repairs import Repaired, repair_records

MAX_ROWS_SHOWN = 10
WRITE_CHUNK_ROWS = 10_000


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

    def __post_init__(self) -> None:
        """The row accounting, checked whenever a summary is made: a row lost is a bug here."""
        accepted, repaired = sum(self.accepted.values()), sum(self.repaired.values())
        assert self.rows_in == accepted + repaired + self.rejected, "rows lost"
        assert sum(self.written.values()) == accepted + repaired - self.merged, "lines lost"


@dataclass(frozen=True)
class Checked:
    """Rows read (indexed by position as read), after the repairs ``validate.repair`` allows and
    then every check: one policy, whether the rows are the validate stage's or a user's evaluation
    file."""

    fixed: Repaired  # after the repairs (none with ``repair: false``)
    # position as read -> the checks that row fails; a merged row fails with the row it joined
    reasons: dict[int, list[str]]

    @property
    def repairs(self) -> dict[int, list[dict[str, Any]]]:
        """The repairs of the rows that pass, by position: a repaired row that still fails is
        rejected, not repaired."""
        return {i: recs for i, recs in self.fixed.records.items() if i not in self.reasons}

    @property
    def kept(self) -> pd.DataFrame:
        """The rows that pass, repaired, one per question (merged rows left out)."""
        return self.fixed.frame.drop(index=[i for i in self.reasons if i in self.fixed.frame.index])


def repair_and_check(
    df: pd.DataFrame, params: ValidateParams, question_limit: QuestionLimit | None = None
) -> Checked:
    """Repair the rows if ``params.repair`` says so, then check them. A merged row is rejected with
    the row it was merged into, with that row's reasons and duplicate_question_on_context, so that
    every row read is accounted for."""
    fixed = repair_records(df) if params.repair else Repaired(df, {}, {})
    reasons = {
        int(fixed.frame.index[i]): r
        for i, r in find_invalid_rows(fixed.frame, params, question_limit).items()
    }
    for j, first in fixed.merged_into.items():
        if first in reasons:
            reasons[j] = sorted({*reasons[first], "duplicate_question_on_context"})
    return Checked(fixed, dict(sorted(reasons.items())))


def _repair_lines(repairs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The lines of repairs.jsonl: every repair, in the order of the rows as read."""
    return [record for i in sorted(repairs) for record in repairs[i]]


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
    """The fail-mode error: counts per check and the first rows, each named by file, row and id."""
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


def _write_split(path: Path, part: pd.DataFrame) -> int:
    """Write ``part``'s rows as JSON lines, WRITE_CHUNK_ROWS at a time (never the whole split as
    dicts and text at once); returns the number of lines. ``path`` is inside a stage folder that is
    renamed into place whole, so the file needs no atomic write of its own."""
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, len(part), WRITE_CHUNK_ROWS):
            rows = part.iloc[start : start + WRITE_CHUNK_ROWS][OUTPUT_COLUMNS].to_dict("records")
            out.writelines(dumps_strict(row) + "\n" for row in rows)
    return len(part)


def _write_splits(
    out_dir: Path, kept: pd.DataFrame, read: pd.DataFrame, repairs: dict[int, Any]
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Write ``out_dir/{train,dev,test}.jsonl`` whole or not at all; return the accepted, repaired
    and written counts per split that the row accounting adds up."""
    accepted, repaired, written = {}, {}, {}
    with stage_output_dir(out_dir) as tmp:
        for split in SPLITS:
            part = kept[kept["split"] == split]
            written[split] = _write_split(tmp / f"{split}.jsonl", part)
            repaired[split] = sum(1 for i in repairs if read.at[i, "split"] == split)
            accepted[split] = sum(1 for i in part.index if i not in repairs)
    return accepted, repaired, written


def _rejected_rows(
    read: pd.DataFrame, reasons: dict[int, list[str]], tokens: dict[int, int]
) -> list[dict[str, Any]]:
    """The lines of the rejected-rows file: each row named by id, file and position, with why."""
    return [
        {
            "id": shown_id(read.at[i, "id"]),
            "source": read.at[i, "source"],
            "row": read.at[i, "row"],
            "reasons": reasons[i],
            **({"question_tokens": tokens[i]} if i in tokens else {}),
        }
        for i in reasons
    ]


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
    when there are none. A merged row is rejected with the row it was merged into (``repair_and_check``).
    With ``question_limit`` (the CLI always gives one), a question too long in tokens is rejected,
    its length in tokens shown (``question_tokens`` in the rejected-rows file).
    """
    df = read_qa_records(raw_path, params.format, require_splits=True).reset_index(drop=True)
    checked = repair_and_check(df, params, question_limit)
    reasons = checked.reasons
    by_check = dict(Counter(r for rs in reasons.values() for r in rs).most_common())
    tokens = _question_tokens(df, reasons, question_limit)
    if reasons and params.on_invalid == "fail":
        raise DataError(_failure_summary(df, reasons, by_check, tokens, question_limit))
    accepted, repaired, written = _write_splits(out_dir, checked.kept, df, checked.repairs)
    write_jsonl_atomic(rejected_path, _rejected_rows(df, reasons, tokens))
    repair_lines = _repair_lines(checked.repairs)
    write_jsonl_atomic(repairs_path or Path(rejected_path).parent / REPAIRS_LOG, repair_lines)
    summary = ValidationSummary(
        rows_in=len(df),
        accepted=accepted,
        repaired=repaired,
        merged=sum(1 for j in checked.fixed.merged_into if j not in reasons),
        rejected=len(reasons),
        written=written,
        repairs_by_kind=dict(Counter(r["what"] for r in repair_lines).most_common()),
        failures_by_check=by_check,
    )
    write_json_atomic(report_path, summary.as_dict())
    return summary


@dataclass(frozen=True)
class EvalFile:
    """A user's data file as evaluation scores it: the rows as the validate stage would write them,
    a label per row naming its file and position, and the repairs made to them."""

    rows: list[dict[str, Any]]
    labels: list[str]
    repairs: list[dict[str, Any]]  # as repairs.jsonl holds them, in the order of the rows as read


def validate_eval_file(path: Path, params: ValidateParams) -> EvalFile:
    """A user's data file repaired and checked by the validate stage's policy (``params.repair``
    included), so a file the stage takes is a file evaluation scores.

    The whole file is one evaluation set: its rows are put in one split, so split names and
    cross-split leakage (training concerns) cannot reject them, while every other check applies.
    A bad row stops the run, the first named by file, row and id with its failed checks.
    """
    df = read_qa_records(Path(path), "auto").reset_index(drop=True)
    df["split"] = "test"
    checked = repair_and_check(df, params)
    if reasons := checked.reasons:
        i = min(reasons)
        more = f" ({len(reasons) - 1} more rows fail validation)" if len(reasons) > 1 else ""
        raise DataError(
            f"{df.loc[i, 'source']} {df.loc[i, 'row']} id={df.loc[i, 'id']!r}: "
            f"{', '.join(reasons[i])}{more}"
        )
    kept = checked.kept
    # through JSON, as the validate stage writes them, so the rows are the ones a pipeline run would see
    rows = [json.loads(json.dumps(r, default=str)) for r in kept[OUTPUT_COLUMNS].to_dict("records")]
    labels = [f"{s} {r}" for s, r in zip(kept["source"], kept["row"])]
    return EvalFile(rows, labels, _repair_lines(checked.repairs))
