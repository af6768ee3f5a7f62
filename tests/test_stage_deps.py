"""dvc.yaml's source deps are exactly the modules each stage's command imports, and JSON reports
are strict (issue "Trust the cache and the gate", items 1 and 5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from medqa.provenance import STAGE_COMMANDS, dvc_dep_paths, module_closure, stage_sources

ROOT = Path(__file__).resolve().parents[1]


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGE_COMMANDS))
def test_dvc_yaml_lists_every_module_the_stage_imports(stage):
    listed = sorted(
        d for d in dvc_stages()[stage]["deps"] if isinstance(d, str) and d.startswith("src/")
    )
    assert listed == dvc_dep_paths(stage), (
        f"fix dvc.yaml's {stage} deps: see `python -m medqa.provenance`"
    )


def test_every_dvc_stage_is_known_to_provenance():
    assert set(dvc_stages()) == set(STAGE_COMMANDS)


def test_lazy_and_transitive_imports_count():
    names = {p.name for p in stage_sources("tokenize")}
    # features imports modelsource (which changes every window when the tokenizer loads differently),
    # the cli imports config lazily inside _params: both must be deps
    assert {
        "modelsource.py",
        "features.py",
        "config.py",
        "errors.py",
        "fileio.py",
        "cli.py",
    } <= names
    assert "training.py" not in names and "registry.py" not in names
    train = {p.name for p in stage_sources("train")}
    assert {
        "training.py",
        "modelsource.py",
        "scoring.py",
        "decoding.py",
        "device.py",
        "tracking.py",
    } <= train
    assert {p.name for p in module_closure({"medqa.errors"})} == {"errors.py"}


def test_a_module_edit_changes_the_train_fingerprint(monkeypatch, tmp_path):
    import medqa.training as t
    from medqa.config import Params
    from medqa.device import DeviceInfo

    src = tmp_path / "mod.py"
    src.write_text("x = 1\n")
    monkeypatch.setattr(t, "stage_sources", lambda stage: [src])
    device = DeviceInfo(backend="cpu", device="cpu", name="x86_64", arch="x86_64", bf16=False)
    args = (Params(), "features", {"data_md5_train": "a"}, "weights", device, "fp32")
    before = t.training_fingerprint(*args)
    assert t.training_fingerprint(*args) == before
    src.write_text("x = 2\n")
    assert t.training_fingerprint(*args) != before
    for i, other in [(1, "other-features"), (3, "other-weights"), (5, "bf16")]:
        changed = list(args)
        changed[i] = other
        assert t.training_fingerprint(*changed) != t.training_fingerprint(*args)


def test_reports_never_hold_nan(tmp_path):
    from medqa.fileio import write_json_atomic, write_jsonl_atomic

    write_json_atomic(tmp_path / "m.json", {"f1": math.nan, "ci": (math.inf, 0.5), "n": 0})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"f1": None, "ci": [None, 0.5], "n": 0}
    write_jsonl_atomic(tmp_path / "p.jsonl", [{"score": -math.inf}])
    assert json.loads((tmp_path / "p.jsonl").read_text()) == {"score": None}
