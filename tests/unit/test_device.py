"""Device selection and the training precision policy (no GPU needed: CPU facts are passed in)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from helpers import ROOT
from medqa.device import DeviceInfo, cpu_bf16_features, detect_device, explain_precision
from medqa.errors import ConfigError

CPU = DeviceInfo("cpu", "cpu", "x86_64", "x86_64", False)


def test_explicit_precision_wins_and_says_so():
    cpu = DeviceInfo("cpu", "cpu", "x86_64", "x86_64", False)
    assert explain_precision("bf16", cpu) == ("bf16", "set by train.precision")


@pytest.mark.parametrize(
    "features,precision",
    [((), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16")],
)
def test_cpu_auto_precision_follows_the_native_bf16_flags(features, precision):
    chosen, why = explain_precision("auto", CPU, cpu_features=features)
    assert chosen == precision
    assert all(f in why for f in features) and ("native bf16" in why)


def test_cpu_bf16_features_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n")
    assert cpu_bf16_features(info) == ("avx512_bf16", "amx_bf16")
    info.write_text("flags\t\t: fpu avx2\n")
    assert cpu_bf16_features(info) == ()
    assert cpu_bf16_features(tmp_path / "absent") == ()


def test_detected_cpu_records_its_native_bf16():
    assert detect_device("cpu").bf16 == bool(cpu_bf16_features())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_missing_gpu_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match=r"^train\.device is 'cuda' but torch .* sees no such"):
        detect_device("cuda")
    with pytest.raises(ConfigError, match=r"^device is 'cuda'"):
        detect_device("cuda", setting="device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_medqa_train_on_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    paths = {"--features": "f", "--validated": "v", "--out": "o", "--state": "s"}
    res = subprocess.run(
        [sys.executable, "-m", "medqa", "--params", "params.yaml", "train"]
        + [str(x) for kv in paths.items() for x in kv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("medqa train: error: train.device is 'cuda' but torch ")
    assert errors[0].endswith(": use auto or cpu, or see medqa doctor")
    assert not (tmp_path / "o").exists()
