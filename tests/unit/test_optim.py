"""Per-family learning rates of medqa.optim.build_optimizer: the head found by module membership,
layer indices found in each family's layout, and shared-layer models refused with layer decay."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForQuestionAnswering,
    BertConfig,
    BertModel,
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    ModernBertConfig,
    ModernBertForQuestionAnswering,
    PreTrainedModel,
)

from medqa.config import TrainParams
from medqa.errors import ConfigError, ModelError
from medqa.modelsource import load_qa_model
from medqa.optim import build_optimizer

LR, HEAD_LR, DECAY = 1e-4, 3e-3, 0.5
DECAYED = TrainParams(learning_rate=LR, head_learning_rate=HEAD_LR, layer_lr_decay=DECAY)
TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def rates(model: PreTrainedModel, params: TrainParams = DECAYED) -> dict[str, float]:
    """The learning rate of every parameter, by name."""
    lr_of = {
        id(p): g["lr"] for g in build_optimizer(model, params).param_groups for p in g["params"]
    }
    return {name: lr_of[id(p)] for name, p in model.named_parameters()}


def test_bert_figures_are_unchanged(tiny_model_dir):
    r = rates(load_qa_model(str(tiny_model_dir)))
    assert r["qa_outputs.weight"] == pytest.approx(HEAD_LR)
    assert r["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(LR)
    assert r["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(LR * DECAY)
    assert r["bert.embeddings.word_embeddings.weight"] == pytest.approx(LR * DECAY**2)
    flat = build_optimizer(
        load_qa_model(str(tiny_model_dir)), TrainParams(learning_rate=LR, head_learning_rate=LR)
    )
    assert {g["lr"] for g in flat.param_groups} == {LR}


def test_bias_and_norm_weights_get_no_weight_decay(tiny_model_dir):
    model = load_qa_model(str(tiny_model_dir))
    opt = build_optimizer(model, TrainParams(weight_decay=0.01))
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert wd_of[id(p)] == (0.0 if p.ndim < 2 else 0.01), name


def test_modernbert_head_is_everything_outside_the_encoder():
    """ModernBERT's QA head is ``head`` + ``classifier`` (no ``qa_outputs``); its layers are ``layers.N``."""
    torch.manual_seed(0)
    config = ModernBertConfig(
        **TINY, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2
    )
    model = ModernBertForQuestionAnswering(config)
    r = rates(model)
    for name in ("head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"):
        assert r[name] == pytest.approx(HEAD_LR), name
    assert r["model.layers.1.attn.Wqkv.weight"] == pytest.approx(LR)
    assert r["model.layers.0.attn.Wqkv.weight"] == pytest.approx(LR * DECAY)
    assert r["model.embeddings.tok_embeddings.weight"] == pytest.approx(LR * DECAY**2)
    assert r["model.final_norm.weight"] == pytest.approx(
        LR
    )  # above the top layer: it feeds the head


def test_distilbert_layers_are_transformer_layer_n():
    torch.manual_seed(0)
    model = DistilBertForQuestionAnswering(
        DistilBertConfig(
            vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
        )
    )
    r = rates(model)
    assert r["qa_outputs.weight"] == pytest.approx(HEAD_LR)
    assert r["distilbert.transformer.layer.1.ffn.lin1.weight"] == pytest.approx(LR)
    assert r["distilbert.transformer.layer.0.ffn.lin1.weight"] == pytest.approx(LR * DECAY)
    assert r["distilbert.embeddings.word_embeddings.weight"] == pytest.approx(LR * DECAY**2)


def test_deberta_layers_and_shared_relative_positions():
    torch.manual_seed(0)
    config = DebertaV2Config(
        **TINY,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
    )
    model = DebertaV2ForQuestionAnswering(config)
    r = rates(model)
    assert r["qa_outputs.weight"] == pytest.approx(HEAD_LR)
    assert r["deberta.encoder.layer.1.output.dense.weight"] == pytest.approx(LR)
    assert r["deberta.encoder.layer.0.output.dense.weight"] == pytest.approx(LR * DECAY)
    assert r["deberta.embeddings.word_embeddings.weight"] == pytest.approx(LR * DECAY**2)
    assert r["deberta.encoder.rel_embeddings.weight"] == pytest.approx(
        LR
    )  # registered after the last layer


def test_albert_shared_layers_refuse_layer_decay_but_train_without_it():
    torch.manual_seed(0)
    model = AlbertForQuestionAnswering(AlbertConfig(**TINY, embedding_size=16))
    with pytest.raises(ConfigError, match="layer_lr_decay.*ALBERT shares"):
        build_optimizer(model, DECAYED)
    r = rates(model, TrainParams(learning_rate=LR, head_learning_rate=HEAD_LR, layer_lr_decay=1.0))
    assert r["qa_outputs.weight"] == pytest.approx(HEAD_LR)
    assert [v for k, v in r.items() if k.startswith("albert.")] == pytest.approx(
        [LR] * (len(r) - 2)
    )


def test_model_without_a_separate_encoder_is_refused():
    """A bare encoder (no QA head around it) has no head to give its own rate: say so."""
    with pytest.raises(ModelError, match="no base encoder under 'bert'"):
        build_optimizer(BertModel(BertConfig(**TINY)), DECAYED)
