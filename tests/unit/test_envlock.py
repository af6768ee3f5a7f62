"""The locked environment (issue "Same install every time"): reading the lock, finding drift, and
`medqa doctor` naming a drifted package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version

from helpers import ROOT
from medqa.envlock import EXPORT_FILE, LOCK_FILE, Drift, drift, lock_digest, locked_versions

EXPORT = """\
accelerate==1.15.0 ; python_full_version < '3.0' \\
    --hash=sha256:aa
    # via medqa
accelerate==1.16.0 ; python_full_version >= '3.0' \\
    --hash=sha256:bb
Jinja2==3.1.6 \\
    --hash=sha256:cc
pywin32==311 ; sys_platform == 'no-such-platform' \\
    --hash=sha256:dd
"""
LOCK = '[[package]]\nname = "torch"\nversion = "2.13.0"\nsource = { registry = "x" }\n'


def test_locked_versions_follow_markers_and_take_torch_from_uv_lock():
    assert locked_versions(EXPORT, LOCK) == {
        "accelerate": "1.16.0",
        "jinja2": "3.1.6",
        "torch": "2.13.0",
    }


def test_drift_names_changed_and_missing_packages_and_ignores_torch_build_tags():
    locked = {"accelerate": "1.16.0", "jinja2": "3.1.6", "torch": "2.13.0"}
    installed = {"accelerate": "1.17.0", "torch": "2.13.0+rocm7.2"}
    assert drift(locked, installed.get) == [
        Drift("accelerate", "1.17.0", "1.16.0"),
        Drift("jinja2", None, "3.1.6"),
    ]
    assert str(Drift("jinja2", None, "3.1.6")) == "jinja2 installed nothing, locked 3.1.6"


def test_this_environment_is_the_lock():
    """scripts/setup.sh (run by every make target) installs exactly the lock."""
    locked = locked_versions((ROOT / EXPORT_FILE).read_text(), (ROOT / LOCK_FILE).read_text())
    assert {"transformers", "torch", "mlflow", "pytest", "mypy", "ruff"} <= set(locked)
    assert drift(locked) == []


def test_doctor_names_a_drifted_package_and_the_fix(tmp_path):
    for name in ("dvc.yaml", "params.yaml", LOCK_FILE):
        shutil.copy(ROOT / name, tmp_path)
    have = version("pyyaml")
    export = (ROOT / EXPORT_FILE).read_text().replace(f"pyyaml=={have} ", "pyyaml==0.0.1 ")
    assert "pyyaml==0.0.1 " in export
    (tmp_path / EXPORT_FILE).write_text(export)
    res = subprocess.run(
        [sys.executable, "-m", "medqa", "doctor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"pyyaml installed {have}, locked 0.0.1" in res.stdout
    assert "scripts/setup.sh" in res.stdout and "1 not as locked" in res.stdout
    assert lock_digest(tmp_path) == lock_digest(ROOT) != "unknown"


def test_outside_a_checkout_the_digest_is_unknown(tmp_path):
    assert lock_digest(tmp_path) == "unknown"
