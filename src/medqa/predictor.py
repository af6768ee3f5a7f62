"""Answer questions with a saved model exactly as the evaluate stage does: the same windows, the
same decoding, the same abstention threshold (read from the model folder's decoding.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForQuestionAnswering

from medqa.config import DecodeParams, TokenizeParams
from medqa.decoding import decode_best_spans, predict_logits
from medqa.device import detect_device
from medqa.errors import DataError, ModelError
from medqa.features import build_eval_features
from medqa.modelsource import load_tokenizer

DECODING_FILE = "decoding.json"


class QAPredictor:
    """A loaded model plus its decoding settings; ``predict`` takes question/context records."""

    def __init__(self, model_dir: Path | str, device: str = "auto", batch_size: int = 32):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise ModelError(f"{model_dir}: not a saved model folder (no config.json)")
        settings_file = model_dir / DECODING_FILE
        if not settings_file.exists():
            raise ModelError(f"{settings_file}: missing; evaluate the model first (it tunes the threshold)")
        self.settings: dict[str, Any] = json.loads(settings_file.read_text())
        self.tokenizer = load_tokenizer(str(model_dir))
        self.model = AutoModelForQuestionAnswering.from_pretrained(
            model_dir, use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa")
        self.model.to(torch.device(detect_device(device).device)).eval()
        self.batch_size = batch_size
        self.tokenize = TokenizeParams(self.settings["max_seq_length"], self.settings["doc_stride"])
        self.decode = DecodeParams(self.settings["n_best"], self.settings["max_answer_length"])
        self.threshold = float(self.settings["null_threshold"])

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per record: answer ("" when the model abstains), score, start, end."""
        for i, r in enumerate(records):
            for key in ("question", "context"):
                if not isinstance(r.get(key), str) or not r[key].strip():
                    raise DataError(f"record {i + 1}: {key!r} must be a non-empty string")
        if not records:
            return []
        features = build_eval_features(self.tokenizer, records, self.tokenize)
        starts, ends = predict_logits(self.model, features, self.batch_size, self.tokenizer.pad_token_id or 0)
        decisions = decode_best_spans(features, starts, ends, [r["context"] for r in records], self.decode)
        results = []
        for d in decisions:
            answer = d.answer(self.threshold)
            results.append({"answer": answer, "score": d.answer_prob if answer else 1 - d.answer_prob,
                            "start": d.start if answer else -1, "end": d.end if answer else -1,
                            "abstained": not answer})
        return results
