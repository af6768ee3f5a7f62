"""The evaluate stage: decode the fine-tuned model's answers, score them the SQuAD v2 way, and put
them beside baselines measured in the same run on the same split.

The abstention threshold is tuned on dev and applied unchanged on test; it is written to
``reports/decoding.json`` and travels with the registered model so predictions match evaluation.

Baselines: a lexical window matcher and the untrained base model are the floor the model must beat
(``best_baseline``, ``lead_over_best_baseline``). The registry's ``@champion``, when there is one, is
a regression check instead: it is scored as it is served (its own tokenizer, windows, decoding and
recorded threshold) and reported as ``registry_champion`` with ``lead_over_champion``.

``evaluate_model`` is the ad-hoc mode (``medqa evaluate --model ... --split ...``): any saved or
registered model on a validated split or a user's data file, with the model's recorded threshold.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from transformers import PreTrainedModel

from medqa.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from medqa.config import DecodeParams, EvaluateParams, ValidateParams
from medqa.decoding import SpanDecision, decode_best_spans, predict_logits, tune_null_threshold
from medqa.device import to_inference_device
from medqa.errors import DataError
from medqa.metrics import bootstrap_ci, score_question
from medqa.predictor import SavedModel, load_saved_model


def gold_texts(row: dict[str, Any]) -> list[str]:
    """Gold answer strings of a validated row ([] when unanswerable)."""
    return [a["text"] for a in row["answers"]]


def decide(model: PreTrainedModel, features: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
           decode: DecodeParams, batch_size: int, pad_id: int) -> list[SpanDecision]:
    """Run the model over a split's windows and decode one SpanDecision per question."""
    return decide_timed(model, features, rows, decode, batch_size, pad_id)[0]


def decide_timed(model: PreTrainedModel, features: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                 decode: DecodeParams, batch_size: int, pad_id: int) -> tuple[list[SpanDecision], float]:
    """``decide``, plus the seconds of its batched model forward over all of ``features``.

    The pass is timed where it runs so throughput needs no second pass over the split; decoding is
    left out of the clock, as it was when throughput had a pass of its own. ``predict_logits`` copies
    every batch's logits to the CPU, so on a GPU the clock stops only when the work is done.
    """
    if not rows:
        return [], 0.0
    start = time.perf_counter()
    starts, ends = predict_logits(model, features, batch_size, pad_id)
    seconds = time.perf_counter() - start
    return decode_best_spans(features, starts, ends, [r["context"] for r in rows], decode), seconds


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


def measure_speed(model: PreTrainedModel, features: Sequence[dict[str, Any]], batch_size: int, pad_id: int,
                  batched_seconds: float, n_single: int = 30) -> dict[str, float]:
    """Batched questions/s and p50/p95 latency of one question (all of its windows) at a time.

    ``batched_seconds`` is the timed forward over all of ``features`` in batches of ``batch_size``
    (``decide_timed`` on the test split), so throughput costs no extra pass; only the first
    ``n_single`` questions are run again, one at a time, for latency.
    """
    if not features:
        return {}
    by_example: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in features:
        by_example[int(f["example_index"])].append(f)
    qps = len(by_example) / batched_seconds
    singles = []
    for ex in list(by_example.values())[:n_single]:
        t0 = time.perf_counter()
        predict_logits(model, ex, batch_size, pad_id)
        singles.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(singles, n=20) if len(singles) > 1 else singles * 19
    return {"questions_per_s": qps, "batched_pass_s": batched_seconds, "latency_p50_ms": statistics.median(singles),
            "latency_p95_ms": q[18]}


def error_report(records: Sequence[dict[str, Any]], by_type: dict[str, dict[str, float]], per_type: int = 3,
                 split: str = "test split") -> str:
    """Markdown: F1 per question type, worst first, with that type's lowest-scoring questions."""
    lines = [f"# Error report ({split})", "", "| question type | n | EM | F1 |", "|---|---|---|---|"]
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
                       batch_size: int, pad_id: int) -> tuple[float, list[SpanDecision], float, dict[str, Any]]:
    """Threshold tuned on dev, the test decisions it will be applied to, the test pass's seconds,
    and dev EM/F1 at that threshold (the figure a recipe study selects on)."""
    dev_dec = decide(model, dev[0], dev[1], decode, batch_size, pad_id)
    thr, _ = tune_null_threshold(dev_dec, [gold_texts(r) for r in dev[1]], _f1) if dev_dec else (0.0, 0.0)
    dev_scores = summarize([d.answer(thr) for d in dev_dec], dev[1]) if dev_dec else {}
    return (thr, *decide_timed(model, test[0], test[1], decode, batch_size, pad_id), dev_scores)


