"""The train stage on a tiny model: determinism, resume after SIGKILL, torchrun over gloo, stale state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import ROOT, free_port

pytestmark = pytest.mark.slow  # subprocess trainings, kills, torchrun


# Runs `medqa train` in a child process that SIGKILLs itself right after optimizer step KILL_AT:
# the kill lands mid-epoch, after the step-based checkpoint before it, with no chance to clean up.
KILLER = """
import os, signal, sys
import medqa.training as t
kill_at = int(os.environ["KILL_AT"])
original = t.SaveEverySteps.on_step_end
def on_step_end(self, args, state, control, **kw):
    if state.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, args, state, control, **kw)
t.SaveEverySteps.on_step_end = on_step_end
from medqa.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture()
def workspace(tmp_path, tiny_raw_dir, tiny_model_dir):
    """Validated data, tokenized features and a params file for the tiny model, in ``tmp_path``."""
    from medqa.cli import main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] = str(tiny_model_dir)
    params["validate"]["raw_path"] = str(tiny_raw_dir)
    params["tokenize"].update(max_seq_length=128, doc_stride=48)
    params["train"].update(epochs=3, batch_size=8, learning_rate=1e-3, save_steps=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = ["--params", str(tmp_path / "params.yaml")]
    assert (
        main(
            [
                *p,
                "validate",
                "--out",
                str(tmp_path / "validated"),
                "--rejected",
                str(tmp_path / "rej.jsonl"),
                "--report",
                str(tmp_path / "validation.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *p,
                "tokenize",
                "--validated",
                str(tmp_path / "validated"),
                "--out",
                str(tmp_path / "features"),
            ]
        )
        == 0
    )
    return tmp_path


def env_for(ws: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))
    }
    return env | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def train_cmd(ws: Path, name: str) -> list[str]:
    return [
        "--params",
        str(ws / "params.yaml"),
        "train",
        "--features",
        str(ws / "features"),
        "--validated",
        str(ws / "validated"),
        "--out",
        str(ws / name / "checkpoint"),
        "--state",
        str(ws / name / "state"),
    ]


