"""Print the headline of the last pipeline run: test EM/F1, baselines, and the registry decision.

``python -m medqa.summary`` — what ``make pipeline`` ends with (``dvc metrics show`` has every figure).
"""

from __future__ import annotations

import json
from pathlib import Path

from medqa.reports import figure


def summarize_reports(reports: Path = Path("reports")) -> str:
    """A few lines from reports/metrics.json and reports/registration.json."""
    m = json.loads((reports / "metrics.json").read_text())
    r = json.loads((reports / "registration.json").read_text())
    lo, hi = m.get("f1_ci95") or (None, None)
    baselines = ", ".join(f"{k} {figure(v, '.3f')}" for k, v in m["baselines_f1"].items())
    prev = r.get("previous_champion")
    before = (
        f"  @champion before this run: v{prev} F1 {figure(r.get('previous_champion_f1'), '.3f')} "
        f"({r.get('previous_champion_f1_from') or 'recorded'})"
        if prev
        else "  @champion before this run: none"
    )
    return "\n".join(
        [
            f"test split ({m['n']} questions): EM {figure(m['exact'], '.3f')}  F1 {figure(m['f1'], '.3f')}  "
            f"(95% CI {figure(lo, '.3f')}-{figure(hi, '.3f')})",
            f"  answerable F1 {figure(m['has_ans_f1'], '.3f')} (n={m['has_ans_n']}), "
            f"unanswerable F1 {figure(m['no_ans_f1'], '.3f')} (n={m['no_ans_n']})",
            f"  baselines F1: {baselines}; lead over the best: {figure(m['lead_over_best_baseline'], '+.3f')}",
            before,
            f"registry: {r['model_name']} v{r['version']} ({'now @champion' if r['promoted'] else 'not promoted'}): "
            f"{r['reason']}",
            "Research use only; not medical advice.",
        ]
    )


if __name__ == "__main__":
    print(summarize_reports())
