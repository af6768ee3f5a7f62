"""Where models come from and what is refused: path-like names never go to the hub, hub names load
from the local cache offline, broken weight and tokenizer files fail in one named line, attention
follows what the architecture implements, and windows never exceed the model's positions."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
    ModernBertConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from medqa.config import TokenizeParams
from medqa.errors import ConfigError, ModelError
from medqa.features import check_window_fits, tokenize_splits
from medqa.modelsource import (
    TOKENIZER_FILES,
    attention_dropout_settings,
    load_model_config,
    load_qa_model,
    load_tokenizer,
    resolve_model_source,
    usable_positions,
)

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def copy_model(src: Path, dest: Path, *, tokenizer: bool = True) -> Path:
    """A copy of a saved model folder, optionally without its tokenizer files."""
    shutil.copytree(src, dest)
    if not tokenizer:
        for f in dest.iterdir():
            if f.name in TOKENIZER_FILES or f.name.startswith(("tokenizer", "special_tokens")):
                f.unlink()
    return dest


@pytest.fixture(scope="module")
def tiny_deberta_dir(tmp_path_factory, packaged_tokenizer) -> Path:
    """A 2-layer DeBERTa-v2 QA model (relative attention, eager only) with the packaged vocabulary."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-deberta")
    config = DebertaV2Config(
        vocab_size=len(packaged_tokenizer),
        **TINY,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=32,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
    )
    DebertaV2ForQuestionAnswering(config).save_pretrained(out)
    packaged_tokenizer.save_pretrained(out)
    return out


# --- 1. attention implementation per architecture ---


def test_attention_is_sdpa_where_supported_and_eager_for_deberta(tiny_model_dir, tiny_deberta_dir):
    assert load_qa_model(str(tiny_model_dir)).config._attn_implementation == "sdpa"
    deberta = load_qa_model(str(tiny_deberta_dir))  # asking DeBERTa-v2 for SDPA is a ValueError
    assert deberta.config._attn_implementation == "eager"
    out = deberta(input_ids=torch.tensor([[1, 5, 6, 2]]))
    assert out.start_logits.shape == (1, 4)


