"""A hub name with no network: ``base_model: some-org/some-model`` answered from a local Hugging Face
cache in the hub's own layout, through validate, tokenize, train and evaluate under ``dvc repro``.

A user who downloaded a checkpoint once (``huggingface-cli download``, or any earlier run) must be
able to run the pipeline offline with the hub name in params.yaml. The cache is built the way
huggingface_hub writes it: file contents in ``blobs/`` named by their hash, ``snapshots/<commit>/``
holding links to them, and ``refs/main`` naming the commit. The stages run in child processes with
HF_HUB_CACHE and HF_HUB_OFFLINE in their environment (huggingface_hub reads both once, at import),
and HF_ENDPOINT points at a closed local port, so a request to the hub fails at once rather than
reaching the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import make_tiny_project, project_env

pytestmark = pytest.mark.integration

HUB_NAME = "some-org/some-model"
COMMIT = "4f1c2b0e9d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b"  # any 40 hex digits: the cache keys on it


def put_in_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """Copy a saved model folder into ``cache`` as huggingface_hub lays out a download; return the
    snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_name_runs_the_pipeline_offline_from_the_local_cache(tmp_path, tiny_model_dir):
    cache = tmp_path / "hf-home" / "hub"
    snapshot = put_in_hub_cache(tiny_model_dir, cache, HUB_NAME, COMMIT)
    assert (snapshot / "model.safetensors").is_symlink()
    cached = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    env = project_env(
        "HF_",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(cache),
        TRANSFORMERS_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
        OMP_NUM_THREADS="1",
    )
    proj = make_tiny_project(tmp_path / "proj", tiny_model_dir, env)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["base_model"] = HUB_NAME
    params["train"]["epochs"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params))

    res = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "evaluate"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for stage in ("validate", "tokenize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    summary = json.loads((proj / "data" / "features" / "summary.json").read_text())
    trained = json.loads((proj / "models" / "checkpoint" / "medqa.json").read_text())
    assert summary["base_model"] == trained["base_model"] == HUB_NAME
    metrics = json.loads((proj / "reports" / "metrics.json").read_text())
    assert metrics["n"] > 0 and 0.0 <= metrics["baselines_f1"]["base_model_untrained"] <= 1.0
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == cached  # nothing fetched