def score_saved_model(saved: SavedModel, rows: Sequence[dict[str, Any]], labels: Sequence[str],
                      batch_size: int) -> tuple[list[SpanDecision], list[dict[str, Any]], float]:
    """Decisions on ``rows`` tokenized with the model's own tokenizer and windows; also the windows
    and the seconds of the batched forward pass. ``labels`` name the rows in errors.

    A question too long for the model's windows is refused up front: the tokenizer would abort the
    whole process with a Rust panic instead of raising.
    """
    from medqa.features import build_eval_features
    from medqa.predictor import max_question_tokens

    limit = max_question_tokens(saved.tokenizer, saved.tokenize)
    lengths = [len(ids) for ids in saved.tokenizer([r["question"].lstrip() for r in rows],
                                                   add_special_tokens=False)["input_ids"]] if rows else []
    for label, n in zip(labels, lengths):
        if n > limit:
            raise DataError(f"{label}: question has {n} tokens; this model takes at most {limit}")
    features = build_eval_features(saved.tokenizer, list(rows), saved.tokenize) if rows else []
    decisions, seconds = decide_timed(saved.model, features, rows, saved.decode, batch_size,
                                      saved.tokenizer.pad_token_id or 0)
    return decisions, features, seconds


def champion_baseline(model_name: str, rows: Sequence[dict[str, Any]], batch_size: int) -> tuple[dict[str, Any] | None,
                                                                                                  str | None]:
    """The registry's ``@champion`` of ``model_name`` scored on ``rows`` as it is served, and a warning.

    (None, None) when there is no champion yet (no registered model, or no alias); (None, why) when
    there is one but it cannot be fetched, loaded or scored: a regression check that cannot run must
    not fail the stage, and says why instead.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from medqa.registry import fetch_registered_model
    from medqa.tracking import configure_tracking

    try:
        configure_tracking()
        version = MlflowClient().get_registered_model(model_name).aliases.get("champion")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None, None
        return None, f"registry not readable, champion not scored ({e.message.splitlines()[0]})"
    if version is None:
        return None, None
    uri = f"models:/{model_name}/{version}"
    # Whatever breaks the champion (missing files, bad weights, a question its windows cannot take)
    # becomes the warning: the figures of the model under test do not depend on it.
    try:
        with tempfile.TemporaryDirectory(prefix="medqa-champion-") as tmp:
            folder, _, version = fetch_registered_model(uri, Path(tmp))
            saved = load_saved_model(folder)
            decisions, _, _ = score_saved_model(saved, rows, [f"test row {i + 1}" for i in range(len(rows))],
                                                batch_size)
    except Exception as e:  # noqa: BLE001
        lines = str(e).strip().splitlines()
        return None, f"champion {uri} not scored: {lines[0] if lines else type(e).__name__}"
    scores = summarize([d.answer(saved.threshold) for d in decisions], rows)
    return {"version": str(version), "model_uri": uri, "null_threshold": saved.threshold,
            **{k: scores[k] for k in ("exact", "f1", "has_ans_f1", "no_ans_f1")}}, None


def _prediction_records(rows: Sequence[dict[str, Any]], preds: Sequence[str],
                        decisions: Sequence[SpanDecision]) -> list[dict[str, Any]]:
    """One predictions.jsonl line per question: the prediction, its score and margin, EM and F1."""
    return [{"id": r["id"], "question": r["question"], "question_type": r.get("question_type"),
             "gold_answers": gold_texts(r), "prediction": p, "score": d.answer_prob if p else 1 - d.answer_prob,
             "margin": d.margin, **dict(zip(("exact", "f1"), score_question(p, gold_texts(r))))}
            for r, p, d in zip(rows, preds, decisions)]


def _write_reports(reports_dir: Path, report: dict[str, Any], decoding: dict[str, Any],
                   records: list[dict[str, Any]], split: str) -> None:
    write_jsonl_atomic(reports_dir / "predictions.jsonl", records)
    write_text_atomic(reports_dir / "errors.md", error_report(records, report.get("by_type", {}), split=split))
    write_json_atomic(reports_dir / "decoding.json", decoding)
    write_json_atomic(reports_dir / "metrics.json", report)


def completed_curve(model_dir: Path, dev_scores: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The training curve saved with the model, its last epoch's dev EM/F1 filled in from this
    stage's dev pass (training leaves that point to evaluate: the same model on the same split)."""
    path = Path(model_dir) / "train_curve.json"
    if not path.exists():
        return None
    curve = json.loads(path.read_text())
    if curve and curve[-1].get("dev_f1") is None and dev_scores:
        curve[-1] = {**curve[-1], "dev_f1": dev_scores["f1"], "dev_em": dev_scores["exact"]}
    return curve


