"""scripts/gpu_check.sh's verdict (scripts/gpu_check.py), on made-up results instead of a training
(issue 30, item 4): a run of all the training questions whose model learned nothing fails; a smoke run
on a subset passes only as one, and says so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from helpers import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

ALL_QUESTIONS = {"train": 1654, "dev": 270, "test": 267}
CI_TINY = {"train": 24, "dev": 12, "test": 12}  # .ci/run's GPU_CHECK_*_QUESTIONS


def _work(tmp_path, f1: float, best_baseline: float, kept: dict[str, int]):
    """A gpu_check work folder as training and evaluation leave it, with these figures."""
    (tmp_path / "models" / "checkpoint").mkdir(parents=True)
    (tmp_path / "reports").mkdir()
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n  device: cpu\n")
    (tmp_path / "models" / "checkpoint" / "medqa.json").write_text(
        json.dumps(
            {
                "backend": "cuda",
                "device": {"name": "NVIDIA H100", "arch": "sm_90"},
                "precision": "bf16",
                "train_windows": 1700,
                "train_seconds": 10.37,
                "samples_per_s": 491.7,
                "tokens_per_s": 125000.0,
                "peak_memory_mb": 1621.0,
            }
        )
    )
    metrics = {
        "f1": f1,
        "exact": 0.0,
        "n": kept["test"],
        "best_baseline": "base_model_untrained",
        "baselines_f1": {"lexical_window": 0.05, "base_model_untrained": best_baseline},
    }
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "reports" / "train_curve.json").write_text(json.dumps([{"dev_f1": 0.1}]))
    run = {"questions_kept": kept, "questions_total": ALL_QUESTIONS}
    (tmp_path / gpu_check.RUN_FILE).write_text(json.dumps(run))
    return tmp_path


def _report(work, capsys, **env: str) -> tuple[int, str, str]:
    rc = gpu_check.report(work, env, gpu_present=True)
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_full_run_that_learned_nothing_fails(tmp_path, capsys):
    """The issue's run: test F1 0.0426 under its best baseline's 0.1287, and gpu_check said OK."""
    rc, out, err = _report(_work(tmp_path, 0.0426, 0.1287, ALL_QUESTIONS), capsys)
    assert rc == 1
    assert "gpu_check: OK" not in out
    assert err.strip() == (
        "gpu_check: FAILED: the model learned too little: test F1 0.0426 does not clear the best "
        "baseline F1 0.1287 by GPU_CHECK_F1_MARGIN=0.1 (1654 training questions, 3 epoch(s)); "
        "training ran but did not learn: see logs/train.log"
    )
    assert "test F1 0.0426, EM 0.0000 (n=267); best baseline F1 0.1287" in out


def test_a_full_run_that_learned_passes(tmp_path, capsys):
    rc, out, err = _report(_work(tmp_path, 0.4877, 0.1311, ALL_QUESTIONS), capsys)
    assert (rc, err) == (0, "")
    assert out.splitlines()[-1] == (
        "gpu_check: OK: test F1 clears the best baseline by 0.3566 (at least GPU_CHECK_F1_MARGIN=0.1)"
    )


def test_the_margin_is_a_setting(tmp_path, capsys):
    work = _work(tmp_path, 0.20, 0.13, ALL_QUESTIONS)  # clears it by 0.07
    assert _report(work, capsys)[0] == 1
    assert _report(work, capsys, GPU_CHECK_F1_MARGIN="0.05")[0] == 0


def test_ci_tiny_smoke_run_passes_only_as_a_smoke_run_and_says_so(tmp_path, capsys):
    rc, out, err = _report(_work(tmp_path, 0.0442, 0.1627, CI_TINY), capsys)
    assert (rc, err) == (0, "")
    assert out.splitlines()[-1] == (
        "gpu_check: OK as a smoke run: 24 of 1654 training questions is too few to learn from, so "
        "test F1 was not held to the baselines (all questions, or GPU_CHECK_F1_MARGIN set, require "
        "test F1 above the best baseline)"
    )


def test_a_smoke_run_is_held_to_the_margin_when_it_is_set(tmp_path, capsys):
    rc, _, err = _report(_work(tmp_path, 0.0442, 0.1627, CI_TINY), capsys, GPU_CHECK_F1_MARGIN="0")
    assert rc == 1 and "learned too little" in err


def test_a_score_that_is_not_a_number_fails_any_run(tmp_path, capsys):
    rc, _, err = _report(_work(tmp_path, float("nan"), 0.1, CI_TINY), capsys)
    assert rc == 1 and "test F1 is not a number" in err


@pytest.mark.parametrize("value", ["high", "-0.1", "2"])
def test_a_bad_margin_stops_the_script_before_any_work(value, tmp_path):
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_CHECK_F1_MARGIN": value},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"gpu_check: GPU_CHECK_F1_MARGIN='{value}': expected a number from 0 to 1"
    )
    assert res.stdout == ""
