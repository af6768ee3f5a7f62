"""The report: one markdown table of ours against the reference, with targets marked pass or miss.

A row holds two medians measured in the same run; the ratio column is ours / reference, so for speeds
above 1 means faster and for latencies and seconds below 1 does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Value = float | str | None


@dataclass(frozen=True)
class Row:
    """One line of the table; ``passed`` is None for rows without a target."""

    section: str
    metric: str
    ours: Value
    reference: Value = None
    repeats: int | str | None = None  # how many repeats the median is over
    target: str = ""
    passed: bool | None = None


def ratio(ours: Value, reference: Value) -> float | None:
    """ours / reference when both are positive finite numbers, else None."""
    if not isinstance(ours, (int, float)) or not isinstance(reference, (int, float)):
        return None
    if not (math.isfinite(ours) and math.isfinite(reference)) or reference <= 0:
        return None
    return ours / reference


def fmt(value: Value) -> str:
    """Three significant figures (trailing zeros kept), no decimals from 100 up; "—" for nothing,
    text as given."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}"


def render_table(rows: Sequence[Row]) -> str:
    """The markdown table; the section name is printed only where it changes."""
    lines = [
        "| section | metric | ours | reference | ours/ref | n | target | result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    previous = None
    for row in rows:
        r = ratio(row.ours, row.reference)
        result = "" if row.passed is None else ("pass" if row.passed else "**miss**")
        section = row.section if row.section != previous else ""
        previous = row.section
        lines.append(
            f"| {section} | {row.metric} | {fmt(row.ours)} | {fmt(row.reference)} | "
            f"{'—' if r is None else f'{r:.2f}×'} | {'' if row.repeats is None else row.repeats} | "
            f"{row.target} | {result} |"
        )
    return "\n".join(lines)


def render_report(title: str, machine: str, rows: Sequence[Row], notes: Sequence[str]) -> str:
    """The whole markdown document: title, machine line, the table, then the notes."""
    parts = [f"# {title}", "", f"Machine: {machine}", "", render_table(rows)]
    if notes:
        parts += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    return "\n".join(parts) + "\n"


def speed_at_equal_f1(
    speed_ratio: float | None,
    ours_f1: float,
    reference_f1: float,
    minimum: float,
    f1_tolerance: float,
) -> bool:
    """A speed target: ours at least ``minimum`` x the reference, with an F1 no more than ``f1_tolerance``
    below the reference's, so that speed is never bought with accuracy."""
    return (
        speed_ratio is not None
        and speed_ratio >= minimum
        and math.isfinite(ours_f1)
        and math.isfinite(reference_f1)
        and ours_f1 >= reference_f1 - f1_tolerance
    )
