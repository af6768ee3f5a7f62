"""The tiny QA model the tests and benchmarks build from a config in-process (nothing downloads):
a BERT of 2 layers, 32 wide, random weights from seed 0, with a given tokenizer's vocabulary.
What it answers is noise; it exercises the code around a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_tiny_qa_model(folder: Path, tokenizer: Any) -> Path:
    """Save the tiny model and ``tokenizer`` to ``folder`` (safetensors), and return it."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertForQuestionAnswering(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
