"""Scoring a model on a split: decode one answer per question and compute SQuAD v2 EM/F1.

Shared by the train stage's per-epoch dev monitor, the evaluate stage and the register stage's
champion check, so all three score questions the same way.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from medqa.config import DecodeParams
from medqa.decoding import SpanDecision, decode_best_spans, predict_logits, tune_null_threshold
from medqa.device import release_freed_memory
from medqa.metrics import bootstrap_ci, score_question


def gold_texts(row: dict[str, Any]) -> list[str]:
    """Gold answer strings of a validated row ([] when unanswerable)."""
    return [a["text"] for a in row["answers"]]


# Windows held in memory at once by a scoring pass: bounds its memory whatever the split's size, and
# is large enough that batches sorted by length inside it pad little. A window read from Arrow is a
# few NumPy arrays (~9 KB at 384 tokens); as Python lists it was ~80 KB (issue 28: reading NumPy
# took the evaluate peak at 100k questions from 3,157 to 1,760 MiB).
CHUNK_WINDOWS = 4096
_ARROW_BATCH = 256  # rows converted at once where the Dataset is read through ``Dataset.iter``


def _column_values(column: Any) -> list[Any]:
    """One Arrow column as a value per row: a list column as NumPy views of its buffers (a list of
    pairs, the offsets, as an (n, 2) array), anything else as Python values."""
    import pyarrow as pa

    if not pa.types.is_list(column.type) or column.null_count:
        return column.to_pylist()
    offsets = column.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced column's offsets point into its whole child
    inner = column.flatten()
    if pa.types.is_list(inner.type):  # offset_mapping: every inner list a (start, end) pair
        lengths = np.diff(inner.offsets.to_numpy())
        if inner.null_count or not (lengths == 2).all():
            return column.to_pylist()
        flat = inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, 2)
    else:
        flat = inner.to_numpy(zero_copy_only=False)
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(column))]


def _arrow_batches(dataset: Any) -> Iterator[Any]:
    """A Dataset's rows as Arrow record batches. A Dataset that is its files as saved (what
    ``load_from_disk`` of the tokenize stage's output gives) is read from them batch by batch, not
    through their memory map: mapped pages once read stay in the process's RSS, the whole split by
    the end of a pass (540 MB of a 100k-question set's dev and test). Any other (sliced, selected,
    in memory) through ``Dataset.iter``."""
    import pyarrow as pa

    files, counted, same_columns = [f["filename"] for f in dataset.cache_files], 0, True
    for name in files:  # row counts from the batches' headers: a memory map touches only those
        with pa.memory_map(name) as source:
            reader = pa.ipc.open_stream(source)
            same_columns &= reader.schema.names == dataset.column_names
            counted += sum(b.num_rows for b in reader)
    plain = getattr(dataset, "_indices", None) is None and counted == dataset.num_rows
    if files and plain and same_columns:
        for name in files:
            with pa.OSFile(name) as source:
                yield from pa.ipc.open_stream(source)
        return
    for table in dataset.with_format("arrow").iter(batch_size=_ARROW_BATCH):
        yield from table.to_batches()


def _windows(features: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each window as a dict; a ``datasets.Dataset`` is read from its Arrow files a batch at a
    time (``_arrow_batches``), its token lists as NumPy arrays, instead of being turned into one
    list (``.to_list()`` of a 100k-question split does not fit in memory)."""
    if not hasattr(features, "iter"):
        yield from features
        return
    for batch in _arrow_batches(features):
        columns = {name: _column_values(batch.column(name)) for name in batch.schema.names}
        for i in range(batch.num_rows):
            yield {name: values[i] for name, values in columns.items()}


def first_questions(features: Iterable[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """The windows of the first ``n`` questions that have any, one list per question."""
    out: list[list[dict[str, Any]]] = []
    for window in _windows(features):
        if not out or window["example_index"] != out[-1][0]["example_index"]:
            if len(out) == n:
                break
            out.append([])
        out[-1].append(window)
    return out


def sample_questions(
    features: Iterable[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    questions: int | None,
    seed: int,
) -> tuple[Iterable[dict[str, Any]], list[dict[str, Any]]]:
    """``questions`` of a split's questions drawn by ``seed`` (the same ones every epoch and every
    rerun) with their windows, renumbered to match: what the per-epoch monitor scores on a large
    dev split. None, or at least the split's size: the whole split, untouched and still streamed.

    The sample's windows are read in one streamed pass and kept as a list: they are as many as the
    questions asked for, which is the point of sampling."""
    if questions is None or questions >= len(rows):
        return features, list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), questions))
    renumber = {old: new for new, old in enumerate(keep)}
    windows = [
        window | {"example_index": renumber[int(window["example_index"])]}
        for window in _windows(features)
        if int(window["example_index"]) in renumber
    ]
    return windows, [rows[i] for i in keep]


