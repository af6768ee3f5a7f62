"""Span decoding: from per-window start/end logits to one answer per question.

For each question, every window contributes its ``n_best`` start and end candidates; a pair is kept
when both tokens are context tokens, end >= start and the span is at most ``max_answer_length``
tokens. The best pair over all windows wins and maps back to original characters through the
offsets, trimmed of surrounding whitespace (so ``answer == context[start:end]`` has no edge spaces
whatever the tokenizer). The null score is the smallest [CLS] score over the windows (the SQuAD v2
convention); the question is answered when ``best - null`` exceeds the abstention threshold.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medqa.config import DecodeParams
from medqa.signals import candidate_signals, question_signals


@dataclass(frozen=True)
class SpanDecision:
    """The best span of one question, the null score, and the answer after abstention."""

    best_text: str
    start: int
    end: int
    best_score: float
    null_score: float
    answer_prob: float
    # the second-best span's score (-inf when there is none): a close runner-up means doubt
    runner_up_score: float = -math.inf
    # what the calibrator may read besides the scores (``medqa.signals``); empty without a span
    signals: Mapping[str, float] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """How much the best span beats abstaining, in logits."""
        return self.best_score - self.null_score

    def answer(self, threshold: float) -> str:
        """The span text, or "" when the model abstains at ``threshold``."""
        return self.best_text if self.best_text and self.margin > threshold else ""


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module, features: Sequence[dict[str, Any]], batch_size: int, pad_id: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start/end logits per window; windows are batched by length so padding stays small."""
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    starts: list[np.ndarray | None] = [None] * len(features)
    ends: list[np.ndarray | None] = [None] * len(features)
    keys = (
        [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features[0]]
        if features
        else []
    )
    # The same batches, widest first: each narrower batch's tensors then fit in blocks the wider
    # one freed, where narrowest first every batch needs blocks a little larger than any freed.
    for b in reversed(range(0, len(order), batch_size)):
        idx = order[b : b + batch_size]
        width = max(len(features[i]["input_ids"]) for i in idx)
        batch = {}
        for k in keys:
            # int64, as torch.tensor makes of Python ints; filled from lists or NumPy arrays alike
            padded = np.full((len(idx), width), pad_id if k == "input_ids" else 0, dtype=np.int64)
            for row, i in enumerate(idx):
                padded[row, : len(features[i][k])] = features[i][k]
            batch[k] = torch.from_numpy(padded).to(device)
        out = model(**batch)
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for j, i in enumerate(idx):
            n = len(features[i]["input_ids"])
            starts[i], ends[i] = s[j, :n], e[j, :n]
    return starts, ends  # type: ignore[return-value]


def _trim_whitespace(context: str, start: int, end: int) -> tuple[int, int]:
    """``start:end`` without surrounding whitespace.

    Byte-level BPE (RoBERTa, ModernBERT) and sentencepiece (ALBERT, XLM-R, DeBERTa) tokens carry the
    space before a word, and their offsets can include it, so an untrimmed answer would read
    " doses are not used".
    """
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return start, end


def _window_candidates(
    offsets: Sequence[Sequence[int]],
    s_log: np.ndarray,
    e_log: np.ndarray,
    context: str,
    params: DecodeParams,
) -> list[tuple[float, int, int]]:
    """(score, start, end) of every allowed pair of one window's top start and end tokens."""
    found = []
    for s in np.argsort(s_log)[::-1][: params.n_best]:
        if offsets[s][0] < 0:
            continue
        for e in np.argsort(e_log)[::-1][: params.n_best]:
            if e < s or e - s + 1 > params.max_answer_length or offsets[e][0] < 0:
                continue
            start, end = _trim_whitespace(context, offsets[s][0], offsets[e][1])
            if start < end:  # a span of spaces only (a lone sentencepiece "▁") is no answer
                found.append((float(s_log[s] + e_log[e]), start, end))
    return found


def _windows_agree(
    windows: Sequence[tuple[tuple[int, int], list[tuple[float, int, int]]]], start: int, end: int
) -> float:
    """Share of the windows whose context holds ``start:end`` that rank it their best span."""
    holding = [found for (lo, hi), found in windows if lo <= start and end <= hi]
    tops = [max(found, key=lambda c: c[0])[1:] == (start, end) for found in holding if found]
    return sum(tops) / len(holding) if holding else 1.0


