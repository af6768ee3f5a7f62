"""The pipeline's own output as a new user meets it (issue 30, item 6): `dvc metrics show` lists the
headline figures (not the hundred columns of metrics.json), `dvc plots show` draws the one plot the
guide describes, and a Prefect run says each of DVC's messages once."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.repo import Repo

from helpers import ROOT, git_dvc_init
from medqa.config import load_params
from medqa.contracts import DecodingSettings
from medqa.evalreports import headline_metrics, write_reports

PLOT_TITLE = "dev F1 and training loss per epoch"


def test_dvc_metrics_are_the_headline_and_the_validation_counts() -> None:
    reports = load_params(ROOT / "params.yaml").paths.reports
    with Repo(str(ROOT)) as repo:
        outs = [o for stage in repo.index.stages for o in stage.outs]
    assert {str(o.def_path) for o in outs if o.metric} == {
        f"{reports}/validation.json",
        f"{reports}/headline.json",
    }
    assert f"{reports}/metrics.json" in {str(o.def_path) for o in outs}  # still an output
    assert not [o for o in outs if o.plot]  # a stage's plot would be drawn beside PLOT_TITLE


def test_the_headline_is_a_few_flat_figures_of_metrics_json() -> None:
    full = json.loads((ROOT / "reports" / "metrics.json").read_text())
    headline = headline_metrics(full)
    assert len(headline) <= 10 and all(isinstance(v, (int, float)) for v in headline.values())
    for key in ("n", "exact", "f1", "dev_f1", "lead_over_best_baseline"):  # what study.py reads
        assert headline[key] == full[key]
    assert headline["best_baseline_f1"] == full["baselines_f1"][full["best_baseline"]]
    assert headline["ece"] == full["calibration"]["ece"]


def test_every_evaluation_writes_its_headline(tmp_path: Path) -> None:
    report = {"n": 2, "exact": 0.5, "f1": 0.75, "baselines_f1": {"lexical": 0.25}}
    report |= {"best_baseline": "lexical", "lead_over_best_baseline": 0.5}
    write_reports(tmp_path, report, DecodingSettings(20, 30, 0.0, 128, 48), [], "test split")
    headline = json.loads((tmp_path / "headline.json").read_text())
    assert headline == {
        "n": 2,
        "exact": 0.5,
        "f1": 0.75,
        "best_baseline_f1": 0.25,
        "lead_over_best_baseline": 0.5,
    }


@pytest.mark.slow
def test_dvc_plots_show_draws_the_one_plot_the_guide_describes() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert list(json.loads(shown.stdout)["data"]) == [PLOT_TITLE]
    assert re.search(rf"dvc plots show +# {PLOT_TITLE}\b", (ROOT / "docs" / "guide.md").read_text())


class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.slow
def test_a_flow_task_says_each_dvc_message_once(tmp_path: Path, capfd) -> None:
    """DVC prints its messages itself, they reached the root logger (Prefect's console) too, and
    the task repeated the stage's output, DVC's lines included: three times "didn't change"."""
    from pipeline.dvc_runner import reproduce

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "dvc.yaml").write_text(
        "stages:\n  one:\n    cmd: echo one > a.txt\n    outs: [a.txt]\n"
    )
    git_dvc_init(proj)
    assert reproduce(str(proj), "one")[0] == "ran"
    run_log, root = logging.getLogger("test.flow.run"), logging.getLogger()
    to_run_log, to_root = _Said(), _Said()
    run_log.addHandler(to_run_log)
    run_log.setLevel(logging.INFO)  # as Prefect's run logger is
    run_log.propagate = False
    root.addHandler(to_root)
    capfd.readouterr()
    try:
        status, output = reproduce(str(proj), "one", run_log)
    finally:
        root.removeHandler(to_root)
        run_log.removeHandler(to_run_log)
    printed = capfd.readouterr()
    said = "\n".join([*to_run_log.lines, *to_root.lines, printed.out, printed.err, *output])
    assert status == "cached" and to_run_log.lines == ["Stage 'one' didn't change, skipping"]
    assert said.count("didn't change") == 1, said
