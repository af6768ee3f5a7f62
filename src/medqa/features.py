"""The tokenize stage: turn validated QA rows into model inputs with sliding windows.

A context longer than ``max_seq_length`` becomes several overlapping windows (``doc_stride``
tokens of overlap), each paired with the question. Training windows carry the answer's token
positions (the [CLS] token when the answer is not inside the window or there is none); evaluation
windows carry character offsets so predicted spans map back to the original text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from medqa.atomic import atomic_dir, read_jsonl, write_json_atomic
from medqa.config import TokenizeParams
from medqa.data import SPLITS
from medqa.errors import ConfigError
from medqa.modelsource import load_model_config, load_tokenizer, usable_positions

NO_OFFSET = (-1, -1)  # marks question, special and padding tokens: never part of an answer
SUBSET_SEED = 0  # fixed: the same questions every time, so learning-curve points are comparable


def check_window_fits(config: PreTrainedConfig, max_seq_length: int, model_name: str) -> None:
    """Refuse windows longer than the model has positions for.

    Past the last absolute position the embedding lookup fails with an index error deep inside the
    first training step (or, with relative or rotary positions, the model runs on lengths it was
    never trained on); here the message names the setting to change.
    """
    usable = usable_positions(config)
    if usable is None or max_seq_length <= usable:
        return
    rows = config.max_position_embeddings
    offset = f" less the padding offset {rows - usable}" if rows != usable else ""
    raise ConfigError(
        f"tokenize.max_seq_length {max_seq_length} is longer than {model_name} takes: "
        f"{usable} tokens (max_position_embeddings {rows}{offset}); "
        f"set tokenize.max_seq_length to at most {usable}"
    )


def encode_windows(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    contexts: list[str],
    params: TokenizeParams,
) -> Any:
    """Tokenize question/context pairs into windows; no padding (the collator pads per batch)."""
    if tokenizer.padding_side != "right":
        raise ValueError("medqa expects a right-padding tokenizer (question first, then context)")
    return tokenizer(
        [q.lstrip() for q in questions],
        contexts,
        truncation="only_second",
        max_length=params.max_seq_length,
        stride=params.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _context_offsets(enc: Any, i: int) -> list[tuple[int, int]]:
    seq_ids = enc.sequence_ids(i)
    return [tuple(o) if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][i], seq_ids)]


def _model_inputs(enc: Any, i: int) -> dict[str, Any]:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return {k: enc[k][i] for k in keys}


def build_train_features(
    tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], params: TokenizeParams
) -> list[dict[str, Any]]:
    """Windows labelled with answer token positions ((0, 0) = [CLS] = no answer in this window)."""
    enc = encode_windows(
        tokenizer, [r["question"] for r in rows], [r["context"] for r in rows], params
    )
    features = []
    for i, row_idx in enumerate(enc["overflow_to_sample_mapping"]):
        row = rows[row_idx]
        offsets = _context_offsets(enc, i)
        start_tok = end_tok = 0
        if row["answers"]:
            a = row["answers"][0]
            a_start, a_end = a["answer_start"], a["answer_start"] + len(a["text"])
            ctx_toks = [t for t, o in enumerate(offsets) if o != NO_OFFSET]
            if (
                ctx_toks
                and offsets[ctx_toks[0]][0] <= a_start
                and offsets[ctx_toks[-1]][1] >= a_end
            ):
                start_tok = next(t for t in ctx_toks if offsets[t][1] > a_start)
                end_tok = next(t for t in reversed(ctx_toks) if offsets[t][0] < a_end)
        features.append(
            {**_model_inputs(enc, i), "start_positions": start_tok, "end_positions": end_tok}
        )
    return features


def build_eval_features(
    tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], params: TokenizeParams
) -> list[dict[str, Any]]:
    """Windows with their example index and context character offsets, for span decoding."""
    enc = encode_windows(
        tokenizer, [r["question"] for r in rows], [r["context"] for r in rows], params
    )
    return [
        {
            **_model_inputs(enc, i),
            "example_index": int(row_idx),
            "offset_mapping": [list(o) for o in _context_offsets(enc, i)],
        }
        for i, row_idx in enumerate(enc["overflow_to_sample_mapping"])
    ]


def train_subset(rows: list[dict[str, Any]], fraction: float) -> list[dict[str, Any]]:
    """The first ``fraction`` of the training questions in one fixed shuffled order.

    Subsets are nested (the 25% subset is inside the 50% one), so a learning curve measures more
    data, not different data. Row order is kept.
    """
    if fraction >= 1:
        return rows
    order = list(range(len(rows)))
    random.Random(SUBSET_SEED).shuffle(order)
    keep = sorted(order[: max(1, round(len(rows) * fraction))])
    return [rows[i] for i in keep]


def tokenize_splits(
    validated_dir: Path, out_dir: Path, base_model: str, params: TokenizeParams
) -> dict[str, int]:
    """Write ``train`` (labelled windows) and ``dev``/``test`` (decodable windows) datasets."""
    check_window_fits(load_model_config(base_model), params.max_seq_length, base_model)
    tokenizer = load_tokenizer(base_model)
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            rows = read_jsonl(Path(validated_dir) / f"{split}.jsonl")
            if split == "train":
                rows = train_subset(rows, params.train_fraction)
            if not rows:
                counts[split] = 0
                continue
            build = build_train_features if split == "train" else build_eval_features
            feats = build(tokenizer, rows, params)
            Dataset.from_list(feats).save_to_disk(str(tmp / split))
            counts[split] = len(feats)
        write_json_atomic(
            tmp / "summary.json",
            {
                "windows": counts,
                "base_model": base_model,
                "max_seq_length": params.max_seq_length,
                "doc_stride": params.doc_stride,
                "train_fraction": params.train_fraction,
            },
        )
    return counts