def run_train(
    ws: Path,
    name: str,
    prefix: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    expect_rc: int = 0,
) -> subprocess.CompletedProcess:
    prefix = prefix or [sys.executable, "-m", "medqa"]
    res = subprocess.run(
        [*prefix, *train_cmd(ws, name)],
        cwd=ws,
        env=env_for(ws) | (extra_env or {}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == expect_rc, (
        f"rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return res


def weights(ws: Path, name: str) -> dict:
    return load_file(ws / name / "checkpoint" / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), f"{k} differs"


def mlflow_runs(ws: Path) -> list:
    """The runs in the workspace's own store (the children ran without MLFLOW_* variables), read
    without touching this process's tracking settings."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("medqa").experiment_id])


def test_same_seed_same_weights_and_dev_f1(workspace):
    run_train(workspace, "a")
    run_train(workspace, "b")
    assert_same_weights(weights(workspace, "a"), weights(workspace, "b"))
    curve_a = json.loads((workspace / "a" / "checkpoint" / "train_curve.json").read_text())
    assert curve_a == json.loads((workspace / "b" / "checkpoint" / "train_curve.json").read_text())
    assert [r["epoch"] for r in curve_a] == [1, 2, 3]
    # params.yaml's train.attention_dropout 0.0 reached the model that trained
    config = json.loads((workspace / "a" / "checkpoint" / "config.json").read_text())
    assert config["attention_probs_dropout_prob"] == 0.0
    assert (
        all(0 <= r["dev_f1"] <= 1 for r in curve_a[:-1]) and curve_a[-1]["dev_f1"] is None
    )  # evaluate's


def test_bf16_autocast_training_is_exactly_reproducible(workspace):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["precision"] = "bf16"
    params["train"]["attention_dropout"] = None  # the model's own: reproducible with dropout too
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    run_train(workspace, "a")
    run_train(workspace, "b")
    config = json.loads((workspace / "a" / "checkpoint" / "config.json").read_text())
    assert config["attention_probs_dropout_prob"] == 0.1  # BertConfig's default, untouched
    assert (
        json.loads((workspace / "a" / "checkpoint" / "medqa.json").read_text())["precision"]
        == "bf16"
    )
    a = weights(workspace, "a")
    assert all(t.dtype == torch.float32 for t in a.values())  # autocast: the weights stay fp32
    assert_same_weights(a, weights(workspace, "b"))


def test_sigkill_mid_epoch_then_rerun_resumes_to_the_same_weights(workspace):
    run_train(workspace, "straight")
    steps = json.loads((workspace / "straight" / "checkpoint" / "medqa.json").read_text())
    killed = run_train(
        workspace,
        "resumed",
        prefix=[sys.executable, "-c", KILLER],
        extra_env={"KILL_AT": "5"},
        expect_rc=-signal.SIGKILL,
    )
    assert "trained on" not in killed.stdout
    state = workspace / "resumed" / "state"
    assert sorted(p.name for p in state.glob("checkpoint-*")) == ["checkpoint-4"]  # newest only
    assert not (workspace / "resumed" / "checkpoint").exists()  # no half-written final model
    # a kill while the Trainer writes the next checkpoint leaves it with only its config: it is
    # ignored and removed, never resumed (it used to fail every rerun: no trainer_state.json)
    (state / "checkpoint-6").mkdir()
    (state / "checkpoint-6" / "config.json").write_text("{}")

    again = run_train(workspace, "resumed")
    assert "resuming from" in again.stderr and "checkpoint-4" in again.stderr
    assert "removing incomplete checkpoint" in again.stderr and "checkpoint-6" in again.stderr
    assert not state.exists()  # a finished training leaves no state to stand in for the next one
    assert_same_weights(weights(workspace, "straight"), weights(workspace, "resumed"))
    resumed = json.loads((workspace / "resumed" / "checkpoint" / "medqa.json").read_text())
    assert resumed["resumed_from_step"] == 4 and steps["resumed_from_step"] == 0
    curve = json.loads((workspace / "resumed" / "checkpoint" / "train_curve.json").read_text())
    straight = json.loads((workspace / "straight" / "checkpoint" / "train_curve.json").read_text())
    assert [(r["epoch"], r["dev_f1"], r["dev_em"]) for r in curve] == [
        (r["epoch"], r["dev_f1"], r["dev_em"]) for r in straight
    ]
    # the interrupted epoch's loss averages only the steps run after resuming; later epochs match
    assert [r["train_loss"] for r in curve[1:]] == [r["train_loss"] for r in straight[1:]]
    # the resumed run continued the killed run's MLflow run instead of starting another
    assert len(mlflow_runs(workspace)) == 2


def test_a_finished_training_is_never_resumed_and_a_rerun_logs_params(workspace):
    """Issue "Trust the cache and the gate" 2: a rerun (`dvc repro -f train`, or after the MLflow
    store was removed) trained 0 steps from the finished state into a run without params."""
    import shutil

    first = run_train(workspace, "a")
    assert not (workspace / "a" / "state").exists()
    shutil.rmtree(workspace / "mlruns")
    # as inside `dvc exp run -n nightly-42` (the Prefect flow's override runs): the run says so
    exp = {"DVC_EXP_NAME": "nightly-42", "DVC_EXP_BASELINE_REV": "abc123"}
    again = run_train(workspace, "a", extra_env=exp)
    assert "starting fresh" in again.stderr and "resuming" not in again.stderr
    summary = json.loads((workspace / "a" / "checkpoint" / "medqa.json").read_text())
    assert summary["resumed_from_step"] == 0 and "trained on" in first.stdout
    (run,) = mlflow_runs(workspace)
    assert run.data.params["learning_rate"] == "0.001" and "train_fingerprint" in run.data.tags
    assert run.data.tags["dvc_experiment"] == "nightly-42"
    assert run.data.tags["dvc_experiment_baseline"] == "abc123"


def test_changed_features_discard_the_state_of_a_killed_run(workspace):
    """Issue "Trust the cache and the gate" 2: new training labels must retrain, not resume."""
    run_train(
        workspace,
        "k",
        prefix=[sys.executable, "-c", KILLER],
        extra_env={"KILL_AT": "3"},
        expect_rc=-signal.SIGKILL,
    )
    assert (workspace / "k" / "state" / "checkpoint-2").exists()
    (workspace / "features" / "train" / "labels-changed.txt").write_text("new labels\n")
    again = run_train(workspace, "k")
    assert "starting fresh" in again.stderr and "resuming" not in again.stderr


def test_one_trainer_per_state(workspace):
    """Issue "Trust the cache and the gate" 4: a second trainer on the same state is refused."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from medqa.process import exclusive_state\n"
                f"with exclusive_state(Path({str(workspace / 'held' / 'state')!r})):\n"
                "    print('held', flush=True); time.sleep(120)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_train(workspace, "held", expect_rc=2)
        assert f"in use by another `medqa train` (pid {holder.pid})" in res.stderr
        assert "Traceback" not in res.stderr and not (workspace / "held" / "checkpoint").exists()
    finally:
        holder.kill()
        holder.wait()
    run_train(workspace, "held")  # the lock died with its holder


def test_a_trainer_dies_with_the_process_that_started_it(tmp_path):
    """Issue "Trust the cache and the gate" 4: SIGKILL of `dvc` left `medqa train` running."""
    import time

    armed = tmp_path / "armed"
    child = (
        "import time; from pathlib import Path; from medqa.process import die_with_parent; "
        f"die_with_parent(); Path({str(armed)!r}).touch(); time.sleep(120)"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys, time\n"
                f"p = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
                "print(p.pid, flush=True); time.sleep(120)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not armed.exists():
        assert time.monotonic() < deadline, "the child never armed the signal"
        time.sleep(0.1)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{pid}/stat") as fh:  # reaped by init only later: a zombie counts as gone
            if fh.read().split(") ", 1)[1].startswith("Z"):
                return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the child outlived its parent by 30 s")


def test_checkpoints_of_another_configuration_are_not_resumed(workspace):
    from medqa.training import STATE_FILE, resumable_checkpoint

    state = workspace / "state"
    (state / "checkpoint-3").mkdir(parents=True)
    (state / STATE_FILE).write_text(json.dumps({"fingerprint": "old", "mlflow_run_id": "x"}))
    assert resumable_checkpoint(state, "new") == (None, {})
    assert not state.exists()
    (state / "checkpoint-3").mkdir(parents=True)
    for name in ("trainer_state.json", "model.safetensors", "optimizer.pt"):
        (state / "checkpoint-3" / name).write_text("{}")
    (state / STATE_FILE).write_text(json.dumps({"fingerprint": "same", "mlflow_run_id": "x"}))
    assert resumable_checkpoint(state, "same") == (
        str(state / "checkpoint-3"),
        {"fingerprint": "same", "mlflow_run_id": "x"},
    )


def test_torchrun_two_cpu_processes_train_and_only_rank0_writes(workspace, tiny_model_dir):
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "medqa",
    ]
    res = run_train(workspace, "ddp", prefix=torchrun)
    assert res.stdout.count("trained on") == 1  # rank 0 reports, rank 1 stays quiet
    summary = json.loads((workspace / "ddp" / "checkpoint" / "medqa.json").read_text())
    assert summary["world_size"] == 2 and summary["final_train_loss"] > 0
    before = load_file(tiny_model_dir / "model.safetensors")
    after = weights(workspace, "ddp")
    assert not after["qa_outputs.weight"].equal(before["qa_outputs.weight"])  # it trained
    curve = json.loads((workspace / "ddp" / "checkpoint" / "train_curve.json").read_text())
    assert [r["epoch"] for r in curve] == [1, 2, 3]
    runs = mlflow_runs(workspace)
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    assert runs[0].data.params["per_device_batch_size"] == "4"
    leftovers = [
        p.name
        for p in (workspace / "ddp").iterdir()
        if p.name.startswith(".") and p.name != ".state.lock"
    ]
    assert leftovers == []


def test_layer_lr_decay_gives_lower_layers_smaller_rates(tiny_model_dir):
    from medqa.config import TrainParams, parse_params
    from medqa.errors import ConfigError
    from medqa.modelsource import load_qa_model
    from medqa.optim import build_optimizer

    model = load_qa_model(str(tiny_model_dir))  # 2 layers
    tp = TrainParams(learning_rate=1e-4, head_learning_rate=3e-3, layer_lr_decay=0.5)
    opt = build_optimizer(model, tp)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["qa_outputs.weight"])] == pytest.approx(3e-3)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(5e-5)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(2.5e-5)
    flat = build_optimizer(model, TrainParams(learning_rate=1e-4, head_learning_rate=1e-4))
    assert {g["lr"] for g in flat.param_groups} == {1e-4}
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        parse_params({"train": {"layer_lr_decay": 0}})
