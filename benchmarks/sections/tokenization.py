"""Section 3: tokenization throughput, medqa.features against the run_qa-style preprocessing, timed by
benchmarks.tokenization_bench over the whole train split."""

from __future__ import annotations

from benchmarks.bench import Bench
from benchmarks.measure import median
from benchmarks.report import Row

SECTION = "3 tokenization"


def section(b: Bench) -> list[Row]:
    """3. medqa.features vs the run_qa-style preprocessing, over the whole train split."""
    from benchmarks.tokenization_bench import time_tokenization
    from medqa.modelsource import load_tokenizer

    p = b.preset
    t = time_tokenization(
        load_tokenizer(b.params.base_model), b.train_rows, b.max_len, b.stride, p.tokenize_repeats
    )
    n = len(b.train_rows)
    b.notes.append(
        f"Tokenization: all {n} train questions per repeat, examples = questions; windows: ours "
        f"{t.ours_windows}, reference {t.reference_windows}."
    )
    return [
        Row(
            SECTION,
            "examples/s",
            n / median(t.ours_seconds),
            n / median(t.reference_seconds),
            p.tokenize_repeats,
        )
    ]
