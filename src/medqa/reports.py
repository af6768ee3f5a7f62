"""How reports show figures to people: the one renderer of metrics.json and registration.json.

The CLI, ``make pipeline``'s summary and the Prefect artifact all print these lines, so a figure
reads the same everywhere. A figure can be missing or not a number (F1 over a split with no
answerable questions, say); the JSON reports hold ``null`` for it, and humans see ``n/a`` rather
than a crash or ``nan``.
"""

from __future__ import annotations

import math
from typing import Any


def figure(x: Any, spec: str = ".4f") -> str:
    """``x`` formatted with ``spec``, or ``n/a`` when it is missing or not a finite number."""
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def score_lines(m: dict[str, Any], label: str = "test") -> list[str]:
    """EM/F1 with the bootstrap interval, answerable/unanswerable F1, and the floor baselines (and
    the repairs an ad-hoc run made to its data file before scoring it)."""
    lo, hi = m.get("f1_ci95") or (None, None)
    ci = f"95% CI {figure(lo, '.3f')}-{figure(hi, '.3f')}, " if m.get("f1_ci95") else ""
    baselines = ", ".join(f"{k} {figure(v)}" for k, v in m["baselines_f1"].items())
    lines = [
        f"{label}: EM {figure(m['exact'])}  F1 {figure(m['f1'])} ({ci}n={m['n']})",
        f"  answerable F1 {figure(m['has_ans_f1'])} (n={m.get('has_ans_n', 'n/a')}), "
        f"unanswerable F1 {figure(m['no_ans_f1'])} (n={m.get('no_ans_n', 'n/a')})",
        f"  baselines F1: {baselines}; lead over the best {figure(m['lead_over_best_baseline'], '+.4f')}",
    ]
    lines += confidence_lines(m.get("calibration") or {})
    if m.get("repairs"):  # an ad-hoc run on a data file: the validate stage's repairs, made first
        kinds = ", ".join(f"{k} {n}" for k, n in m.get("repairs_by_kind", {}).items())
        lines.append(f"  scored after {m['repairs']} repairs ({kinds})")
    return lines


def confidence_lines(c: dict[str, Any]) -> list[str]:
    """How far the calibrated confidence holds, and what the answer policy gives (none when the
    model has no calibrator)."""
    if not c:
        return []
    lo, hi = c.get("ece_ci95") or (None, None)
    lines = [
        f"  confidence: ECE {figure(c.get('ece'), '.3f')} (95% CI {figure(lo, '.3f')}-"
        f"{figure(hi, '.3f')}; raw score {figure(c.get('ece_raw_score'), '.3f')}), AURC "
        f"{figure(c.get('aurc'), '.3f')} (raw {figure(c.get('aurc_raw_score'), '.3f')})"
    ]
    if c.get("policy_min_confidence") is not None:
        lines.append(
            f"  answer policy: confidence >= {figure(c['policy_min_confidence'], '.3f')} answers "
            f"{figure(c.get('policy_coverage'), '.1%')} of questions at F1 "
            f"{figure(c.get('policy_answered_f1'), '.3f')}"
        )
    return lines


def registration_lines(r: dict[str, Any]) -> list[str]:
    """The champion before the run and what the register stage decided, with its reason."""
    prev = r.get("previous_champion")
    before = (
        f"@champion before this run: v{prev} F1 {figure(r.get('previous_champion_f1'))} "
        f"({r.get('previous_champion_f1_from') or 'recorded'})"
        if prev
        else "@champion before this run: none"
    )
    state = "now @champion" if r["promoted"] else "not promoted"
    return [before, f"registry: {r['model_name']} v{r['version']} ({state}): {r['reason']}"]
