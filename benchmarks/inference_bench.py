"""Section 2: medqa's QAPredictor (windows + batched, length-sorted decoding) against transformers
4.x ``pipeline("question-answering")``, on the same weights, questions and thread count.

Both load one temporary copy of the weights (safetensors). Its decoding.json sets the abstention
threshold to 0, the pipeline's rule with handle_impossible_answer (answer when the best span beats
the [CLS] score), so the two F1s compare implementations rather than threshold tuning. Ours runs at
each precision this machine can (fp32, bf16, and fp16 on a GPU); the pipeline runs in fp32, its
default. decoding.json records the precision `auto` picks here, as the evaluate stage would.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-bench" / "bin" / "python"


@dataclass(frozen=True)
class InferenceRun:
    """Answers of the batched call, seconds per batched repeat, milliseconds per single question, and
    (for the reference, which runs in another venv) the software it ran on."""

    answers: list[str]
    batch_seconds: list[float]
    single_ms: list[float]
    software: str = ""
    precision: str = "fp32"
    engine: str = "eager"


def prepare_model(
    source: str, dest: Path, max_seq_length: int, doc_stride: int, decode: Any
) -> tuple[Path, list[str], str]:
    """Save ``source`` (a folder or packaged model) as safetensors + tokenizer + decoding.json in
    ``dest``; also the precisions this machine runs, the one ``auto`` picks first."""
    import torch
    from transformers import set_seed

    from medqa.contracts import DECODING_FILE, PRECISIONS
    from medqa.device import resolve_precision, to_inference_device
    from medqa.errors import ConfigError
    from medqa.fileio import write_json_atomic
    from medqa.modelsource import load_qa_model, load_tokenizer

    set_seed(0)  # a base model's new QA head is random: fix it
    model = load_qa_model(source)
    model.save_pretrained(dest, safe_serialization=True)
    device: torch.device = to_inference_device(model).device
    auto, why = resolve_precision("auto", device, "precision")
    runnable = [auto]
    for precision in PRECISIONS:
        try:
            resolve_precision(precision, device, "precision")
        except ConfigError:
            continue  # fp16 on a CPU
        if precision != auto:
            runnable.append(precision)
    load_tokenizer(source).save_pretrained(dest)
    write_json_atomic(
        dest / DECODING_FILE,
        {
            "n_best": decode.n_best,
            "max_answer_length": decode.max_answer_length,
            "null_threshold": 0.0,
            "max_seq_length": max_seq_length,
            "doc_stride": doc_stride,
            "precision": auto,
        },
    )
    return dest, runnable, why


def run_ours(
    model_dir: Path,
    records: list[dict[str, str]],
    batch_size: int,
    repeats: int,
    singles: int,
    precision: str,
    engine: str = "eager",
) -> InferenceRun:
    """QAPredictor at ``precision`` on ``engine``: a warm-up, ``repeats`` batched calls over all
    records, ``singles`` one-question calls. A compiled engine's warm-up is ``warm_up`` (as
    `medqa serve` does at start-up) and one untimed pass over the records, so what is timed is
    compiled kernels, not compiling."""
    from medqa.predictor import QAPredictor

    predictor = QAPredictor(model_dir, batch_size=batch_size, precision=precision)
    predictor.use_engine(engine)
    predictor.warm_up()
    predictor.predict(records if engine == "compile" else records[:4])  # warm-up
    batch_seconds, answers = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        answers = [r["answer"] for r in predictor.predict(records)]
        batch_seconds.append(time.perf_counter() - start)
    single_ms = []
    for record in records[:singles]:
        start = time.perf_counter()
        predictor.predict([record])
        single_ms.append((time.perf_counter() - start) * 1000)
    return InferenceRun(answers, batch_seconds, single_ms, precision=precision, engine=engine)


def run_reference(
    model_dir: Path,
    records_file: Path,
    batch_size: int,
    repeats: int,
    singles: int,
    max_seq_length: int,
    doc_stride: int,
    max_answer_length: int,
    log: Path,
    timeout_s: float,
) -> InferenceRun:
    """hf_pipeline_ref.py in .venv-bench; raises RuntimeError with the reason when it cannot run."""
    if not BENCH_VENV_PYTHON.exists():
        raise RuntimeError(".venv-bench missing (run `bash benchmarks/setup_venv.sh`)")
    cmd = [
        str(BENCH_VENV_PYTHON),
        str(Path(__file__).with_name("hf_pipeline_ref.py")),
        "--model",
        str(model_dir),
        "--records",
        str(records_file),
        "--batch-size",
        str(batch_size),
        "--repeats",
        str(repeats),
        "--singles",
        str(singles),
        "--max-seq-length",
        str(max_seq_length),
        "--doc-stride",
        str(doc_stride),
        "--max-answer-length",
        str(max_answer_length),
    ]
    with open(log, "a") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"hf_pipeline_ref.py exited with {done.returncode} (see {log})")
    out = json.loads(done.stdout)
    return InferenceRun(
        out["answers"],
        out["batch_seconds"],
        out["single_ms"],
        f"transformers {out['transformers']}, torch {out['torch']}, {out['threads']} threads",
    )
