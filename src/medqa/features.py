"""The tokenize stage: turn validated QA rows into model inputs with sliding windows.

A context longer than ``max_seq_length`` becomes several overlapping windows (``doc_stride``
tokens of overlap), each paired with the question. Training windows carry the answer's token
positions (the [CLS] token when the answer is not inside the window or there is none); evaluation
windows carry character offsets so predicted spans map back to the original text.
"""

from __future__ import annotations

import os
import random
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from medqa.config import TokenizeParams
from medqa.errors import ConfigError, DataError
from medqa.fileio import write_json_atomic
from medqa.modelsource import load_model_config, load_tokenizer, usable_positions
from medqa.outdir import stage_output_dir
from medqa.records import SPLITS, QuestionLimit
from medqa.validated import load_split

if TYPE_CHECKING:  # imported where used: validate imports this module for question_limit only
    from datasets import Dataset, Features

NO_OFFSET = (-1, -1)  # marks question, special and padding tokens: never part of an answer
SUBSET_SEED = 0  # fixed: the same questions every time, so learning-curve points are comparable
# rows a tokenizing process must have to be worth starting (~1 s to start one; ~1,000 rows/s each)
MIN_ROWS_PER_PROCESS = 2000
# datasets' default max_shard_size ("500MB"), named so the shard count, and with it the files, stay
# the same whether a split is saved by one process or several (:func:`save_windows`)
SHARD_BYTES = 500 * 10**6


def check_window_fits(
    config: PreTrainedConfig,
    max_seq_length: int,
    model_name: str,
    setting: str = "tokenize.max_seq_length",
) -> None:
    """Refuse windows longer than the model has positions for.

    Past the last absolute position the embedding lookup fails with an index error deep inside the
    first training step, or of the first long context at predict time (or, with relative or rotary
    positions, the model runs on lengths it was never trained on); here the message names the
    ``setting`` to change: params.yaml's at tokenize, a saved model's decoding.json on loading it.
    """
    usable = usable_positions(config)
    if usable is None or max_seq_length <= usable:
        return
    rows = config.max_position_embeddings
    offset = f" less the padding offset {rows - usable}" if rows != usable else ""
    raise ConfigError(
        f"{setting} {max_seq_length} is longer than {model_name} takes: "
        f"{usable} tokens (max_position_embeddings {rows}{offset}); "
        f"set {setting} to at most {usable}"
    )


def max_question_tokens(tokenizer: PreTrainedTokenizerBase, params: TokenizeParams) -> int:
    """The longest question, in tokens, that windows of ``params`` take beside a context.

    The tokenizer needs room for more than doc_stride context tokens beside the question, or it
    fails (an exception, or a Rust panic that no ``except Exception`` catches); half a stride more
    bounds the number of windows of a long context. The predictor refuses longer questions with the
    same bound, so a row that validate accepts is one that tokenize, evaluate and predict take.
    """
    return (
        params.max_seq_length
        - tokenizer.num_special_tokens_to_add(pair=True)
        - params.doc_stride
        - params.doc_stride // 2
    )


def question_lengths(tokenizer: PreTrainedTokenizerBase, questions: list[str]) -> list[int]:
    """Each question's length in tokens as ``encode_windows`` tokenizes it (left-stripped, without
    special tokens)."""
    if not questions:
        return []
    ids = tokenizer([q.lstrip() for q in questions], add_special_tokens=False)["input_ids"]
    return [len(x) for x in ids]


def question_limit(base_model: str, params: TokenizeParams) -> QuestionLimit:
    """The token limit on questions for the validate stage: the base model's tokenizer only (no
    weights), so that validate rejects a question too long for the windows instead of tokenize
    failing on it."""
    tokenizer = load_tokenizer(base_model)
    return QuestionLimit(
        max_tokens=max_question_tokens(tokenizer, params),
        count=lambda questions: question_lengths(tokenizer, questions),
        setting=(
            f"{base_model} with tokenize.max_seq_length {params.max_seq_length} and "
            f"doc_stride {params.doc_stride}"
        ),
    )


