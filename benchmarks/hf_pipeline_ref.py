"""Inference reference: transformers 4.x ``pipeline("question-answering")``, timed the way
benchmarks.inference_bench times medqa's QAPredictor.

Runs inside .venv-bench (transformers 4.x; version 5 removed this pipeline), so it imports nothing
from medqa. Reads a JSON file of {"question", "context"} records and prints one JSON object:
the answers of the batched call, the seconds of each batched repeat, the milliseconds of each
single-question call, and the versions used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _args(argv: list[str] | None) -> argparse.Namespace:
    """The flags benchmarks.inference_bench.run_reference passes; the defaults only serve a manual run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="folder with safetensors weights and the tokenizer"
    )
    parser.add_argument("--records", required=True, help="JSON list of {question, context}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the batched call")
    parser.add_argument("--singles", type=int, default=20, help="questions timed one at a time")
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-answer-length", type=int, default=30)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Time the pipeline on the records and print what it measured as one JSON object on stdout."""
    args = _args(argv)

    import torch
    import transformers
    from transformers import pipeline

    records = json.loads(Path(args.records).read_text())
    qa = pipeline(
        "question-answering",
        model=args.model,
        tokenizer=args.model,
        device=0 if torch.cuda.is_available() else -1,
    )
    # Answer or abstain by comparing the best span with the [CLS] score, as medqa does at threshold 0.
    options = dict(
        top_k=1,
        max_answer_len=args.max_answer_length,
        max_seq_len=args.max_seq_length,
        doc_stride=args.doc_stride,
        handle_impossible_answer=True,
    )
    questions, contexts = [r["question"] for r in records], [r["context"] for r in records]

    qa(
        question=questions[:4], context=contexts[:4], batch_size=args.batch_size, **options
    )  # warm-up
    batch_seconds, answers = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = qa(question=questions, context=contexts, batch_size=args.batch_size, **options)
        batch_seconds.append(time.perf_counter() - start)
        answers = [o["answer"] for o in (out if isinstance(out, list) else [out])]
    single_ms = []
    for q, c in list(zip(questions, contexts))[: args.singles]:
        start = time.perf_counter()
        qa(question=q, context=c, **options)
        single_ms.append((time.perf_counter() - start) * 1000)
    json.dump(
        {
            "answers": answers,
            "batch_seconds": batch_seconds,
            "single_ms": single_ms,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
