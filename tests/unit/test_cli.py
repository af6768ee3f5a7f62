"""The medqa command: --help everywhere, and user errors as one line with no traceback."""

import subprocess
import sys

import pytest

SUBCOMMANDS = [
    "validate",
    "tokenize",
    "train",
    "evaluate",
    "register",
    "predict",
    "promote",
    "rollback",
    "models",
    "serve",
    "doctor",
]


def medqa(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "medqa", *args], capture_output=True, text=True, cwd=cwd
    )


def test_every_subcommand_has_help():
    top = medqa("--help")
    assert top.returncode == 0 and "not medical advice" in " ".join(top.stdout.split())
    for sub in SUBCOMMANDS:
        res = medqa(sub, "--help")
        assert res.returncode == 0, sub
        assert "usage: medqa" in res.stdout


@pytest.mark.parametrize(
    "params_text,expected",
    [
        ("train:\n  batch_size: '32'\n", "train.batch_size: expected int"),
        ("train:\n  lr: 0.1\n", "unknown key train.lr"),
    ],
)
def test_bad_params_exit_2_with_one_line(tmp_path, params_text, expected):
    p = tmp_path / "params.yaml"
    p.write_text(params_text)
    res = medqa("--params", str(p), "validate", cwd=tmp_path)
    assert res.returncode == 2
    assert expected in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_data_exits_2_naming_the_file(tmp_path):
    raw = tmp_path / "train.json"
    raw.write_text("{oops")
    res = medqa("validate", "--raw", str(raw), "--out", str(tmp_path / "v"), cwd=tmp_path)
    assert res.returncode == 2 and "train.json: invalid JSON at line 1" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "v").exists()


def test_doctor_reports_a_backend():
    res = medqa("doctor")
    assert res.returncode == 0 and "backend: " in res.stdout
