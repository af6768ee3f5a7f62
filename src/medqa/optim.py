"""The fine-tuning optimizer: AdamW with the QA head's own rate and layer-wise decayed encoder rates.

What counts as the head and where the layers are is read from the model's structure, not from
parameter names of one family: the encoder is ``model.base_model`` (BERT's ``bert``, ModernBERT's
``model``, DeBERTa's ``deberta``...), the head is every trainable parameter outside it (``qa_outputs``,
but also ModernBERT's ``head`` and ``classifier``), and layer indices come from the ``layer.N`` /
``layers.N`` module lists every family keeps its encoder layers in.
"""

from __future__ import annotations

import re

import torch
from transformers import PreTrainedModel

from medqa.config import TrainParams
from medqa.errors import ConfigError, ModelError

# BERT, RoBERTa, ELECTRA, XLM-R: encoder.layer.N; DistilBERT: transformer.layer.N;
# DeBERTa: encoder.layer.N; ModernBERT: layers.N (names relative to the base model).
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def _layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _encoder_depths(model: PreTrainedModel, decay: float) -> dict[int, int]:
    """For each encoder parameter (by id), how many layers sit above it: 0 in the top layer.

    Parameters outside the layers take the rate of their side of the stack: those registered before
    the first layer (embeddings) sit below every layer; those after the last (ModernBERT's final
    norm, DeBERTa's shared relative-position table, a pooler) feed the head and take the top rate.
    """
    base = model.base_model
    if base is model:
        raise ModelError(
            f"{type(model).__name__}: no base encoder under {model.base_model_prefix!r}, so the "
            "QA head cannot be told apart from it"
        )
    named = list(base.named_parameters())
    index = [_layer_index(n) for n, _ in named]
    found = sorted({i for i in index if i is not None})
    expected = getattr(model.config, "num_hidden_layers", None) or len(found)
    if decay != 1.0 and (not found or found != list(range(expected))):
        raise ConfigError(
            f"train.layer_lr_decay {decay} needs one set of weights per encoder layer, but the "
            f"{expected} layers of {type(model).__name__} are not separate layer.N modules "
            "(ALBERT shares one set of weights across all its layers), so per-layer rates "
            "cannot apply; set train.layer_lr_decay: 1.0"
        )
    num_layers = len(found)
    last = max((k for k, i in enumerate(index) if i is not None), default=len(named))
    return {
        id(p): num_layers - 1 - i if i is not None else (0 if k > last else num_layers)
        for k, ((_, p), i) in enumerate(zip(named, index))
    }


def build_optimizer(model: PreTrainedModel, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW with per-group learning rates: the QA head's own rate and the encoder's, decayed by layer.

    The head starts from random weights of scale ~0.02; at an encoder-sized rate it barely moves in a
    few hundred steps, so it gets its own (usually larger) rate. With ``layer_lr_decay`` d < 1 the
    encoder's top layer trains at ``learning_rate`` and each layer below at d times the one above
    (embeddings last): lower layers hold the general language knowledge a small dataset should
    disturb least (layer-wise learning-rate decay, as in ELECTRA and ULMFiT). No decay on biases and
    norms. A model whose layers share weights (ALBERT) cannot take per-layer rates: with d < 1 it is
    a ConfigError rather than a silently uniform rate.
    """
    depth = _encoder_depths(model, params.layer_lr_decay)
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in depth:
            lr = params.learning_rate * params.layer_lr_decay ** depth[id(p)]
        else:
            lr = params.head_learning_rate
        groups.setdefault((lr, p.ndim < 2), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "lr": lr, "weight_decay": 0.0 if no_decay else params.weight_decay}
            for (lr, no_decay), ps in sorted(groups.items())
        ]
    )
