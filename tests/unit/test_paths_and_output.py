"""Paths declared once (params.yaml's paths group, read by dvc.yaml and the CLI), the one renderer
of the reports, and the CLI's logging switches."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from helpers import ROOT
from medqa import cli
from medqa.config import PathParams, load_params
from medqa.errors import ConfigError
from medqa.reports import registration_lines, score_lines


def test_every_stage_output_and_data_dep_comes_from_the_paths_group():
    """No stage in dvc.yaml names a data, model or report path except through ${paths.*}."""
    text = (ROOT / "dvc.yaml").read_text()
    for literal in ("data/validated", "data/features", "models/checkpoint", "reports/"):
        assert f"- {literal}" not in text, literal
    paths = load_params(ROOT / "params.yaml").paths
    with Repo(str(ROOT)) as repo:
        outs = {str(o.def_path) for s in repo.index.stages for o in s.outs}
    assert {paths.validated, paths.features, paths.checkpoint} <= outs
    assert f"{paths.reports}/metrics.json" in outs


def test_cli_defaults_follow_the_params_file(tmp_path, tiny_raw_dir):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"].update(validated="v", reports="out")
    params["validate"]["raw_path"] = str(tiny_raw_dir)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    res = subprocess.run(
        [sys.executable, "-m", "medqa", "validate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "v" / "train.jsonl").exists()
    assert (tmp_path / "out" / "validation.json").exists()
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


def test_an_explicit_option_beats_the_params_file():
    args = cli.build_parser().parse_args(["register", "--metrics", "m.json"])
    cli._resolve_paths(args)
    assert args.metrics == Path("m.json")
    assert args.decoding == Path(PathParams().reports, "decoding.json")
    assert args.test == Path(PathParams().validated, "test.jsonl")


@pytest.mark.parametrize("bad", ["/abs/reports", "../outside", ""])
def test_paths_outside_the_project_are_refused(tmp_path, bad):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"paths": {"reports": bad}}))
    with pytest.raises(ConfigError, match="paths.reports: must be a non-empty path inside"):
        load_params(tmp_path / "p.yaml")


METRICS = {
    "exact": 0.25,
    "f1": 0.5,
    "n": 4,
    "f1_ci95": [0.1, 0.9],
    "has_ans_f1": None,
    "has_ans_n": 0,
    "no_ans_f1": 1.0,
    "no_ans_n": 4,
    "baselines_f1": {"abstain": 1.0},
    "lead_over_best_baseline": -0.5,
}


def test_one_renderer_shows_missing_figures_as_na():
    lines = score_lines(METRICS, "test")
    assert lines[0] == "test: EM 0.2500  F1 0.5000 (95% CI 0.100-0.900, n=4)"
    assert "answerable F1 n/a (n=0)" in lines[1]
    assert "abstain 1.0000; lead over the best -0.5000" in lines[2]
    reg = {"model_name": "m", "version": "3", "promoted": False, "reason": "below min_f1"}
    assert registration_lines(reg) == [
        "@champion before this run: none",
        "registry: m v3 (not promoted): below min_f1",
    ]


def test_summary_prints_the_same_lines_and_a_missing_report_is_one_line(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "metrics.json").write_text(json.dumps(METRICS))
    run = [sys.executable, "-m", "medqa.summary"]
    missing = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "registration.json" in missing.stderr
    reg = {"model_name": "m", "version": "1", "promoted": True, "reason": "first version"}
    (reports / "registration.json").write_text(json.dumps(reg))
    ok = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0
    assert ok.stdout.splitlines()[:3] == score_lines(METRICS, "test split (4 questions)")


@pytest.mark.parametrize(
    "flags,shown",
    [([], {"info", "warning"}), (["-q"], {"warning"}), (["-v"], {"debug", "info", "warning"})],
)
def test_verbose_and_quiet_set_what_the_library_logs(capsys, flags, shown):
    args = cli.build_parser().parse_args([*flags, "doctor"])
    cli._configure_logging(args.verbose, args.quiet)
    log = logging.getLogger("medqa.example")
    log.debug("debug")
    log.info("info")
    log.warning("warning")
    err = capsys.readouterr().err
    assert {w for w in ("debug", "info", "warning") if f"medqa.example: {w}" in err} == shown


def test_path_defaults_are_the_projects_from_a_subfolder(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"reports": "out"}}))
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks" / "deep")
    args = cli.build_parser().parse_args(["register"])
    cli._resolve_paths(args)
    assert args.metrics == Path("../../out/metrics.json")
    assert (Path.cwd() / args.metrics).resolve() == tmp_path / "out" / "metrics.json"
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["register"])
    cli._resolve_paths(args)
    assert args.metrics == Path("out/metrics.json")


def test_a_sqlite_uri_keeps_artifacts_beside_its_database(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI=sqlite:///… with no artifact root put artifacts in ./mlruns of whatever
    folder a command ran in (the test suite filled the repository's mlruns/ that way)."""
    import mlflow

    from medqa.tracking import configure_tracking

    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    try:
        configure_tracking()
        with mlflow.start_run():
            mlflow.log_dict({"a": 1}, "x.json")
    finally:
        mlflow.set_tracking_uri(None)
    assert list((store / "artifacts").rglob("x.json"))
    assert not (elsewhere / "mlruns").exists()