def _training_attention_kernels(model) -> set[str]:
    """The SDPA kernels a training-mode forward of ``model`` runs (names from the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    ids = torch.tensor([[101, 2054, 2003, 102, 2023, 2003, 1037, 3231, 102, 0]])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, attention_mask=(ids != 0).long())
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_attention_dropout_zero_trains_with_the_fused_kernel(tiny_model_dir):
    # With dropout on the attention weights SDPA on a CPU falls back to its unfused math path,
    # which also draws a random mask over every query-key pair: 29% of a MiniLM training step
    own = load_qa_model(str(tiny_model_dir))
    assert own.config.attention_probs_dropout_prob == 0.1
    assert "aten::_scaled_dot_product_attention_math" in _training_attention_kernels(own)
    off = load_qa_model(str(tiny_model_dir), attention_dropout=0.0)
    assert off.config.attention_probs_dropout_prob == 0.0
    assert off.config.hidden_dropout_prob == 0.1  # only attention dropout changes
    kernels = _training_attention_kernels(off)
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    assert any("flash_attention" in k for k in kernels), kernels


def test_attention_dropout_is_set_under_each_familys_key():
    from transformers import BertConfig, DistilBertConfig, ModernBertConfig

    assert attention_dropout_settings(BertConfig(), 0.0) == {"attention_probs_dropout_prob": 0.0}
    assert attention_dropout_settings(DistilBertConfig(), 0.05) == {"attention_dropout": 0.05}
    assert attention_dropout_settings(ModernBertConfig(), 0.0) == {"attention_dropout": 0.0}
    assert attention_dropout_settings(BertConfig(), None) == {}


def test_architecture_without_a_qa_model_is_named(tmp_path, tiny_model_dir):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    with pytest.raises(ModelError, match="^vit: transformers has no question-answering model"):
        load_qa_model(str(folder))


# --- 2. path-like names are folders, never hub names ---


@pytest.mark.parametrize(
    "name",
    ["models/mybase", "./mybase", "../mybase", "~/no-such-medqa-model", "a/b/c", "/no/such/folder"],
)
def test_missing_path_like_name_is_a_missing_folder_at_once(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    started = time.perf_counter()
    with pytest.raises(ModelError, match=f"^{name}: model folder not found"):
        resolve_model_source(name)
    with pytest.raises(ModelError, match="model folder not found"):
        load_qa_model(name)
    assert time.perf_counter() - started < 5  # no hub retries


def test_hub_style_names_stay_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("some-org/some-model") == "some-org/some-model"
    assert resolve_model_source("bert-base-uncased") == "bert-base-uncased"


def test_existing_relative_folder_resolves(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    copy_model(tiny_model_dir, tmp_path / "models" / "mybase")
    assert (
        Path(resolve_model_source("models/mybase")).resolve()
        == (tmp_path / "models" / "mybase").resolve()
    )
    assert load_qa_model("models/mybase").config.model_type == "bert"


# --- 3. weight and tokenizer files ---


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_broken_safetensors_is_one_line_naming_the_file(damage, tmp_path, tiny_model_dir):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "random": torch.randint(
                0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
            )
            .numpy()
            .tobytes(),
            "empty": b"",
        }[damage]
    )
    with pytest.raises(ModelError) as err:
        load_qa_model(str(folder))
    message = str(err.value)
    assert message.startswith(f"{weights}: not a readable safetensors file") and "\n" not in message


def test_folder_without_tokenizer_files_is_refused(tmp_path, tiny_model_dir):
    folder = copy_model(tiny_model_dir, tmp_path / "m", tokenizer=False)
    with pytest.raises(ModelError, match="no tokenizer in .*tokenizer.json"):
        load_tokenizer(str(folder))


def test_slow_only_tokenizer_says_how_to_fix_it(tmp_path, tiny_model_dir):
    folder = copy_model(tiny_model_dir, tmp_path / "m", tokenizer=False)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "retina"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {  # a family transformers has no fast class for
                "tokenizer_class": "BertJapaneseTokenizer",
                "word_tokenizer_type": "basic",
                "subword_tokenizer_type": "wordpiece",
            }
        )
    )
    with pytest.raises(ModelError, match="BertJapaneseTokenizer is a slow .*tokenizer.json"):
        load_tokenizer(str(folder))


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tiny_model_dir):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(
        ModelError, match="tokenizer has 30522 tokens but the model's embedding has 1000"
    ):
        load_tokenizer(str(folder))


# --- 5. windows within the model's positions ---


@pytest.mark.parametrize(
    "config, usable",
    [
        (BertConfig(max_position_embeddings=512), 512),
        (RobertaConfig(max_position_embeddings=514, pad_token_id=1), 512),
        (XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1), 512),
        (DebertaV2Config(max_position_embeddings=512), 512),
        (ModernBertConfig(max_position_embeddings=8192), 8192),
    ],
)
def test_usable_positions(config, usable):
    assert usable_positions(config) == usable
    check_window_fits(config, usable, "m")
    with pytest.raises(
        ConfigError,
        match=f"tokenize.max_seq_length {usable + 1} .* {usable} tokens "
        f"\\(max_position_embeddings {config.max_position_embeddings}",
    ):
        check_window_fits(config, usable + 1, "m")


def test_tokenize_refuses_windows_past_the_models_positions(tmp_path, tiny_model_dir):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    validated = tmp_path / "validated"
    validated.mkdir()
    with pytest.raises(ConfigError, match=r"tokenize.max_seq_length 128 .* 64 tokens"):
        tokenize_splits(validated, tmp_path / "features", str(folder), TokenizeParams(128, 48))
    assert not (tmp_path / "features").exists()


# --- 8. hub names from the local Hugging Face cache, offline ---


def test_hub_name_loads_from_the_local_cache_offline(tmp_path, monkeypatch, tiny_deberta_dir):
    """A hub-layout cache (models--org--name/snapshots/<hash>, refs/main) answers ``org/name`` with
    HF_HUB_OFFLINE=1. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import: setting
    the environment afterwards has no effect (measured), so the module constants are patched;
    transformers reads them at each call."""
    import huggingface_hub.constants as hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--some-org--some-model"
    shutil.copytree(tiny_deberta_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)

    assert resolve_model_source("some-org/some-model") == "some-org/some-model"
    tok = load_tokenizer("some-org/some-model")
    model = load_qa_model("some-org/some-model")
    assert tok.is_fast and model.config.model_type == "deberta-v2"
    assert model.config._attn_implementation == "eager"
    # the cached files are checked like a local folder's
    weights = repo / "snapshots" / commit / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="model.safetensors: not a readable safetensors file"):
        load_qa_model("some-org/some-model")


def test_hub_name_missing_from_the_cache_offline_says_so(tmp_path, monkeypatch):
    """Offline, a hub name never downloaded is named as missing from the cache, with the fix, by
    every loader and at once, not as a failed connection to the hub."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    for load in (load_model_config, load_tokenizer, load_qa_model):
        with pytest.raises(ModelError) as err:
            load("some-org/never-downloaded")
        message = str(err.value)
        assert message.startswith(
            f"some-org/never-downloaded: not in the local Hugging Face cache ({tmp_path / 'hub'})"
        )
        assert "hf download some-org/never-downloaded" in message and "\n" not in message
    assert time.perf_counter() - started < 5