def evaluate_checkpoint(model_dir: Path, features_dir: Path, validated_dir: Path, reports_dir: Path,
                        base_model: str, params: EvaluateParams, model_name: str | None = None) -> dict[str, Any]:
    """Score the fine-tuned model on test against the baselines; write metrics, predictions, decoding.

    With ``model_name``, the registry's current ``@champion`` of that name is scored on the same test
    rows as a regression check (``registry_champion``, ``lead_over_champion``; null when there is none).
    """
    from transformers import set_seed

    from medqa.modelsource import load_qa_model, load_tokenizer

    from medqa.device import keep_freed_memory

    keep_freed_memory()
    model_dir, reports_dir = Path(model_dir), Path(reports_dir)
    config = json.loads((model_dir / "medqa.json").read_text())
    tokenizer = load_tokenizer(str(model_dir))
    pad_id = tokenizer.pad_token_id or 0
    model = to_inference_device(load_qa_model(str(model_dir)))
    dev, test = _load_split(features_dir, validated_dir, "dev"), _load_split(features_dir, validated_dir, "test")
    test_rows = test[1]
    thr, test_dec, test_seconds, dev_scores = _tuned_predictions(model, dev, test, params.decode, params.batch_size,
                                                                 pad_id)
    preds = [d.answer(thr) for d in test_dec]
    metrics = summarize(preds, test_rows, params.bootstrap_samples)
    speed = measure_speed(model, test[0], params.batch_size, pad_id, test_seconds)

    # Baselines on the same split in the same run.
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in test_rows], test_rows)
    set_seed(0)  # the untrained QA head is random: fix it so the floor is reproducible
    base_dec = decide(to_inference_device(load_qa_model(base_model)), test[0], test_rows, params.decode,
                      params.batch_size, pad_id)
    # The floor's threshold is tuned on test itself: its best case, so the lead over it is a lower
    # bound (and one dev pass is saved).
    base_thr, _ = tune_null_threshold(base_dec, [gold_texts(r) for r in test_rows], _f1) if base_dec else (0.0, 0.0)
    untrained = summarize([d.answer(base_thr) for d in base_dec], test_rows)
    baselines = {"lexical_window": lexical["f1"], "base_model_untrained": untrained["f1"]}
    best_name = max(baselines, key=baselines.get)  # the floor: the champion is a regression check, not a floor
    champion, champion_warning = (champion_baseline(model_name, test_rows, params.batch_size)
                                  if model_name and test_rows else (None, None))
    if champion is not None:
        baselines["registry_champion"] = champion["f1"]

    report = {"split": "test", **metrics, "dev_f1": dev_scores.get("f1"), "dev_exact": dev_scores.get("exact"),
              "null_threshold": thr, "baselines_f1": baselines,
              "best_baseline": best_name, "lead_over_best_baseline": metrics["f1"] - baselines[best_name],
              "registry_champion": champion, "champion_version": champion["version"] if champion else None,
              "lead_over_champion": metrics["f1"] - champion["f1"] if champion else None,
              "speed": speed, "speed_device": str(model.device), "backend": config.get("backend")}
    if champion_warning:
        report["registry_champion_warning"] = champion_warning
    decoding = {"n_best": params.decode.n_best, "max_answer_length": params.decode.max_answer_length,
                "null_threshold": thr, "max_seq_length": config["max_seq_length"],
                "doc_stride": config["doc_stride"]}
    _write_reports(reports_dir, report, decoding, _prediction_records(test_rows, preds, test_dec), "test split")
    curve = completed_curve(model_dir, dev_scores)
    if curve is not None:
        write_json_atomic(reports_dir / "train_curve.json", curve)
    if config.get("run_id"):
        from medqa.tracking import configure_tracking

        configure_tracking()
        with mlflow.start_run(run_id=config["run_id"]):
            mlflow.log_metrics({"test_f1": metrics["f1"], "test_em": metrics["exact"],
                                "test_has_ans_f1": metrics["has_ans_f1"], "test_no_ans_f1": metrics["no_ans_f1"],
                                "null_threshold": thr, "lead_over_best_baseline": report["lead_over_best_baseline"]}
                               | ({"lead_over_champion": report["lead_over_champion"]} if champion else {})
                               | {f"baseline_f1_{k}": v for k, v in baselines.items()}
                               | {k: v for k, v in speed.items()})
            if curve and dev_scores:
                mlflow.log_metrics({"dev_f1": dev_scores["f1"], "dev_em": dev_scores["exact"]}, step=curve[-1]["epoch"])
            mlflow.set_tag("champion_version", report["champion_version"] or "none")
            mlflow.log_dict(report, "evaluation/metrics.json")
    return report