def _context_range(offsets: Sequence[Sequence[int]]) -> tuple[int, int]:
    spans = [o for o in offsets if o[0] >= 0]
    return (spans[0][0], spans[-1][1]) if spans else (0, 0)


def decode_best_spans(
    features: Sequence[dict[str, Any]],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    contexts: Sequence[str],
    params: DecodeParams,
    questions: Sequence[str],
) -> list[SpanDecision]:
    """One SpanDecision per context/question, combining all of its windows; ``questions`` feed
    the question signals the calibrator may use."""
    by_example: dict[int, list[int]] = defaultdict(list)
    for f_i, feat in enumerate(features):
        by_example[int(feat["example_index"])].append(f_i)
    decisions = []
    for ex_i, (context, question) in enumerate(zip(contexts, questions)):
        null_score = math.inf
        windows = []
        for f_i in by_example.get(ex_i, []):
            offsets = features[f_i]["offset_mapping"]
            if isinstance(offsets, np.ndarray):  # read from Arrow (scoring): Python ints, as ever
                offsets = offsets.tolist()
            s_log, e_log = start_logits[f_i], end_logits[f_i]
            null_score = min(null_score, float(s_log[0] + e_log[0]))
            found = _window_candidates(offsets, s_log, e_log, context, params)
            windows.append((_context_range(offsets), found))
        if null_score == math.inf:
            null_score = 0.0
        candidates = sorted(
            (c for _, found in windows for c in found), key=lambda c: c[0], reverse=True
        )
        if not candidates:
            decisions.append(SpanDecision("", -1, -1, -math.inf, null_score, 0.0))
            continue
        best_score, start, end = candidates[0]
        signals = candidate_signals(
            null_score, candidates, params.n_best, _windows_agree(windows, start, end)
        )
        decisions.append(
            SpanDecision(
                context[start:end],
                start,
                end,
                best_score,
                null_score,
                signals["answer_prob"],
                candidates[1][0] if len(candidates) > 1 else -math.inf,
                {**signals, **question_signals(question, context, start, end)},
            )
        )
    return decisions


def tune_null_threshold(
    decisions: Sequence[SpanDecision], golds: Sequence[Sequence[str]], f1_of: Any
) -> tuple[float, float]:
    """The abstention threshold that maximises mean F1 on these questions, and that F1.

    ``f1_of(prediction, golds)`` scores one prediction. Candidate thresholds are just below each
    question's margin, plus "never answer". Each question is scored twice (answered, abstaining),
    once; a candidate's F1 is then the abstaining total plus the gains of the questions whose
    margin clears it, a suffix sum over the margins in order: O(n log n) where rescoring every
    question at every candidate was O(n^2) (80 s at 2,000 questions, hours at a 100k-question set).
    """
    if not decisions:
        return 0.0, 0.0
    if_abstaining = [f1_of("", g) for g in golds]
    abstaining = sum(if_abstaining)
    spans = sorted(
        (d.margin, f1_of(d.best_text, g) - empty)
        for d, g, empty in zip(decisions, golds, if_abstaining)
        if d.best_text
    )
    span_margins = [m for m, _ in spans]
    gain_above = np.concatenate([np.cumsum([gain for _, gain in spans][::-1])[::-1], [0.0]])
    candidates = [math.inf] + [m - 1e-6 for m in sorted(set(span_margins))]
    best_thr, best_total = math.inf, -1.0
    for thr in candidates:  # answered: margin > thr, as SpanDecision.answer has it
        total = abstaining + float(gain_above[bisect.bisect_right(span_margins, thr)])
        if total > best_total + 1e-12 * len(decisions):
            best_thr, best_total = thr, total
    # the figure itself as every other mean F1 is computed, to the last bit
    best_f1 = float(np.mean([f1_of(d.answer(best_thr), g) for d, g in zip(decisions, golds)]))
    if best_thr == math.inf:  # never answering: store a large finite number (JSON has no inf)
        best_thr = 1e9
    return best_thr, best_f1
