"""Where model weights come from: a pip-packaged base model, a local folder, or a hub name.

Nothing is downloaded unless a hub name is given and no local source matches it; a name that looks
like a path is never sent to the hub. Loading is safe: safetensors only, and ``trust_remote_code`` is
never enabled. The files of a local folder (or of a hub model already in the local Hugging Face
cache) are checked first, so a truncated copy or a folder without a tokenizer fails with one line
that names the file instead of a deserializer traceback or a silently substituted default.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING

from medqa.errors import ModelError, first_line

# A saved tokenizer is its tokenizer.json (the fast tokenizer) or a vocabulary a slow one is built
# from. Without any of them AutoTokenizer still returns a tokenizer: an empty one of the model's
# class, which would turn every word into [UNK].
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "tokenizer.model",
)
# Config keys of dropout on the attention weights, by family (see attention_dropout_settings).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")
# Families whose position ids start after the padding index (RoBERTa's convention): the first
# pad_token_id + 1 rows of the position table are never used by a token.
PADDING_OFFSET_POSITIONS = frozenset(
    {
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "data2vec-text",
        "longformer",
        "mpnet",
        "ibert",
        "luke",
        "xmod",
        "markuplm",
        "layoutlmv3",
        "lilt",
    }
)


def looks_like_path(name: str) -> bool:
    """Whether ``name`` means a folder rather than a hub name ("name" or "org/name").

    "./x", "../x", "~/x", an absolute path, "a/b/c", and "models/x" where ./models exists are paths:
    a missing one must be reported as a missing folder, not looked up on the hub (which, offline,
    retries for about a minute before failing with a hub error).
    """
    if name.startswith((".", "~")) or Path(name).is_absolute() or name.count("/") > 1:
        return True
    first, sep, _ = name.partition("/")
    return bool(sep) and Path(first).is_dir()


def resolve_model_source(name: str) -> str:
    """A local folder for ``name``: the folder itself, a packaged model's folder, or the hub name."""
    path = Path(name).expanduser()
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
    if looks_like_path(name):
        raise ModelError(
            f"{name}: model folder not found (looked for {path.absolute()}); "
            "a hub model is named 'org/name'"
        )
    return name  # a hub name: transformers resolves it (from the local cache when HF_HUB_OFFLINE=1)


def _local_folder(source: str) -> Path | None:
    """The folder holding ``source``'s files: the folder itself or its snapshot in the local Hugging
    Face cache; None when the files are not here yet (transformers downloads and checks them)."""
    if Path(source).is_dir():
        return Path(source)
    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid repo id: transformers reports it when loading
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _offline_source(name: str) -> str:
    """``resolve_model_source``, refusing a hub name the local cache lacks while the hub is off
    limits (HF_HUB_OFFLINE): transformers would blame a failed connection, which reads like a
    network fault rather than a model never downloaded."""
    source = resolve_model_source(name)
    if Path(source).is_dir() or not hub_constants.is_offline_mode():
        return source
    if _local_folder(source) is None:
        raise ModelError(
            f"{name}: not in the local Hugging Face cache ({hub_constants.HF_HUB_CACHE}), and "
            "HF_HUB_OFFLINE forbids downloading it; download it once where there is a network "
            f"(hf download {name}) or set base_model to a local folder"
        )
    return source


def load_model_config(name: str) -> PreTrainedConfig:
    """The model config (config.json) of ``name``, without loading weights."""
    source = _offline_source(name)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"{name}: cannot read the model config ({first_line(e)})") from None