def questions_with_windows(features: Iterable[dict[str, Any]]) -> int:
    """How many questions have windows (a Dataset's index column is read alone)."""
    if hasattr(features, "iter"):
        return len(set(features["example_index"]))  # type: ignore[index]
    return len({w["example_index"] for w in features})


def question_chunks(
    features: Iterable[dict[str, Any]], chunk_windows: int = CHUNK_WINDOWS
) -> Iterator[list[dict[str, Any]]]:
    """The windows in order, in lists of about ``chunk_windows`` that never split the windows of
    one question (tokenize writes them consecutively)."""
    chunk: list[dict[str, Any]] = []
    for window in _windows(features):
        if len(chunk) >= chunk_windows and window["example_index"] != chunk[-1]["example_index"]:
            yield chunk
            chunk = []
        chunk.append(window)
    if chunk:
        yield chunk


def span_decisions_timed(
    model: torch.nn.Module,
    features: Iterable[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> tuple[list[SpanDecision], float]:
    """One SpanDecision per question from the model over a split's windows, and the seconds of its
    batched model forward over all of ``features``.

    The windows stream through in chunks of whole questions (``question_chunks``): each chunk's
    logits are decoded and dropped before the next is read, so memory holds one chunk, not the
    split. The pass is timed where it runs so throughput needs no second pass; decoding is left out
    of the clock. ``predict_logits`` copies every batch's logits to the CPU, so on a GPU the clock
    stops only when the work is done.
    """
    contexts, questions = [r["context"] for r in rows], [r["question"] for r in rows]
    decisions: list[SpanDecision] = []
    seconds = 0.0
    for chunk in question_chunks(features):
        start = time.perf_counter()
        starts, ends = predict_logits(model, chunk, batch_size, pad_id)
        seconds += time.perf_counter() - start
        first, last = len(decisions), int(chunk[-1]["example_index"]) + 1
        local = [w | {"example_index": int(w["example_index"]) - first} for w in chunk]
        decisions += decode_best_spans(
            local, starts, ends, contexts[first:last], decode, questions[first:last]
        )
        release_freed_memory()  # the chunk's holes back to the OS: the peak stays one chunk's
    if len(decisions) < len(rows):  # trailing questions without a window: no span, no answer
        rest = len(decisions)
        decisions += decode_best_spans([], [], [], contexts[rest:], decode, questions[rest:])
    return decisions, seconds


def f1_of(pred: str, golds: Sequence[str]) -> float:
    """SQuAD F1 of one prediction against its gold answers (what threshold tuning maximises)."""
    return score_question(pred, golds)[1]


def score_split(
    model: PreTrainedModel,
    features: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    decode: DecodeParams,
    batch_size: int,
    pad_id: int,
) -> dict[str, float]:
    """EM/F1 on a split with the threshold tuned on that same split (a monitoring figure)."""
    decisions, _ = span_decisions_timed(model, features, rows, decode, batch_size, pad_id)
    golds = [gold_texts(r) for r in rows]
    thr, _ = tune_null_threshold(decisions, golds, f1_of)
    return summarize([d.answer(thr) for d in decisions], rows)


def summarize(
    predictions: Sequence[str], rows: Sequence[dict[str, Any]], bootstrap_samples: int = 0
) -> dict[str, Any]:
    """EM/F1 overall, on answerable and unanswerable questions, and per question type."""
    per_q = [score_question(p, gold_texts(r)) for p, r in zip(predictions, rows)]

    def mean(idx: list[int], k: int) -> float:
        return float(np.mean([per_q[i][k] for i in idx])) if idx else float("nan")

    all_i = list(range(len(rows)))
    has = [i for i in all_i if rows[i]["answers"]]
    no = [i for i in all_i if not rows[i]["answers"]]
    out: dict[str, Any] = {
        "n": len(rows),
        "exact": mean(all_i, 0),
        "f1": mean(all_i, 1),
        "has_ans_n": len(has),
        "has_ans_f1": mean(has, 1),
        "has_ans_exact": mean(has, 0),
        "no_ans_n": len(no),
        "no_ans_f1": mean(no, 1),
    }
    if bootstrap_samples:
        lo, hi = bootstrap_ci([q[1] for q in per_q], bootstrap_samples)
        out["f1_ci95"] = [lo, hi]
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in all_i:
            by_type[rows[i].get("question_type") or "unlabelled"].append(i)
        out["by_type"] = {
            t: {"n": len(ix), "f1": mean(ix, 1), "exact": mean(ix, 0)}
            for t, ix in sorted(by_type.items())
        }
    return out