def validate_eval_file(path: Path, params: ValidateParams) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a user's data file checked by the validate stage's rules, and a label per row.

    The whole file is one evaluation set: its rows are put in one split, so split names and
    cross-split leakage (training concerns) cannot reject them, while every other check applies.
    The first bad row stops the run, named by file, row and id with its failed checks.
    """
    from medqa.data import OUTPUT_COLUMNS, find_invalid_rows, read_qa_records

    df = read_qa_records(Path(path), "auto").reset_index(drop=True)
    df["split"] = "test"
    reasons = find_invalid_rows(df, params)
    if reasons:
        i = min(reasons)
        more = f" ({len(reasons) - 1} more rows fail validation)" if len(reasons) > 1 else ""
        raise DataError(f"{df.loc[i, 'source']} {df.loc[i, 'row']} id={df.loc[i, 'id']!r}: "
                        f"{', '.join(reasons[i])}{more}")
    # through JSON, as the validate stage writes them, so the rows are the ones a pipeline run would see
    rows = [json.loads(json.dumps(r, default=str)) for r in df[OUTPUT_COLUMNS].to_dict("records")]
    return rows, [f"{s} {r}" for s, r in zip(df["source"], df["row"])]


def load_eval_rows(split: str, validated_dir: Path, params: ValidateParams) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and row labels of a validated split (train, dev or test) or of a data file to validate."""
    from medqa.data import SPLITS

    if split not in SPLITS:
        return validate_eval_file(Path(split), params)
    path = Path(validated_dir) / f"{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: missing; run the validate stage first (dvc repro validate)")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows to evaluate")
    return rows, [f"{path} line {i + 1}" for i in range(len(rows))]


def _split_label(split: str) -> str:
    """How reports name what was evaluated: "test split", or the data file's path."""
    from medqa.data import SPLITS

    return f"{split} split" if split in SPLITS else split


def default_reports_dir(model: str, split: str, now: datetime | None = None) -> Path:
    """reports/eval-<model>-<split>-<YYYYmmdd-HHMMSS>: a new folder per ad-hoc run, beside (never
    over) the evaluate stage's DVC-tracked reports/metrics.json."""
    if model.startswith("models:/"):
        name = model.removeprefix("models:/").replace("@", "-")
        name = re.sub(r"/(\d+)$", r"-v\1", name)
    else:
        name = Path(model).resolve().name
    split_name = Path(split).stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-{split_name}").strip("-")
    return Path("reports") / f"eval-{slug}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def evaluate_model(model: str, split: str, validated_dir: Path, reports_dir: Path, validate: ValidateParams,
                   params: EvaluateParams, decoding_file: Path | None = None) -> dict[str, Any]:
    """Score a saved model folder or a registered model (models:/name@alias, models:/name/version) on
    a validated split or a user's data file, as the model is served: its own tokenizer, windows,
    decoding and recorded abstention threshold (nothing is re-tuned, so dev is fair game too).

    Writes metrics.json, predictions.jsonl, errors.md and decoding.json (the settings used) to
    ``reports_dir``, with the lexical baseline beside the model; nothing is logged to MLflow.
    """
    rows, labels = load_eval_rows(split, validated_dir, validate)  # bad data fails before any download
    name = version = None
    with tempfile.TemporaryDirectory(prefix="medqa-eval-") as tmp:
        if model.startswith("models:/"):
            from medqa.registry import fetch_registered_model
            from medqa.tracking import configure_tracking

            configure_tracking()
            folder, name, version = fetch_registered_model(model, Path(tmp))
        else:
            folder = Path(model)
        saved = load_saved_model(folder, decoding_file)
        threshold_from = (f"models:/{name}/{version} (its decoding.json)" if version and not decoding_file
                          else str(saved.settings_file))
        decisions, features, seconds = score_saved_model(saved, rows, labels, params.batch_size)
        pad_id = saved.tokenizer.pad_token_id or 0
        speed = measure_speed(saved.model, features, params.batch_size, pad_id, seconds)
    preds = [d.answer(saved.threshold) for d in decisions]
    metrics = summarize(preds, rows, params.bootstrap_samples)
    lexical = summarize([lexical_answer(r["question"], r["context"]) for r in rows], rows)
    report = {"split": split, "model": model, "model_version": version, **metrics,
              "null_threshold": saved.threshold, "threshold_from": threshold_from,
              "baselines_f1": {"lexical_window": lexical["f1"]}, "best_baseline": "lexical_window",
              "lead_over_best_baseline": metrics["f1"] - lexical["f1"],
              "speed": speed, "speed_device": str(saved.model.device)}
    decoding = {"n_best": saved.decode.n_best, "max_answer_length": saved.decode.max_answer_length,
                "null_threshold": saved.threshold, "max_seq_length": saved.tokenize.max_seq_length,
                "doc_stride": saved.tokenize.doc_stride}
    _write_reports(Path(reports_dir), report, decoding, _prediction_records(rows, preds, decisions),
                   _split_label(split))
    return report