def refuse_long_questions(
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    params: TokenizeParams,
    source: Path,
) -> None:
    """Stop with the row named (its ``line`` in ``source``) when a question is too long for the
    windows. Validate rejects such rows with the same settings; this catches validated data left
    from other settings, which the tokenizer would otherwise fail on mid-stage (or abort the process
    with a panic), so it runs on each batch before the batch is tokenized."""
    limit = max_question_tokens(tokenizer, params)
    lengths = question_lengths(tokenizer, [r["question"] for r in rows])
    for row, n in zip(rows, lengths):
        if n > limit:
            raise DataError(
                f"{source} line {row['line']} id={row.get('id')!r}: question has {n} tokens; "
                f"windows of tokenize.max_seq_length {params.max_seq_length} and doc_stride "
                f"{params.doc_stride} take at most {limit}: rerun medqa validate with these "
                "settings and base_model (it rejects such rows)"
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


def subset_indices(rows: int, fraction: float) -> list[int]:
    """Positions of the first ``fraction`` of ``rows`` questions in one fixed shuffled order, in
    row order.

    Subsets are nested (the 25% subset is inside the 50% one), so a learning curve measures more
    data, not different data.
    """
    order = list(range(rows))
    random.Random(SUBSET_SEED).shuffle(order)
    return sorted(order[: max(1, round(rows * fraction))])


def train_subset(rows: list[dict[str, Any]], fraction: float) -> list[dict[str, Any]]:
    """The rows at ``subset_indices``; all of them, as they are, when ``fraction`` is 1."""
    if fraction >= 1:
        return rows
    return [rows[i] for i in subset_indices(len(rows), fraction)]


def window_features(tokenizer: PreTrainedTokenizerBase, labelled: bool) -> Features:
    """The columns of a split's windows: the model inputs the tokenizer makes, then the labels
    (training) or the example index and offsets (evaluation). The integer widths are the ones
    ``datasets`` picks for these column names, fixed here so that every batch and process agrees."""
    from datasets import Features, List, Value

    widths = {"input_ids": "int32", "attention_mask": "int8", "token_type_ids": "int8"}
    names = tokenizer.model_input_names
    columns: dict[str, Any] = {k: List(Value(w)) for k, w in widths.items() if k in names}
    if labelled:
        columns |= {"start_positions": Value("int64"), "end_positions": Value("int64")}
    else:
        columns |= {"example_index": Value("int64"), "offset_mapping": List(List(Value("int64")))}
    return Features(columns)


def windows_of_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    tokenizer: PreTrainedTokenizerBase,
    params: TokenizeParams,
    labelled: bool,
    source: Path,
) -> dict[str, list[Any]]:
    """A batch of rows as its windows, column by column; an evaluation window's example index is
    its row's position in the split, not in the batch."""
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    refuse_long_questions(tokenizer, rows, params, source)
    if labelled:
        feats = build_train_features(tokenizer, rows, params)
    else:
        feats = build_eval_features(tokenizer, rows, params)
        for f in feats:
            f["example_index"] = indices[f["example_index"]]
    return {k: [f[k] for f in feats] for k in (feats[0] if feats else {})}


def worker_processes(rows: int) -> int:
    """A process per available core, each with at least MIN_ROWS_PER_PROCESS rows to tokenize."""
    return max(1, min(len(os.sched_getaffinity(0)), rows // MIN_ROWS_PER_PROCESS))


def _tokenize_split(
    split: str, path: Path, out: Path, tokenizer: PreTrainedTokenizerBase, params: TokenizeParams
) -> int:
    """Write one split's windows to ``out``; their number (0: no rows, nothing written)."""
    from datasets import Dataset, DatasetInfo

    rows = load_split(path, out.parent / f".rows-{split}")  # removed with the stage's temp folder
    if rows is None:
        return 0
    labelled = split == "train"
    if labelled and params.train_fraction < 1:
        rows = rows.select(subset_indices(len(rows), params.train_fraction))
    windows = rows.map(
        partial(
            windows_of_batch, tokenizer=tokenizer, params=params, labelled=labelled, source=path
        ),
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        features=window_features(tokenizer, labelled),
        num_proc=worker_processes(len(rows)),
        load_from_cache_file=False,
        new_fingerprint=f"{split}-windows",  # not a hash of the tokenizer: work is this run's own
        desc=f"tokenize {split}",
    )
    # saved without the reading's builder info and split name, which vary with the process count
    info = DatasetInfo(features=windows.features)
    save_windows(Dataset(windows.data, info=info, fingerprint=f"{split}-windows"), out)
    return len(windows)


def save_processes(nbytes: int) -> int | None:
    """Processes to save a split of ``nbytes`` with: one per core up to one per shard when it makes
    more than one shard of SHARD_BYTES; None (the calling process) when it makes one."""
    shards = nbytes // SHARD_BYTES + 1  # the count ``save_to_disk`` makes of max_shard_size
    return min(len(os.sched_getaffinity(0)), shards) if shards > 1 else None


def save_windows(windows: Dataset, out: Path) -> None:
    """``windows.save_to_disk(out)``, its shards written by processes of their own when there are
    several.

    Saving reads every window back through the memory map of what ``map`` wrote, and each page read
    stays counted in the reading process's RSS until the map is closed: saved by the tokenize
    process itself, a million questions' train split (3.2 GB of windows) took it to 3.5 GB. A
    saving process maps only its own shards. The files are the same either way: the shard count
    comes from the size alone (max_shard_size given, num_proc never above it).
    """
    procs = save_processes(windows.data.nbytes)
    windows.save_to_disk(str(out), max_shard_size=SHARD_BYTES, num_proc=procs)


def tokenize_splits(
    validated_dir: Path, out_dir: Path, base_model: str, params: TokenizeParams
) -> dict[str, int]:
    """Write ``train`` (labelled windows) and ``dev``/``test`` (decodable windows) datasets.
    Each split streams: rows read into Arrow as they come, tokenized in batches by a process per
    core and written as they are made, so memory stays flat however large the split."""
    check_window_fits(load_model_config(base_model), params.max_seq_length, base_model)
    tokenizer = load_tokenizer(base_model)
    counts: dict[str, int] = {}
    with stage_output_dir(out_dir) as tmp:
        for split in SPLITS:
            path = Path(validated_dir) / f"{split}.jsonl"
            counts[split] = _tokenize_split(split, path, tmp / split, tokenizer, params)
            shutil.rmtree(tmp / f".rows-{split}", ignore_errors=True)  # work files only
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
