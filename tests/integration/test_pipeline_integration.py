"""The real pipeline on a tiny dataset: dvc repro in a fresh git repo, DVC's cache, MLflow's registry,
and a registry look-up by alias from a new process."""

import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from helpers import make_tiny_project, project_env, sh

pytestmark = pytest.mark.integration


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    """A throwaway copy of the project wired to the tiny model and data, and its environment."""
    env = project_env()
    return make_tiny_project(tmp_path / "proj", tiny_model_dir, env), env


def test_dvc_repro_end_to_end_then_cache_then_registry_lookup(project):
    proj, env = project
    dvc = [sys.executable, "-m", "dvc"]
    out = sh([*dvc, "repro"], proj, env)
    for stage in ("validate", "tokenize", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out

    metrics = json.loads((proj / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["f1"] <= 1.0 and metrics["n"] > 0
    assert set(metrics["baselines_f1"]) == {"lexical_window", "base_model_untrained"}
    reg = json.loads((proj / "reports" / "registration.json").read_text())
    assert reg["promoted"] and reg["version"] == "1"
    assert "| question type |" in (proj / "reports" / "errors.md").read_text()
    curve = json.loads((proj / "reports" / "train_curve.json").read_text())
    assert [r["epoch"] for r in curve] == [1, 2]
    assert all(r["train_loss"] > 0 and 0 <= r["dev_f1"] <= 1 for r in curve)  # NaN fails both
    assert (
        curve[-1]["dev_f1"] == metrics["dev_f1"]
    )  # the last point is the evaluate stage's dev pass
    assert (proj / "models" / "checkpoint" / "model.safetensors").exists()

    summary = sh([sys.executable, "-m", "medqa.summary"], proj, env)
    assert "test split" in summary and "now @champion" in summary

    # nothing changed: nothing runs
    again = sh([*dvc, "repro"], proj, env)
    assert "Running stage" not in again

    # an evaluation-only parameter reruns evaluate and register, nothing upstream
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["evaluate"]["batch_size"] = 16
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    partial = sh([*dvc, "repro"], proj, env)
    assert "Running stage 'evaluate'" in partial and "Running stage 'register'" in partial
    for upstream in ("validate", "tokenize", "train"):
        assert f"Running stage '{upstream}'" not in partial
    reg2 = json.loads((proj / "reports" / "registration.json").read_text())
    assert (
        reg2["version"] == "1" and reg2["promoted"] and not reg2["new_version"]
    )  # same checkpoint

    # a gate-only change reruns register alone and re-decides the alias: no new version
    params["register"]["min_f1"] = 0.0001
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    gate_only = sh([*dvc, "repro"], proj, env)
    assert "Running stage 'register'" in gate_only and "Running stage 'evaluate'" not in gate_only
    reg3 = json.loads((proj / "reports" / "registration.json").read_text())
    assert reg3["version"] == "1" and "already registered as v1" in reg3["reason"]

    # an edit to a module only evaluate imports reruns evaluate (and register, which reads its
    # metrics), not the stages upstream of it
    with open(proj / "src" / "medqa" / "baselines.py", "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    edited = sh([*dvc, "repro"], proj, env)
    assert "Running stage 'evaluate'" in edited
    for upstream in ("validate", "tokenize", "train"):
        assert f"Running stage '{upstream}'" not in edited

    # the training run and the registered version carry the environment lock's digest
    lineage = (
        "from mlflow import MlflowClient; from medqa.tracking import configure_tracking; "
        "configure_tracking(); c = MlflowClient(); v = c.get_model_version('tiny-qa', '1'); "
        "r = c.get_run(v.tags['run_id']); "
        "print('lineage', v.tags['env_lock_sha256'], r.data.tags['env_lock_sha256'])"
    )
    digest = hashlib.sha256((proj / "uv.lock").read_bytes()).hexdigest()
    out = sh([sys.executable, "-c", lineage], proj, env).splitlines()
    assert next(line for line in out if line.startswith("lineage")).split() == [
        "lineage",
        digest,
        digest,
    ]

    # a deliberate upgrade (a changed lock) reruns train and what follows it, nothing upstream
    with open(proj / "uv.lock", "a", encoding="utf-8") as fh:
        fh.write("\n# an upgrade\n")
    upgraded = sh([*dvc, "repro"], proj, env)
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in upgraded
    for upstream in ("validate", "tokenize"):
        assert f"Running stage '{upstream}'" not in upgraded

    shown = sh([*dvc, "metrics", "show", "--json"], proj, env)
    assert "reports/headline.json" in shown and "by_type" not in shown

    # a fresh process looks the champion up in the registry by alias
    context = "Aflibercept 8 mg can be extended to intervals of up to 16 weeks after loading."
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "medqa",
            "predict",
            "--model",
            "models:/tiny-qa@champion",
            "--json",
            "--question",
            "How far can dosing be extended?",
            "--context",
            context,
        ],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(result) == {"answer", "score", "confidence", "start", "end", "abstained", "reason"}
    if not result["abstained"]:
        assert context[result["start"] : result["end"]] == result["answer"]

    # evaluate's predictions.jsonl, the version and `medqa predict` give the same confidence and
    # decision for the same test question (to float precision: the windows are batched differently)
    row = json.loads((proj / "data" / "validated" / "test.jsonl").read_text().splitlines()[0])
    reported = next(
        r
        for r in map(json.loads, (proj / "reports" / "predictions.jsonl").read_text().splitlines())
        if r["id"] == row["id"]
    )
    predict = ["predict", "--model", "models:/tiny-qa@champion", "--json"]
    question = ["--question", row["question"], "--context", row["context"]]
    res = subprocess.run(
        [sys.executable, "-m", "medqa", *predict, *question],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    served = json.loads(res.stdout.strip().splitlines()[-1])
    assert served["confidence"] == pytest.approx(reported["confidence"], rel=1e-5)
    assert served["answer"] == reported["policy_answer"]
    assert served["reason"] == reported["policy_reason"]
    calibration = json.loads((proj / "reports" / "metrics.json").read_text())["calibration"]
    assert calibration["right_means"].startswith("exact match") and "ece_ci95" in calibration
    for plot in ("reliability.png", "risk_coverage.png"):
        assert (proj / "reports" / plot).read_bytes().startswith(b"\x89PNG")
    card = subprocess.run(
        [sys.executable, "-m", "medqa", "models", "--card", "champion"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert card.startswith("# tiny-qa v") and "Not medical advice" in card
    assert card == (proj / "reports" / "model_card.md").read_text()
