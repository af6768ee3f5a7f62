"""Print the headline of the last pipeline run: test EM/F1, baselines, and the registry decision.

``python -m medqa.summary`` — what ``make pipeline`` ends with (``dvc metrics show`` has every figure).
"""

from __future__ import annotations

import json
from pathlib import Path


def summarize_reports(reports: Path = Path("reports")) -> str:
    """A few lines from reports/metrics.json and reports/registration.json."""
    m = json.loads((reports / "metrics.json").read_text())
    r = json.loads((reports / "registration.json").read_text())
    lo, hi = m["f1_ci95"]
    baselines = ", ".join(f"{k} {v:.3f}" for k, v in m["baselines_f1"].items() if k != "registry_champion")
    champion = m.get("registry_champion")
    return "\n".join([
        f"test split ({m['n']} questions): EM {m['exact']:.3f}  F1 {m['f1']:.3f}  (95% CI {lo:.3f}-{hi:.3f})",
        f"  answerable F1 {m['has_ans_f1']:.3f} (n={m['has_ans_n']}), unanswerable F1 {m['no_ans_f1']:.3f} (n={m['no_ans_n']})",
        f"  baselines F1: {baselines}; lead over the best: {m['lead_over_best_baseline']:+.3f}",
        (f"  @champion before this run: v{champion['version']} F1 {champion['f1']:.3f}; "
         f"lead: {m['lead_over_champion']:+.3f}" if champion else "  @champion before this run: none (or not scored)"),
        f"registry: {r['model_name']} v{r['version']} ({'now @champion' if r['promoted'] else 'not promoted'}): {r['reason']}",
        "Research use only; not medical advice.",
    ])


if __name__ == "__main__":
    print(summarize_reports())
