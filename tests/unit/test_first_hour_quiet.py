"""`-q` means warnings and errors only, and progress bars belong to a terminal (issue 30, item 2):
`medqa -q predict` leaves stderr empty, a piped stderr gets log lines but no bars, and the
libraries' own bars (transformers, datasets) and the Trainer's follow the same rule."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from helpers import DECODING, environ_without

QUESTION = ("--question", "Which drug blocks angiopoietin-2?")
CONTEXT = ("--context", "Faricimab blocks VEGF-A and angiopoietin-2.")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model as a saved model folder with its decoding.json."""
    folder = tmp_path_factory.mktemp("quiet") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "decoding.json").write_text(json.dumps(DECODING))
    return folder


def _medqa(*args: str, cwd: Path, tty_stderr: bool = False) -> tuple[int, str, str]:
    """Run `python -m medqa ARGS`; (status, stdout, stderr), stderr a pseudo-terminal if asked."""
    env = environ_without("MLFLOW_", "HF_HUB_DISABLE", "HF_DATASETS_DISABLE", "TQDM_")
    cmd = [sys.executable, "-m", "medqa", *args]
    if not tty_stderr:
        res = subprocess.run(
            cmd, cwd=cwd, env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
        )
        return res.returncode, res.stdout, res.stderr
    leader, follower = pty.openpty()
    # 24 rows of 100 columns: a terminal without a size gets bars of no width
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process is done
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env | {"HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=follower
    )
    os.close(follower)
    reader.join(timeout=30)
    os.close(leader)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_quiet_predict_leaves_stderr_empty(model_folder: Path, tmp_path: Path) -> None:
    status, out, err = _medqa(
        "-q", "predict", "--model", str(model_folder), *QUESTION, *CONTEXT, cwd=tmp_path
    )
    assert status == 0 and out.startswith(("answer: ", "no answer: ")), out
    assert err == "", err

    questions = tmp_path / "in.csv"
    questions.write_text("question,context\nWhat?,Zinc 80 mg.\nWhich?,Copper 2 mg.\n")
    status, out, err = _medqa(
        "-q", "predict", "--model", str(model_folder), "--input", str(questions), cwd=tmp_path
    )
    assert status == 0 and len(out.splitlines()) == 2
    assert err == "", err


@pytest.mark.slow
def test_quiet_means_quiet_on_a_terminal_too(model_folder: Path, tmp_path: Path) -> None:
    """On a terminal the bars are drawn; -q takes them away with the log lines."""
    args = ("predict", "--model", str(model_folder), *QUESTION, *CONTEXT)
    status, out, err = _medqa(*args, cwd=tmp_path, tty_stderr=True)
    assert status == 0 and "Loading weights" in err and "precision fp32" in err, err
    status, out, err = _medqa("-q", *args, cwd=tmp_path, tty_stderr=True)
    assert status == 0 and out.startswith(("answer: ", "no answer: "))
    assert err.strip() == "", err


@pytest.mark.slow
def test_a_piped_stderr_gets_log_lines_but_no_bars(model_folder: Path, tmp_path: Path) -> None:
    questions = tmp_path / "in.jsonl"
    questions.write_text(json.dumps({"question": "What?", "context": "Zinc 80 mg."}) + "\n")
    status, out, err = _medqa(
        "predict", "--model", str(model_folder), "--input", str(questions), cwd=tmp_path
    )
    assert status == 0 and json.loads(out)["id"] == 1
    assert err.splitlines() == [
        "medqa.predict_command: precision fp32 (none recorded in "
        f"{model_folder / 'decoding.json'}: scored in fp32)",
        "medqa.predict_command: engine eager (set by --engine)",
        "medqa.predict_command: predicted 1 records",
    ]


def test_quiet_turns_off_the_bars_of_libraries_already_imported(monkeypatch) -> None:
    """An in-process caller (a test, a notebook) has transformers and datasets imported before
    `main` runs: their environment switches come too late, so their own functions are used."""
    import datasets
    from transformers.utils import logging as transformers_logging

    from medqa.cli import _configure_logging

    for switch in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        _configure_logging(verbose=False, quiet=True)
        assert not transformers_logging.is_progress_bar_enabled()
        assert not datasets.is_progress_bar_enabled()
        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        transformers_logging.enable_progress_bar()
        datasets.enable_progress_bars()
        _configure_logging(verbose=False, quiet=False)


def test_the_trainer_writes_no_log_dicts_to_stdout(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    """The Trainer prints each logging step's dict to stdout (PrinterCallback without bars, beside
    the bars with them); stdout is the command's result, so neither stays, and bars lose the dicts."""
    from transformers import (
        AutoModelForQuestionAnswering,
        PrinterCallback,
        ProgressCallback,
        Trainer,
        TrainingArguments,
    )

    from medqa.train_callbacks import keep_progress_off_stdout

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)
    for bars_off in (True, False):
        args = TrainingArguments(tmp_path / "out", disable_tqdm=bars_off, report_to="none")
        trainer = Trainer(model=model, args=args)
        keep_progress_off_stdout(trainer)
        kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
        assert PrinterCallback not in kinds and ProgressCallback not in kinds
        bars = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback)]
        assert len(bars) == (0 if bars_off else 1)
        for bar in bars:
            bar.on_train_begin(args, trainer.state, trainer.control)
            bar.on_log(args, trainer.state, trainer.control, logs={"loss": 1.0})
            bar.on_train_end(args, trainer.state, trainer.control)
        assert "loss" not in capsys.readouterr().out
