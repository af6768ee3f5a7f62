"""The warmup stage (optional, ``warmup.enabled``): teach the base model span selection before it sees
labelled questions, from unlabeled domain text only.

Synthetic questions follow recurring-span selection (Splinter, Ram et al. 2021) in the cloze form of
Dhingra et al. (2018): a span of words that occurs in two different sentences of a passage is masked
in one of them, that sentence becomes the question, and the model must find the span's other
occurrence in the rest of the passage (the question sentence is removed from the context, so the
answer cannot be copied from the same place). The unlabeled text is the training passages plus any
``.txt``/``.md`` text the user points ``warmup.extra_text`` at; dev and test passages are never used.

The warmed-up model goes to ``models/warmup``; the train stage starts from it instead of the base
model. Disabled, the stage only writes a marker saying so (milliseconds), and training starts from
the base model as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import set_seed

from medqa.atomic import atomic_dir, read_jsonl
from medqa.config import Params
from medqa.device import detect_device, explain_precision, keep_freed_memory
from medqa.errors import DataError
from medqa.features import build_train_features
from medqa.modelsource import load_qa_model, load_tokenizer
from medqa.training import WARMUP_RECORD, build_trainer

# Words that cannot start or end a span: a recurring "of the" says nothing about the passage.
STOPWORDS = frozenset("""
a an the and or but nor of in on at to for from by with without into onto over under about after before
between during within per via as than then that this these those there their they them it its is are was
were be been being has have had do does did can could may might must should would will shall not no yes
which who whom whose what when where why how all any both each either every few more most other some such
only own same so too very also if while because although though until up down out off again further once
i you he she we his her our your my me him us one two
""".split())
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’/-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text``; end is where the next one starts."""
    starts = [0] + [m.end() for m in _SENTENCE_END.finditer(text)]
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(text)]) if text[s:e].strip()]


def _span_ok(words: tuple[str, ...]) -> bool:
    """A span worth asking about: content words at both ends; one-word spans must look like a term."""
    if words[0] in STOPWORDS or words[-1] in STOPWORDS:
        return False
    return len(words) > 1 or len(words[0]) >= 4 or any(c.isdigit() for c in words[0])


def recurring_spans(text: str, max_span_words: int) -> dict[tuple[str, ...], list[tuple[int, int, int]]]:
    """Word n-grams (case-folded) that occur in at least two different sentences of ``text``, with
    their occurrences as (start, end, sentence index). A span inside a longer recurring span at every
    one of its occurrences is dropped (only the longest, most specific form is asked)."""
    sentences = sentence_spans(text)
    words = []
    for m in _WORD.finditer(text):
        sent = next(i for i, (s, e) in enumerate(sentences) if s <= m.start() < e)
        words.append((m.start(), m.end(), m.group().lower(), sent))
    found: dict[tuple[str, ...], list[tuple[int, int, int]]] = {}
    for n in range(max_span_words, 0, -1):
        for i in range(len(words) - n + 1):
            ws = words[i:i + n]
            if ws[0][3] != ws[-1][3]:  # crosses a sentence boundary
                continue
            key = tuple(w[2] for w in ws)
            if _span_ok(key):
                found.setdefault(key, []).append((ws[0][0], ws[-1][1], ws[0][3]))
    recurring = {k: occ for k, occ in found.items() if len({o[2] for o in occ}) >= 2}
    covered: set[tuple[int, int]] = set()
    kept: dict[tuple[str, ...], list[tuple[int, int, int]]] = {}
    for key in sorted(recurring, key=len, reverse=True):
        occ = recurring[key]
        if all(any(cs <= s and e <= ce for cs, ce in covered) for s, e, _ in occ):
            continue
        kept[key] = occ
        covered.update((s, e) for s, e, _ in occ)
    return kept


