"""Print the headline of the last pipeline run: test EM/F1, baselines, and the registry decision.

``python -m medqa.summary`` — what ``make pipeline`` ends with (reports/metrics.json has every
figure, ``dvc metrics show`` the headline). The reports folder is params.yaml's ``paths.reports``,
where dvc.yaml has the stages write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medqa.contracts import METRICS_REPORT, REGISTRATION_REPORT
from medqa.errors import MedqaError
from medqa.reports import registration_lines, score_lines


def summarize_reports(reports: Path) -> str:
    """The lines of reports/metrics.json and reports/registration.json, and the disclaimer."""
    m = json.loads((reports / METRICS_REPORT).read_text())
    r = json.loads((reports / REGISTRATION_REPORT).read_text())
    lines = score_lines(m, f"test split ({m['n']} questions)") + registration_lines(r)
    return "\n".join([*lines, "Research use only; not medical advice."])


def main() -> int:
    """Summarise the project's reports; a missing report is one line and exit status 2."""
    from medqa.config import DEFAULT_PARAMS, Params, load_params

    try:
        params = load_params(DEFAULT_PARAMS) if DEFAULT_PARAMS.exists() else Params()
        print(summarize_reports(Path(params.paths.reports)))
    except (MedqaError, OSError, ValueError, KeyError) as e:
        print(f"medqa summary: error: {e} (run `dvc repro` first)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
