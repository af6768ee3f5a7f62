"""Section 3: medqa's tokenize (unpadded windows, labels from offsets) against the run_qa-style
reference preprocessing (windows padded to max_length), on the same rows and tokenizer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from benchmarks.reference import reference_train_features


@dataclass(frozen=True)
class TokenizeTiming:
    """Seconds per repeat for each path, and how many windows each produced."""

    ours_seconds: list[float]
    reference_seconds: list[float]
    ours_windows: int
    reference_windows: int


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    fn()  # warm-up: the tokenizer's first call builds caches
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, out


def time_tokenization(
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    max_seq_length: int,
    doc_stride: int,
    repeats: int,
) -> TokenizeTiming:
    """Both paths over ``rows``, ``repeats`` times each after one warm-up call."""
    from medqa.config import TokenizeParams
    from medqa.features import build_train_features

    params = TokenizeParams(max_seq_length, doc_stride)
    ours, ours_out = _timed(lambda: build_train_features(tokenizer, rows, params), repeats)
    ref, ref_out = _timed(
        lambda: reference_train_features(tokenizer, rows, max_seq_length, doc_stride), repeats
    )
    return TokenizeTiming(ours, ref, len(ours_out), len(ref_out["input_ids"]))
