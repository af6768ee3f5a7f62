"""The evaluate stage: decode the fine-tuned model's answers, score them the SQuAD v2 way, and put
them beside baselines measured in the same run on the same split.

The abstention threshold is tuned on dev and applied unchanged on test; it is written to
``reports/decoding.json`` and travels with the registered model so predictions match evaluation.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from transformers import PreTrainedModel

from medqa.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from medqa.config import DecodeParams, EvaluateParams
from medqa.decoding import SpanDecision, decode_best_spans, predict_logits, tune_null_threshold
from medqa.metrics import bootstrap_ci, score_question


def gold_texts(row: dict[str, Any]) -> list[str]:
    """Gold answer strings of a validated row ([] when unanswerable)."""
    return [a["text"] for a in row["answers"]]


def decide(model: PreTrainedModel, features: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
           decode: DecodeParams, batch_size: int, pad_id: int) -> list[SpanDecision]:
    """Run the model over a split's windows and decode one SpanDecision per question."""
    if not rows:
        return []
    starts, ends = predict_logits(model, features, batch_size, pad_id)
    return decode_best_spans(features, starts, ends, [r["context"] for r in rows], decode)


def _f1(pred: str, golds: Sequence[str]) -> float:
    return score_question(pred, golds)[1]


def score_split(model: PreTrainedModel, features: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                decode: DecodeParams, batch_size: int, pad_id: int) -> dict[str, float]:
    """EM/F1 on a split with the threshold tuned on that same split (a monitoring figure)."""
    decisions = decide(model, features, rows, decode, batch_size, pad_id)
    golds = [gold_texts(r) for r in rows]
    thr, _ = tune_null_threshold(decisions, golds, _f1)
    return summarize([d.answer(thr) for d in decisions], rows)


def summarize(predictions: Sequence[str], rows: Sequence[dict[str, Any]],
              bootstrap_samples: int = 0) -> dict[str, Any]:
    """EM/F1 overall, on answerable and unanswerable questions, and per question type."""
    per_q = [score_question(p, gold_texts(r)) for p, r in zip(predictions, rows)]

    def mean(idx: list[int], k: int) -> float:
        return float(np.mean([per_q[i][k] for i in idx])) if idx else float("nan")

    all_i = list(range(len(rows)))
    has = [i for i in all_i if rows[i]["answers"]]
    no = [i for i in all_i if not rows[i]["answers"]]
    out: dict[str, Any] = {"n": len(rows), "exact": mean(all_i, 0), "f1": mean(all_i, 1),
                           "has_ans_n": len(has), "has_ans_f1": mean(has, 1), "has_ans_exact": mean(has, 0),
                           "no_ans_n": len(no), "no_ans_f1": mean(no, 1)}
    if bootstrap_samples:
        lo, hi = bootstrap_ci([q[1] for q in per_q], bootstrap_samples)
        out["f1_ci95"] = [lo, hi]
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in all_i:
            by_type[rows[i].get("question_type") or "unlabelled"].append(i)
        out["by_type"] = {t: {"n": len(ix), "f1": mean(ix, 1), "exact": mean(ix, 0)} for t, ix in sorted(by_type.items())}
    return out


_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = set("a an the of in on at to for from by with and or is are was were be been what which who whom "
            "whose when where why how does do did can could should would will may might it its this that "
            "these those as into about than then there their they i you he she we my your his her our".split())


def lexical_answer(question: str, context: str, span_words: int = 4, window: int = 10) -> str:
    """No-training baseline: the ``span_words``-word span, free of question words, whose
    surrounding ``window`` words share the most content words with the question."""
    q_words = {w.lower() for w in _WORD.findall(question)} - _STOP
    tokens = list(_WORD.finditer(context))
    if not tokens:
        return ""
    lowered = [t.group().lower() for t in tokens]
    best, best_score = (0, min(span_words, len(tokens)) - 1), -1.0
    for s in range(len(tokens)):
        e = min(s + span_words, len(tokens)) - 1
        if any(w in q_words for w in lowered[s:e + 1]):
            continue
        near = lowered[max(0, s - window):s] + lowered[e + 1:e + 1 + window]
        score = len(q_words.intersection(near))
        if score > best_score:
            best, best_score = (s, e), score
    return context[tokens[best[0]].start():tokens[best[1]].end()]


def measure_latency(model: PreTrainedModel, features: Sequence[dict[str, Any]], batch_size: int,
                    pad_id: int, n_single: int = 30) -> dict[str, float]:
    """Batched questions/s over the given windows and p50/p95 latency of one window at a time."""
    if not features:
        return {}
    by_example: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in features:
        by_example[int(f["example_index"])].append(f)
    start = time.perf_counter()
    predict_logits(model, features, batch_size, pad_id)
    qps = len(by_example) / (time.perf_counter() - start)
    singles = []
    for ex in list(by_example.values())[:n_single]:
        t0 = time.perf_counter()
        predict_logits(model, ex, batch_size, pad_id)
        singles.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(singles, n=20) if len(singles) > 1 else singles * 19
    return {"questions_per_s": qps, "latency_p50_ms": statistics.median(singles), "latency_p95_ms": q[18]}