def usable_positions(config: PreTrainedConfig) -> int | None:
    """The longest input, in tokens, the model has positions for; None when its config has no limit.

    RoBERTa-style models number positions from pad_token_id + 1, so 514 rows hold 512 tokens.
    Models with relative (DeBERTa) or rotary (ModernBERT) positions report max_position_embeddings
    as the longest length they were trained on, which is the limit used here too.
    """
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    if config.model_type in PADDING_OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def attention_implementation(config: PreTrainedConfig) -> str:
    """ "sdpa" when the QA model class of ``config`` implements it, else "eager" (DeBERTa-v2/v3 has
    only eager attention; asking it for SDPA is a ValueError)."""
    try:
        model_class = MODEL_FOR_QUESTION_ANSWERING_MAPPING[type(config)]
    except KeyError:
        raise ModelError(
            f"{config.model_type}: transformers has no question-answering model for this "
            "architecture (AutoModelForQuestionAnswering)"
        ) from None
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _check_tokenizer_files(name: str, folder: Path) -> None:
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{name}: no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}); save the "
            "model's own tokenizer beside its weights (tokenizer.save_pretrained(folder))"
        )


def _check_safetensors(folder: Path) -> None:
    """Read every safetensors header: a truncated or foreign file fails here, named, in one line."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelError(
                f"{path}: not a readable safetensors file ({first_line(e)}); the copy or "
                "download is incomplete or corrupt, copy it again"
            ) from None


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, or 0 for one without (padded
    positions are masked out of attention, so any id in the vocabulary does)."""
    return tokenizer.pad_token_id or 0


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The fast tokenizer of ``name`` (offsets need a fast tokenizer), checked against the model's
    embedding: a token id past its last row would fail in the middle of training."""
    source = _offline_source(name)
    folder = _local_folder(source)
    if folder is not None:
        _check_tokenizer_files(name, folder)
    try:
        tok = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"{name}: cannot load tokenizer ({first_line(e)})") from None
    if not tok.is_fast:
        raise ModelError(
            f"{name}: {type(tok).__name__} is a slow (Python-only) tokenizer and character "
            "offsets need a fast one; convert it to a tokenizer.json (transformers."
            "convert_slow_tokenizer covers most families) and save it in the model folder, "
            "or use a model that ships one"
        )
    rows = getattr(load_model_config(name), "vocab_size", None)
    if isinstance(rows, int) and len(tok) > rows:
        raise ModelError(
            f"{name}: the tokenizer has {len(tok)} tokens but the model's embedding has {rows} "
            "rows (config vocab_size); is the tokenizer from another model?"
        )
    return tok


def attention_dropout_settings(config: PreTrainedConfig, p: float | None) -> dict[str, float]:
    """The config keys that set dropout on the attention weights, each at ``p``; empty for None.

    Families name it differently (BERT, RoBERTa, ELECTRA, ALBERT, XLM-R, DeBERTa:
    attention_probs_dropout_prob; DistilBERT, ModernBERT: attention_dropout); only the keys the
    config has are set, so no family gains an attribute its code never reads.
    """
    if p is None:
        return {}
    return {key: p for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)}


def load_qa_model(name: str, attention_dropout: float | None = None) -> PreTrainedModel:
    """A question-answering model from ``name``; a new QA head is initialised if it has none.

    Attention is SDPA where the architecture implements it, eager otherwise; the choice is readable
    as ``model.config._attn_implementation``. ``attention_dropout`` (None: the model's own) replaces
    the dropout on attention weights: at 0, SDPA on a CPU runs its fused kernel in training instead
    of the unfused path that has to draw a random mask over every (query, key) pair.
    """
    source = _offline_source(name)
    folder = _local_folder(source)
    if folder is not None:
        _check_safetensors(folder)
    config = load_model_config(name)
    # Set on the config itself rather than passed as keyword arguments: from_pretrained's typed
    # signature has no place for arbitrary config keys, and the config is the documented route.
    for key, value in attention_dropout_settings(config, attention_dropout).items():
        setattr(config, key, value)
    try:
        return AutoModelForQuestionAnswering.from_pretrained(
            source,
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            attn_implementation=attention_implementation(config),
        )
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelError(f"{name}: cannot load the model ({first_line(e)})") from None
