"""Section 6: serving, `medqa serve` over loopback (cold start, latency and throughput at concurrency
1/4/8, one 32-record call) against the raw forward+decode of the same questions.

The server and the raw calls are timed by benchmarks.serving_bench; this module runs them on section
2's model and turns the timings into rows and a note.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.bench import Bench, subset
from benchmarks.measure import median, percentile
from benchmarks.presets import SERVE_BATCH
from benchmarks.report import Row

if TYPE_CHECKING:  # not at run time: keep the parent process free of medqa's heavy imports
    from benchmarks.serving_bench import ServerTiming

SECTION = "6 serving"


def section(b: Bench) -> list[Row]:
    """6. `medqa serve` over loopback vs the raw forward+decode of the same questions."""
    from benchmarks.serving_bench import save_served_model, time_raw, time_server

    p = b.preset
    if b.infer_model is None:
        raise RuntimeError("section 2 prepared no model to serve")
    rows = subset(b.dev_rows, p.serve_questions)
    records = [{"question": r["question"], "context": r["context"]} for r in rows]
    served = b.isolated(save_served_model, b.infer_model, b.scratch / "served-model")
    raw = b.isolated(time_raw, b.infer_model, records, SERVE_BATCH, p.infer_repeats)
    srv = time_server(served, records, p.serve_requests, SERVE_BATCH, p.infer_repeats, b.log)
    raw_p50, one = median(raw.single_ms), srv.latency_ms[1]
    raw_batch_qps = SERVE_BATCH / median(raw.batch_seconds)
    served_batch_qps = SERVE_BATCH / median(srv.batch_seconds)
    b.notes.append(
        f"Serving: section 2's model saved as the registered pyfunc and served by `medqa serve` "
        f"({raw.precision}, the precision recorded with it) on 127.0.0.1; cold start is process start "
        "to the first healthy /ping. Each level sends one question per request from that many client "
        f"threads ({', '.join(f'{n} requests at {c}' for c, n in p.serve_requests.items())}), cycling "
        f"through {len(records)} dev questions; latency includes the wait for the model, which serves "
        f"one request at a time. The {SERVE_BATCH}-record call and the raw figures (QAPredictor.predict "
        "in a process of its own, same questions) are medians of "
        f"{p.infer_repeats}. The evaluate-pass reference for the {SERVE_BATCH}-record call is the raw "
        "batched rate of the same records."
    )
    return [
        Row(SECTION, "cold start to healthy /ping, s", srv.cold_start_s, None, 1),
        Row(SECTION, "exit after SIGTERM, s", srv.shutdown_s, None, 1),
        Row(
            SECTION,
            "p50 ms, 1 question, concurrency 1 (ref: raw forward+decode)",
            median(one),
            raw_p50,
            len(one),
            "≤ 1.5× raw",
            median(one) <= 1.5 * raw_p50,
        ),
        *_level_rows(srv, raw_p50),
        Row(
            SECTION,
            f"questions/s, one {SERVE_BATCH}-record call (ref: raw batched)",
            served_batch_qps,
            raw_batch_qps,
            p.infer_repeats,
            "≥ 0.9× raw",
            served_batch_qps >= 0.9 * raw_batch_qps,
        ),
    ]


def _level_rows(srv: ServerTiming, raw_p50: float) -> list[Row]:
    """Latency percentiles and requests/s at each concurrency level; the raw path's one-question rate
    is the reference for requests/s."""
    out = []
    for clients, lat in srv.latency_ms.items():
        if clients != 1:  # concurrency 1's p50 is the target row of section()
            out.append(Row(SECTION, f"p50 ms, concurrency {clients}", median(lat), None, len(lat)))
        out += [
            Row(SECTION, f"p95 ms, concurrency {clients}", percentile(lat, 95), None, len(lat)),
            Row(SECTION, f"p99 ms, concurrency {clients}", percentile(lat, 99), None, len(lat)),
            Row(
                SECTION,
                f"requests/s, concurrency {clients}",
                len(lat) / srv.wall_s[clients],
                1000 / raw_p50,
                len(lat),
            ),
        ]
    return out
