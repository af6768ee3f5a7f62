"""Where model weights come from: a pip-packaged base model, a local folder, or a hub name.

Nothing is downloaded unless a hub name is given and no local source matches it. Loading is safe:
safetensors only, and ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from transformers import AutoModelForQuestionAnswering, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from medqa.errors import ModelError


def resolve_model_source(name: str) -> str:
    """A local folder for ``name``: the folder itself, a packaged model's folder, or the hub name."""
    path = Path(name)
    if path.is_dir():
        return str(path)
    module_name = name.replace("-", "_")
    if module_name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return str(module.get_model_path())
    if path.is_absolute() or name.startswith("."):
        raise ModelError(f"{name}: model folder not found")
    return name  # a hub name: transformers resolves it (needs a network or a local cache)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The fast tokenizer of ``name`` (offsets need a fast tokenizer)."""
    source = resolve_model_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"{name}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    if not tok.is_fast:
        raise ModelError(f"{name}: no fast tokenizer; character offsets need one")
    return tok


def load_qa_model(name: str) -> PreTrainedModel:
    """A question-answering model from ``name``; a new QA head is initialised if it has none."""
    source = resolve_model_source(name)
    try:
        return AutoModelForQuestionAnswering.from_pretrained(
            source, use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise ModelError(f"{name}: cannot load safetensors weights ({str(e).splitlines()[0]})") from None
