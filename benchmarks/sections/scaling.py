"""Section 5: scaling of medqa's training, seconds per step and peak memory against data size and
window length; each point is one benchmarks.training_bench run in a fresh process."""

from __future__ import annotations

from benchmarks.bench import Bench
from benchmarks.report import Row

SECTION = "5 scaling (ours)"


def section(b: Bench) -> list[Row]:
    """5. medqa's training step time and peak memory against data size and window length."""
    from benchmarks.training_bench import train_ours

    p = b.preset
    base = p.scaling_questions
    uri = f"sqlite:///{b.scratch / 'mlflow.db'}"
    points = [(m, b.max_len) for m in p.data_multiples] + [
        (1, n) for n in p.seq_lengths if n != b.max_len
    ]
    out = []
    for multiple, length in points:
        rows = b.train_rows[: base * multiple]
        reuse = b.ours_run is not None and b.ours_run_questions == len(rows) and length == b.max_len
        if reuse:
            run = b.ours_run
        else:
            run = b.isolated(
                train_ours,
                b.scratch / f"scale-x{multiple}-{length}",
                rows,
                None,
                length,
                length // 3,
                1.0,
                p.warmup_steps,
                p.warmup_steps + p.scaling_steps,
                uri,
            )
        label = f"×{multiple} ({len(rows)} q), max_len {length}"
        n = len(run.steps)
        out += [
            Row(SECTION, f"s/step, {label}", run.seconds_per_step(), None, n),
            Row(SECTION, f"padding share, {label}", run.padding_share(), None, n),
            Row(SECTION, f"peak {run.memory_kind} MiB, {label}", run.peak_memory_mib, None, 1),
        ]
    b.notes.append(
        f"Scaling: medqa's training path, batch {b.params.train.batch_size}, {p.scaling_steps} timed steps "
        f"after {p.warmup_steps} warm-up per point (a point with section 1's pool and max_len reuses its "
        "run); doc stride = max_len / 3; each point in a fresh process, so its peak memory is its own. "
        "More data lets the length grouping form tighter batches (less padding); with dynamic padding a "
        "max_len above the longest window changes nothing, a shorter one splits contexts into more windows."
    )
    return out