def synthetic_questions(passages: Iterable[str], mask: str, max_per_passage: int, max_span_words: int,
                        seed: int) -> list[dict[str, Any]]:
    """Cloze questions with recurring-span answers, as validated QA rows (id, question, context, answers).

    For each recurring span (up to ``max_per_passage`` per passage, longest first, ties at random): one
    sentence holding it, with that occurrence replaced by ``mask``, is the question; the passage
    without that sentence is the context; the span's first occurrence there is the answer.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for p_idx, text in enumerate(dict.fromkeys(passages)):  # each distinct passage once, in order
        sentences = sentence_spans(text)
        spans = list(recurring_spans(text, max_span_words).items())
        rng.shuffle(spans)
        spans.sort(key=lambda kv: -len(kv[0]))  # multi-word terms first: the most specific questions
        for key, occ in spans[:max_per_passage]:
            q_start, q_end, q_sent = rng.choice(occ)
            s_start, s_end = sentences[q_sent]
            question = (text[s_start:q_start] + mask + text[q_end:s_end]).strip()
            context = text[:s_start] + text[s_end:]
            a_start, a_end, _ = next(o for o in occ if o[2] != q_sent)
            if a_start >= s_end:
                a_start, a_end = a_start - (s_end - s_start), a_end - (s_end - s_start)
            rows.append({"id": f"warmup-{p_idx}-{len(rows)}", "question": question, "context": context,
                         "answers": [{"text": context[a_start:a_end], "answer_start": a_start}]})
    return rows


def unlabeled_passages(train_rows: list[dict[str, Any]], extra_text: str) -> list[str]:
    """The training passages, then the paragraphs (blank-line separated) of ``extra_text``: a .txt or
    .md file, or a folder searched recursively for them."""
    passages = [r["context"] for r in train_rows]
    if not extra_text:
        return passages
    root = Path(extra_text)
    if not root.exists():
        raise DataError(f"warmup.extra_text: {root}: no such file or folder")
    files = sorted(f for f in root.rglob("*") if f.suffix in (".txt", ".md")) if root.is_dir() else [root]
    if not files:
        raise DataError(f"warmup.extra_text: {root}: no .txt or .md files")
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"warmup.extra_text: {f}: cannot read as UTF-8 text ({e})") from None
        passages += [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return passages


def warm_up(validated_dir: Path, out_dir: Path, params: Params) -> dict[str, Any]:
    """Write ``out_dir``: the marker (``warmup.json``) and, when enabled, the warmed-up model beside it."""
    wp, out_dir = params.warmup, Path(out_dir)
    record: dict[str, Any] = {"enabled": wp.enabled, "base_model": params.base_model}
    if not wp.enabled:
        with atomic_dir(out_dir) as tmp:
            (tmp / WARMUP_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return record
    set_seed(params.train.seed)
    info = detect_device(params.train.device)
    precision, _ = explain_precision(params.train.precision, info)
    if info.backend == "cpu":
        keep_freed_memory()
    tokenizer = load_tokenizer(params.base_model)
    passages = unlabeled_passages(read_jsonl(Path(validated_dir) / "train.jsonl"), wp.extra_text)
    rows = synthetic_questions(passages, tokenizer.mask_token or "_____", wp.max_per_passage,
                               wp.max_span_words, params.train.seed)
    rows = rows[:wp.max_questions] if wp.max_questions else rows
    if not rows:
        raise DataError("warmup: no recurring spans found in the unlabeled text; nothing to warm up on")
    train_ds = Dataset.from_list(build_train_features(tokenizer, rows, params.tokenize))
    model = load_qa_model(params.base_model)
    tp = dataclasses.replace(params.train, learning_rate=wp.learning_rate, head_learning_rate=wp.head_learning_rate,
                             epochs=wp.epochs, batch_size=wp.batch_size, layer_lr_decay=1.0)
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(model, tokenizer, train_ds, tp, Path(scratch), info.backend, precision, 1, True,
                                [], checkpoints=False)
        result = trainer.train()
        trainer.save_model(str(tmp))
        record |= {
            "passages": len(dict.fromkeys(passages)), "questions": len(rows), "windows": len(train_ds),
            "questions_md5": hashlib.md5(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
            "params": dataclasses.asdict(wp), "seed": params.train.seed, "precision": precision,
            "train_loss": float(result.training_loss), "seconds": round(time.perf_counter() - start, 1),
            "examples": rows[:3],
        }
        (tmp / WARMUP_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record
