"""Synthetic clinical QA data of any size for the scale benchmark (``make bench-scale``).

A SQuAD v2 JSON file of ``n`` questions: passages of about 250 words drawn from a clinical
vocabulary, 8 questions a passage, one in ten unanswerable. Deterministic by seed, and written one
article at a time, so a million questions never sit in memory here. The file names no split, so
validate assigns train/dev/test by a hash of the context (70/15/15), as it would for a user's file.

``python -m benchmarks.scale_data OUT.json N [--seed S]``
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

QUESTIONS_PER_PASSAGE = 8
PASSAGE_WORDS = 250
UNANSWERABLE_SHARE = 0.1

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


def passage(rng: random.Random) -> str:
    """About PASSAGE_WORDS words in sentences of 8 to 16, each capitalised and ended with a stop."""
    sentences, words = [], 0
    while words < PASSAGE_WORDS:
        n = rng.randint(8, 16)
        sentence = " ".join(rng.choice(WORDS) for _ in range(n))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        words += n
    return " ".join(sentences)


def _answerable(rng: random.Random, context: str) -> tuple[str, dict[str, Any]]:
    """A question naming the two words before a span of 1 to 3 words, and that span as the answer
    at its exact character offset."""
    tokens = context.split(" ")
    starts = [0]
    for token in tokens[:-1]:
        starts.append(starts[-1] + len(token) + 1)
    at = rng.randrange(2, len(tokens) - 3)
    text = " ".join(tokens[at : at + rng.randint(1, 3)]).rstrip(".")
    question = rng.choice(QUESTION_FORMS).format(
        w=rng.choice(WORDS), a=tokens[at - 2].rstrip("."), b=tokens[at - 1].rstrip(".")
    )
    return question, {"text": text, "answer_start": starts[at]}


def article(rng: random.Random, number: int, questions: int) -> dict[str, Any]:
    """One SQuAD article: a title, one passage and ``questions`` distinct questions on it."""
    context = passage(rng)
    qas: list[dict[str, Any]] = []
    asked: set[str] = set()
    while len(qas) < questions:
        if rng.random() < UNANSWERABLE_SHARE:
            question = rng.choice(QUESTION_FORMS).format(
                w=rng.choice(WORDS), a="the", b=f"visit {rng.randint(1, 10**6)}"
            )
            answers: list[dict[str, Any]] = []
        else:
            question, answer = _answerable(rng, context)
            answers = [answer]
        if question in asked:
            continue
        asked.add(question)
        qas.append(
            {
                "id": f"s{number:07d}-q{len(qas) + 1}",
                "question": question,
                "answers": answers,
                "is_impossible": not answers,
            }
        )
    title = " ".join(rng.choice(WORDS) for _ in range(4))
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


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