def error_report(records: Sequence[dict[str, Any]], by_type: dict[str, dict[str, float]], per_type: int = 3) -> str:
    """Markdown: F1 per question type, worst first, with that type's lowest-scoring questions."""
    lines = ["# Error report (test split)", "", "| question type | n | EM | F1 |", "|---|---|---|---|"]
    worst_types = sorted(by_type.items(), key=lambda kv: kv[1]["f1"])
    lines += [f"| {t} | {v['n']} | {v['exact']:.3f} | {v['f1']:.3f} |" for t, v in worst_types]
    for t, _ in worst_types:
        rows = sorted((r for r in records if (r.get("question_type") or "unlabelled") == t), key=lambda r: r["f1"])
        lines += ["", f"## {t}", ""]
        for r in rows[:per_type]:
            gold = " | ".join(r["gold_answers"]) or "(no answer)"
            lines.append(f"- F1 {r['f1']:.2f} — {r['question']}  \n  gold: {gold}; predicted: {r['prediction'] or '(abstained)'}")
    return "\n".join(lines) + "\n"


def _load_split(features_dir: Path, validated_dir: Path, split: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from datasets import load_from_disk

    rows = read_jsonl(Path(validated_dir) / f"{split}.jsonl")
    path = Path(features_dir) / split
    return (load_from_disk(str(path)).to_list() if rows and path.exists() else []), rows


def _tuned_predictions(model: PreTrainedModel, dev: tuple, test: tuple, decode: DecodeParams,
                       batch_size: int, pad_id: int) -> tuple[float, list[SpanDecision]]:
    """Threshold tuned on dev, and the test decisions it will be applied to."""
    dev_dec = decide(model, dev[0], dev[1], decode, batch_size, pad_id)
    thr, _ = tune_null_threshold(dev_dec, [gold_texts(r) for r in dev[1]], _f1) if dev_dec else (0.0, 0.0)
    return thr, decide(model, test[0], test[1], decode, batch_size, pad_id)


def evaluate_checkpoint(model_dir: Path, features_dir: Path, validated_dir: Path, reports_dir: Path,
                        base_model: str, params: EvaluateParams) -> dict[str, Any]:
    """Score the fine-tuned model on test against the baselines; write metrics, predictions, decoding."""
    from transformers import set_seed

    from medqa.modelsource import load_qa_model, load_tokenizer

    from medqa.device import keep_freed_memory

    keep_freed_memory()
    model_dir, reports_dir = Path(model_dir), Path(reports_dir)
    config = json.loads((model_dir / "medqa.json").read_text())
    tokenizer = load_tokenizer(str(model_dir))
    pad_id = tokenizer.pad_token_id or 0
    model = load_qa_model(str(model_dir))
    dev, test = _load_split(features_dir, validated_dir, "dev"), _load_split(features_dir, validated_dir, "test")
    test_rows = test[1]
    thr, test_dec = _tuned_predictions(model, dev, test, params.decode, params.batch_size, pad_id)
    preds = [d.answer(thr) for d in test_dec]
    metrics = summarize(preds, test_rows, params.bootstrap_samples)

    # Baselines on the same split in the same run.
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in test_rows], test_rows)
    set_seed(0)  # the untrained QA head is random: fix it so the floor is reproducible
    base_thr, base_dec = _tuned_predictions(load_qa_model(base_model), dev, test, params.decode,
                                            params.batch_size, pad_id)
    untrained = summarize([d.answer(base_thr) for d in base_dec], test_rows)
    baselines = {"lexical_window": lexical["f1"], "base_model_untrained": untrained["f1"]}
    best_name = max(baselines, key=baselines.get)
    speed = measure_latency(model, test[0], params.batch_size, pad_id)

    report = {"split": "test", **metrics, "null_threshold": thr, "baselines_f1": baselines,
              "best_baseline": best_name, "lead_over_best_baseline": metrics["f1"] - baselines[best_name],
              "speed": speed, "backend": config.get("backend")}
    decoding = {"n_best": params.decode.n_best, "max_answer_length": params.decode.max_answer_length,
                "null_threshold": thr, "max_seq_length": config["max_seq_length"],
                "doc_stride": config["doc_stride"]}
    records = [{"id": r["id"], "question": r["question"], "question_type": r.get("question_type"),
                "gold_answers": gold_texts(r), "prediction": p, "score": d.answer_prob if p else 1 - d.answer_prob,
                "margin": d.margin, **dict(zip(("exact", "f1"), score_question(p, gold_texts(r))))}
               for r, p, d in zip(test_rows, preds, test_dec)]
    write_jsonl_atomic(reports_dir / "predictions.jsonl", records)
    write_text_atomic(reports_dir / "errors.md", error_report(records, metrics["by_type"]))
    write_json_atomic(reports_dir / "decoding.json", decoding)
    write_json_atomic(reports_dir / "metrics.json", report)
    if config.get("run_id"):
        from medqa.tracking import configure_tracking

        configure_tracking()
        with mlflow.start_run(run_id=config["run_id"]):
            mlflow.log_metrics({"test_f1": metrics["f1"], "test_em": metrics["exact"],
                                "test_has_ans_f1": metrics["has_ans_f1"], "test_no_ans_f1": metrics["no_ans_f1"],
                                "null_threshold": thr, "lead_over_best_baseline": report["lead_over_best_baseline"]}
                               | {f"baseline_f1_{k}": v for k, v in baselines.items()}
                               | {k: v for k, v in speed.items()})
            mlflow.log_dict(report, "evaluation/metrics.json")
    return report
